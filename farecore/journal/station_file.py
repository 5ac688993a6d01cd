"""A station journal's file: its tables, opening (and upgrading) it, reading its chains'
heads, and moving rows to their lasting tables.

The rows' life in the file: a commit appends its records and new credentials to the
two "recent" tables, which have no index, so the group's rows fill the pages at their
end one after the other. Their lasting place is each terminal's records table (the
layout of a terminal's own journal, seq as key) and the credentials table keyed by
SHA-256. Written per tap, those would cost a page per terminal of the group and a random
index page per new credential; moved in bulk (``move_recent``), they fill whole pages.
Moving is reorganisation, not durability: every row is durable once its group's commit
is. Readers look in both places (``farecore.journal.reader``).

The lockouts are an append-only log (``passback_log``; ``farecore.journal.station``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from farecore.errors import JournalError
from farecore.journal.layout import (
    RECENT_CREDENTIALS,
    RECENT_RECORDS,
    STATION_FORMAT,
    STATION_FORMATS,
    checked_head,
    station_records_table,
    time_index,
)
from farecore.journal.walfile import make_durable, reserve_wal

__all__ = [
    "SELECT_LOG",
    "connect",
    "insert_rows",
    "move_recent",
    "prepare",
    "read_heads",
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
# forgotten (``farecore.journal.passback.forgets``).

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


def connect(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=1024
        )
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open the station journal: {exc}") from None


def prepare(db: sqlite3.Connection, path: Path, terminal_ids: Iterable[int]) -> list[int]:
    """Check, create or upgrade the file for ``terminal_ids``; return every terminal it
    holds. Another kind of file is refused before anything is written to it."""
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
        db.executemany("INSERT OR IGNORE INTO terminals VALUES (?)", [(t,) for t in terminal_ids])
        held = [r[0] for r in db.execute("SELECT terminal_id FROM terminals")]
        for tid in held:
            table = station_records_table(tid)
            db.execute(_RECORDS_TABLE.format(table=table))
            db.execute(f"CREATE INDEX IF NOT EXISTS {time_index(table)} ON {table}(time_ms)")
        if not meta:
            db.execute("INSERT INTO meta VALUES ('format', ?)", (STATION_FORMAT,))
        elif meta["format"] != STATION_FORMAT:
            _upgrade_from_1(db, held)
    _check_rows(db, path)
    reserve_wal(db, path)
    return held


def read_heads(db: sqlite3.Connection, path: Path, held: list[int]) -> dict[int, tuple[int, bytes]]:
    """Each terminal's (last seq, its hash). A move takes every recent record of the rows
    it moves, so a terminal's newest record is among the recent ones if it has any there,
    else last in its table."""
    heads = {}
    for tid in held:
        row = db.execute(
            f"SELECT MAX(seq), hash FROM {RECENT_RECORDS} WHERE terminal_id = ?", (tid,)
        ).fetchone()
        if row[0] is None:
            row = db.execute(
                f"SELECT seq, hash FROM {station_records_table(tid)} ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        heads[tid] = checked_head(path, row)
    return heads


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


def move_recent(db: sqlite3.Connection, limit: int | None) -> int:
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


SELECT_LOG = "SELECT id, place, card_id, wall_ms, mono_ms, boot FROM passback_log ORDER BY id"
_CHUNK = 256  # rows per statement at most (and never more parameters than SQLite allows)
_STATEMENTS: dict[tuple[str, int, int], str] = {}


def insert_rows(db: sqlite3.Connection, head: str, width: int, rows: list[_Row]) -> None:
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
