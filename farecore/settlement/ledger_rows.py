"""What the settlement ledger stores: its schema, its rows, and their SQLite integers.

SQLite integers are signed 64-bit, while card and terminal ids use the whole uint64
range: they are stored as the signed integer with the same bits. A value read back
that is not what the ledger writes is ``LedgerDamaged``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from farecore.errors import LedgerDamaged

__all__ = [
    "LEDGER_FORMAT",
    "SCHEMA",
    "Head",
    "HeldRide",
    "NightRecord",
    "SettledBatch",
    "TakenRide",
    "as_bytes",
    "as_day",
    "as_int",
    "as_unsigned",
    "batch_rows",
    "held_rows",
    "signed",
    "signed_int",
    "taken_rows",
]

LEDGER_FORMAT = "farecore-ledger/1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nights (
    night INTEGER PRIMARY KEY, day TEXT NOT NULL UNIQUE,
    inputs_sha256 TEXT NOT NULL, outputs TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    sha256 BLOB NOT NULL, night INTEGER NOT NULL, outcome TEXT NOT NULL,
    PRIMARY KEY (sha256, night)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    sha256 BLOB PRIMARY KEY, terminal_id INTEGER NOT NULL, day TEXT NOT NULL,
    first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, prev_hash BLOB NOT NULL,
    tail_hash BLOB NOT NULL, max_time_ms INTEGER NOT NULL, night INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS batches_chain ON batches (terminal_id, last_seq);
CREATE INDEX IF NOT EXISTS batches_day ON batches (day, terminal_id);
CREATE TABLE IF NOT EXISTS taken (
    card_id INTEGER NOT NULL, counter INTEGER NOT NULL, terminal_id INTEGER NOT NULL,
    seq INTEGER NOT NULL, time_ms INTEGER NOT NULL, night INTEGER NOT NULL,
    PRIMARY KEY (card_id, counter)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS taken_time ON taken (time_ms);
CREATE TABLE IF NOT EXISTS held (
    terminal_id INTEGER NOT NULL, seq INTEGER NOT NULL, day TEXT NOT NULL,
    time_ms INTEGER NOT NULL, card_id INTEGER NOT NULL, counter INTEGER NOT NULL,
    record_hash BLOB NOT NULL, generation INTEGER NOT NULL, flags TEXT NOT NULL,
    operator TEXT NOT NULL, line TEXT NOT NULL, place TEXT NOT NULL,
    direction INTEGER NOT NULL, night INTEGER NOT NULL, resolved INTEGER,
    PRIMARY KEY (terminal_id, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS held_day ON held (day);
CREATE TABLE IF NOT EXISTS paths (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    sha256 BLOB NOT NULL);
"""


def signed(values: np.ndarray) -> np.ndarray:
    # SQLite integers are signed 64-bit; card ids use the whole uint64 range.
    return np.ascontiguousarray(values, dtype=np.uint64).view(np.int64)


def as_bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise LedgerDamaged(f"a hash or key is {type(value).__name__}, not bytes")
    return value


def signed_int(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def as_int(value: object) -> int:
    """An integer read back from SQLite (its row values are typed ``object`` here)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise LedgerDamaged(f"a number is {type(value).__name__}, not an integer")
    return value


def as_day(value: object) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise LedgerDamaged(f"a day is {str(value)[:20]!r}") from None


def as_unsigned(value: object) -> int:
    v = as_int(value)
    return v + (1 << 64) if v < 0 else v


@dataclass(frozen=True, slots=True)
class Head:
    """Where a terminal's settled chain ends."""

    last_seq: int
    tail_hash: bytes
    max_time_ms: int


@dataclass(frozen=True, slots=True)
class NightRecord:
    night: int
    day: dt.date
    inputs_sha256: str
    outputs: dict[str, str]
    files: dict[bytes, str]  # batch SHA-256 -> outcome


@dataclass(frozen=True, slots=True)
class HeldRide:
    """A verified ride kept unpaid until the batch its price depends on arrives."""

    terminal_id: int
    seq: int
    day: str
    time_ms: int
    card_id: int
    counter: int
    record_hash: bytes
    generation: int
    flags: tuple[str, ...]
    context: tuple[str, str, str, int]  # operator, line, place, direction, as verified


@dataclass(frozen=True, slots=True)
class TakenRide:
    """A card counter the ledger has taken: where and when it rode."""

    card_id: int
    counter: int
    terminal_id: int
    time_ms: int


@dataclass(frozen=True, slots=True)
class SettledBatch:
    sha256: bytes
    terminal_id: int
    day: str
    first_seq: int
    last_seq: int
    prev_hash: bytes
    tail_hash: bytes
    max_time_ms: int


def batch_rows(batches: Iterable[SettledBatch], night: int) -> Iterator[tuple[object, ...]]:
    for b in batches:
        yield (
            b.sha256,
            signed_int(b.terminal_id),
            b.day,
            b.first_seq,
            b.last_seq,
            b.prev_hash,
            b.tail_hash,
            b.max_time_ms,
            night,
        )


def taken_rows(
    taken: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], night: int
) -> Iterator[tuple[object, ...]]:
    """The night's taken counters in key order, so that inserting them appends to the B-tree."""
    card, counter, tid, seq, time_ms = taken
    order = np.lexsort((counter, signed(card)))
    return zip(
        signed(card)[order].tolist(),
        np.asarray(counter)[order].tolist(),
        signed(tid)[order].tolist(),
        np.asarray(seq, dtype=np.int64)[order].tolist(),
        np.asarray(time_ms)[order].tolist(),
        [night] * len(order),
        strict=True,
    )


def held_rows(held: Iterable[HeldRide], night: int) -> Iterator[tuple[object, ...]]:
    for h in held:
        yield (
            signed_int(h.terminal_id),
            h.seq,
            h.day,
            h.time_ms,
            signed_int(h.card_id),
            h.counter,
            h.record_hash,
            h.generation,
            ",".join(h.flags),
            *h.context,
            night,
        )
