"""What one unit of work is given and what it hands back: ``UnitConfig`` in, ``Partial`` out.

A ``Partial`` carries one batch's verified rides as columns (``RideColumns``) with its
chain boundaries and its anomalies. Both are plain frozen values, so they pickle to any
process or Dask worker and back unchanged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from farecore.settlement.anomalies import Anomaly
from farecore.settlement.fares import OperatorPolicy
from farecore.settlement.terminals import TerminalInfo

__all__ = [
    "I64_MAX",
    "MAX_BATCH_BYTES",
    "NO_RIDES",
    "NO_TIME",
    "Partial",
    "RideColumns",
    "UnitConfig",
]

# A terminal's day is tens of megabytes at most; a larger file is refused unread.
MAX_BATCH_BYTES = 1 << 30
NO_TIME = -(1 << 63)  # "no earlier record" in the time high-water columns
I64_MAX = (1 << 63) - 1  # the ledger's integers are SQLite's signed 64 bits

_REGISTERS: dict[int, tuple[tuple[TerminalInfo, ...], dict[int, TerminalInfo]]] = {}


@dataclass(frozen=True, slots=True)
class UnitConfig:
    """What every unit needs: the register, the keyring and the operators' policies."""

    day: dt.date
    terminals: tuple[TerminalInfo, ...]
    keyring: bytes  # Keyring.to_bytes(): plain bytes travel to any worker
    policies: tuple[OperatorPolicy, ...] = ()
    clock_tolerance_ms: int = 300_000
    max_batch_bytes: int = MAX_BATCH_BYTES
    utc_offset_min: int = 480
    # Seqs at which signed chain heads (--heads) claim a hash, by terminal: each unit
    # hands back its batch's hash at those seqs, not every record's.
    head_seqs: Mapping[int, frozenset[int]] = field(default_factory=dict, hash=False)
    # The issuer's signed lists the night's inputs verified: (path, SHA-256, size).
    issued: tuple[tuple[str, str, int], ...] = ()

    def terminal(self, terminal_id: int | None) -> TerminalInfo | None:
        # A register has thousands of terminals and a night thousands of batches.
        cached = _REGISTERS.get(id(self.terminals))
        if cached is None or cached[0] is not self.terminals:
            cached = (self.terminals, {t.terminal_id: t for t in self.terminals})
            _REGISTERS.clear()
            _REGISTERS[id(self.terminals)] = cached
        return cached[1].get(terminal_id) if terminal_id is not None else None

    def policy(self, operator: str) -> OperatorPolicy | None:
        for p in self.policies:
            if p.operator == operator:
                return p
        return None


@dataclass(frozen=True, slots=True, eq=False)
class RideColumns:
    """A batch's accepted rides that passed the unit's checks, column by column.

    One row per ride, in seq order. Every ride of a batch has its terminal's context
    (operator, line, place, direction): a record naming another is an anomaly, not a
    ride. Columns rather than a tuple per ride because a night has millions of rides and
    they cross process or network boundaries: a few arrays pickle and load in
    microseconds, where a million tuples take seconds.
    """

    operator: str
    line: str
    place: str
    direction: int
    seq: np.ndarray  # uint64
    time_ms: np.ndarray  # int64
    card_id: np.ndarray  # uint64
    counter: np.ndarray  # int64 (a uint32 on the card)
    record_hash: bytes  # 32 bytes per ride, in row order
    # (row, flags, revocation generation) of the few rides that carry flags
    flagged: tuple[tuple[int, tuple[str, ...], int | None], ...] = ()
    generation: np.ndarray | None = None  # int64, -1 where the record names none
    # int64: the latest time of any earlier record of this batch (NO_TIME for the first)
    time_before: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.seq)


_EMPTY_U64 = np.zeros(0, dtype=np.uint64)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
NO_RIDES = RideColumns(
    "", "", "", 0, _EMPTY_U64, _EMPTY_I64, _EMPTY_U64, _EMPTY_I64, b"", (), _EMPTY_I64, _EMPTY_I64
)


@dataclass(frozen=True, slots=True)
class Partial:
    """One batch's contribution. ``ok`` False: rejected, and ``rides`` is empty."""

    batch_sha256: bytes
    ok: bool
    terminal_id: int = -1
    day: str = ""
    first_seq: int = 0
    last_seq: int = -1
    prev_hash: bytes = b""
    tail_hash: bytes = b""
    taps: int = 0
    denied: int = 0
    rides: RideColumns = NO_RIDES
    anomalies: tuple[Anomaly, ...] = ()
    file: str = ""  # the file's name, for anomalies about the file itself
    max_time_ms: int = NO_TIME  # the latest record time in the batch
    unreadable: bool = False  # the unit could not read the file (an OSError)
    where: str = ""  # where the unit ran, when that matters to an error (never in outputs)
    # Rejected for what the settlement's own inputs say (an unregistered terminal, a key
    # that does not verify): looked at again on later nights, once the register is fixed.
    retry: bool = False
    # (seq, the chain hash after it) at the seqs of ``UnitConfig.head_seqs`` this batch
    # covers (its first seq - 1 to its last), in seq order
    head_hashes: tuple[tuple[int, bytes], ...] = ()
