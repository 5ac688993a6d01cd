"""The courier over many days, into a collection point directory: a bus's week at the
depot, records stamped in a day already handed in, re-signed batches, a rewritten
journal, the state file, a station journal's terminal, and the settlement reading it all.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_collect_support import (
    DAY,
    OTHER_TID,
    SEED,
    TID,
    TZ,
    Tapper,
    day_ms,
    tapper,
    terminal_key,
    write_register,
)

from farecore.card.crypto import Algorithm
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.errors import ConfigError, JournalError
from farecore.fleet.collect_protocol import UploadRefused
from farecore.fleet.upload import Courier, CourierSettings, courier_settings
from farecore.fleet.upload_state import CourierState
from farecore.journal.batch import verify_batch
from farecore.journal.heads import parse_head
from farecore.journal.records import GENESIS_HASH
from farecore.journal.station import StationJournal
from readers.virtual import VirtualReader
from sim.issuer import Issuer

WEEK = [DAY + dt.timedelta(days=i) for i in range(7)]


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def settings(tmp: Path, point: Path, **more: object) -> CourierSettings:
    return CourierSettings(
        destination=str(point),
        state=tmp / "state" / "upload.json",
        spool=tmp / "state" / "outbox",
        utc_offset_min=TZ,
        **more,  # type: ignore[arg-type]
    )


@pytest.fixture
def point(tmp_path: Path) -> Path:
    root = tmp_path / "point"
    root.mkdir()
    return root


def handed(point: Path, tid: int = TID) -> list[str]:
    return sorted(p.name for p in (point / "batches" / str(tid)).glob("*.fcb"))


def test_a_bus_hands_in_its_week_at_the_depot(tmp_path: Path, point: Path) -> None:
    """Seven days without a connection; at the depot every closed day goes in, in
    order, each continuing the chain of the one before; an idle day is an empty batch."""
    journal = tmp_path / "bus.sqlite"
    with tapper(journal) as t:
        for i, day in enumerate(WEEK):
            if i != 3:  # the bus stood idle on the fourth day
                t.day(day, 15, seed=i)
    clock = Clock(day_ms(WEEK[-1], 24 + 2))  # the morning after the seventh day
    with Courier(settings(tmp_path, point), terminal_key(), journal, clock_ms=clock) as c:
        acks = c.run_once()
        assert c.records_pending == 0
        assert c.status().batches_handed_in == 7
    assert [a.day for a in acks] == WEEK
    assert handed(point) == sorted(f"{TID}-{d}.fcb" for d in WEEK)
    prev, seq = GENESIS_HASH, 1
    for ack in acks:
        batch = verify_batch(point / "batches" / str(TID) / ack.name, terminal_key().public())
        assert (batch.prev_hash, batch.first_seq) == (prev, seq)
        prev, seq = batch.tail_hash, batch.last_seq + 1
    assert [a.count for a in acks] == [15, 15, 15, 0, 15, 15, 15]
    head = parse_head((point / "heads" / str(TID) / "latest.json").read_bytes(), "head").head
    assert head.seq == 90 and head.records_pending == 0  # signed after the hand-in


def test_the_settlement_takes_the_points_batches_as_they_are(tmp_path: Path, point: Path) -> None:
    from farecore.cli import main

    journal = tmp_path / "bus.sqlite"
    with tapper(journal) as t:
        t.day(DAY, 25)
    clock = Clock(day_ms(DAY, 25))
    with Courier(settings(tmp_path, point), terminal_key(), journal, clock_ms=clock) as c:
        assert len(c.hand_in()) == 1
    register = write_register(tmp_path / "terminals.csv", [terminal_key()])
    Issuer.from_seed(SEED).keyring().save(tmp_path / "keyring.json")
    (tmp_path / "fares.toml").write_text(
        '[[operator]]\nid = "qd-bus"\nregions = [370200]\n'
        '[[bus]]\noperator = "qd-bus"\nline = "1"\nfare_fen = 200\neffective_from = "2026-01-01"\n'
    )
    status = main(
        [
            "settle",
            "--quiet",
            "--batches",
            str(point / "batches"),
            "--terminals",
            str(register),
            "--keyring",
            str(tmp_path / "keyring.json"),
            "--fares",
            str(tmp_path / "fares.toml"),
            "--day",
            str(DAY),
            "--out",
            str(tmp_path / "out"),
            "--ledger",
            str(tmp_path / "ledger.sqlite"),
        ]
    )
    assert status == 0


def test_records_stamped_in_a_day_already_handed_in_go_as_its_continuation(
    tmp_path: Path, point: Path
) -> None:
    """The gate's clock stepped back across midnight after the day was handed in: the
    records it stamped in that day follow as a continuation batch, so the next day's
    batch still continues the chain and nothing is left between the two."""
    journal = tmp_path / "bus.sqlite"
    clock = Clock(day_ms(DAY, 24 + 1))
    with tapper(journal) as t:
        t.day(DAY, 10)
        with Courier(settings(tmp_path, point), terminal_key(), journal, clock_ms=clock) as c:
            assert [a.count for a in c.hand_in()] == [10]
            t.tap(5, day_ms(DAY, 23.9))  # after the hand-in, stamped in DAY
            t.tap(6, day_ms(DAY, 23.95))
            t.tap(7, day_ms(DAY, 24 + 8))
            clock.ms = day_ms(DAY, 48 + 1)
            acks = c.hand_in()
    assert [a.name for a in acks] == [
        f"{TID}-{DAY}+11.fcb",
        f"{TID}-{DAY + dt.timedelta(days=1)}.fcb",
    ]
    assert [(a.first_seq, a.last_seq) for a in acks] == [(11, 12), (13, 13)]
    cont = verify_batch(point / "batches" / str(TID) / acks[0].name, terminal_key().public())
    assert cont.day == DAY and len(cont.records) == 2
    state = CourierState.load(tmp_path / "state" / "upload.json", TID, TZ)
    assert state is not None and [h.name for h in state.handed][-2:] == [a.name for a in acks]


def test_a_rewritten_journal_stops_the_courier(tmp_path: Path, point: Path) -> None:
    journal = tmp_path / "bus.sqlite"
    with tapper(journal) as t:
        t.day(DAY, 10, seed=1)
        t.day(DAY + dt.timedelta(days=1), 10, seed=2)
    clock = Clock(day_ms(DAY, 24 + 1))
    s = settings(tmp_path, point)
    with Courier(s, terminal_key(), journal, clock_ms=clock) as c:
        c.hand_in()
    journal.unlink()
    with tapper(journal) as t:  # the same terminal's journal, other rides
        t.day(DAY, 10, seed=7)
        t.day(DAY + dt.timedelta(days=1), 10, seed=8)
    clock.ms = day_ms(DAY, 48 + 1)
    with Courier(s, terminal_key(), journal, clock_ms=clock) as c:
        with pytest.raises(JournalError, match="rewritten"):
            c.run_once()
        assert "rewritten" in (c.last_error or "")
    assert handed(point) == [f"{TID}-{DAY}.fcb"]
    state = CourierState.load(s.state, TID, TZ)
    assert state is not None and len(state.handed) == 1


def test_a_p256_batch_signed_again_is_the_copy_the_point_holds(tmp_path: Path, point: Path) -> None:
    """A P-256 signature differs each time: a courier that lost its state and spool
    signs the day again, and the point's copy of the same records stands for it."""
    key = terminal_key(TID, Algorithm.P256)
    journal = tmp_path / "bus.sqlite"
    with tapper(journal) as t:
        t.day(DAY, 10)
    clock = Clock(day_ms(DAY, 25))
    s = settings(tmp_path, point)
    with Courier(s, key, journal, clock_ms=clock) as c:
        first = c.hand_in()
    s.state.unlink()
    with Courier(s, key, journal, clock_ms=clock) as c:
        again = c.hand_in()
    assert again == first  # the point's acknowledgement, not the new bytes'
    assert handed(point) == [f"{TID}-{DAY}.fcb"]


def test_another_batch_under_a_held_name_is_refused_and_kept_pending(
    tmp_path: Path, point: Path
) -> None:
    journal = tmp_path / "a.sqlite"
    with tapper(journal) as t:
        t.day(DAY, 10)
    clock = Clock(day_ms(DAY, 25))
    with Courier(settings(tmp_path / "a", point), terminal_key(), journal, clock_ms=clock) as c:
        c.hand_in()
    other = tmp_path / "b.sqlite"
    with tapper(other) as t:
        t.day(DAY, 4, seed=5)
    s = settings(tmp_path / "b", point)
    with Courier(s, terminal_key(), other, clock_ms=clock) as c:
        with pytest.raises(UploadRefused, match="different batch") as refused:
            c.hand_in()
        assert refused.value.status == 409
    state = CourierState.load(s.state, TID, TZ)
    assert state is not None and state.handed == []
    assert (s.spool / f"{TID}-{DAY}.fcb").exists()


def test_the_first_day_is_the_journals_first(tmp_path: Path, point: Path) -> None:
    journal = tmp_path / "bus.sqlite"
    with tapper(journal) as t:
        t.day(DAY + dt.timedelta(days=2), 3)
    clock = Clock(day_ms(DAY, 24 * 4 + 1))
    with Courier(settings(tmp_path, point), terminal_key(), journal, clock_ms=clock) as c:
        acks = c.hand_in()
    assert [a.day for a in acks] == [DAY + dt.timedelta(days=2), DAY + dt.timedelta(days=3)]
    empty = tmp_path / "empty.sqlite"
    with tapper(empty, OTHER_TID):
        pass
    s = settings(tmp_path / "o", point)
    with Courier(s, terminal_key(OTHER_TID), empty, clock_ms=clock) as c:
        assert c.hand_in() == []  # today is not over
        assert c.send_head().seq == 0
    assert CourierState.load(s.state, OTHER_TID, TZ).since == DAY + dt.timedelta(days=4)  # type: ignore[union-attr]


def test_the_state_file_is_read_strictly(tmp_path: Path, point: Path) -> None:
    journal = tmp_path / "bus.sqlite"
    with tapper(journal) as t:
        t.day(DAY, 3)
    clock = Clock(day_ms(DAY, 25))
    s = settings(tmp_path, point)
    with Courier(s, terminal_key(), journal, clock_ms=clock) as c:
        c.hand_in()
    good = s.state.read_bytes()
    doc = json.loads(good)
    damaged = [
        b"",
        good[:-20],
        good.replace(b'"format"', b'"formt"'),
        json.dumps({**doc, "extra": 1}).encode(),
        json.dumps({**doc, "terminal": OTHER_TID}).encode(),
        json.dumps({**doc, "utc_offset_min": 0}).encode(),
        json.dumps({**doc, "handed": [{**doc["handed"][0], "last_seq": -1}]}).encode(),
        json.dumps({**doc, "handed": [{**doc["handed"][0], "name": "../x.fcb"}]}).encode(),
        b"[" * 10000,
    ]
    for data in damaged:
        s.state.write_bytes(data)
        with Courier(s, terminal_key(), journal, clock_ms=clock) as c, pytest.raises(ConfigError):
            c.run_once()
    s.state.write_bytes(good)
    with Courier(s, terminal_key(), journal, clock_ms=clock) as c:
        assert c.run_once() == []


def test_config_table(tmp_path: Path) -> None:
    s = courier_settings(
        {"to": "point", "tz": "+08:00", "head_interval_s": 60, "since": "2026-03-01"},
        base=tmp_path,
        state_dir=tmp_path / "state",
        terminal_id=TID,
    )
    assert s.destination == str(tmp_path / "point") and s.head_interval_s == 60
    assert s.state == tmp_path / "state" / f"upload-{TID}.json"
    assert s.since == dt.date(2026, 3, 1) and s.utc_offset_min == 480
    url = courier_settings(
        {"to": "https://c.example/fc/"}, base=tmp_path, state_dir=tmp_path, terminal_id=1
    )
    assert url.destination == "https://c.example/fc/"
    for bad in (
        {},
        {"to": "x", "head_interval": 5},
        {"to": "x", "tz": "8"},
        {"to": "x", "since": "2026-02-30"},
        {"to": "x", "head_interval_s": "5"},
        {"to": "x", "close_after_s": 1.5},
        {"to": ""},
    ):
        with pytest.raises(ConfigError):
            courier_settings(bad, base=tmp_path, state_dir=tmp_path, terminal_id=1)


@pytest.fixture
def station(tmp_path: Path) -> Iterator[StationJournal]:
    sj = StationJournal.open(tmp_path / "station.sqlite", [TID, OTHER_TID])
    yield sj
    sj.close()


def test_each_terminal_of_a_station_journal_hands_in_its_own(
    tmp_path: Path, point: Path, station: StationJournal
) -> None:
    issuer = Issuer.from_seed(SEED)
    for tid in (TID, OTHER_TID):
        t = Tapper(
            station.terminal(tid),  # type: ignore[arg-type]
            issuer,
            Validator(TerminalPolicy(tid, frozenset({370200})), issuer.keyring()),
            VirtualReader(),
            {},
            random.Random(tid),
        )
        t.day(DAY, 12, seed=tid)
    clock = Clock(day_ms(DAY, 25))
    for tid in (TID, OTHER_TID):
        s = settings(tmp_path / str(tid), point)
        with Courier(
            s, terminal_key(tid), tmp_path / "station.sqlite", terminal_id=tid, clock_ms=clock
        ) as c:
            c.run_once()
            assert c.records_pending == 0
        assert handed(point, tid) == [f"{tid}-{DAY}.fcb"]
        head = parse_head((point / "heads" / str(tid) / "latest.json").read_bytes(), "h").head
        assert head.seq == 12
