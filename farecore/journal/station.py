"""A station controller's journal: the gates of one controller, made durable together.

A terminal's own journal (``farecore.journal.terminal.Journal``) pays one synced commit per tap,
because a single gate has one tap in flight. A station controller that drives several
gates can do better. Each gate's ride is chained and staged in memory as its decision is
made, with the lockout it causes at its place; one transaction then writes the group and
one synced commit makes it durable. Only after that commit do the gates of the group
open (``StationController``). The commit runs on a committer thread, so the controller
decides the next group's taps while the disk syncs the last one.

A failed commit opens none of its gates, nor any gate staged after it: the station
journal refuses all further work until it is reopened, and a reopen continues every
chain from its last durable record.

Every terminal keeps its own gap-free sequence and hash chain inside the file, so a
terminal's daily batch (``farecore.journal.batch.export_batch`` with ``terminal_id``) is the same
bytes whether its rides were journaled alone or with its neighbours. Only the controller
writes the file; its in-memory copy of the passback state is therefore complete.

The file keeps that state as an append-only log, not as a table keyed by card: a
lockout is one row added at the end, a prune one row naming its place and limits, and a
reopen replays the log in order. Keyed rows would put each tap's lockout on a random page
of the file, and every page a commit touches is written, checksummed and synced again;
the log's rows of a group share one or two pages. Rows that no longer count (replaced,
pruned) are cut from the head of the log once they outnumber the live ones.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from farecore.decide.decision import Decision
from farecore.errors import JournalError
from farecore.journal.records import chain_hash, credential_hash, encode_tap
from farecore.journal.terminal import (
    RECENT_CREDENTIALS,
    RECENT_RECORDS,
    STATION_FORMAT,
    STATION_FORMATS,
    TapContext,
    checked_head,
    station_records_table,
)
from farecore.journal.walfile import make_durable, reserve_wal

__all__ = [
    "MOVE_AT",
    "STATION_FORMAT",
    "Commit",
    "StationJournal",
    "StationTerminal",
    "replay_passback",
]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS terminals (terminal_id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS credentials (sha256 BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS {RECENT_RECORDS} (
    terminal_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    card_id INTEGER,
    body BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS {RECENT_CREDENTIALS} (sha256 BLOB NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS passback_log (
    id INTEGER PRIMARY KEY,
    place TEXT NOT NULL,
    card_id INTEGER,
    wall_ms INTEGER NOT NULL,
    mono_ms INTEGER NOT NULL,
    boot TEXT NOT NULL
);
"""
# A row with a card is a lockout; a row without one prunes its place: wall_ms and
# mono_ms then hold the limits below which a ride of another boot, or of this boot, is
# forgotten (``StationJournal.passback_prune``).

# Where the rows live. A commit appends its records and new credentials to the two
# "recent" tables, which have no index: the group's rows fill the pages at their end,
# one after the other. Their lasting place is each terminal's records table (the layout
# of a terminal's own journal, seq as key) and the credentials table keyed by SHA-256.
# Written per tap, those would cost a page per terminal of the group and a random index
# page per new credential; moved in bulk, they fill whole pages. Moving is
# reorganisation, not durability: every row is durable once its group's commit is. So
# the controller moves rows when it has nothing else to do: after ``move_when_idle_s``
# without a group to commit (``MOVE_AT`` records per transaction, so a group that comes
# meanwhile waits for one short transaction at most), when it closes the file and when it
# opens one a crash left unmoved. A busy hour never waits for a move.
# (``move_at``, off by default, makes the commit that crosses that many recent records
# move them all, inside its own transaction.) Readers look in both places
# (``farecore.journal.terminal.JournalReader``).
MOVE_AT = 2048
MOVE_WHEN_IDLE_S = 1.0
# At open and close no rider waits: larger transactions, fewer syncs and checkpoints
# (their rows still fit the page cache; 200,000 records moved in 1.9 s here, against
# 2.9 s at 2,048 a transaction and 3.1 s at 65,536).
_MOVE_ALL_AT = 16_384
_RECORDS_TABLE = """CREATE TABLE IF NOT EXISTS {table} (
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    card_id INTEGER,
    body BLOB NOT NULL,
    hash BLOB NOT NULL
)"""

_UPGRADE_PASSBACK = """
INSERT INTO passback_log (place, card_id, wall_ms, mono_ms, boot)
    SELECT place, card_id, wall_ms, mono_ms, boot FROM passback ORDER BY place, card_id;
DROP TABLE passback;
"""

_Row = tuple[Any, ...]
_KNOWN_MAX = 400_000  # credentials remembered as already in the file (a city of 300,000 fits)
PassbackRow = tuple[int, int, str, int]  # wall_ms, mono_ms, boot, its row in the log
LogRow = tuple[int, str, int | None, int, int, str]  # id, place, card_id, wall, mono, boot
# The lockout log is cut when it holds more than _LOG_KEEP rows per live lockout plus
# _LOG_SLACK: a cut then removes at least about half of it.
_LOG_KEEP = 2
_LOG_SLACK = 4096


def _prune(rows: dict[int, PassbackRow], wall_before: int, boot: str, mono_before: int) -> None:
    """Drop a place's rides that can no longer refuse (the passback store's rule)."""
    for card, (wall, mono, b, _) in list(rows.items()):
        if wall < wall_before and (b != boot or mono < mono_before):
            del rows[card]


def replay_passback(log: Iterable[LogRow]) -> dict[str, dict[int, PassbackRow]]:
    """The passback state a log leaves: place -> card -> its last ride, in log order."""
    state: dict[str, dict[int, PassbackRow]] = {}
    for row_id, place, card, wall, mono, boot in log:
        rows = state.setdefault(place, {})
        if card is None:
            _prune(rows, wall, boot, mono)
        else:
            rows[card] = (wall, mono, boot, row_id)
    return state


class _Group:
    """What one commit writes: records, new credentials, passback writes, in order."""

    __slots__ = ("credentials", "passback", "records", "taps", "trim")

    def __init__(self) -> None:
        self.records: list[_Row] = []
        self.credentials: list[tuple[bytes, bytes]] = []
        self.passback: list[LogRow] = []  # log rows, in id order
        self.trim = 0  # log rows below this id are dead: delete them
        self.taps = 0


class Commit:
    """A group's commit, running or done; ``wait`` returns once it is durable."""

    __slots__ = ("_done", "_error", "taps")

    def __init__(self, taps: int) -> None:
        self.taps = taps
        self._done = threading.Event()
        self._error: BaseException | None = None

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> None:
        """Block until the group is durable; raise JournalError if its commit failed."""
        self._done.wait()
        if self._error is not None:
            raise JournalError(str(self._error)) from self._error


class StationJournal:
    """One file, several terminals' chains, one synced commit per group of taps.

    ``stage`` and the passback methods are for the controller's thread; ``begin_commit``
    hands the staged group to the committer thread; ``commit`` waits for it.
    """

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self._db = db
        self._closed = False
        self._failed: str | None = None
        self._heads: dict[int, tuple[int, bytes]] = {}
        self._known: dict[bytes, bytes] = {}  # credential -> its hash, already in the file
        # place -> card -> its last ride: a prune walks one place's rows, not the station's
        self._passback: dict[str, dict[int, PassbackRow]] = {}
        self._recent = 0  # records in the recent table (the committer's count)
        self._move_at: int | None = None
        self._idle_s: float | None = MOVE_WHEN_IDLE_S
        self._lock = threading.Lock()  # held by ``_transaction``
        self.move_error: str | None = None  # why a move failed (the rows stay where they are)
        self._log_first = 1  # the log's rows in the file (staged ones counted) are
        self._log_next = 1  # ids _log_first .. _log_next - 1
        self._group = _Group()
        self._last: Commit | None = None  # the last group handed to the committer
        self._queue: queue.SimpleQueue[tuple[_Group, Commit] | None] = queue.SimpleQueue()
        self._committer: threading.Thread | None = None
        # CPU time the committer thread spent writing and syncing groups (and moving
        # rows when idle): what group commit costs the controller's host besides
        # deciding the taps. (``commit`` writes on the caller's thread, and counts as the
        # caller's.)
        self.commit_cpu_s = 0.0

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        terminal_ids: Iterable[int],
        *,
        move_at: int | None = None,
        move_when_idle_s: float | None = MOVE_WHEN_IDLE_S,
    ) -> StationJournal:
        """Open or create the station file; a reopen continues every terminal's chain.

        Records a crash left in the recent table are moved to their terminals' tables
        first (if that fails, ``move_error`` says why and they stay readable where they
        are). ``move_when_idle_s``: after that long without a group to commit, the
        committer moves recent rows, ``MOVE_AT`` at a time (None: only at open and
        close). ``move_at``: also move every recent record in the commit that brings
        their number to this (that commit takes some milliseconds longer; None: never).
        """
        if move_at is not None and move_at < 1:
            raise ValueError("move_at must be at least 1")
        if move_when_idle_s is not None and move_when_idle_s <= 0:
            raise ValueError("move_when_idle_s must be positive")
        path = Path(path)
        try:
            db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, cached_statements=1024
            )
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open the station journal: {exc}") from None
        journal = cls(path, db)
        journal._move_at = move_at
        journal._idle_s = move_when_idle_s
        try:
            # Another kind of file is refused before anything is written to it.
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            meta = dict(db.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
            if tables and meta.get("format") not in STATION_FORMATS:
                what = meta.get("format", "not a farecore file")
                raise JournalError(f"{path} is not a station journal ({what})")
            if meta.get("format") == STATION_FORMAT:
                _check_tables(db, path, tables)
            make_durable(db)
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA cache_size=-16384")
            with db:  # one transaction: an upgrade is all or nothing
                db.execute("BEGIN IMMEDIATE")
                _execute_script(db, _SCHEMA)
                db.executemany(
                    "INSERT OR IGNORE INTO terminals VALUES (?)", [(t,) for t in terminal_ids]
                )
                held = [r[0] for r in db.execute("SELECT terminal_id FROM terminals")]
                for tid in held:
                    db.execute(_RECORDS_TABLE.format(table=station_records_table(tid)))
                if not meta:
                    db.execute("INSERT INTO meta VALUES ('format', ?)", (STATION_FORMAT,))
                elif meta["format"] != STATION_FORMAT:
                    _upgrade_from_1(db, held)
            _check_rows(db, path)
            reserve_wal(db, path)
            for tid in held:
                # A move takes every recent record, so a terminal's newest record is
                # among the recent ones if it has any there, else last in its table.
                row = db.execute(
                    f"SELECT MAX(seq), hash FROM {RECENT_RECORDS} WHERE terminal_id = ?", (tid,)
                ).fetchone()
                if row[0] is None:
                    row = db.execute(
                        f"SELECT seq, hash FROM {station_records_table(tid)} "
                        "ORDER BY seq DESC LIMIT 1"
                    ).fetchone()
                journal._heads[tid] = checked_head(path, row)
            journal._passback = replay_passback(db.execute(_SELECT_LOG))
            journal._recent = db.execute(f"SELECT COUNT(*) FROM {RECENT_RECORDS}").fetchone()[0]
            try:
                journal._move_all()  # what a crash left unmoved, before the first tap
            except sqlite3.Error as exc:  # the gates can still work: the rows stay readable
                journal.move_error = f"{path}: rows left in the recent tables: {exc}"
            first, last = db.execute("SELECT MIN(id), MAX(id) FROM passback_log").fetchone()
            if last is not None:
                journal._log_first, journal._log_next = first, last + 1
        except sqlite3.DatabaseError as exc:
            db.close()
            raise JournalError(f"{path}: cannot read the station journal: {exc}") from None
        except (ValueError, TypeError, OverflowError) as exc:  # a value the checks missed
            db.close()
            raise JournalError(f"{path}: damaged station journal: {exc}") from None
        except BaseException:
            db.close()
            raise
        return journal

    @property
    def staged(self) -> int:
        """Taps staged since the last ``begin_commit`` (not durable yet)."""
        return self._group.taps

    def head(self, terminal_id: int) -> tuple[int, bytes]:
        """(last seq, its hash) of a terminal, counting staged records."""
        return self._heads[terminal_id]

    def terminal(self, terminal_id: int) -> StationTerminal:
        """The journal as one gate sees it."""
        if terminal_id not in self._heads:
            raise JournalError(f"terminal {terminal_id} is not in the station journal {self.path}")
        return StationTerminal(self, terminal_id)

    def stage(self, terminal_id: int, decision: Decision, ctx: TapContext) -> int:
        """Chain one tap onto its terminal in the open group; return its seq. Durable
        only once the group's commit is."""
        self._check_usable()
        if decision.terminal_id != terminal_id:
            raise JournalError(
                f"decision of terminal {decision.terminal_id} in the chain of {terminal_id}"
            )
        try:
            seq, head = self._heads[terminal_id]
        except KeyError:
            raise JournalError(f"terminal {terminal_id} is not in {self.path}") from None
        seq += 1
        group = self._group
        credential = decision.credential
        cred_hash = None
        if credential is not None:
            cred_hash = self._known.get(credential)
            if cred_hash is None:
                cred_hash = credential_hash(credential)
                group.credentials.append((cred_hash, credential))
                if len(self._known) >= _KNOWN_MAX:
                    self._known.clear()  # only saves statements: INSERT OR IGNORE is safe
                self._known[credential] = cred_hash
        body = encode_tap(terminal_id, seq, decision, ctx, cred_hash)
        own = chain_hash(head, body)
        card_id = decision.card_id
        if card_id is not None and card_id >= 1 << 63:
            card_id -= 1 << 64  # SQLite integers are signed 64-bit
        group.records.append((terminal_id, seq, decision.time_ms, card_id, body, own))
        group.taps += 1
        self._heads[terminal_id] = (seq, own)
        return seq

    def passback_get(self, key: tuple[str, int]) -> PassbackRow | None:
        """The last ride of (place, card) at this station, staged ones included."""
        rows = self._passback.get(key[0])
        return None if rows is None else rows.get(key[1])

    def passback_put(self, row: tuple[str, int, int, int, str]) -> None:
        """Record a ride's lockout (place, card, wall, mono, boot) in the open group."""
        self._check_usable()
        place, card, wall, mono, boot = row
        rows = self._passback.get(place)
        if rows is None:
            rows = self._passback[place] = {}
        row_id = self._log_next
        self._log_next = row_id + 1
        rows[card] = (wall, mono, boot, row_id)
        self._group.passback.append((row_id, place, card, wall, mono, boot))

    def passback_prune(self, args: tuple[str, int, str, int]) -> None:
        """Forget a place's rides that can no longer refuse (same rule as the store's),
        and cut the log's dead head once it outweighs the live rows."""
        self._check_usable()
        place, wall_before, boot, mono_before = args
        rows = self._passback.get(place)
        if rows is not None:
            _prune(rows, wall_before, boot, mono_before)
        row_id = self._log_next
        self._log_next = row_id + 1
        self._group.passback.append((row_id, place, None, wall_before, mono_before, boot))
        live = sum(len(r) for r in self._passback.values())
        if self._log_next - self._log_first > _LOG_KEEP * live + _LOG_SLACK:
            # Every row below the oldest live lockout was replaced or pruned, and so was
            # every row a prune row below it had pruned: the replay needs none of them.
            first = min(
                (r[3] for rows in self._passback.values() for r in rows.values()),
                default=self._log_next,
            )
            self._group.trim = self._log_first = first

    def begin_commit(self) -> Commit:
        """Hand the open group to the committer thread and start a new one.

        Groups commit in the order they were begun. Staging may go on at once; the
        gates of the group may open only after ``Commit.wait`` returns.
        """
        self._check_usable()
        group, self._group = self._group, _Group()
        done = self._last = Commit(group.taps)
        if self._committer is None:
            self._committer = threading.Thread(
                target=self._commit_loop, name="station-committer", daemon=True
            )
            self._committer.start()
        self._queue.put((group, done))
        return done

    def commit(self) -> None:
        """Make everything staged durable; return once it is (raises JournalError).

        Written on the calling thread: nothing to hand over when the caller waits anyway.
        A commit still in flight on the committer thread is waited for first.
        """
        self._check_usable()
        group, self._group = self._group, _Group()
        if self._last is not None:
            self._last._done.wait()  # groups handed over before are written first
        self._check_usable()
        try:
            self._write(group)
        except Exception as exc:
            self._failed = f"{self.path}: cannot commit the station journal: {exc}"
            raise JournalError(self._failed) from exc

    def _commit_loop(self) -> None:
        while True:
            idle = self._idle_s if self._recent and self._failed is None else None
            try:
                item = self._queue.get(timeout=idle)
            except queue.Empty:  # nothing to commit for a while: move some rows
                cpu = time.thread_time()
                try:
                    self._move_some(MOVE_AT)
                except sqlite3.Error as exc:  # the rows stay readable where they are
                    self.move_error = f"{self.path}: rows left in the recent tables: {exc}"
                    self._idle_s = None  # no second try until close
                self.commit_cpu_s += time.thread_time() - cpu
                continue
            if item is None:
                break
            group, done = item
            if self._failed is not None:
                done._finish(JournalError(self._failed))
                continue
            cpu = time.thread_time()
            try:
                self._write(group)
            except Exception as exc:  # any failure: no gate of this group may open
                self._failed = f"{self.path}: cannot commit the station journal: {exc}"
                done._finish(JournalError(self._failed))
                continue
            finally:
                self.commit_cpu_s += time.thread_time() - cpu
            done._finish(None)

    def _write(self, group: _Group) -> None:
        if not group.records and not group.passback:
            return
        with self._transaction() as db:
            _insert_rows(db, f"INSERT INTO {RECENT_CREDENTIALS} VALUES", 2, group.credentials)
            _insert_rows(db, f"INSERT INTO {RECENT_RECORDS} VALUES", 6, group.records)
            _insert_rows(db, "INSERT INTO passback_log VALUES", 6, group.passback)
            if group.trim:
                db.execute("DELETE FROM passback_log WHERE id < ?", (group.trim,))
            recent = self._recent + len(group.records)
            if self._move_at is not None and recent >= self._move_at:
                recent -= _move_recent(db, None)
        self._recent = recent

    def _move_some(self, limit: int | None) -> int:
        """Move up to ``limit`` of the oldest recent records (None: all of them) and the
        recent credentials, in one transaction; return how many records moved. Raises
        sqlite3.Error (nothing moved then)."""
        with self._transaction() as db:
            moved = _move_recent(db, limit)
        self._recent = max(0, self._recent - moved)
        return moved

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (a group's commit, or a move), committed on leaving
        and rolled back on any error; the lock keeps a move and a commit apart."""
        db = self._db
        with self._lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _move_all(self) -> None:
        """Move every recent row, ``_MOVE_ALL_AT`` records per transaction (raises
        sqlite3.Error: what moved before stays moved)."""
        while self._recent:
            if not self._move_some(_MOVE_ALL_AT):
                self._recent = 0  # the count was high: nothing is left to move

    def _check_usable(self) -> None:
        if self._closed:
            raise JournalError("the station journal is closed")
        if self._failed is not None:
            raise JournalError(f"{self._failed}; reopen the station journal to go on")

    def close(self) -> None:
        """Wait for the commit in flight, move the recent rows to their lasting tables,
        then close. A group still staged is dropped: its gates never opened.

        A move that fails leaves its rows where they are (readers find them there, and
        the next open moves them); ``move_error`` says why."""
        if self._closed:
            return
        self._closed = True
        if self._committer is not None:
            self._queue.put(None)
            self._committer.join()
        if self._failed is None:
            try:
                self._move_all()
            except sqlite3.Error as exc:
                self.move_error = f"{self.path}: rows left in the recent tables: {exc}"
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

    def stage(self, decision: Decision, ctx: TapContext) -> int:
        return self.station.stage(self.terminal_id, decision, ctx)

    def append(self, decision: Decision, ctx: TapContext) -> int:
        """Stage and commit at once: durable on return (a gate run on its own)."""
        seq = self.stage(decision, ctx)
        self.station.commit()
        return seq

    def commit(self) -> None:
        """Commit the station's open group (this gate's staged ride with it)."""
        self.station.commit()

    def close(self) -> None:
        """The station journal belongs to the controller, which closes it."""


def _check_tables(db: sqlite3.Connection, path: Path, tables: set[str]) -> None:
    """A version-2 file must still hold every table it was made with: made afresh at
    open, a lost one would pass unnoticed (a terminal's chain would restart at seq 1)."""
    need = {"terminals", "credentials", RECENT_RECORDS, RECENT_CREDENTIALS, "passback_log"}
    if "terminals" in tables:
        held = db.execute("SELECT terminal_id FROM terminals").fetchall()
        need |= {station_records_table(tid).strip('"') for (tid,) in held}
    missing = sorted(need - tables)
    if missing:
        raise JournalError(f"{path}: damaged station journal: no {missing[0]} table")


# Rows the open reads in full (the recent records to move, the lockout log to replay),
# with a column of the wrong type: a damaged file, not a Python error later.
_GARBLED_ROWS = f"""
SELECT 'recent record', rowid FROM {RECENT_RECORDS}
    WHERE typeof(terminal_id) != 'integer' OR typeof(seq) != 'integer'
    OR typeof(time_ms) != 'integer' OR typeof(body) != 'blob' OR typeof(hash) != 'blob'
UNION ALL SELECT 'lockout', id FROM passback_log
    WHERE typeof(place) != 'text' OR typeof(card_id) NOT IN ('integer', 'null')
    OR typeof(wall_ms) != 'integer' OR typeof(mono_ms) != 'integer' OR typeof(boot) != 'text'
LIMIT 1
"""


def _check_rows(db: sqlite3.Connection, path: Path) -> None:
    row = db.execute(_GARBLED_ROWS).fetchone()
    if row is not None:
        raise JournalError(f"{path}: damaged station journal: {row[0]} row {row[1]} is garbled")


def _execute_script(db: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated statements inside the caller's transaction (``executescript``
    would commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _move_recent(db: sqlite3.Connection, limit: int | None) -> int:
    """Move the oldest ``limit`` recent records (None: all) and as many of the oldest
    recent credentials to their lasting tables, in the caller's transaction; return how
    many records moved.

    One statement per terminal, run inside SQLite (which lets the controller's thread go
    on deciding taps); the rows moved are one range of rowids at the table's head, small
    enough to stay in the page cache for those scans.
    """
    moved = 0
    for table, move in ((RECENT_RECORDS, _move_records), (RECENT_CREDENTIALS, _move_credentials)):
        # Two queries: SQLite finds a lone MIN or MAX at the B-tree's edge, but scans
        # the whole table for the two in one query.
        lo = db.execute(f"SELECT MIN(rowid) FROM {table}").fetchone()[0]
        if lo is None:
            continue
        hi = db.execute(f"SELECT MAX(rowid) FROM {table}").fetchone()[0]
        last = hi if limit is None else min(hi, lo + limit - 1)
        count = move(db, last)
        if last == hi:
            db.execute(f"DELETE FROM {table}")  # the whole table: SQLite truncates it
        else:
            db.execute(f"DELETE FROM {table} WHERE rowid <= ?", (last,))
        if table == RECENT_RECORDS:
            moved = count
    return moved


def _move_records(db: sqlite3.Connection, last: int) -> int:
    terminals = db.execute(
        f"SELECT DISTINCT terminal_id FROM {RECENT_RECORDS} WHERE rowid <= ?", (last,)
    ).fetchall()
    count = 0
    for (tid,) in terminals:
        count += db.execute(
            f"INSERT INTO {station_records_table(tid)} SELECT seq, time_ms, card_id, body, hash "
            f"FROM {RECENT_RECORDS} WHERE rowid <= ? AND terminal_id = ? ORDER BY rowid",
            (last, tid),
        ).rowcount
    return count


def _move_credentials(db: sqlite3.Connection, last: int) -> int:
    return db.execute(
        f"INSERT OR IGNORE INTO credentials SELECT sha256, data FROM {RECENT_CREDENTIALS} "
        "WHERE rowid <= ? ORDER BY sha256",
        (last,),
    ).rowcount


def _upgrade_from_1(db: sqlite3.Connection, terminal_ids: list[int]) -> None:
    """Version 1 to 2, inside the caller's transaction: each terminal's records into its
    own table, the lockouts into the log."""
    for tid in terminal_ids:
        db.execute(
            f"INSERT INTO {station_records_table(tid)} "
            "SELECT seq, time_ms, card_id, body, hash FROM records WHERE terminal_id = ? "
            "ORDER BY seq",
            (tid,),
        )
    db.execute("DROP TABLE records")
    _execute_script(db, _UPGRADE_PASSBACK)
    db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (STATION_FORMAT,))


_SELECT_LOG = "SELECT id, place, card_id, wall_ms, mono_ms, boot FROM passback_log ORDER BY id"
_CHUNK = 256  # rows per statement at most (and never more parameters than SQLite allows)
_STATEMENTS: dict[tuple[str, int, int], str] = {}


def _insert_rows(db: sqlite3.Connection, head: str, width: int, rows: list[_Row]) -> None:
    """Insert ``rows`` with one multi-row statement per chunk, in order.

    One statement per group instead of one per row: each statement lets the committer
    thread take the GIL back from the controller's thread, so fewer statements mean fewer
    thread switches in the middle of the taps being decided."""
    if not rows:
        return
    per = max(1, min(_CHUNK, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        key = (head, width, len(chunk))
        sql = _STATEMENTS.get(key)
        if sql is None:
            one = "(" + ", ".join("?" * width) + ")"
            sql = _STATEMENTS.setdefault(key, f"{head} {', '.join([one] * len(chunk))}")
        db.execute(sql, [value for row in chunk for value in row])
