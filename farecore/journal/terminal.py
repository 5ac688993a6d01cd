"""The durable ride journal of one terminal: every tap, hash-chained, in SQLite (WAL).

``Journal.append`` (and ``stage``, the gate's name for it) returns only after its record
is committed with ``synchronous=FULL``, so a gate that signals "open" after it returns
never loses the ride, even to SIGKILL or power loss. Records carry a gap-free sequence
number per terminal and the hash of the previous record, so a deleted, altered or
reordered record breaks the chain.

The record, its byte encoding and the chain hash live in ``farecore.journal.records``,
the chaining in ``farecore.journal.chain``, the reader in ``farecore.journal.reader``
(all re-exported here). This module must never read a clock: record times come from the
decision.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from farecore.closing import Closing
from farecore.decide.decision import Decision
from farecore.errors import JournalError
from farecore.journal.chain import Chain
from farecore.journal.committer import Committer, Ticket
from farecore.journal.layout import TERMINAL_FORMAT, checked_head, meta_terminal_id
from farecore.journal.reader import JournalReader
from farecore.journal.records import (
    GENESIS_HASH,
    Direction,
    JournalRecord,
    RecordRow,
    TapContext,
    chain_hash,
    credential_hash,
    decode_record,
    decode_record_row,
    encode_record,
    record_row,
)
from farecore.journal.walfile import make_durable, reserve_wal

__all__ = [
    "GENESIS_HASH",
    "Direction",
    "Journal",
    "JournalReader",
    "JournalRecord",
    "RecordRow",
    "TapContext",
    "chain_hash",
    "credential_hash",
    "decode_record",
    "decode_record_row",
    "encode_record",
    "record_row",
]

# A terminal journal's tables (``wal_reserve``: farecore.journal.walfile).
_TABLES = frozenset({"meta", "credentials", "records", "wal_reserve"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS credentials (sha256 BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    card_id INTEGER,
    body BLOB NOT NULL,
    hash BLOB NOT NULL
);
"""
# Finds a day's first record without reading the days before (farecore.journal.reader).
_TIME_INDEX = "CREATE INDEX IF NOT EXISTS records_time ON records(time_ms)"
_INSERT_RECORD = "INSERT INTO records VALUES (?, ?, ?, ?, ?)"


class _Pending:
    """A tap handed to the committer, and the record it became."""

    __slots__ = ("ctx", "decision", "record")

    def __init__(self, decision: Decision, ctx: TapContext) -> None:
        self.decision = decision
        self.ctx = ctx
        self.record: JournalRecord | None = None


class Journal(Closing):
    """One terminal's journal file. Thread-safe; see ``open`` for group commit.

    As the gate's ``RideLog``: ``stage`` makes the ride durable before it returns (a
    terminal's journal keeps no open group), so ``commit`` has nothing left to do.
    """

    def __init__(self, path: Path, terminal_id: int, group_commit_ms: float | None) -> None:
        self.path = path
        self.terminal_id = terminal_id
        self.group_commit_ms = group_commit_ms
        self._lock = threading.Lock()  # one writer at a time on the connection and chain
        self._db = _connect(path)
        self._closed = False
        try:
            self._init_meta()
            reserve_wal(self._db, path)
            row = self._db.execute(
                "SELECT seq, hash, time_ms FROM records ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            self._chain = Chain({terminal_id: checked_head(path, row)})
            # The gate's clock must not fall behind its own records (farecore.decide.clockguard):
            # the latest of the recent ones, so that a record written with the clock
            # already a little behind does not lower the mark.
            recent = self._db.execute(
                "SELECT MAX(time_ms) FROM (SELECT time_ms FROM records ORDER BY seq DESC "
                "LIMIT 10000) WHERE typeof(time_ms) = 'integer'"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise JournalError(f"{path}: cannot read the journal: {exc}") from None
        except JournalError:
            self._db.close()
            raise
        self.last_time_ms: int = recent[0] if recent[0] is not None else 0
        self._committer: Committer[_Pending] | None = None
        if group_commit_ms is not None:
            self._committer = Committer(
                "journal-committer", self._write_pending, gather_s=group_commit_ms / 1000
            )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        terminal_id: int,
        *,
        group_commit_ms: float | None = None,
    ) -> Journal:
        """Open or create the journal of ``terminal_id``; a reopen continues the chain.

        With ``group_commit_ms``, a committer thread collects appends for at most that
        long and commits them in one transaction; each ``append`` still returns only once
        its own record is durable.
        """
        if group_commit_ms is not None and not 0 < group_commit_ms <= 1000:
            raise ValueError("group_commit_ms must be in (0, 1000]")
        return cls(Path(path), terminal_id, group_commit_ms)

    def _init_meta(self) -> None:
        db = self._db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        meta = (
            dict(db.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
        )
        if not meta:  # a new file, or one whose first open stopped before its meta rows
            other = sorted(tables - _TABLES)
            if other:  # another kind of file is refused before anything is written to it
                raise JournalError(f"{self.path} is not a terminal journal (table {other[0]!r})")
            if "records" in tables and db.execute("SELECT 1 FROM records LIMIT 1").fetchone():
                raise JournalError(f"{self.path}: damaged journal: records, but no terminal id")
            with db:
                db.executescript(_SCHEMA)
                db.execute(_TIME_INDEX)
                db.execute(
                    "INSERT INTO meta VALUES ('terminal_id', ?), ('format', ?)",
                    (str(self.terminal_id), TERMINAL_FORMAT),
                )
            return
        if meta.get("format") != TERMINAL_FORMAT:
            raise JournalError(f"{self.path} is not a terminal journal ({meta.get('format')!r})")
        missing = sorted({"records", "credentials"} - tables)
        if missing:  # made afresh, the table would restart the chain at seq 1
            raise JournalError(f"{self.path}: damaged journal: no {missing[0]} table")
        held = meta_terminal_id(self.path, meta)
        if held != self.terminal_id:
            raise JournalError(
                f"{self.path} is the journal of terminal {held}, not {self.terminal_id}"
            )
        with db:  # a file made before the time index gains it (once; a no-op after)
            db.execute(_TIME_INDEX)

    @property
    def last_seq(self) -> int:
        return self._chain.head(self.terminal_id)[0]

    @property
    def head_hash(self) -> bytes:
        return self._chain.head(self.terminal_id)[1]

    def append(self, decision: Decision, ctx: TapContext) -> JournalRecord:
        """Journal one tap; return once it is durable. Raises JournalError otherwise."""
        if self._closed:
            raise JournalError("the journal is closed")
        if decision.terminal_id != self.terminal_id:
            raise JournalError(
                f"decision of terminal {decision.terminal_id} in the journal of {self.terminal_id}"
            )
        if self._committer is None:
            with self._lock:
                return self._write([(decision, ctx)])[0]
        pending = _Pending(decision, ctx)
        try:
            self._committer.submit(pending, Ticket()).wait()
        except JournalError as exc:
            raise JournalError(f"journal commit failed: {exc}") from exc.__cause__
        assert pending.record is not None
        return pending.record

    def stage(self, decision: Decision, ctx: TapContext) -> None:
        """``append``: the ride is durable on return."""
        self.append(decision, ctx)

    def commit(self) -> None:
        """Nothing to do: every ride staged is durable already."""

    def _write_pending(self, batch: list[_Pending]) -> None:
        with self._lock:
            records = self._write([(p.decision, p.ctx) for p in batch])
        for p, record in zip(batch, records, strict=True):
            p.record = record

    def _write(self, taps: list[tuple[Decision, TapContext]]) -> list[JournalRecord]:
        """Chain and write ``taps`` in one transaction whose commit is the sync that makes
        it durable; return their records. On failure the chain is as before."""
        tid = self.terminal_id
        before = self._chain.head(tid)
        rows: list[tuple[int, int, int | None, bytes, bytes]] = []
        creds: list[tuple[bytes, bytes]] = []
        try:
            records = []
            prev = before[1]
            for decision, ctx in taps:
                (_, seq, time_ms, card_id, body, own), new = self._chain.link(tid, decision, ctx)
                if new is not None:  # counted as stored from here: the rewind must know it
                    creds.append(new)
                records.append(decode_record(body, prev))  # refuses a record it cannot read
                prev = own
                rows.append((seq, time_ms, card_id, body, own))
            self._insert(rows, creds)
        except BaseException:
            self._chain.rewind(tid, before, [credential for _, credential in creds])
            raise
        return records

    def _insert(
        self,
        rows: list[tuple[int, int, int | None, bytes, bytes]],
        creds: list[tuple[bytes, bytes]],
    ) -> None:
        db = self._db
        try:
            # A lone record of a known card is one autocommit statement: no separate BEGIN.
            if len(rows) == 1 and not creds:
                db.execute(_INSERT_RECORD, rows[0])
                return
            db.execute("BEGIN")
            try:
                if creds:
                    db.executemany("INSERT OR IGNORE INTO credentials VALUES (?, ?)", creds)
                db.executemany(_INSERT_RECORD, rows)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot write the journal: {exc}") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._committer is not None:
            self._committer.close()
        with self._lock:
            self._db.close()


def _connect(path: Path) -> sqlite3.Connection:
    try:
        # Autocommit: ``_insert`` opens and commits its own transactions.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Small pages and no secondary index: a commit writes fewer WAL bytes before its
        # fsync, which is most of what an append costs. The nightly export scans instead.
        make_durable(db)
        db.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open the journal: {exc}") from None
    return db
