"""A station controller's journal: the gates of one controller, made durable together.

A terminal's own journal (``farecore.journal.terminal.Journal``) pays one synced commit per tap,
because a single gate has one tap in flight. A station controller that drives several
gates can do better. Each gate's ride is chained and staged in memory as its decision is
made, with the lockout it causes at its place; one transaction then writes the group and
one synced commit makes it durable. Only after that commit do the gates of the group
open (``farecore.gate.controller.StationController``). The commit runs on a committer
thread (``farecore.journal.committer``), so the controller decides the next group's taps
while the disk syncs the last one.

A failed commit opens none of its gates, nor any gate staged after it: the station
journal refuses all further work until it is reopened, and a reopen continues every
chain from its last durable record.

Every terminal keeps its own gap-free sequence and hash chain inside the file
(``farecore.journal.chain``), so a terminal's daily batch
(``farecore.journal.batch.export_batch`` with ``terminal_id``) is the same bytes whether
its rides were journaled alone or with its neighbours. Only the controller writes the
file; its in-memory copy of the passback state is therefore complete.

The file keeps that state as an append-only log of lockouts and prunes
(``farecore.journal.station_lockouts``); rows that no longer count (replaced, pruned) are
cut from the head of the log once they outnumber the live ones.

Where the rows live and how they move is ``farecore.journal.station_file``. The
controller moves rows when it has nothing else to do: after ``move_when_idle_s`` without
a group to commit (``MOVE_AT`` records per transaction, so a group that comes meanwhile
waits for one short transaction at most), when it closes the file and when it opens one
a crash left unmoved. A busy hour never waits for a move. (``move_at``, off by default,
makes the commit that crosses that many recent records move them all, inside its own
transaction.)
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from farecore.closing import Closing
from farecore.decide.decision import Decision
from farecore.errors import JournalError
from farecore.journal.chain import Chain
from farecore.journal.committer import Committer, Ticket
from farecore.journal.layout import RECENT_CREDENTIALS, RECENT_RECORDS, STATION_FORMAT
from farecore.journal.records import TapContext
from farecore.journal.station_file import (
    SELECT_LOG,
    connect,
    insert_rows,
    move_recent,
    prepare,
    read_heads,
)
from farecore.journal.station_lockouts import (
    LogRow,
    PassbackRow,
    log_cut,
    prune_place,
    replay_passback,
)
from farecore.journal.station_terminal import StationTerminal

__all__ = [
    "MOVE_AT",
    "STATION_FORMAT",
    "Commit",
    "StationJournal",
    "StationTerminal",
    "replay_passback",
]

MOVE_AT = 2048
MOVE_WHEN_IDLE_S = 1.0
# At open and close no rider waits: larger transactions, fewer syncs and checkpoints
# (their rows still fit the page cache; 200,000 records moved in 1.9 s here, against
# 2.9 s at 2,048 a transaction and 3.1 s at 65,536).
_MOVE_ALL_AT = 16_384

# The lockout log is cut when it holds more than _LOG_KEEP rows per live lockout plus
# _LOG_SLACK: a cut then removes at least about half of it.
_LOG_KEEP = 2
_LOG_SLACK = 4096

# A group's commit, running or done; ``wait`` returns once it is durable.
Commit = Ticket


class _Group:
    """What one commit writes: records, new credentials, passback writes, in order."""

    __slots__ = ("credentials", "passback", "records", "taps", "trim")

    def __init__(self) -> None:
        self.records: list[tuple[int, int, int, int | None, bytes, bytes]] = []
        self.credentials: list[tuple[bytes, bytes]] = []
        self.passback: list[LogRow] = []  # log rows, in id order
        self.trim = 0  # log rows below this id are dead: delete them
        self.taps = 0


class StationJournal(Closing):
    """One file, several terminals' chains, one synced commit per group of taps.

    ``stage`` and the passback methods are for the controller's thread; ``begin_commit``
    hands the staged group to the committer thread; ``commit`` waits for it.
    """

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self._db = db
        self._closed = False
        self._failed: str | None = None
        self._chain = Chain({})
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
        self._committer: Committer[_Group] = Committer(
            "station-committer",
            self._write_handed,
            idle_s=lambda: self._idle_s if self._recent and self._failed is None else None,
            on_idle=self._move_when_idle,
        )

    @property
    def commit_cpu_s(self) -> float:
        """CPU time the committer thread spent writing and syncing groups (and moving
        rows when idle): what group commit costs the controller's host besides deciding
        the taps. (``commit`` writes on the caller's thread, and counts as the caller's.)"""
        return self._committer.cpu_s

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
        journal = cls(path, connect(path))
        journal._move_at = move_at
        journal._idle_s = move_when_idle_s
        try:
            journal._load(terminal_ids)
        except sqlite3.DatabaseError as exc:
            journal._db.close()
            raise JournalError(f"{path}: cannot read the station journal: {exc}") from None
        except (ValueError, TypeError, OverflowError) as exc:  # a value the checks missed
            journal._db.close()
            raise JournalError(f"{path}: damaged station journal: {exc}") from None
        except BaseException:
            journal._db.close()
            raise
        return journal

    def _load(self, terminal_ids: Iterable[int]) -> None:
        """Prepare the file, read its chains and lockouts, move what a crash left."""
        db, path = self._db, self.path
        held = prepare(db, path, terminal_ids)
        self._chain = Chain(read_heads(db, path, held))
        self._passback = replay_passback(db.execute(SELECT_LOG))
        self._recent = db.execute(f"SELECT COUNT(*) FROM {RECENT_RECORDS}").fetchone()[0]
        try:
            self._move_all()  # what a crash left unmoved, before the first tap
        except sqlite3.Error as exc:  # the gates can still work: the rows stay readable
            self.move_error = f"{path}: rows left in the recent tables: {exc}"
        first, last = db.execute("SELECT MIN(id), MAX(id) FROM passback_log").fetchone()
        if last is not None:
            self._log_first, self._log_next = first, last + 1

    @property
    def staged(self) -> int:
        """Taps staged since the last ``begin_commit`` (not durable yet)."""
        return self._group.taps

    def head(self, terminal_id: int) -> tuple[int, bytes]:
        """(last seq, its hash) of a terminal, counting staged records."""
        return self._chain.head(terminal_id)

    def terminal(self, terminal_id: int) -> StationTerminal:
        """The journal as one gate sees it."""
        if terminal_id not in self._chain:
            raise JournalError(f"terminal {terminal_id} is not in the station journal {self.path}")
        return StationTerminal(self, terminal_id)

    def stage(self, terminal_id: int, decision: Decision, ctx: TapContext) -> int:
        """Chain one tap onto its terminal in the open group; return its seq. Durable
        only once the group's commit is."""
        self._check_usable()
        if terminal_id not in self._chain:
            raise JournalError(f"terminal {terminal_id} is not in {self.path}")
        row, credential = self._chain.link(terminal_id, decision, ctx)
        group = self._group
        if credential is not None:
            group.credentials.append(credential)
        group.records.append(row)
        group.taps += 1
        return row[1]

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
        """Forget a place's rides that can no longer refuse (``passback.forgets``), and
        cut the log's dead head once it outweighs the live rows."""
        self._check_usable()
        place, wall_before, boot, mono_before = args
        rows = self._passback.get(place)
        if rows is not None:
            prune_place(rows, wall_before, boot, mono_before)
        row_id = self._log_next
        self._log_next = row_id + 1
        self._group.passback.append((row_id, place, None, wall_before, mono_before, boot))
        cut = log_cut(self._passback, self._log_first, self._log_next, _LOG_KEEP, _LOG_SLACK)
        if cut is not None:
            self._group.trim = self._log_first = cut

    def begin_commit(self) -> Commit:
        """Hand the open group to the committer thread and start a new one.

        Groups commit in the order they were begun. Staging may go on at once; the
        gates of the group may open only after ``Commit.wait`` returns.
        """
        self._check_usable()
        group, self._group = self._group, _Group()
        self._last = self._committer.submit(group, Commit(group.taps))
        return self._last

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
        self._commit_group(group)

    def _write_handed(self, groups: list[_Group]) -> None:
        """The committer's write: a failure before, or now, opens no gate of the group."""
        if self._failed is not None:
            raise JournalError(self._failed)
        for group in groups:
            self._commit_group(group)

    def _commit_group(self, group: _Group) -> None:
        """Write a group in one transaction; a failure leaves the journal refusing work."""
        try:
            self._write(group)
        except BaseException as exc:  # any failure, an interrupt too: no gate of it opens
            self._failed = f"{self.path}: cannot commit the station journal: {exc}"
            if not isinstance(exc, Exception):
                raise
            raise JournalError(self._failed) from exc

    def _write(self, group: _Group) -> None:
        if not group.records and not group.passback:
            return
        with self._transaction() as db:
            insert_rows(db, f"INSERT INTO {RECENT_CREDENTIALS} VALUES", 2, group.credentials)
            insert_rows(db, f"INSERT INTO {RECENT_RECORDS} VALUES", 6, group.records)
            insert_rows(db, "INSERT INTO passback_log VALUES", 6, group.passback)
            if group.trim:
                db.execute("DELETE FROM passback_log WHERE id < ?", (group.trim,))
            recent = self._recent + len(group.records)
            if self._move_at is not None and recent >= self._move_at:
                recent -= move_recent(db, None)
        self._recent = recent

    def _move_when_idle(self) -> None:
        try:
            self._move_some(MOVE_AT)
        except Exception as exc:  # the rows stay readable where they are
            self.move_error = f"{self.path}: rows left in the recent tables: {exc}"
            self._idle_s = None  # no second try until close

    def _move_some(self, limit: int | None) -> int:
        """Move up to ``limit`` of the oldest recent records (None: all of them) and the
        recent credentials, in one transaction; return how many records moved. Raises
        sqlite3.Error (nothing moved then)."""
        with self._transaction() as db:
            moved = move_recent(db, limit)
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
        self._committer.close()
        if self._failed is None:
            try:
                self._move_all()
            except sqlite3.Error as exc:
                self.move_error = f"{self.path}: rows left in the recent tables: {exc}"
        self._db.close()
