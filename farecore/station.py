"""A station controller's journal: the gates of one controller, made durable together.

A terminal's own journal (``farecore.journal.Journal``) pays one synced commit per tap,
because a single gate has one tap in flight. A station controller that drives several
gates can do better: each gate's ride goes into one open transaction as its decision is
made, with the place's passback state in the same file, and one commit makes the whole
group durable. Only then do the gates of the group open (``StationController.flush``).
A failed commit opens none of them and leaves nothing half-written: the group is rolled
back and the chains continue from the last durable record.

Every terminal keeps its own gap-free sequence and hash chain inside the file, so a
terminal's daily batch (``farecore.batch.export_batch`` with ``terminal_id``) is the same
bytes whether its rides were journaled alone or with its neighbours.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from farecore.decision import Decision
from farecore.errors import JournalError
from farecore.journal import GENESIS_HASH, STATION_FORMAT, TapContext, draft_records
from farecore.passback import PASSBACK_TABLE
from farecore.records import JournalRecord
from farecore.walfile import reserve_wal

__all__ = ["STATION_FORMAT", "StationController", "StationJournal", "StationTerminal"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS terminals (terminal_id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS credentials (sha256 BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    terminal_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    card_id INTEGER,
    body BLOB NOT NULL,
    hash BLOB NOT NULL,
    UNIQUE (terminal_id, seq)
);
"""
# The passback state of the controller's places lives in the same file, so a ride and
# the lockout it causes become durable in the same commit.
_SCHEMA += PASSBACK_TABLE + ";\n"


class StationJournal:
    """One file, several terminals' chains, one synced commit per group of taps.

    Thread-safe: every statement runs under one lock. Records staged since the last
    commit are visible to this connection's reads (the passback check sees a ride the
    moment it is staged) and durable only once ``commit`` returns.
    """

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self._db = db
        self._lock = threading.RLock()
        self._closed = False
        self._heads: dict[int, tuple[int, bytes]] = {}
        self._durable: dict[int, tuple[int, bytes]] = {}
        self._known: dict[bytes, None] = {}
        self._staged_known: list[bytes] = []
        self._staged = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str], terminal_ids: Iterable[int]) -> StationJournal:
        """Open or create the station file; a reopen continues every terminal's chain."""
        path = Path(path)
        db = _connect(path)
        journal = cls(path, db)
        try:
            with db:
                db.executescript(_SCHEMA)
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if not meta:
                    db.execute("INSERT INTO meta VALUES ('format', ?)", (STATION_FORMAT,))
                elif meta.get("format") != STATION_FORMAT:
                    raise JournalError(f"{path} is not a station journal ({meta.get('format')})")
                db.executemany(
                    "INSERT OR IGNORE INTO terminals VALUES (?)", [(t,) for t in terminal_ids]
                )
            reserve_wal(db, path)
            for (tid,) in db.execute("SELECT terminal_id FROM terminals").fetchall():
                row = db.execute(
                    "SELECT seq, hash FROM records WHERE terminal_id = ? ORDER BY seq DESC LIMIT 1",
                    (tid,),
                ).fetchone()
                journal._heads[tid] = (row[0], bytes(row[1])) if row else (0, GENESIS_HASH)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise JournalError(f"{path}: cannot read the station journal: {exc}") from None
        except BaseException:
            db.close()
            raise
        journal._durable = dict(journal._heads)
        return journal

    @property
    def terminal_ids(self) -> list[int]:
        return sorted(self._heads)

    @property
    def staged(self) -> int:
        """Taps written since the last commit (not durable yet)."""
        return self._staged

    def head(self, terminal_id: int) -> tuple[int, bytes]:
        """(last seq, its hash) of a terminal, counting staged records."""
        return self._heads[terminal_id]

    def terminal(self, terminal_id: int) -> StationTerminal:
        """The journal as one gate sees it."""
        if terminal_id not in self._heads:
            raise JournalError(f"terminal {terminal_id} is not in the station journal {self.path}")
        return StationTerminal(self, terminal_id)

    def stage(self, terminal_id: int, decision: Decision, ctx: TapContext) -> JournalRecord:
        """Write one tap into the open group; durable only after ``commit``."""
        if decision.terminal_id != terminal_id:
            raise JournalError(
                f"decision of terminal {decision.terminal_id} in the chain of {terminal_id}"
            )
        with self._lock:
            self._check_open()
            try:
                seq, head = self._heads[terminal_id]
            except KeyError:
                raise JournalError(f"terminal {terminal_id} is not in {self.path}") from None
            out, rows, creds, seq, head = draft_records(
                terminal_id, seq, head, [(decision, ctx)], self._known
            )
            db = self._db
            try:
                if not db.in_transaction:
                    db.execute("BEGIN")
                if creds:
                    db.executemany("INSERT OR IGNORE INTO credentials VALUES (?, ?)", creds)
                db.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", (terminal_id, *rows[0]))
            except sqlite3.Error as exc:
                self._abandon()
                raise JournalError(f"{self.path}: cannot write the journal: {exc}") from None
            self._heads[terminal_id] = (seq, head)
            for c, _ in creds:
                self._known[c] = None
                self._staged_known.append(c)
            self._staged += 1
            return out[0]

    def execute(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """Run one statement inside the open group (the passback store's writes and
        reads); a write becomes durable with the group's commit."""
        with self._lock:
            self._check_open()
            db = self._db
            try:
                if not db.in_transaction and not sql.lstrip().upper().startswith("SELECT"):
                    db.execute("BEGIN")
                return db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                if sql.lstrip().upper().startswith("SELECT"):
                    raise
                self._abandon()
                raise JournalError(f"{self.path}: cannot write the station state: {exc}") from None

    def commit(self) -> None:
        """Make every staged record durable (one synced commit). Raises JournalError,
        after rolling the whole group back, when the commit fails."""
        with self._lock:
            self._check_open()
            if not self._db.in_transaction:
                self._staged = 0
                return
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._abandon()
                raise JournalError(f"{self.path}: cannot commit the journal: {exc}") from None
            self._durable = dict(self._heads)
            self._staged_known.clear()
            self._staged = 0

    def _abandon(self) -> None:
        # The group never became durable: forget it, chains go on from the last commit.
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self._heads = dict(self._durable)
        for c in self._staged_known:
            self._known.pop(c, None)
        self._staged_known.clear()
        self._staged = 0

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError("the station journal is closed")

    def close(self) -> None:
        """Close; a group still staged is rolled back (its gates never opened)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._db.in_transaction:
                self._abandon()
            self._db.close()

    def __enter__(self) -> StationJournal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class StationTerminal:
    """One gate's view of a station journal (the gate's ``RideLog``)."""

    __slots__ = ("station", "terminal_id")

    def __init__(self, station: StationJournal, terminal_id: int) -> None:
        self.station = station
        self.terminal_id = terminal_id

    def stage(self, decision: Decision, ctx: TapContext) -> JournalRecord:
        return self.station.stage(self.terminal_id, decision, ctx)

    def append(self, decision: Decision, ctx: TapContext) -> JournalRecord:
        """Stage and commit at once: durable on return (a gate run on its own)."""
        record = self.stage(decision, ctx)
        self.station.commit()
        return record

    def commit(self) -> None:
        """Commit the station's open group (this gate's staged ride with it)."""
        self.station.commit()

    def close(self) -> None:
        """The station journal belongs to the controller, which closes it."""


class StationController:
    """Runs the taps of several gates with group commit over one station journal.

    ``tap`` decides a tap and stages its ride; the gate opens (its actuator is signalled)
    at the next ``flush``, once the ride is durable. A flush happens before a gate would
    take a second tap while its first is not durable yet (a gate serves one rider at a
    time), when ``max_group`` taps are waiting, or when the caller asks.
    """

    def __init__(self, journal: StationJournal, max_group: int = 32) -> None:
        if not 1 <= max_group <= 10_000:
            raise ValueError("max_group must be between 1 and 10000")
        self.journal = journal
        self.max_group = max_group
        self._waiting: dict[Any, Decision] = {}
        self.groups = 0
        self.grouped_taps = 0

    def must_flush_before(self, gate: Any) -> bool:
        """True when ``tap(gate, …)`` would first have to flush the waiting group."""
        return gate in self._waiting or len(self._waiting) >= self.max_group

    def tap(self, gate: Any, channel: Any) -> Decision:
        """Decide a tap at ``gate`` (a ``farecore.gate.Gate`` on this station's journal)
        and stage its ride; the gate is signalled at the flush."""
        if self.must_flush_before(gate):
            self.flush()
        decision: Decision = gate.stage(channel)
        self._waiting[gate] = decision
        return decision

    def flush(self) -> int:
        """Commit the waiting group, then open (signal) its gates; return its size.

        Raises JournalError when the commit fails: none of the group's gates opens.
        """
        if not self._waiting:
            return 0
        waiting, self._waiting = self._waiting, {}
        self.journal.commit()
        for gate, decision in waiting.items():
            gate.complete(decision)
        self.groups += 1
        self.grouped_taps += len(waiting)
        return len(waiting)


def _connect(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA page_size=1024")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open the station journal: {exc}") from None
    return db
