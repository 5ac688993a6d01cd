"""The station journal: several terminals' chains in one file, made durable in groups."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from journal_support import BASE_MS, CTX
from station_gate_driver import STATION_TERMINALS

import farecore.journal.station as station_module
from farecore.card.keys import SigningKey, save_signing_key
from farecore.cli import main
from farecore.decide.decision import Decision, Reason
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.errors import JournalError
from farecore.gate.controller import StationController
from farecore.gate.runtime import Gate
from farecore.gate.tap import run_tap
from farecore.journal.batch import export_batch, verify_batch
from farecore.journal.chain import Chain
from farecore.journal.layout import RECENT_RECORDS
from farecore.journal.passback import PassbackRule, PassbackStore
from farecore.journal.records import Direction, credential_hash, encode_record, encode_tap
from farecore.journal.station import (
    STATION_FORMAT,
    StationJournal,
    replay_passback,
)
from farecore.journal.terminal import (
    GENESIS_HASH,
    Journal,
    JournalReader,
    JournalRecord,
    TapContext,
)
from readers.virtual import VirtualReader
from sim.card import VirtualCard
from sim.issuer import Issuer, derive_key

DAY = dt.date(2026, 3, 2)
DRIVER = Path(__file__).with_name("station_gate_driver.py")
T1, T2, T3 = STATION_TERMINALS

Tapper = Callable[[int, int, int], Decision]


@pytest.fixture
def tap(issuer: Issuer) -> Tapper:
    """tap(terminal, card_id, now_ms) -> a real decision of that terminal."""
    validators = {
        t: Validator(TerminalPolicy(t, frozenset({370200})), issuer.keyring())
        for t in STATION_TERMINALS
    }
    reader = VirtualReader()
    cards: dict[int, VirtualCard] = {}

    def run(terminal: int, card_id: int, now_ms: int) -> Decision:
        card = cards.get(card_id) or cards.setdefault(card_id, issuer.card(card_id))
        nonce = (terminal * 1_000_003 + now_ms).to_bytes(16, "big")
        decision = run_tap(reader.tap(card), validators[terminal], now_ms, nonce)
        reader.remove()
        return decision

    return run


def _key(tid: int) -> SigningKey:
    return SigningKey("terminal", tid, derive_key("station-tests", f"terminal-{tid}"))


@pytest.mark.parametrize("move_at", [7, None])
def test_batches_are_the_bytes_a_terminal_journal_gives(
    tmp_path: Path, tap: Tapper, move_at: int | None
) -> None:
    # The same decisions, journaled per terminal and through one station file in groups
    # of every size, export to byte-identical signed batches: with the records all still
    # in the recent table (read while the controller has the file open), some of them
    # moved by commits, and all of them moved when the controller closed the file.
    decisions = [
        (t, tap(t, i % 9 + 1, BASE_MS + i * 45_000))
        for i, t in enumerate(random.Random(5).choices(STATION_TERMINALS, k=60))
    ]
    singles = {t: Journal.open(tmp_path / f"t{t}.sqlite", t) for t in STATION_TERMINALS}
    path = tmp_path / "station.sqlite"

    def recent() -> int:
        with sqlite3.connect(path) as db:
            return int(db.execute(f"SELECT COUNT(*) FROM {RECENT_RECORDS}").fetchone()[0])

    def same_batches() -> None:
        for t in STATION_TERMINALS:
            mine = export_batch(path, DAY, _key(t), terminal_id=t)
            alone = export_batch(tmp_path / f"t{t}.sqlite", DAY, _key(t))
            assert mine == alone
            assert verify_batch(mine, _key(t).public()).terminal_id == t

    with StationJournal.open(path, STATION_TERMINALS, move_at=move_at) as station:
        group = 0
        for n, (t, d) in enumerate(decisions):
            singles[t].append(d, CTX)
            station.stage(t, d, CTX)
            group += 1
            if group == n % 5 + 1:
                station.commit()
                group = 0
        station.commit()
        for j in singles.values():
            j.close()
        assert (recent() == 60) if move_at is None else (recent() < move_at)
        same_batches()
    assert recent() == 0
    same_batches()


_V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE terminals (terminal_id INTEGER PRIMARY KEY);
CREATE TABLE credentials (sha256 BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE records (
    terminal_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    card_id INTEGER,
    body BLOB NOT NULL,
    hash BLOB NOT NULL,
    UNIQUE (terminal_id, seq)
);
CREATE TABLE passback (place TEXT NOT NULL, card_id INTEGER NOT NULL, wall_ms INTEGER NOT NULL,
    mono_ms INTEGER NOT NULL, boot TEXT NOT NULL, PRIMARY KEY (place, card_id)) WITHOUT ROWID;
"""


def _as_version_1(v2: Path, v1: Path) -> None:
    """Write the content of a station file in the version-1 layout (one records table,
    lockouts keyed by card), as the station journal of earlier releases kept it."""
    src = sqlite3.connect(v2)
    dst = sqlite3.connect(v1)
    dst.executescript(_V1_SCHEMA)
    with dst:
        dst.execute("INSERT INTO meta VALUES ('format', 'farecore-station-journal/1')")
        terminals = [r[0] for r in src.execute("SELECT terminal_id FROM terminals")]
        dst.executemany("INSERT INTO terminals VALUES (?)", [(t,) for t in terminals])
        for table in ("credentials", "recent_credentials"):
            dst.executemany(
                "INSERT OR IGNORE INTO credentials VALUES (?, ?)",
                src.execute(f"SELECT sha256, data FROM {table}"),
            )
        for t in terminals:
            rows = src.execute(f"SELECT {t}, * FROM records_{t}").fetchall()
            dst.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", rows)
        dst.executemany(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)",
            src.execute(f"SELECT * FROM {RECENT_RECORDS}"),
        )
        state = replay_passback(src.execute("SELECT * FROM passback_log ORDER BY id"))
        dst.executemany(
            "INSERT INTO passback VALUES (?, ?, ?, ?, ?)",
            [(p, c, w, m, b) for p, rows in state.items() for c, (w, m, b, _) in rows.items()],
        )
    src.close()
    dst.close()


def test_a_version_1_file_is_read_and_upgraded(tmp_path: Path, tap: Tapper) -> None:
    v2, v1 = tmp_path / "v2.sqlite", tmp_path / "v1.sqlite"
    rule = PassbackRule(window_s=60)
    with StationJournal.open(v2, STATION_TERMINALS, move_at=10) as s:
        store = PassbackStore.in_station(s, rule, CTX.place, monotonic=lambda: 5_000, boot="b")
        for i in range(25):
            t = STATION_TERMINALS[i % 3]
            s.stage(t, tap(t, i % 4 + 1, BASE_MS + i * 1000), CTX)
            store.record(i % 4 + 1, BASE_MS + i * 1000)
            if i % 4 == 3:
                s.commit()
        s.commit()
        locks = {c: row[:3] for c, row in s._passback[CTX.place].items()}
    _as_version_1(v2, v1)
    batches = {t: export_batch(v2, DAY, _key(t), terminal_id=t) for t in STATION_TERMINALS}
    # A reader takes the old layout as it is ...
    for t in STATION_TERMINALS:
        assert export_batch(v1, DAY, _key(t), terminal_id=t) == batches[t]
    # ... and the controller upgrades it in place: chains, lockouts and batches unchanged.
    with StationJournal.open(v1, STATION_TERMINALS) as s:
        assert {c: row[:3] for c, row in s._passback[CTX.place].items()} == locks
        assert [s.head(t)[0] for t in STATION_TERMINALS] == [9, 8, 8]
        s.stage(T1, tap(T1, 9, BASE_MS + 30_000), CTX)
        s.commit()
    with sqlite3.connect(v1) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "records" not in tables and "passback" not in tables
        assert db.execute("SELECT value FROM meta WHERE key='format'").fetchone() == (
            STATION_FORMAT,
        )
    for t in (T2, T3):
        assert export_batch(v1, DAY, _key(t), terminal_id=t) == batches[t]
    with JournalReader(v1, T1) as r:
        assert r.verify_chain() == 10


def test_the_lockout_log_is_cut_and_replays_to_the_same_state(tmp_path: Path) -> None:
    """Many rides and prunes: the log stays near the live lockouts, and a reopen rebuilds
    exactly the controller's state from it."""
    path = tmp_path / "station.sqlite"
    rule = PassbackRule(window_s=60, max_skew_s=0)
    clock = [0]
    with StationJournal.open(path, STATION_TERMINALS) as s:
        store = PassbackStore.in_station(s, rule, CTX.place, monotonic=lambda: clock[0], boot="b")
        other = PassbackStore.in_station(s, rule, "P2", monotonic=lambda: clock[0], boot="b")
        for i in range(30_000):
            clock[0] = i * 100  # ten rides a second: about 600 cards in the window
            (store if i % 3 else other).record(i % 997, BASE_MS + i * 100)
            if i % 500 == 499:
                s.commit()
        s.commit()
        state = {p: {c: r[:3] for c, r in rows.items()} for p, rows in s._passback.items()}
    with sqlite3.connect(path) as db:
        logged = db.execute("SELECT COUNT(*) FROM passback_log").fetchone()[0]
    live = sum(len(rows) for rows in state.values())
    assert logged <= 2 * live + 4096 + 1000 < 30_000  # cut, at most one prune period behind
    with StationJournal.open(path, STATION_TERMINALS) as s:
        assert {p: {c: r[:3] for c, r in rows.items()} for p, rows in s._passback.items()} == state


def test_reopen_continues_every_chain(tmp_path: Path, tap: Tapper) -> None:
    path = tmp_path / "station.sqlite"
    with StationJournal.open(path, (T1, T2)) as s:
        for i in range(5):
            s.stage(T1 if i % 2 else T2, tap(T1 if i % 2 else T2, 3, BASE_MS + i * 1000), CTX)
        s.commit()
    # A terminal added at reopen starts its own chain; the others continue theirs.
    with StationJournal.open(path, (T1, T2, T3)) as s:
        assert [s.head(t)[0] for t in (T1, T2, T3)] == [2, 3, 0]
        assert s.stage(T1, tap(T1, 4, BASE_MS + 10_000), CTX) == 3
        s.commit()
    for t, n in ((T1, 3), (T2, 3), (T3, 0)):
        with JournalReader(path, t) as r:
            assert r.verify_chain() == n
    assert JournalReader.terminals_in(path) == [T1, T2, T3]


def _refuse_writes(station: StationJournal, table: str) -> None:
    """Make the file refuse inserts into ``table``, as a failing disk would refuse the group."""

    def authorize(action: int, arg1: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_INSERT and arg1 == table:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    station._db.set_authorizer(authorize)


def test_a_failed_commit_opens_nothing_and_stops_the_station(tmp_path: Path, tap: Tapper) -> None:
    path = tmp_path / "station.sqlite"
    s = StationJournal.open(path, STATION_TERMINALS)
    s.stage(T1, tap(T1, 1, BASE_MS), CTX)
    s.commit()
    store = PassbackStore.in_station(s, PassbackRule(window_s=60), CTX.place)
    s.stage(T1, tap(T1, 2, BASE_MS + 1000), CTX)
    s.stage(T2, tap(T2, 3, BASE_MS + 2000), CTX)
    store.record(3, BASE_MS + 2000)
    assert store.refuses(3, BASE_MS + 3000)  # a staged ride already locks out
    _refuse_writes(s, RECENT_RECORDS)
    with pytest.raises(JournalError, match="cannot commit the station journal"):
        s.commit()
    with pytest.raises(JournalError, match="reopen the station journal"):
        s.stage(T3, tap(T3, 4, BASE_MS + 4000), CTX)
    s.close()
    # Reopened: every chain goes on from its last durable record, and the lockout of
    # the ride that never became durable is gone with it.
    with StationJournal.open(path, STATION_TERMINALS) as s:
        assert [s.head(t)[0] for t in STATION_TERMINALS] == [1, 0, 0]
        store = PassbackStore.in_station(s, PassbackRule(window_s=60), CTX.place)
        assert not store.refuses(3, BASE_MS + 3000)
        assert s.stage(T2, tap(T2, 3, BASE_MS + 5000), CTX) == 1
        s.commit()
    with JournalReader(path, T2) as r:
        assert [rec.time_ms for rec in r.records()] == [BASE_MS + 5000]


def test_lockouts_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "station.sqlite"
    rule = PassbackRule(window_s=60)
    with StationJournal.open(path, STATION_TERMINALS) as s:
        PassbackStore.in_station(s, rule, CTX.place, monotonic=lambda: 5_000, boot="b").record(
            9, BASE_MS
        )
        s.commit()
    with StationJournal.open(path, STATION_TERMINALS) as s:
        store = PassbackStore.in_station(s, rule, CTX.place, monotonic=lambda: 30_000, boot="b")
        assert store.refuses(9, BASE_MS + 25_000)
        later = PassbackStore.in_station(s, rule, CTX.place, monotonic=lambda: 70_000, boot="b")
        assert not later.refuses(9, BASE_MS + 65_000)


def test_a_group_larger_than_one_statement_and_ordered_lockouts(
    tmp_path: Path, tap: Tapper
) -> None:
    """A group is written with multi-row statements in chunks; every row lands, and the
    lockouts keep their order around a prune (the file ends as the in-memory copy)."""
    path = tmp_path / "station.sqlite"
    rule = PassbackRule(window_s=60, max_skew_s=0)
    decisions = [tap(T1, 100 + i % 7, BASE_MS + i) for i in range(600)]
    with StationJournal.open(path, STATION_TERMINALS) as s:
        for d in decisions:
            s.stage(T1, d, CTX)
        clock = iter(range(0, 10_000_000, 1000))
        store = PassbackStore.in_station(s, rule, CTX.place, monotonic=lambda: next(clock))
        store.record(50, BASE_MS)  # long gone by the prune
        other = PassbackStore.in_station(s, rule, "another-place", monotonic=lambda: 0)
        other.record(50, BASE_MS)  # as old, but a prune of CTX.place leaves it alone
        for i in range(999):  # the 1001st write prunes what is older than the window
            store.record(1 + i % 3, BASE_MS + i * 1000)
        store.record(1, BASE_MS + 999_500)  # the prune: card 1 rode last, now
        store.record(2, BASE_MS + 999_700)
        in_memory = {(p, c): row for p, rows in s._passback.items() for c, row in rows.items()}
        assert (CTX.place, 50) not in in_memory and ("another-place", 50) in in_memory
        assert len(in_memory) == 4
        s.commit()
    with JournalReader(path, T1) as r:
        assert r.verify_chain() == 600
        assert [rec.time_ms for rec in r.records()] == [BASE_MS + i for i in range(600)]
    # An SQLite built with a low parameter limit gets smaller statements, not an error.
    more = [tap(T2, 200 + i, BASE_MS + i) for i in range(40)]
    with StationJournal.open(path, STATION_TERMINALS) as s:
        s._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 20)
        for d in more:
            s.stage(T2, d, CTX)
        s.commit()
    with JournalReader(path, T2) as r:
        assert r.verify_chain() == 40
    with sqlite3.connect(path) as db:
        state = replay_passback(db.execute("SELECT * FROM passback_log ORDER BY id"))
        assert {(p, c): row for p, rows in state.items() for c, row in rows.items()} == in_memory
        stored = "SELECT sha256 FROM credentials UNION ALL SELECT sha256 FROM recent_credentials"
        assert db.execute(f"SELECT COUNT(*) FROM ({stored})").fetchone()[0] == 7 + 40


def test_what_is_staged_and_not_committed_is_not_durable(tmp_path: Path, tap: Tapper) -> None:
    path = tmp_path / "station.sqlite"
    s = StationJournal.open(path, STATION_TERMINALS)
    s.stage(T1, tap(T1, 1, BASE_MS), CTX)
    s.commit()
    s.stage(T1, tap(T1, 2, BASE_MS + 1000), CTX)
    s.close()  # the open group's gates never opened: it is rolled back
    with JournalReader(path, T1) as r:
        assert r.verify_chain() == 1


def test_readers_and_exports_must_name_a_terminal_of_the_station(
    tmp_path: Path, tap: Tapper
) -> None:
    path = tmp_path / "station.sqlite"
    with StationJournal.open(path, (T1, T2)) as s:
        s.stage(T1, tap(T1, 1, BASE_MS), CTX)
        s.commit()
    with pytest.raises(JournalError, match=f"station journal of terminals {T1}, {T2}; name one"):
        JournalReader(path)
    with pytest.raises(JournalError, match=f"not {T3}"):
        export_batch(path, DAY, _key(T3), terminal_id=T3)
    Journal.open(tmp_path / "own.sqlite", T1).close()
    before = (tmp_path / "own.sqlite").read_bytes()
    with pytest.raises(JournalError, match="not a station journal"):
        StationJournal.open(tmp_path / "own.sqlite", (T1,))
    assert (tmp_path / "own.sqlite").read_bytes() == before  # left as it was
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(JournalError, match="cannot read the station journal"):
        StationJournal.open(tmp_path / "junk.sqlite", (T1,))
    with pytest.raises(JournalError, match=f"is the journal of terminal {T1}, not {T2}"):
        JournalReader(tmp_path / "own.sqlite", T2)
    with pytest.raises(JournalError, match="not in the station journal"):
        StationJournal.open(path, (T1,)).terminal(999)


def test_cli_exports_one_terminal_of_a_station(
    tmp_path: Path, tap: Tapper, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "station.sqlite"
    with StationJournal.open(path, (T1, T2)) as s:
        for i in range(4):
            s.stage(T2, tap(T2, i + 1, BASE_MS + i * 1000), CTX)
        s.commit()
    save_signing_key(_key(T2), tmp_path / "t2")
    out = tmp_path / "t2.fcb"
    args = ["journal", "export", "--journal", str(path), "--day", str(DAY)]
    assert main([*args, "--key", str(tmp_path / "t2.key"), "--out", str(out)]) == 2
    assert "name one" in capsys.readouterr().err
    assert (
        main([*args, "--key", str(tmp_path / "t2.key"), "--out", str(out), "--terminal", str(T2)])
        == 0
    )
    assert len(verify_batch(out, _key(T2).public()).records) == 4
    assert main(["journal", "check", str(path), "--terminal", str(T2)]) == 0
    assert f"terminal {T2}, 4 records, chain OK" in capsys.readouterr().out


class _Gates:
    """Three gates on one station journal, each with an actuator that notes its opens."""

    def __init__(self, path: Path, issuer: Issuer, max_group: int) -> None:
        self.station = StationJournal.open(path, STATION_TERMINALS)
        self.opened: list[tuple[int, int]] = []
        self.clock = BASE_MS
        store = PassbackStore.in_station(self.station, PassbackRule(window_s=60), CTX.place)
        self.gates: list[tuple[Gate, VirtualReader]] = []
        for tid in STATION_TERMINALS:
            reader = VirtualReader()
            validator = Validator(
                TerminalPolicy(tid, frozenset({370200})), issuer.keyring(), passback=store
            )
            gate = Gate(
                reader,
                validator,
                journal=self.station.terminal(tid),
                context=CTX,
                passback=store,
                actuator=self,
                clock_ms=lambda: self.clock,
            )
            self.gates.append((gate, reader))
        self.controller = StationController(self.station, max_group)
        self.cards: dict[int, VirtualCard] = {}
        self.issuer = issuer

    def signal(self, decision: Decision) -> None:
        self.opened.append((decision.terminal_id, decision.time_ms))

    def tap(self, g: int, card_id: int) -> Decision:
        self.clock += 1000
        card = self.cards.get(card_id) or self.cards.setdefault(card_id, self.issuer.card(card_id))
        gate, reader = self.gates[g]
        decision = self.controller.tap(gate, reader.tap(card))
        reader.remove()
        return decision


def test_controller_opens_gates_only_after_their_group_commits(
    tmp_path: Path, issuer: Issuer
) -> None:
    g = _Gates(tmp_path / "station.sqlite", issuer, max_group=8)
    g.tap(0, 1)
    g.tap(1, 2)
    assert g.opened == [] and g.station.staged == 2
    # Gate 0 serves one rider at a time: its first ride is made durable, and the gate
    # opened, before its next rider's tap is decided.
    g.tap(0, 3)
    assert [t for t, _ in g.opened] == [T1, T2] and g.station.staged == 1
    # A passback attempt in the same group is refused: the staged ride already counts.
    assert g.tap(2, 3).label == "PASSBACK"
    assert g.controller.flush() == 2
    assert [t for t, _ in g.opened] == [T1, T2, T1, T3] and g.controller.groups == 2
    g.station.close()


def test_the_next_group_fills_while_one_commits(tmp_path: Path, issuer: Issuer) -> None:
    g = _Gates(tmp_path / "station.sqlite", issuer, max_group=8)
    g.tap(0, 1)
    g.controller.send()  # handed to the committer; gate 0 stays shut until it is durable
    assert g.controller.busy(g.gates[0][0]) and g.station.staged == 0
    g.tap(1, 2)  # another gate does not wait for that commit
    assert g.station.staged == 1
    g.controller.finish()
    assert g.opened[:1] == [(T1, BASE_MS + 1000)] and not g.controller.busy(g.gates[0][0])
    assert g.controller.flush() == 1 and len(g.opened) == 2
    g.station.close()


def test_commit_costs_are_counted_where_they_are_paid(tmp_path: Path, issuer: Issuer) -> None:
    """The committer thread's CPU goes to ``commit_cpu_s``; a commit written on the
    controller's own thread (``flush``) is the caller's CPU, but its wait is counted."""
    g = _Gates(tmp_path / "station.sqlite", issuer, max_group=8)
    assert g.station.commit_cpu_s == 0.0 and g.controller.wait_s == 0.0
    for card in range(1, 4):
        g.tap(card % 3, card)
    g.controller.send()
    g.controller.finish()
    after_thread = g.station.commit_cpu_s
    assert after_thread > 0.0  # a synced commit costs CPU, even on an idle machine
    g.tap(0, 9)
    waited = g.controller.wait_s
    g.controller.flush()  # written on this thread: the committer's count stays
    assert g.station.commit_cpu_s == after_thread
    assert g.controller.wait_s > waited  # the controller stood still for that sync
    g.station.close()


def test_controller_group_never_exceeds_max_group(tmp_path: Path, issuer: Issuer) -> None:
    g = _Gates(tmp_path / "station.sqlite", issuer, max_group=2)
    for i in range(9):
        g.tap(i % 3, 100 + i)
        assert g.station.staged <= 2
    g.controller.flush()
    assert g.controller.grouped_taps == 9 and g.controller.groups == 5
    g.station.close()


def test_a_gate_on_its_own_commits_each_tap(tmp_path: Path, issuer: Issuer) -> None:
    g = _Gates(tmp_path / "station.sqlite", issuer, max_group=8)
    gate, reader = g.gates[1]
    decision = gate.process(reader.tap(issuer.card(7)))
    reader.remove()
    assert decision.accepted and g.opened == [(T2, g.clock)] and g.station.staged == 0
    g.station.close()
    with JournalReader(tmp_path / "station.sqlite", T2) as r:
        assert r.verify_chain() == 1


@settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
class StationMachine(RuleBasedStateMachine):
    """Random stages, lockouts, prunes, commits, failures and reopens against a model of
    what is durable. Records move out of the recent table every few records and the
    lockout log is cut often, so both happen between (and during) every other step."""

    MOVE_AT = 5

    def __init__(self) -> None:
        super().__init__()
        self.dir = (
            Path(os.environ.get("PYTEST_TMP", "/tmp")) / f"station-sm-{os.getpid()}-{id(self)}"
        )
        self.dir.mkdir(parents=True)
        self.path = self.dir / "station.sqlite"
        self.station = self._open()
        self.durable = dict.fromkeys(STATION_TERMINALS, 0)
        self.staged = dict.fromkeys(STATION_TERMINALS, 0)
        self.clock = BASE_MS
        # The lockouts: (place, card) -> (wall, mono, boot) as durable, and as staged on top.
        self.locks: dict[tuple[str, int], tuple[int, int, str]] = {}
        self.staged_locks: dict[tuple[str, int], tuple[int, int, str]] | None = None

    def _open(self) -> StationJournal:
        return StationJournal.open(self.path, STATION_TERMINALS, move_at=self.MOVE_AT)

    def _current_locks(self) -> dict[tuple[str, int], tuple[int, int, str]]:
        return self.locks if self.staged_locks is None else self.staged_locks

    def _decision(self, tid: int) -> Decision:
        self.clock += 1000
        return Decision(False, Reason.UNREADABLE, tid, self.clock, bytes(32), detail="model tap")

    @rule(t=st.sampled_from(STATION_TERMINALS))
    def stage(self, t: int) -> None:
        seq = self.station.stage(t, self._decision(t), CTX)
        self.staged[t] += 1
        assert seq == self.durable[t] + self.staged[t]

    @rule(
        place=st.sampled_from(["P1", "P2"]),
        card=st.integers(1, 3),
        wall=st.integers(0, 100),
        mono=st.integers(0, 100),
        boot=st.sampled_from(["b1", "b2"]),
    )
    def lock(self, place: str, card: int, wall: int, mono: int, boot: str) -> None:
        self.station.passback_put((place, card, wall, mono, boot))
        locks = self.staged_locks = dict(self._current_locks())
        locks[(place, card)] = (wall, mono, boot)

    @rule(
        place=st.sampled_from(["P1", "P2"]),
        wall=st.integers(0, 100),
        mono=st.integers(0, 100),
        boot=st.sampled_from(["b1", "b2"]),
    )
    def prune(self, place: str, wall: int, mono: int, boot: str) -> None:
        self.station.passback_prune((place, wall, boot, mono))
        self.staged_locks = {  # the store's rule, written out as the oracle
            (p, c): (w, m, b)
            for (p, c), (w, m, b) in self._current_locks().items()
            if not (p == place and w < wall and (b != boot or m < mono))
        }

    @rule()
    def commit(self) -> None:
        self.station.commit()
        for t in STATION_TERMINALS:
            self.durable[t] += self.staged[t]
            self.staged[t] = 0
        self.locks = self._current_locks()
        self.staged_locks = None

    @rule(t=st.sampled_from(STATION_TERMINALS))
    def fail_while_moving(self, t: int) -> None:
        # Enough records to make this commit move them; the disk refuses the move.
        for _ in range(self.MOVE_AT):
            self.station.stage(t, self._decision(t), CTX)
        _refuse_writes(self.station, f"records_{t}")
        with pytest.raises(JournalError):
            self.station.commit()
        self.reopen()

    @rule(t=st.sampled_from(STATION_TERMINALS))
    def fail(self, t: int) -> None:
        # A group the disk refuses: nothing of it lands, and the station must reopen.
        self.station.stage(t, self._decision(t), CTX)
        _refuse_writes(self.station, RECENT_RECORDS)
        with pytest.raises(JournalError):
            self.station.commit()
        self.reopen()

    @rule()
    def reopen(self) -> None:
        self.station.close()
        self.staged = dict.fromkeys(STATION_TERMINALS, 0)
        self.staged_locks = None
        self.station = self._open()

    @invariant()
    def heads_match_the_model(self) -> None:
        for t in STATION_TERMINALS:
            assert self.station.head(t)[0] == self.durable[t] + self.staged[t]

    @invariant()
    def lockouts_match_the_model(self) -> None:
        held = {
            (p, c): row[:3] for p, rows in self.station._passback.items() for c, row in rows.items()
        }
        assert held == self._current_locks()

    def teardown(self) -> None:
        self.station.close()
        for t in STATION_TERMINALS:
            with JournalReader(self.path, t) as r:
                assert r.verify_chain() == self.durable[t]
        for p in self.dir.iterdir():
            p.unlink()
        self.dir.rmdir()


def test_station_state_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_TMP", str(tmp_path))
    monkeypatch.setattr(station_module, "_LOG_KEEP", 0)  # cut the lockout log at each prune
    monkeypatch.setattr(station_module, "_LOG_SLACK", 0)
    StationMachine.TestCase().runTest()


def _run_and_kill(
    path: Path, rng: random.Random, moves: str | None = None
) -> tuple[int, list[tuple[int, int, int]]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(DRIVER),
            str(path),
            str(rng.choice([2, 3, 8])),
            moves or rng.choice(["commit", "idle"]),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    opened: list[tuple[int, int, int]] = []
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready and ready[0] == "READY", ready
        target = rng.randint(1, 40)
        while len(opened) < target:
            line = proc.stdout.readline()
            if not line:
                break
            opened.append(tuple(int(x) for x in line.split()[1:]))  # type: ignore[misc]
        time.sleep(rng.random() * 0.02)  # mid-group as often as between groups
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        for ln in proc.stdout.read().splitlines():
            if ln:
                opened.append(tuple(int(x) for x in ln.split()[1:]))  # type: ignore[misc]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return int(ready[1]), opened


def test_sigkill_loses_no_opened_ride_and_no_lockout(tmp_path: Path) -> None:
    rng = random.Random(20261130)
    path = tmp_path / "station.sqlite"
    opened: list[tuple[int, int, int]] = []
    last = 0
    for run in range(8):
        # The last run moves nothing itself (no idle move, no move in a commit): every
        # ride it opened is still in the recent tables when it is killed, for the next
        # open to move (checked below), whenever the kill lands.
        start, got = _run_and_kill(path, rng, "none" if run == 7 else None)
        assert start >= last  # a restarted controller continues, never rewinds
        opened += got
        last = 0
        for t in STATION_TERMINALS:
            with JournalReader(path, t) as r:
                last += r.verify_chain()  # every chain links and no seq is missing
    rides: dict[tuple[int, int], int | None] = {}
    for t in STATION_TERMINALS:
        with JournalReader(path, t) as r:
            for rec in r.records():
                if rec.accepted:
                    rides[(t, rec.time_ms)] = rec.card_id
    for t, time_ms, card in opened:
        assert rides.get((t, time_ms)) == card, f"opened ride at {t} {time_ms} was lost"
    # Each opened ride's lockout is durable with it (a later ride may have replaced it).
    db = sqlite3.connect(path)
    state = replay_passback(db.execute("SELECT * FROM passback_log ORDER BY id"))
    stored = {card: row[0] for rows in state.values() for card, row in rows.items()}
    db.close()
    for _, time_ms, card in opened:
        assert stored.get(card, -1) >= time_ms
    assert len(opened) >= 8
    # The last run left its rows in the recent tables (at least one per gate it opened);
    # the next open moves them all.
    with sqlite3.connect(path) as db:
        left = db.execute(f"SELECT COUNT(*) FROM {RECENT_RECORDS}").fetchone()[0]
    assert left >= len(got) > 0
    with StationJournal.open(path, STATION_TERMINALS), sqlite3.connect(path) as db:
        assert db.execute(f"SELECT COUNT(*) FROM {RECENT_RECORDS}").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM recent_credentials").fetchone()[0] == 0
    for t in STATION_TERMINALS:
        with JournalReader(path, t) as r:
            for rec in r.records():
                if rec.accepted:
                    assert rides.pop((t, rec.time_ms)) == rec.card_id
    assert not rides  # the same rides, every one in its terminal's table now


def test_an_idle_controller_moves_the_recent_rows(tmp_path: Path, tap: Tapper) -> None:
    # Rows stay in the recent tables while groups keep coming; once the committer has had
    # nothing to do for move_when_idle_s, it moves them, MOVE_AT records a transaction,
    # and its CPU for that counts as committing. Commits go on as before afterwards.
    path = tmp_path / "station.sqlite"

    def recent() -> tuple[int, int]:
        with sqlite3.connect(path) as db:
            return (
                db.execute(f"SELECT COUNT(*) FROM {RECENT_RECORDS}").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM recent_credentials").fetchone()[0],
            )

    # Decided first, so the three groups follow each other within microseconds.
    taps = [(t, tap(t, i % 5 + 1, BASE_MS + i * 1000)) for i, t in enumerate(STATION_TERMINALS * 4)]
    with StationJournal.open(path, STATION_TERMINALS, move_when_idle_s=0.5) as s:
        for i, (t, decision) in enumerate(taps):
            s.stage(t, decision, CTX)
            if i % 4 == 3:
                last = s.begin_commit()
        last.wait()
        assert recent() == (12, 5)
        cpu = s.commit_cpu_s
        deadline = time.monotonic() + 10
        while recent() != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert recent() == (0, 0) and s.move_error is None
        assert s.commit_cpu_s > cpu
        s.stage(T1, tap(T1, 9, BASE_MS + 20_000), CTX)
        s.begin_commit().wait()
        assert recent() == (1, 1)
        assert [s.head(t)[0] for t in STATION_TERMINALS] == [5, 4, 4]
    assert recent() == (0, 0)
    for t, n in zip(STATION_TERMINALS, [5, 4, 4], strict=True):
        with JournalReader(path, t) as r:
            assert r.verify_chain() == n


_texts = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)


@st.composite
def _decisions(draw: st.DrawFn) -> Decision:
    accepted = draw(st.booleans())
    proof = accepted or draw(st.booleans())
    return Decision(
        accepted=accepted,
        reason=None if accepted else draw(st.sampled_from(list(Reason))),
        terminal_id=draw(st.integers(0, 2**64 - 1)),
        time_ms=draw(st.integers(-(2**63), 2**63 - 1)),
        challenge=draw(st.binary(min_size=32, max_size=32)),
        card_id=draw(st.integers(0, 2**64 - 1)) if proof or draw(st.booleans()) else None,
        credential=draw(st.binary(min_size=1, max_size=200)) if proof else None,
        counter=draw(st.integers(0, 2**32 - 1)) if proof else None,
        card_signature=draw(st.binary(min_size=64, max_size=64)) if proof else None,
        revocation_generation=draw(st.none() | st.integers(0, 2**64 - 1)),
        flags=frozenset(draw(st.lists(st.sampled_from(["A", "B", "late", "clock"]), max_size=3))),
        # Often none: the encoder has a shortcut for a decision with no flags or detail.
        detail=draw(st.just("") | st.text(max_size=1200)),
    )


@settings(max_examples=300, deadline=None)
@given(
    decision=_decisions(),
    seq=st.integers(1, 2**64 - 1),
    ctx=st.builds(TapContext, _texts, _texts, _texts, st.sampled_from(list(Direction))),
)
def test_the_fast_record_encoder_gives_the_record_bytes(
    decision: Decision, seq: int, ctx: TapContext
) -> None:
    tid = decision.terminal_id
    cred = credential_hash(decision.credential) if decision.credential is not None else None
    record = JournalRecord(
        terminal_id=tid,
        seq=seq,
        time_ms=decision.time_ms,
        operator=ctx.operator,
        line=ctx.line,
        place=ctx.place,
        direction=ctx.direction,
        decision=decision.label,
        card_id=decision.card_id,
        credential_sha256=cred,
        challenge=decision.challenge,
        counter=decision.counter,
        card_signature=decision.card_signature,
        revocation_generation=decision.revocation_generation,
        flags=tuple(decision.flags),
        detail=decision.detail[:1000],
    )
    (_, _, _, _, body, _), _ = Chain({tid: (seq - 1, GENESIS_HASH)}).link(tid, decision, ctx)
    assert encode_tap(tid, seq, decision, ctx, cred) == body == encode_record(record)


def test_a_move_the_disk_refuses_leaves_the_rows_where_they_are(
    tmp_path: Path, tap: Tapper
) -> None:
    # A close whose move fails loses nothing: the rows stay in the recent tables, where
    # readers find them, ``move_error`` says why, and the next open moves them.
    path = tmp_path / "station.sqlite"
    s = StationJournal.open(path, STATION_TERMINALS)
    for i in range(6):
        t = STATION_TERMINALS[i % 3]
        s.stage(t, tap(t, i + 1, BASE_MS + i * 1000), CTX)
    s.commit()
    batches = {t: export_batch(path, DAY, _key(t), terminal_id=t) for t in STATION_TERMINALS}
    _refuse_writes(s, f"records_{T2}")
    s.close()
    assert s.move_error is not None and "rows left in the recent tables" in s.move_error
    with sqlite3.connect(path) as db:
        assert db.execute(f"SELECT COUNT(*) FROM {RECENT_RECORDS}").fetchone()[0] == 6
    for t in STATION_TERMINALS:
        assert export_batch(path, DAY, _key(t), terminal_id=t) == batches[t]
    with StationJournal.open(path, STATION_TERMINALS) as s:
        assert [s.head(t)[0] for t in STATION_TERMINALS] == [2, 2, 2]
    with sqlite3.connect(path) as db:
        assert db.execute(f"SELECT COUNT(*) FROM {RECENT_RECORDS}").fetchone()[0] == 0
        assert db.execute(f"SELECT COUNT(*) FROM records_{T2}").fetchone()[0] == 2
    for t in STATION_TERMINALS:
        assert export_batch(path, DAY, _key(t), terminal_id=t) == batches[t]


def test_a_store_made_each_day_forgets_old_rides_with_few_writes(tmp_path: Path) -> None:
    """A gate restarted every day with far fewer than 1,000 rides: its first write of
    each run prunes, so the lockouts a reopen replays stay a day's, not every day's."""
    path = tmp_path / "station.sqlite"
    rule = PassbackRule(window_s=60, max_skew_s=0)
    day_ms = 86_400_000
    for day in range(10):
        with StationJournal.open(path, STATION_TERMINALS) as s:
            store = PassbackStore.in_station(
                s, rule, CTX.place, monotonic=lambda: 0, boot=f"boot-{day}"
            )
            for i in range(100):
                store.record(day * 1000 + i, BASE_MS + day * day_ms + i * 1000)
            s.commit()
    with StationJournal.open(path, STATION_TERMINALS) as s:
        live = sum(len(rows) for rows in s._passback.values())
    assert live <= 100 + 1  # the last day's rides (and the first of it, pruned after)
