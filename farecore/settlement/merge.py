"""The deterministic merge: partial results in, the night's settlement out.

Partials are first put in a canonical order (by batch SHA-256) and exact duplicates are
dropped, so neither the order in which workers finished nor a batch ingested twice can
change a byte of the result. Then: chain continuity between batches, ride-level
deduplication and conflicts, reused counters, impossible travel, revocation and stale
table flags, metro entry/exit pairing and pricing. This module must never verify
signatures (the units did) nor use floats for money.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import operator
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from farecore.journal import Direction
from farecore.settlement.anomalies import Anomaly
from farecore.settlement.fares import FareTable, MetroFare
from farecore.settlement.terminals import TerminalInfo
from farecore.settlement.unit import Partial, Ride

__all__ = ["MergeOptions", "PricedRide", "Settlement", "Total", "merge"]


@dataclass(frozen=True, slots=True)
class MergeOptions:
    """Limits for the travel check; ``revoked_at`` maps card id to UTC Unix seconds."""

    max_speed_kmh: int = 120
    min_travel_m: int = 2000
    revoked_at: Mapping[int, int] = field(default_factory=dict)


class PricedRide(NamedTuple):
    """A paid tap record and the fare it carries (a paired metro entry carries 0).

    A NamedTuple, like Ride, because there is one per paid tap.
    """

    ride: Ride
    fare_fen: int
    trip: str  # bus | metro_entry | metro_exit | unpaired_entry | unpaired_exit
    paired_terminal_id: int | None = None
    paired_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Total:
    day: str
    operator: str
    line: str
    rides: int
    amount_fen: int


@dataclass(frozen=True, slots=True)
class Settlement:
    day: str
    inputs: tuple[str, ...]  # unique batch SHA-256s, hex, sorted
    rides: tuple[PricedRide, ...]
    totals: tuple[Total, ...]
    anomalies: tuple[Anomaly, ...]
    stats: dict[str, int]


def merge(
    partials: Iterable[Partial],
    day: dt.date,
    fares: FareTable,
    terminals: Mapping[int, TerminalInfo],
    options: MergeOptions | None = None,
) -> Settlement:
    opts = options or MergeOptions()
    unique: dict[bytes, Partial] = {}
    for p in partials:
        unique.setdefault(p.batch_sha256, p)
    ordered = [unique[k] for k in sorted(unique)]
    anomalies: list[Anomaly] = [a for p in ordered for a in p.anomalies]
    good = [p for p in ordered if p.ok]
    anomalies += _continuity(good)
    rides, dropped = _dedupe(good, anomalies)
    rides = _reused_counters(rides, anomalies)
    _travel_and_flags(rides, terminals, opts, anomalies)
    priced = _price(rides, day, fares, anomalies)
    totals: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    day_text = day.isoformat()
    entry_line = {(p.ride.terminal_id, p.ride.seq): p.ride.line for p in priced if p.trip == _ENTRY}
    for pr in priced:
        if pr.trip == "metro_entry":
            continue  # the paired exit carries the trip
        line = pr.ride.line
        if pr.trip == "metro_exit":
            # A metro trip is counted on the line where the rider entered.
            line = entry_line[(pr.paired_terminal_id, pr.paired_seq)]  # type: ignore[index]
        key = (day_text, pr.ride.operator, line)
        totals[key][0] += 1
        totals[key][1] += pr.fare_fen
    stats = {
        "batches": len(ordered),
        "batches_rejected": sum(1 for p in ordered if not p.ok),
        "taps": sum(p.taps for p in good if p.day == day.isoformat()),
        "denied_taps": sum(p.denied for p in good if p.day == day.isoformat()),
        "rides_verified": sum(len(p.rides) for p in good),
        "duplicates_dropped": dropped,
        "rides_paid": len(priced),
        "amount_fen": sum(pr.fare_fen for pr in priced),
        "anomalies": len(anomalies),
    }
    return Settlement(
        day=day.isoformat(),
        inputs=tuple(k.hex() for k in sorted(unique)),
        # Rides are unique by (terminal, seq) after the dedupe, so ordering by the whole
        # Ride tuple (which starts with those two) is that order, at C speed.
        rides=tuple(sorted(priced, key=_RIDE_OF)),
        totals=tuple(Total(d, o, ln, n, a) for (d, o, ln), (n, a) in sorted(totals.items())),
        anomalies=tuple(sorted(set(anomalies))),
        stats=stats,
    )


def _continuity(good: list[Partial]) -> list[Anomaly]:
    out: list[Anomaly] = []
    by_terminal: dict[int, list[Partial]] = defaultdict(list)
    for p in good:
        by_terminal[p.terminal_id].append(p)
    for tid, parts in sorted(by_terminal.items()):
        parts.sort(key=lambda p: (p.first_seq, p.last_seq, p.batch_sha256))
        reach, tail = parts[0].last_seq, parts[0].tail_hash
        for p in parts[1:]:
            if p.first_seq > reach + 1:
                out.append(
                    Anomaly(
                        "seq_gap",
                        terminal_id=tid,
                        seq=reach + 1,
                        batch=p.batch_sha256.hex(),
                        detail=f"seq {reach + 1}..{p.first_seq - 1} missing",
                    )
                )
            elif p.first_seq == reach + 1 and p.prev_hash != tail:
                out.append(
                    Anomaly(
                        "chain_break",
                        terminal_id=tid,
                        seq=p.first_seq,
                        batch=p.batch_sha256.hex(),
                        detail="batch does not link to the previous batch's tail",
                    )
                )
            if p.last_seq >= reach:
                reach, tail = p.last_seq, p.tail_hash
    return out


def _dedupe(good: list[Partial], anomalies: list[Anomaly]) -> tuple[list[Ride], int]:
    """Rides unique by (terminal, seq), in that order; duplicates dropped, clashes named."""
    by_terminal: dict[int, list[Partial]] = defaultdict(list)
    for p in good:
        by_terminal[p.terminal_id].append(p)
    out: list[Ride] = []
    dropped = 0
    for _, parts in sorted(by_terminal.items()):
        by_seq = sorted(parts, key=lambda p: (p.first_seq, p.last_seq))
        # The usual night: one terminal's batches tile disjoint seq ranges, and a
        # partial's rides are in seq order, so concatenating them is already sorted
        # and unique. Only overlapping batches need the keyed comparison below, in the
        # canonical (batch SHA-256) order, since which copy comes first counts there.
        if all(a.last_seq < b.first_seq for a, b in itertools.pairwise(by_seq)):
            for p in by_seq:
                out += p.rides
            continue
        rides, n = _dedupe_rides([r for p in parts for r in p.rides], anomalies)
        out += rides
        dropped += n
    return out, dropped


def _dedupe_rides(rides: list[Ride], anomalies: list[Anomaly]) -> tuple[list[Ride], int]:
    first: dict[tuple[int, int], Ride] = {}
    clashes: dict[tuple[int, int], dict[bytes, Ride]] = {}
    dropped = 0
    for r in rides:
        key = (r.terminal_id, r.seq)
        seen = first.get(key)
        if seen is None:
            first[key] = r
        elif seen.record_hash == r.record_hash:
            dropped += 1
        else:
            group = clashes.setdefault(key, {seen.record_hash: seen})
            group.setdefault(r.record_hash, r)
    for (tid, seq), group in sorted(clashes.items()):
        del first[(tid, seq)]
        for h in sorted(group):
            anomalies.append(
                Anomaly(
                    "conflicting_duplicate",
                    terminal_id=tid,
                    seq=seq,
                    card_id=group[h].card_id,
                    detail=f"record {h.hex()[:16]}",
                )
            )
    return [first[k] for k in sorted(first)], dropped


def _order(r: Ride) -> tuple[int, int, int]:
    return (r.time_ms, r.terminal_id, r.seq)


# Ride fields by position (see Ride), as C-level key functions for the big sorts.
_CARD_COUNTER = operator.itemgetter(3, 4)
# Per card, in _order: the same sequence as grouping by card, then sorting by _order.
_CARD_ORDER = operator.itemgetter(3, 2, 0, 1)
_RIDE_OF = operator.itemgetter(0)
_CARD = operator.itemgetter(3)
_ENTRY = "metro_entry"


def _reused_counters(rides: list[Ride], anomalies: list[Anomaly]) -> list[Ride]:
    if len(set(map(_CARD_COUNTER, rides))) == len(rides):
        return rides  # the usual night: no counter used twice
    first: dict[tuple[int, int], Ride] = {}
    repeats: dict[tuple[int, int], list[Ride]] = {}
    for r in rides:
        key = (r.card_id, r.counter)
        seen = first.get(key)
        if seen is None:
            first[key] = r
        else:
            repeats.setdefault(key, [seen]).append(r)
    if not repeats:
        return rides  # already in (terminal, seq) order
    dropped: set[tuple[int, int]] = set()
    for (card, counter), group in repeats.items():
        group.sort(key=_order)
        for i, r in enumerate(group):
            if i:
                dropped.add((r.terminal_id, r.seq))
            anomalies.append(
                Anomaly(
                    "reused_counter",
                    terminal_id=r.terminal_id,
                    seq=r.seq,
                    card_id=card,
                    detail=f"counter {counter} used {len(group)} times; "
                    + ("paid (first use)" if i == 0 else "not paid"),
                )
            )
    return [r for r in rides if (r.terminal_id, r.seq) not in dropped]


def _travel_and_flags(
    rides: list[Ride],
    terminals: Mapping[int, TerminalInfo],
    opts: MergeOptions,
    anomalies: list[Anomaly],
) -> None:
    revoked_at = opts.revoked_at
    for r in rides:
        if revoked_at:
            revoked = revoked_at.get(r.card_id)
            if revoked is not None and r.time_ms >= revoked * 1000:
                anomalies.append(
                    Anomaly(
                        "after_revocation",
                        terminal_id=r.terminal_id,
                        seq=r.seq,
                        card_id=r.card_id,
                        detail=f"revoked at {revoked}",
                    )
                )
        if r.flags and "revocation_stale" in r.flags:
            anomalies.append(
                Anomaly(
                    "stale_table",
                    terminal_id=r.terminal_id,
                    seq=r.seq,
                    card_id=r.card_id,
                    detail=f"generation {r.revocation_generation}",
                )
            )
    if not _may_be_far(terminals, opts.min_travel_m):
        return
    # One sort by (card, time, terminal, seq) walks each card's rides in _order.
    for a, b in itertools.pairwise(sorted(rides, key=_CARD_ORDER)):
        if a.card_id != b.card_id or a.terminal_id == b.terminal_id:
            continue
        ta, tb = terminals.get(a.terminal_id), terminals.get(b.terminal_id)
        if ta is None or tb is None:
            continue
        dist = math.isqrt((ta.x_m - tb.x_m) ** 2 + (ta.y_m - tb.y_m) ** 2)
        dt_ms = b.time_ms - a.time_ms
        # faster than max_speed_kmh: dist/dt_ms m/ms = dist*3600/dt_ms km/h
        if dist >= opts.min_travel_m and dist * 3600 > opts.max_speed_kmh * dt_ms:
            anomalies.append(
                Anomaly(
                    "impossible_travel",
                    terminal_id=b.terminal_id,
                    seq=b.seq,
                    card_id=b.card_id,
                    detail=f"{dist} m in {dt_ms} ms after terminal {a.terminal_id} seq {a.seq}",
                )
            )


def _may_be_far(terminals: Mapping[int, TerminalInfo], min_travel_m: int) -> bool:
    """False when no two terminals are ``min_travel_m`` apart (so no trip can be flagged).

    Every distance between two terminals is at most their bounding box's diagonal.
    """
    if not terminals:
        return False
    xs = [t.x_m for t in terminals.values()]
    ys = [t.y_m for t in terminals.values()]
    return math.isqrt((max(xs) - min(xs)) ** 2 + (max(ys) - min(ys)) ** 2) >= min_travel_m


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


def _price(
    rides: list[Ride], day: dt.date, fare_table: FareTable, anomalies: list[Anomaly]
) -> list[PricedRide]:
    fares = _DayFares(fare_table, day)
    out: list[PricedRide] = []
    metro: list[Ride] = []
    board = int(Direction.BOARD)
    for r in rides:
        if r.direction == board:
            fen = fares.bus(r.operator, r.line)
            if fen is None:
                anomalies.append(_no_fare(r, "no bus fare for this line"))
            out.append(PricedRide(r, fen or 0, "bus"))
        else:
            metro.append(r)
    # One sort by (card, time, terminal, seq), then each card's rides in _order.
    metro.sort(key=_CARD_ORDER)
    for _, group in itertools.groupby(metro, key=_CARD):
        card_rides = list(group)
        # Per operator, a stack of entries not yet matched: an exit takes the latest.
        open_entries: dict[str, list[Ride]] = defaultdict(list)
        for r in card_rides:
            stack = open_entries[r.operator]
            if r.direction == Direction.ENTRY:
                stack.append(r)
                continue
            if not stack:
                out.append(PricedRide(r, _unpaired(fares, "exit", r, anomalies), "unpaired_exit"))
                continue
            entry = stack.pop()
            fen = _trip_fare(fares, entry, r, anomalies)
            out.append(PricedRide(entry, 0, "metro_entry", r.terminal_id, r.seq))
            out.append(PricedRide(r, fen, "metro_exit", entry.terminal_id, entry.seq))
        for stack in open_entries.values():
            for e in stack:
                out.append(PricedRide(e, _unpaired(fares, "entry", e, anomalies), "unpaired_entry"))
    return out


def _no_fare(r: Ride, detail: str) -> Anomaly:
    return Anomaly(
        "no_fare", terminal_id=r.terminal_id, seq=r.seq, card_id=r.card_id, detail=detail
    )


def _unpaired(fares: _DayFares, which: str, r: Ride, anomalies: list[Anomaly]) -> int:
    fen = fares.unpaired(which, r.operator)
    if fen is None:
        anomalies.append(_no_fare(r, f"no metro fare table for unpaired {which}"))
        return 0
    return fen


def _trip_fare(fares: _DayFares, entry: Ride, exit_: Ride, anomalies: list[Anomaly]) -> int:
    table = fares.metro(exit_.operator)
    if table is None:
        anomalies.append(_no_fare(exit_, "no metro fare table"))
        return 0
    a, b = fares.station_m(table, entry.place), fares.station_m(table, exit_.place)
    if a is None or b is None:
        anomalies.append(
            _no_fare(
                exit_, f"station {entry.place if a is None else exit_.place} not in the fare table"
            )
        )
        return 0
    return int(table.fare_for(abs(a - b)))
