"""Keep an SQLite write-ahead log at its working size, so a commit overwrites, never extends.

A commit in WAL mode with ``synchronous=FULL`` writes its frames to the ``-wal`` file and
syncs it. While the WAL is still growing, every sync must also make the new file size
durable, which on ext4 costs a metadata journal commit on top of the data flush: about
a third more per commit on this machine. Once the WAL has wrapped (a checkpoint copied it
into the database and the next writer started again at its head), commits overwrite blocks
the file already owns and the sync flushes data only.

SQLite removes the WAL when the last connection closes, so a freshly opened journal would
spend its first thousand commits in the expensive, growing phase. :func:`reserve_wal`
skips it: one transaction writes a throw-away blob as large as the working WAL, the next
frees it again (its pages go to the free list and later hold real rows), and a passive
checkpoint lets the next commit restart at the head of the now full-size file. This is the
same idea as a database server recycling pre-allocated log segments. Durability is
unchanged: every commit is still synced before it returns.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = ["WAL_CHECKPOINT_PAGES", "make_durable", "reserve_wal", "wal_reserve_bytes"]


def make_durable(db: sqlite3.Connection) -> None:
    """The settings of every farecore file that must not lose a commit: WAL, every
    commit synced, and small pages (a commit writes, and syncs, whole pages). The page
    size takes effect only when the file is created."""
    db.execute("PRAGMA page_size=1024")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")


# Pages a commit may leave in the WAL before SQLite checkpoints it (SQLite's default).
WAL_CHECKPOINT_PAGES = 1000
# Frames a single transaction may add beyond the checkpoint mark (a group commit of up to
# 1,000 records at three or four records a page), with room to spare.
_TRANSACTION_PAGES = 1000
_FRAME_HEADER = 24
_WAL_HEADER = 32


def wal_reserve_bytes(page_size: int) -> int:
    """The WAL size at which no commit of a normal working day needs to grow the file."""
    return _WAL_HEADER + (WAL_CHECKPOINT_PAGES + _TRANSACTION_PAGES) * (page_size + _FRAME_HEADER)


def reserve_wal(db: sqlite3.Connection, path: str | os.PathLike[str]) -> None:
    """Grow the WAL of ``db`` (a database file at ``path``) to its working size.

    ``db`` must be in WAL mode and outside a transaction. Does nothing when the WAL is
    already that large. A reader holding an old snapshot only delays the wrap; nothing is
    lost either way. Raises sqlite3.Error like any other write.
    """
    page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    target = wal_reserve_bytes(page_size)
    wal = Path(os.fspath(path) + "-wal")
    try:
        have = wal.stat().st_size
    except FileNotFoundError:
        have = 0
    if have >= target:
        return
    with db:
        db.execute("CREATE TABLE IF NOT EXISTS wal_reserve (fill BLOB NOT NULL)")
        db.execute("INSERT INTO wal_reserve VALUES (zeroblob(?))", (target - have,))
    with db:
        db.execute("DELETE FROM wal_reserve")
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
