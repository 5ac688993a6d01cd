"""Pricing the night's rides: bus boardings at their line's fare, metro trips by distance.

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
    fares = _DayFares(fare_table, day)
    unpaired = _Unpaired(
        {k: frozenset((hold or {}).get(k, frozenset())) for k in ("entry", "exit")},
        np.zeros(len(rides), dtype=bool),
    )
    n = len(rides)
    fare = np.zeros(n, dtype=np.int64)
    trip = np.zeros(n, dtype=np.int8)
    paired_tid = np.zeros(n, dtype=np.uint64)
    paired_seq = np.zeros(n, dtype=np.uint64)
    totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    contexts = rides.contexts
    board = int(Direction.BOARD)
    is_bus_context = np.array([c[3] == board for c in contexts] + [False], dtype=bool)
    is_bus = is_bus_context[rides.context]
    for code, (op, line, _, direction) in enumerate(contexts):
        if direction != board:
            continue
        rows = np.flatnonzero(rides.context == code)
        fen = fares.bus(op, line)
        if fen is None:
            for row in rows.tolist():
                anomalies.append(_no_fare(rides, row, "no bus fare for this line"))
        fare[rows] = fen or 0
        total = totals[(op, line)]
        total[0] += len(rows)
        total[1] += (fen or 0) * len(rows)
    # Fares of trips already priced without a problem, by (operator, entry, exit place).
    trips: dict[tuple[str, str, str], int] = {}
    entry = int(Direction.ENTRY)
    # Per operator, a stack of entry rows not yet matched.
    open_entries: dict[str, list[int]] = defaultdict(list)
    metro = by_card[~is_bus[by_card]]
    tids, seqs = rides.terminal_id.tolist(), rides.seq.tolist()
    card: int | None = None
    for row, card_id, code in zip(
        metro.tolist(), rides.card_id[metro].tolist(), rides.context[metro].tolist(), strict=True
    ):
        if card_id != card:
            _close_unpaired(rides, open_entries, fares, fare, trip, totals, anomalies, unpaired)
            card = card_id
        op, line, place, direction = contexts[code]
        stack = open_entries[op]
        if direction == entry:
            stack.append(row)
            continue
        if not stack:
            trip[row] = UNPAIRED_EXIT
            fen = _unpaired(fares, "exit", rides, row, anomalies, unpaired)
            if fen is None:
                continue  # held: not paid tonight
            total = totals[(op, line)]
        else:
            e = stack.pop()
            _, e_line, e_place, _ = contexts[int(rides.context[e])]
            key = (op, e_place, place)
            fen = trips.get(key, -1)
            if fen < 0:
                before = len(anomalies)
                fen = _trip_fare(fares, op, e_place, place, rides, row, anomalies)
                if len(anomalies) == before:
                    trips[key] = fen
            trip[e], trip[row] = METRO_ENTRY, METRO_EXIT
            paired_tid[e], paired_seq[e] = tids[row], seqs[row]
            paired_tid[row], paired_seq[row] = tids[e], seqs[e]
            total = totals[(op, e_line)]  # a trip counts on the line entered
        fare[row] = fen
        total[0] += 1
        total[1] += fen
    _close_unpaired(rides, open_entries, fares, fare, trip, totals, anomalies, unpaired)
    priced = PricedRides(rides, fare, trip, paired_tid, paired_seq)
    return priced, totals, unpaired.held, unpaired.at_stake_fen


def _close_unpaired(
    rides: Rides,
    open_entries: dict[str, list[int]],
    fares: _DayFares,
    fare: np.ndarray,
    trip: np.ndarray,
    totals: dict[tuple[str, str], list[int]],
    anomalies: list[Anomaly],
    unpaired: _Unpaired,
) -> None:
    """Price one card's entries that no exit closed, and forget them."""
    for stack in open_entries.values():
        for row in stack:
            op, line, _, _ = rides.contexts[int(rides.context[row])]
            trip[row] = UNPAIRED_ENTRY
            fen = _unpaired(fares, "entry", rides, row, anomalies, unpaired)
            if fen is None:
                continue
            fare[row] = fen
            total = totals[(op, line)]
            total[0] += 1
            total[1] += fen
    open_entries.clear()


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
