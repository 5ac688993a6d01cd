"""Pricing the night's rides: bus boardings at their line's fare, metro trips by distance,
venue entries at their site's ticket price.

Metro entries and exits are paired per card in time order: per operator, an exit takes
the card's latest open entry. A trip counts on the line where it entered. An exit with
no open entry and an entry never closed pay the fares file's unpaired fares. Money is
integer fen, never a float.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from farecore.journal.terminal import Direction
from farecore.settlement.anomalies import Anomaly
from farecore.settlement.fares import FareTable, MetroFare
from farecore.settlement.rides import (
    METRO_ENTRY,
    METRO_EXIT,
    UNPAIRED_ENTRY,
    UNPAIRED_EXIT,
    VENUE,
    PricedRides,
    Rides,
)

__all__ = ["price"]


class _DayFares:
    """The fare table as of one day, with each lookup done once (a night has millions)."""

    def __init__(self, fares: FareTable, day: dt.date) -> None:
        self.fares = fares
        self.day = day
        self._bus: dict[tuple[str, str], int | None] = {}
        self._metro: dict[str, MetroFare | None] = {}
        self._unpaired: dict[tuple[str, str], int | None] = {}
        self._stations: dict[tuple[str, str], int | None] = {}

    def venue(self, operator: str, site: str) -> int | None:
        return self.fares.venue_fare(operator, site, self.day)

    def bus(self, operator: str, line: str) -> int | None:
        key = (operator, line)
        if key not in self._bus:
            self._bus[key] = self.fares.bus_fare(operator, line, self.day)
        return self._bus[key]

    def metro(self, operator: str) -> MetroFare | None:
        if operator not in self._metro:
            self._metro[operator] = self.fares.metro_for(operator, self.day)
        return self._metro[operator]

    def unpaired(self, which: str, operator: str) -> int | None:
        key = (which, operator)
        if key not in self._unpaired:
            self._unpaired[key] = self.fares.unpaired_fare(which, operator, self.day)
        return self._unpaired[key]

    def station_m(self, table: MetroFare, place: str) -> int | None:
        key = (table.operator, place)
        if key not in self._stations:
            self._stations[key] = table.station_m(place)
        return self._stations[key]


@dataclass(slots=True)
class _Unpaired:
    """How unpaired taps are settled tonight, and what they put at stake."""

    hold: dict[str, frozenset[str]]  # "entry"/"exit" -> operators whose unpaired taps wait
    held: np.ndarray  # bool per ride
    at_stake_fen: int = 0


def price(
    rides: Rides,
    by_card: np.ndarray,
    day: dt.date,
    fare_table: FareTable,
    anomalies: list[Anomaly],
    hold: dict[str, frozenset[str]] | None = None,
) -> tuple[PricedRides, dict[tuple[str, str], list[int]], np.ndarray, int]:
    """Each ride priced; (operator, line) -> [rides, fen]; which rides are held; and the
    amount at stake over the unpaired taps (highest minus lowest band, summed).

    A bus boarding pays its line's fare. Metro rides are walked per card in time order:
    per operator, an exit takes the latest open entry and pays the trip, counted on the
    entry's line (the entry itself carries 0); an exit with no open entry and an entry
    never closed are settled by the unpaired rule, or held (not paid, fare 0) when
    ``hold`` names their operator for their kind, or the rule is ``hold``.
    """
    pricer = _Pricer(rides, _DayFares(fare_table, day), anomalies, hold or {})
    flat = pricer.price_flat()
    pricer.price_metro(by_card[~flat[by_card]])
    priced = PricedRides(rides, pricer.fare, pricer.trip, pricer.paired_tid, pricer.paired_seq)
    return priced, pricer.totals, pricer.unpaired.held, pricer.unpaired.at_stake_fen


class _Pricer:
    """One day's pricing: the columns it fills and the totals it adds up."""

    def __init__(
        self,
        rides: Rides,
        fares: _DayFares,
        anomalies: list[Anomaly],
        hold: dict[str, frozenset[str]],
    ) -> None:
        n = len(rides)
        self.rides, self.fares, self.anomalies = rides, fares, anomalies
        self.unpaired = _Unpaired(
            {k: frozenset(hold.get(k, frozenset())) for k in ("entry", "exit")},
            np.zeros(n, dtype=bool),
        )
        self.fare = np.zeros(n, dtype=np.int64)
        self.trip = np.zeros(n, dtype=np.int8)
        self.paired_tid = np.zeros(n, dtype=np.uint64)
        self.paired_seq = np.zeros(n, dtype=np.uint64)
        self.totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        # Fares of trips already priced without a problem, by (operator, entry, exit place).
        self.trips: dict[tuple[str, str, str], int] = {}
        # Per operator, a stack of the current card's entry rows not yet matched.
        self.open_entries: dict[str, list[int]] = defaultdict(list)

    def _count(self, operator: str, line: str, fen: int) -> None:
        total = self.totals[(operator, line)]
        total[0] += 1
        total[1] += fen

    def price_flat(self) -> np.ndarray:
        """Every bus boarding at its line's fare and every venue entry at its site's ticket
        price (a venue gate's line is its site); returns which rows are not metro taps.
        (A merchant's claims never get here: admission refuses them, ``not_a_ride``.)"""
        rides, contexts = self.rides, self.rides.contexts
        flat_directions = (Direction.BOARD, Direction.VISIT)
        is_flat = np.array([c[3] in flat_directions for c in contexts] + [False], dtype=bool)
        for code, (op, line, _, direction) in enumerate(contexts):
            if direction not in flat_directions:
                continue
            rows = np.flatnonzero(rides.context == code)
            if direction == Direction.VISIT:
                fen, why = self.fares.venue(op, line), "no ticket price for this venue site"
                self.trip[rows] = VENUE
            else:
                fen, why = self.fares.bus(op, line), "no bus fare for this line"
            if fen is None:
                for row in rows.tolist():
                    self.anomalies.append(_no_fare(rides, row, why))
            self.fare[rows] = fen or 0
            total = self.totals[(op, line)]
            total[0] += len(rows)
            total[1] += (fen or 0) * len(rows)
        flat: np.ndarray = is_flat[rides.context]
        return flat

    def price_metro(self, metro: np.ndarray) -> None:
        """Metro rows in (card, time) order: each card's entries and exits paired."""
        rides, contexts = self.rides, self.rides.contexts
        entry = int(Direction.ENTRY)
        card: int | None = None
        for row, card_id, code in zip(
            metro.tolist(),
            rides.card_id[metro].tolist(),
            rides.context[metro].tolist(),
            strict=True,
        ):
            if card_id != card:
                self.close_unpaired()
                card = card_id
            op, line, place, direction = contexts[code]
            if direction == entry:
                self.open_entries[op].append(row)
            elif self.open_entries[op]:
                self.pair(self.open_entries[op].pop(), row, op, place)
            else:
                self.trip[row] = UNPAIRED_EXIT
                fen = _unpaired(self.fares, "exit", rides, row, self.anomalies, self.unpaired)
                if fen is not None:  # None: held, not paid tonight
                    self.fare[row] = fen
                    self._count(op, line, fen)
        self.close_unpaired()

    def pair(self, e: int, row: int, op: str, place: str) -> None:
        """Entry ``e`` and exit ``row`` are one trip: its fare on the exit, counted on the
        line entered."""
        rides = self.rides
        _, e_line, e_place, _ = rides.contexts[int(rides.context[e])]
        key = (op, e_place, place)
        fen = self.trips.get(key, -1)
        if fen < 0:
            before = len(self.anomalies)
            fen = _trip_fare(self.fares, op, e_place, place, rides, row, self.anomalies)
            if len(self.anomalies) == before:
                self.trips[key] = fen
        self.trip[e], self.trip[row] = METRO_ENTRY, METRO_EXIT
        tid, seq = rides.terminal_id, rides.seq
        self.paired_tid[e], self.paired_seq[e] = int(tid[row]), int(seq[row])
        self.paired_tid[row], self.paired_seq[row] = int(tid[e]), int(seq[e])
        self.fare[row] = fen
        self._count(op, e_line, fen)

    def close_unpaired(self) -> None:
        """Price one card's entries that no exit closed, and forget them."""
        rides = self.rides
        for stack in self.open_entries.values():
            for row in stack:
                op, line, _, _ = rides.contexts[int(rides.context[row])]
                self.trip[row] = UNPAIRED_ENTRY
                fen = _unpaired(self.fares, "entry", rides, row, self.anomalies, self.unpaired)
                if fen is None:
                    continue
                self.fare[row] = fen
                self._count(op, line, fen)
        self.open_entries.clear()


def _no_fare(rides: Rides, row: int, detail: str) -> Anomaly:
    tid, seq, card_id = rides.where(row)
    return Anomaly("no_fare", terminal_id=tid, seq=seq, card_id=card_id, detail=detail)


def _unpaired(
    fares: _DayFares,
    which: str,
    rides: Rides,
    row: int,
    anomalies: list[Anomaly],
    unpaired: _Unpaired,
) -> int | None:
    """The fen an unpaired tap is paid, or None when it is held instead."""
    op = rides.contexts[int(rides.context[row])][0]
    table = fares.metro(op)
    assert rides.held is not None
    if table is not None and not rides.held[row]:  # a held ride was counted when held
        unpaired.at_stake_fen += table.max_fen - table.min_fen
    rule = fares.fares.unpaired_rule(which)
    if op in unpaired.hold[which] or rule == "hold":
        unpaired.held[row] = True
        tid, seq, card_id = rides.where(row)
        why = (
            "the unpaired rule is hold"
            if op not in unpaired.hold[which]
            else f"a batch of an {'exit' if which == 'entry' else 'entry'} gate is missing"
        )
        anomalies.append(
            Anomaly("held", terminal_id=tid, seq=seq, card_id=card_id, detail=f"{which}: {why}")
        )
        return None
    fen = fares.unpaired(which, op)
    if fen is None:
        anomalies.append(_no_fare(rides, row, f"no metro fare table for unpaired {which}"))
        return 0
    return fen


def _trip_fare(
    fares: _DayFares,
    operator: str,
    entry_place: str,
    exit_place: str,
    rides: Rides,
    exit_row: int,
    anomalies: list[Anomaly],
) -> int:
    table = fares.metro(operator)
    if table is None:
        anomalies.append(_no_fare(rides, exit_row, "no metro fare table"))
        return 0
    a, b = fares.station_m(table, entry_place), fares.station_m(table, exit_place)
    if a is None or b is None:
        missing = entry_place if a is None else exit_place
        anomalies.append(_no_fare(rides, exit_row, f"station {missing} not in the fare table"))
        return 0
    return int(table.fare_for(abs(a - b)))
