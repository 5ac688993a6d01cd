"""A day's first record is found through the records' time index, with the same answer as
a scan of every record, in station journals and terminal journals, old files included."""

from __future__ import annotations

import datetime as dt
import os
import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from journal_support import BASE_MS, CTX, TERMINAL_ID

from farecore.decide.decision import Decision
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import run_tap
from farecore.journal.batch import day_bounds_ms
from farecore.journal.layout import station_records_table, time_index
from farecore.journal.reader import JournalReader
from farecore.journal.station import StationJournal
from farecore.journal.terminal import Journal
from readers.virtual import VirtualReader
from sim.issuer import Issuer

DAY0 = dt.date(2026, 3, 2)  # BASE_MS is 10:00 on it
HOUR = 3_600_000
STATION = (5101, 5102)


def _times(rng: random.Random, n: int) -> list[int]:
    """Tap times over four days, mostly forward, with clock steps back and forward."""
    times, now = [], BASE_MS - 12 * HOUR
    for _ in range(n):
        step = rng.choice([rng.randrange(1, 3 * HOUR), -rng.randrange(1, 30 * HOUR)])
        now = max(BASE_MS - 40 * HOUR, now + step if rng.random() < 0.8 else now + 9 * HOUR)
        times.append(now)
    return times


def _decisions(times: list[int], terminal: int = STATION[0]) -> list[Decision]:
    issuer = Issuer.from_seed("time-index")
    validator = Validator(TerminalPolicy(terminal, frozenset({370200})), issuer.keyring())
    reader, card = VirtualReader(), issuer.card(7)
    out = []
    for t in times:
        out.append(run_tap(reader.tap(card), validator, t, os.urandom(16)))
        reader.remove()
    return out


def _first_seqs(path: Path, tid: int | None) -> list[int]:
    """First seq from the start of each of six days, by the reader."""
    with JournalReader(path, tid) as r:
        return [
            r.first_seq_from(day_bounds_ms(DAY0 + dt.timedelta(days=d), 480)[0])
            for d in range(-2, 4)
        ]


def _by_scan(times: list[int]) -> list[int]:
    out = []
    for d in range(-2, 4):
        start = day_bounds_ms(DAY0 + dt.timedelta(days=d), 480)[0]
        out.append(min((s for s, t in enumerate(times, 1) if t >= start), default=len(times) + 1))
    return out


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1), moved=st.booleans())
def test_station_first_seq_is_the_scan_s_with_and_without_the_index(
    tmp_path_factory: pytest.TempPathFactory, seed: int, moved: bool
) -> None:
    times = _times(random.Random(seed), 40)
    path = tmp_path_factory.mktemp("station") / "station.sqlite"
    station = StationJournal.open(path, STATION)
    for decision in _decisions(times):
        station.stage(STATION[0], decision, CTX)
    station.commit()
    if moved:
        station.close()  # the rows move to the terminal's own table
    table = station_records_table(STATION[0])
    with JournalReader(path, STATION[0]) as r:
        assert r._seq_from[0][1] == time_index(table)
    assert _first_seqs(path, STATION[0]) == _by_scan(times)
    if not moved:
        station.close()
    db = sqlite3.connect(path)
    db.execute(f"DROP INDEX {time_index(table)}")  # a file written before the index
    db.commit()
    db.close()
    with JournalReader(path, STATION[0]) as r:
        assert r._seq_from[0][1] is None
    assert _first_seqs(path, STATION[0]) == _by_scan(times)
    StationJournal.open(path, STATION).close()  # a writer gives an old file the index
    with JournalReader(path, STATION[0]) as r:
        assert r._seq_from[0][1] == time_index(table)
    assert _first_seqs(path, STATION[0]) == _by_scan(times)
    # An index of that name the query cannot use (partial, here): the reader scans.
    db = sqlite3.connect(path)
    db.execute(f"DROP INDEX {time_index(table)}")
    db.execute(f"CREATE INDEX {time_index(table)} ON {table}(time_ms) WHERE seq < 3")
    db.commit()
    db.close()
    assert _first_seqs(path, STATION[0]) == _by_scan(times)


def test_terminal_journal_first_seq_is_the_scan_s(tmp_path: Path) -> None:
    times = _times(random.Random(5), 60)
    path = tmp_path / "journal.sqlite"
    with Journal.open(path, TERMINAL_ID) as journal:
        for decision in _decisions(times, TERMINAL_ID):
            journal.append(decision, CTX)
    assert _first_seqs(path, None) == _by_scan(times)
    db = sqlite3.connect(path)
    plan = db.execute(
        "EXPLAIN QUERY PLAN SELECT MIN(seq) FROM records INDEXED BY records_time "
        "WHERE time_ms >= ?",
        (BASE_MS,),
    ).fetchall()
    assert "records_time" in str(plan)
    db.execute("DROP INDEX records_time")
    db.commit()
    db.close()
    assert _first_seqs(path, None) == _by_scan(times)
    Journal.open(path, TERMINAL_ID).close()  # a writer gives an old file the index
    with sqlite3.connect(path) as db:
        query = "SELECT 1 FROM sqlite_master WHERE type='index' AND name='records_time'"
        assert db.execute(query).fetchone() is not None
    assert _first_seqs(path, None) == _by_scan(times)
