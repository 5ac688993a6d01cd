"""What a journal file holds, as its writers and its reader agree: the formats, the
table names, and the checks on what a file says about itself (its terminal, the head
of a chain).

A terminal's own journal (``farecore.journal.terminal``) holds one terminal's chain in a
``records`` table. A station's journal (``farecore.journal.station``) holds several:
version 2 gives each terminal its own records table (``station_records_table``) beside
the ``recent_records`` not moved there yet, and keeps the lockouts in an append-only
log; version 1 kept every terminal's records in one table and the lockouts in a table
keyed by card. A writer upgrades a version-1 file when it opens it; a reader reads both.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from farecore.errors import JournalError
from farecore.journal.records import GENESIS_HASH

__all__ = [
    "MAX_SEQ",
    "RECENT_CREDENTIALS",
    "RECENT_RECORDS",
    "STATION_FORMAT",
    "STATION_FORMATS",
    "STATION_FORMAT_1",
    "TERMINAL_FORMAT",
    "checked_head",
    "meta_terminal_id",
    "read_only_uri",
    "station_records_table",
    "time_index",
]

MAX_SEQ = (1 << 63) - 1  # the largest seq an SQLite integer holds
TERMINAL_FORMAT = "farecore-journal/1"
STATION_FORMAT = "farecore-station-journal/2"
STATION_FORMAT_1 = "farecore-station-journal/1"
STATION_FORMATS = frozenset({STATION_FORMAT_1, STATION_FORMAT})

# A version-2 station file's newest rows, not yet moved to their lasting tables.
RECENT_RECORDS = "recent_records"
RECENT_CREDENTIALS = "recent_credentials"


def station_records_table(terminal_id: int) -> str:
    """The quoted name of a terminal's records table in a version-2 station file."""
    return f'"records_{int(terminal_id)}"'


def time_index(table: str) -> str:
    """The quoted name of the index on a records table's ``time_ms`` (``table`` as
    ``station_records_table`` gives it, or ``records``). A night's export finds the
    day's first record through it, without reading every day before."""
    return '"' + table.strip('"') + '_time"'


def checked_head(path: Path, row: tuple[Any, ...] | None) -> tuple[int, bytes]:
    """(seq, hash) of a terminal's newest stored record, ``row`` as read (seq, hash, then
    any integer columns), or the start of a chain for None. A damaged one is a
    JournalError: the next record would chain onto it."""
    if row is None:
        return 0, GENESIS_HASH
    seq, own = row[0], row[1]
    if (
        not (isinstance(seq, int) and 0 < seq <= MAX_SEQ)
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


def read_only_uri(path: Path) -> str:
    """The URI that opens ``path`` read-only. Quoted: a '?' or '#' in the name would
    otherwise end the path, and the file opened would be another one, writable."""
    return f"file:{urllib.parse.quote(str(path))}?mode=ro"
