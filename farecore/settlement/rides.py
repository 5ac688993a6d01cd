"""The night's rides as columns: what the merge sorts, checks and prices.

A night has millions of rides, so they are held as numpy arrays of integers, one row per
ride, rather than as an object each: whole-night steps run on arrays, and only decisions
that need one ride at a time run in Python, on exact integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BUS",
    "METRO_ENTRY",
    "METRO_EXIT",
    "TRIPS",
    "UNPAIRED_ENTRY",
    "UNPAIRED_EXIT",
    "VENUE",
    "Context",
    "PricedRides",
    "Rides",
]

# What a paid record is (PricedRides.trip holds the index): a metro entry paired with
# its exit carries 0, and the exit the trip's fare; a venue entry its site's ticket price.
TRIPS = ("bus", "metro_entry", "metro_exit", "unpaired_entry", "unpaired_exit", "venue")
BUS, METRO_ENTRY, METRO_EXIT, UNPAIRED_ENTRY, UNPAIRED_EXIT, VENUE = range(len(TRIPS))


Context = tuple[str, str, str, int]  # operator, line, place, direction


@dataclass(frozen=True, slots=True, eq=False)
class Rides:
    """Verified rides, one row each, column by column.

    ``context`` indexes ``contexts`` (a terminal's operator, line, place, direction);
    ``record_hash`` has one 32-byte row per ride; ``flagged`` maps the row of each ride
    that carries flags to (flags, revocation generation). ``generation`` is the
    revocation generation each ride was decided under (-1: none recorded); ``held`` marks
    rides an earlier night held, which come back to be priced.
    """

    contexts: tuple[Context, ...]
    context: np.ndarray  # int32
    terminal_id: np.ndarray  # uint64
    seq: np.ndarray  # uint64
    time_ms: np.ndarray  # int64
    card_id: np.ndarray  # uint64
    counter: np.ndarray  # int64
    record_hash: np.ndarray  # uint8, shape (n, 32)
    flagged: dict[int, tuple[tuple[str, ...], int | None]]
    generation: np.ndarray | None = None  # int64
    held: np.ndarray | None = None  # bool

    def __post_init__(self) -> None:
        n = len(self.seq)
        if self.generation is None:
            object.__setattr__(self, "generation", np.full(n, -1, dtype=np.int64))
        if self.held is None:
            object.__setattr__(self, "held", np.zeros(n, dtype=bool))

    def __len__(self) -> int:
        return len(self.seq)

    def take(self, rows: np.ndarray) -> Rides:
        """The rides at ``rows``, in that order (each row at most once)."""
        flagged = self.flagged
        moved: dict[int, tuple[tuple[str, ...], int | None]] = {}
        if flagged:  # few rows carry flags: find where they went, not each row's fate
            marked = np.isin(rows, np.fromiter(flagged, dtype=np.int64, count=len(flagged)))
            moved = {new: flagged[int(rows[new])] for new in np.flatnonzero(marked).tolist()}
        return Rides(
            self.contexts,
            self.context[rows],
            self.terminal_id[rows],
            self.seq[rows],
            self.time_ms[rows],
            self.card_id[rows],
            self.counter[rows],
            self.record_hash[rows],
            moved,
            self.generation[rows],  # type: ignore[index]
            self.held[rows],  # type: ignore[index]
        )

    def by_card(self) -> np.ndarray:
        """Row order by (card, time, terminal, seq): each card's rides in time order.

        Rows are unique by (terminal, seq), so the order has no ties.
        """
        return np.lexsort((self.seq, self.terminal_id, self.time_ms, self.card_id))

    def where(self, row: int) -> tuple[int, int, int]:
        """(terminal id, seq, card id) of one row, as Python integers, to name it."""
        return int(self.terminal_id[row]), int(self.seq[row]), int(self.card_id[row])


@dataclass(frozen=True, slots=True, eq=False)
class PricedRides:
    """The paid rides (in terminal, seq order) and what each carries."""

    rides: Rides
    fare_fen: np.ndarray  # int64
    trip: np.ndarray  # int8, index into TRIPS
    paired_terminal_id: np.ndarray  # uint64, 0 where not paired
    paired_seq: np.ndarray  # uint64, 0 where not paired

    def __len__(self) -> int:
        return len(self.rides)

    def paired(self) -> np.ndarray:
        """Which rows are a metro entry or exit with its other half (bool)."""
        return np.isin(self.trip, (METRO_ENTRY, METRO_EXIT))
