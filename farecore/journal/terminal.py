"""The durable ride journal of one terminal: every tap, hash-chained, in SQLite (WAL).

``Journal.append`` returns only after its record is committed with ``synchronous=FULL``,
so a gate that signals "open" after it returns never loses the ride, even to SIGKILL or
power loss. Records carry a gap-free sequence number per terminal and the hash of the
previous record, so a deleted, altered or reordered record breaks the chain.

The record itself, its byte encoding and the chain hash live in ``farecore.journal.records``
(re-exported here). This module must never read a clock: record times come from the
decision.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from farecore.decide.decision import Decision
from farecore.errors import JournalError, MalformedFile
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
    "RECENT_CREDENTIALS",
    "RECENT_RECORDS",
    "STATION_FORMAT",
    "STATION_FORMATS",
    "STATION_FORMAT_1",
    "Direction",
    "Journal",
    "JournalReader",
    "JournalRecord",
    "RecordRow",
    "TapContext",
    "chain_hash",
    "checked_head",
    "credential_hash",
    "decode_record",
    "decode_record_row",
    "draft_records",
    "encode_record",
    "meta_terminal_id",
    "record_row",
    "station_records_table",
]

_MAX_SEQ = (1 << 63) - 1  # the largest seq an SQLite integer holds
_FORMAT = "farecore-journal/1"
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


@dataclass(slots=True)
class _Pending:
    decision: Decision
    ctx: TapContext
    done: threading.Event
    record: JournalRecord | None = None
    error: BaseException | None = None


class Journal:
    """One terminal's journal file. Thread-safe; see ``open`` for group commit."""

    def __init__(self, path: Path, terminal_id: int, group_commit_ms: float | None) -> None:
        self.path = path
        self.terminal_id = terminal_id
        self.group_commit_ms = group_commit_ms
        self._lock = threading.Lock()
        self._db = _connect(path)
        self._closed = False
        # Credentials already in the file: a repeat rider costs no extra statement.
        self._known: dict[bytes, None] = {}
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._committer: threading.Thread | None = None
        try:
            self._init_meta()
            reserve_wal(self._db, path)
            row = self._db.execute(
                "SELECT seq, hash, time_ms FROM records ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            self._seq, self._head = checked_head(path, row)
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
        if group_commit_ms is not None:
            self._committer = threading.Thread(
                target=self._commit_loop, name="journal-committer", daemon=True
            )
            self._committer.start()

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
                db.execute(
                    "INSERT INTO meta VALUES ('terminal_id', ?), ('format', ?)",
                    (str(self.terminal_id), _FORMAT),
                )
            return
        if meta.get("format") != _FORMAT:
            raise JournalError(f"{self.path} is not a terminal journal ({meta.get('format')!r})")
        missing = sorted({"records", "credentials"} - tables)
        if missing:  # made afresh, the table would restart the chain at seq 1
            raise JournalError(f"{self.path}: damaged journal: no {missing[0]} table")
        held = meta_terminal_id(self.path, meta)
        if held != self.terminal_id:
            raise JournalError(
                f"{self.path} is the journal of terminal {held}, not {self.terminal_id}"
            )

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def head_hash(self) -> bytes:
        return self._head

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
        pending = _Pending(decision, ctx, threading.Event())
        self._queue.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise JournalError(f"journal commit failed: {pending.error}") from pending.error
        assert pending.record is not None
        return pending.record

    def _commit_loop(self) -> None:
        wait_s = (self.group_commit_ms or 0) / 1000
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            # Bounded wait: gather whatever arrives within the window, then commit.
            try:
                while len(batch) < 1000:
                    item = self._queue.get(timeout=wait_s)
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
            except queue.Empty:
                pass
            try:
                with self._lock:
                    records = self._write([(p.decision, p.ctx) for p in batch])
                for p, rec in zip(batch, records, strict=True):
                    p.record = rec
            except BaseException as exc:
                for p in batch:
                    p.error = exc
            for p in batch:
                p.done.set()

    def _write(self, taps: list[tuple[Decision, TapContext]]) -> list[JournalRecord]:
        out, rows, creds, seq, head = draft_records(
            self.terminal_id, self._seq, self._head, taps, self._known
        )
        db = self._db
        try:
            # One transaction whose commit is the sync that makes it durable. A lone
            # record of a known card is one autocommit statement: no separate BEGIN.
            if len(rows) == 1 and not creds:
                db.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?)", rows[0])
            else:
                db.execute("BEGIN")
                try:
                    if creds:
                        db.executemany("INSERT OR IGNORE INTO credentials VALUES (?, ?)", creds)
                    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?)", rows)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot write the journal: {exc}") from None
        self._seq, self._head = seq, head
        if len(self._known) > 100_000:
            self._known.clear()
        self._known.update(dict.fromkeys(c for c, _ in creds))
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._committer is not None:
            self._queue.put(None)
            self._committer.join()
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_T = TypeVar("_T")


def _as_record(body: bytes, prev: bytes) -> tuple[JournalRecord, int, int, int, bytes]:
    r = decode_record(body, prev)
    return r, r.terminal_id, r.seq, r.time_ms, r.hash


def _as_row(body: bytes, prev: bytes) -> tuple[RecordRow, int, int, int, bytes]:
    row = decode_record_row(body, prev)
    if row is None:  # the precise error, or the rare record the fast path leaves alone
        row = record_row(decode_record(body, prev))
    return row, row[0], row[1], row[2], row[-1]


def draft_records(
    terminal_id: int,
    seq: int,
    head: bytes,
    taps: list[tuple[Decision, TapContext]],
    known: dict[bytes, None],
) -> tuple[
    list[JournalRecord],
    list[tuple[int, int, int | None, bytes, bytes]],
    list[tuple[bytes, bytes]],
    int,
    bytes,
]:
    """Chain ``taps`` onto a terminal's (seq, head): the records, their SQL rows, the
    credentials not in ``known`` yet, and the new (seq, head). Writes nothing."""
    out: list[JournalRecord] = []
    rows = []
    creds = []
    for decision, ctx in taps:
        seq += 1
        cred_hash = None
        if decision.credential is not None:
            cred_hash = credential_hash(decision.credential)
            if cred_hash not in known:
                creds.append((cred_hash, decision.credential))
        draft = JournalRecord(
            terminal_id=terminal_id,
            seq=seq,
            time_ms=decision.time_ms,
            operator=ctx.operator,
            line=ctx.line,
            place=ctx.place,
            direction=ctx.direction,
            decision=decision.label,
            card_id=decision.card_id,
            credential_sha256=cred_hash,
            challenge=decision.challenge,
            counter=decision.counter,
            card_signature=decision.card_signature,
            revocation_generation=decision.revocation_generation,
            flags=tuple(decision.flags),
            detail=decision.detail[:1000],
            prev_hash=head,
        )
        body = encode_record(draft)
        own = chain_hash(head, body)
        object.__setattr__(draft, "hash", own)
        rows.append((seq, decision.time_ms, _sql_int(decision.card_id), body, own))
        out.append(draft)
        head = own
    return out, rows, creds, seq, head


def _sql_int(value: int | None) -> int | None:
    # SQLite integers are signed 64-bit; card ids use the full uint64 range.
    return value - (1 << 64) if value is not None and value >= 1 << 63 else value


def checked_head(path: Path, row: tuple[Any, ...] | None) -> tuple[int, bytes]:
    """(seq, hash) of a terminal's newest stored record, ``row`` as read (seq, hash, then
    any integer columns), or the start of a chain for None. A damaged one is a
    JournalError: the next record would chain onto it."""
    if row is None:
        return 0, GENESIS_HASH
    seq, own = row[0], row[1]
    if (
        not (isinstance(seq, int) and 0 < seq <= _MAX_SEQ)
        or not (isinstance(own, bytes) and len(own) == len(GENESIS_HASH))
        or not all(isinstance(v, int) for v in row[2:])
    ):
        raise JournalError(f"{path}: damaged journal: its newest record (seq {seq!r}) is garbled")
    return seq, own


def meta_terminal_id(path: Path, meta: dict[Any, Any]) -> int:
    """The terminal id a journal's meta table names, or JournalError."""
    value = meta.get("terminal_id")
    if value is None:
        raise JournalError(f"{path}: not a farecore journal (no terminal id)")
    try:
        return int(value)  # kept as text
    except (TypeError, ValueError, OverflowError):
        raise JournalError(f"{path}: damaged journal: terminal id {value!r}") from None


def _read_only(path: Path) -> str:
    """The URI that opens ``path`` read-only. Quoted: a '?' or '#' in the name would
    otherwise end the path, and the file opened would be another one, writable."""
    return f"file:{urllib.parse.quote(str(path))}?mode=ro"


def _connect(path: Path) -> sqlite3.Connection:
    try:
        # Autocommit: ``_write`` opens and commits its own transactions.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Small pages and no secondary index: a commit writes fewer WAL bytes before its
        # fsync, which is most of what an append costs. The nightly export scans instead.
        make_durable(db)
        db.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open the journal: {exc}") from None
    return db


STATION_FORMAT = "farecore-station-journal/2"
STATION_FORMAT_1 = "farecore-station-journal/1"
# Formats a reader accepts as a station file. Version 1 kept every terminal's records in
# one table and the lockouts in a table keyed by card; version 2 gives each terminal its
# own records table (``station_records_table``) and keeps the lockouts in an append-only
# log. A writer upgrades a version-1 file when it opens it.
STATION_FORMATS = frozenset({STATION_FORMAT_1, STATION_FORMAT})


# A version-2 station file's newest rows, not yet moved to their lasting tables.
RECENT_RECORDS = "recent_records"
RECENT_CREDENTIALS = "recent_credentials"


def station_records_table(terminal_id: int) -> str:
    """The quoted name of a terminal's records table in a version-2 station file."""
    return f'"records_{int(terminal_id)}"'


class JournalReader:
    """Read-only access to a journal file: records by seq, credentials, chain check.

    A station journal (``farecore.journal.station``) holds several terminals; name the one to
    read with ``terminal_id``. For a terminal's own journal it is optional and checked.
    """

    def __init__(self, path: str | os.PathLike[str], terminal_id: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise JournalError(f"{self.path}: no such journal")
        try:
            self._db = sqlite3.connect(_read_only(self.path), uri=True)
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot open the journal: {exc}") from None
        # Every query names the terminal in a station file; in a terminal's file the
        # condition is empty and the arguments too.
        self._table = "records"
        self._credential_tables: tuple[str, ...] = ("credentials",)
        self._where: str = ""
        self._args: tuple[int, ...] = ()
        try:
            self._choose(terminal_id)
        except sqlite3.Error as exc:
            self._db.close()
            raise JournalError(f"{self.path}: not a farecore journal: {exc}") from None
        except JournalError:
            self._db.close()
            raise

    def _choose(self, terminal_id: int | None) -> None:
        """Read the file's meta table; set the terminal and the tables to read."""
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        station = meta.get("format") in STATION_FORMATS
        held = (
            [r[0] for r in self._db.execute("SELECT terminal_id FROM terminals")] if station else []
        )
        if station:
            if terminal_id is None or terminal_id not in held:
                which = "name one" if terminal_id is None else f"not {terminal_id}"
                raise JournalError(
                    f"{self.path} is a station journal of terminals "
                    f"{', '.join(map(str, sorted(held)))}; {which}"
                )
            self.terminal_id = terminal_id
            if meta["format"] == STATION_FORMAT_1:
                self._where, self._args = "terminal_id = ? AND ", (terminal_id,)
            else:  # the terminal's table, and its rows among the recent ones
                self._table = (
                    f"(SELECT seq, time_ms, body, hash FROM {station_records_table(terminal_id)} "
                    f"UNION ALL SELECT seq, time_ms, body, hash FROM {RECENT_RECORDS} "
                    f"WHERE terminal_id = {int(terminal_id)})"
                )
                self._credential_tables = ("credentials", RECENT_CREDENTIALS)
        else:
            self.terminal_id = meta_terminal_id(self.path, meta)
            if terminal_id is not None and terminal_id != self.terminal_id:
                raise JournalError(
                    f"{self.path} is the journal of terminal {self.terminal_id}, not {terminal_id}"
                )
        # A table the reader needs and cannot find is damage, not an empty journal.
        need = set(self._credential_tables)
        if self._table == "records":
            need.add("records")
        else:
            need |= {station_records_table(self.terminal_id).strip('"'), RECENT_RECORDS}
        query = "SELECT name FROM sqlite_master WHERE type='table'"
        missing = sorted(need - {r[0] for r in self._db.execute(query)})
        if missing:
            raise JournalError(f"{self.path}: damaged journal: no {missing[0]} table")

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """An SQLite error here means a damaged file: say so as the journal's error."""
        try:
            yield
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot read the journal: {exc}") from None

    @staticmethod
    def terminals_in(path: str | os.PathLike[str]) -> list[int]:
        """The terminal ids a journal file holds (one, or a station's several)."""
        try:
            db = sqlite3.connect(_read_only(Path(path)), uri=True)
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open the journal: {exc}") from None
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("format") in STATION_FORMATS:
                return [r[0] for r in db.execute("SELECT terminal_id FROM terminals")]
            return [meta_terminal_id(Path(path), meta)]
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: not a farecore journal: {exc}") from None
        finally:
            db.close()

    def close(self) -> None:
        self._db.close()

    def first_seq_from(self, time_ms: int) -> int:
        """The lowest seq timed at or after ``time_ms``; one past the last if none is."""
        t, w, a = self._table, self._where, self._args
        with self._reading():
            value = self._db.execute(
                f"SELECT MIN(seq) FROM {t} WHERE {w}time_ms >= ?", (*a, time_ms)
            ).fetchone()[0]
            if value is None:
                last = self._db.execute(f"SELECT MAX(seq) FROM {t} WHERE {w}seq > 0", a)
                value = (last.fetchone()[0] or 0) + 1
        if not isinstance(value, int):
            raise JournalError(f"{self.path}: damaged journal: seq {value!r}")
        return value

    def day_range(self, start_ms: int, end_ms: int) -> tuple[int, int]:
        """``(first, last)``: the seqs of the records from ``start_ms`` to before
        ``end_ms`` by the cut rule (``last`` is ``first - 1`` when there are none).

        The cuts are found by the time column; the record on the far side of each is
        read back from its body too, so a damaged column cannot move a cut and leave
        records out. (``rows`` checks the column of every record it returns.)
        """
        first = self.first_seq_from(start_ms)
        last = max(self.first_seq_from(end_ms) - 1, first - 1)
        for seq in (first - 1, last + 1):
            self._check_time(seq)
        return first, last

    def _check_time(self, seq: int) -> None:
        with self._reading():
            row = self._db.execute(
                f"SELECT time_ms, body FROM {self._table} WHERE {self._where}seq = ?",
                (*self._args, seq),
            ).fetchone()
        if row is None:
            return
        time_ms, body = row
        if not isinstance(body, bytes):
            raise JournalError(f"{self.path}: record {seq} is garbled (its body is no blob)")
        try:
            stored = decode_record(body).time_ms
        except MalformedFile as exc:
            raise JournalError(f"{self.path}: record {seq}: {exc}") from None
        if stored != time_ms:
            raise JournalError(
                f"{self.path}: record {seq}: time column {time_ms!r} is not its time"
            )

    def hash_of(self, seq: int) -> bytes:
        if seq == 0:
            return GENESIS_HASH
        with self._reading():
            row = self._db.execute(
                f"SELECT hash FROM {self._table} WHERE {self._where}seq = ?", (*self._args, seq)
            ).fetchone()
        if row is None:
            raise JournalError(f"{self.path}: record {seq} is missing")
        if not (isinstance(row[0], bytes) and len(row[0]) == len(GENESIS_HASH)):
            raise JournalError(f"{self.path}: record {seq} is garbled (its hash)")
        return row[0]

    def records(self, first: int = 1, last: int | None = None) -> Iterator[JournalRecord]:
        """Records ``first..last`` in seq order, each checked against the chain.

        Raises JournalError on a gap, a broken link or a record that does not parse.
        """
        for record, _ in self._checked(first, last, _as_record):
            yield record

    def rows(self, first: int = 1, last: int | None = None) -> Iterator[tuple[RecordRow, bytes]]:
        """``records`` as the settlement's row tuples, with each record's stored bytes:
        the same checks, without building record objects (the nightly export)."""
        return self._checked(first, last, _as_row)

    def _checked(
        self,
        first: int,
        last: int | None,
        decode: Callable[[bytes, bytes], tuple[_T, int, int, int, bytes]],
    ) -> Iterator[tuple[_T, bytes]]:
        prev = self.hash_of(first - 1)
        expected = first
        with self._reading():
            cur = self._db.execute(
                f"SELECT seq, time_ms, body, hash FROM {self._table} "
                f"WHERE {self._where}seq >= ? AND seq <= ? ORDER BY seq",
                (*self._args, first, last if last is not None else _MAX_SEQ),
            )
            for seq, time_ms, body, own in cur:
                if seq != expected:
                    raise JournalError(f"{self.path}: sequence gap: {expected} missing")
                if not (isinstance(body, bytes) and isinstance(own, bytes)):
                    raise JournalError(f"{self.path}: record {seq} is garbled (not blobs)")
                try:
                    item, terminal_id, own_seq, own_time, own_hash = decode(body, prev)
                except MalformedFile as exc:
                    raise JournalError(f"{self.path}: record {seq}: {exc}") from None
                if own_hash != own or own_seq != seq:
                    raise JournalError(f"{self.path}: record {seq} breaks the hash chain")
                if terminal_id != self.terminal_id:
                    raise JournalError(f"{self.path}: record {seq} names another terminal")
                if own_time != time_ms:  # the export cuts days by this column
                    raise JournalError(
                        f"{self.path}: record {seq}: time column {time_ms!r} is not its time"
                    )
                yield item, body
                prev = own_hash
                expected += 1
        if last is not None and expected != last + 1:
            raise JournalError(f"{self.path}: sequence gap: {expected} missing")

    def credential(self, sha256: bytes) -> bytes:
        return self.credentials([sha256])[sha256]

    def credentials(self, hashes: Iterable[bytes]) -> dict[bytes, bytes]:
        """The credentials with these SHA-256s, each checked against its hash."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[bytes, bytes] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for table in self._credential_tables:
                with self._reading():
                    rows = self._db.execute(
                        f"SELECT sha256, data FROM {table} WHERE sha256 IN ({marks})", chunk
                    ).fetchall()
                for sha, data in rows:
                    found[sha] = data  # a blob matched ``sha``; ``data`` is checked below
        for sha in wanted:
            data = found.get(sha)
            if data is None:
                raise JournalError(f"{self.path}: credential {sha.hex()[:16]}… is missing")
            if not isinstance(data, bytes) or credential_hash(data) != sha:
                raise JournalError(f"{self.path}: credential {sha.hex()[:16]}… is corrupt")
        return found

    def verify_chain(self) -> int:
        """Walk the whole chain; return the number of records or raise JournalError."""
        count = 0
        for _ in self.records(1):
            count += 1
        return count

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
