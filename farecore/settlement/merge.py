"""One service day's settlement: admitted batches in, what is paid and held out.

The checks that need more than one batch run in a fixed order (``settle_day``): each
ride's time against its terminal's chain; a card counter used twice tonight, or taken
by an earlier night; the revocation tables given (``revoked``); the operators'
anti-passback rules across all of a place's gates (``passback``). Then rides held by
earlier nights rejoin (``pool``), flags are raised (``revoked``, ``travel``), and
pairing and pricing (``pricing``) decide what is paid and what waits. Rides are columns
(``rides.Rides``). This module must never verify signatures (the units did), read
files, nor use floats for money.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from farecore.journal.records import Direction
from farecore.settlement.admission import Admitted
from farecore.settlement.anomalies import Anomaly
from farecore.settlement.fares import FareTable
from farecore.settlement.ledger import HeldRide, TakenRide
from farecore.settlement.options import MergeOptions, RevocationGeneration
from farecore.settlement.partial import NO_TIME
from farecore.settlement.passback import passback
from farecore.settlement.pool import pool_rides, with_held
from farecore.settlement.pricing import price
from farecore.settlement.revoked import not_revoked, revocation_flags
from farecore.settlement.rides import PricedRides, Rides
from farecore.settlement.terminals import TerminalInfo
from farecore.settlement.travel import travel

__all__ = [
    "DayInputs",
    "DayResult",
    "MergeOptions",
    "RevocationGeneration",
    "Settlement",
    "Total",
    "settle_day",
]


@dataclass(frozen=True, slots=True)
class Total:
    day: str
    operator: str
    line: str
    rides: int
    amount_fen: int


@dataclass(frozen=True, slots=True)
class DayInputs:
    """What a night knows about one service day it pays (its own, or a late one's)."""

    day: dt.date
    admitted: list[Admitted]  # this day's batches that continue their chains
    held: list[HeldRide]  # rides an earlier night held for this day
    context: list[TakenRide]  # rides earlier nights took around this day (passback)
    missing: frozenset[int]  # registered terminals with no batch for the day
    taken: Callable[[np.ndarray, np.ndarray], np.ndarray]  # counters taken before
    correction: bool = False


@dataclass(frozen=True, slots=True)
class DayResult:
    """One day's part of a night: what is paid, held, resolved, and found."""

    day: str
    rides: PricedRides  # the rides paid tonight
    totals: tuple[Total, ...]
    anomalies: tuple[Anomaly, ...]
    held: tuple[HeldRide, ...]  # rides newly held tonight
    resolved: tuple[tuple[int, int], ...]  # (terminal, seq) of earlier held rides settled
    stats: dict[str, int]


def settle_day(
    inputs: DayInputs,
    fares: FareTable,
    terminals: Mapping[int, TerminalInfo],
    options: MergeOptions | None = None,
) -> DayResult:
    """Check, pair and price one service day's admitted rides (see docs/settlement.md)."""
    opts = options or MergeOptions()
    good = [a.partial for a in inputs.admitted]
    anomalies: list[Anomaly] = [a for p in good for a in p.anomalies]
    pool, starts = pool_rides(good)
    # Admission took each terminal's batches in chain order, so no (terminal, seq)
    # appears twice in the pool.
    rides = pool.take(np.flatnonzero(_clock_order(inputs.admitted, starts, pool, fares, anomalies)))
    first_uses = _reused_counters(rides, anomalies)
    if first_uses is not None:
        rides = rides.take(first_uses)
    rides = rides.take(_not_taken(rides, inputs.taken, anomalies))
    rides = rides.take(not_revoked(rides, opts, anomalies))
    rides = rides.take(passback(rides, inputs.context, fares, terminals, anomalies))
    checked = len(rides)
    rides = with_held(rides, inputs.held)
    revocation_flags(rides, opts, anomalies)
    by_card = rides.by_card()
    travel(rides, by_card, terminals, opts, anomalies)
    hold = _hold_operators(inputs.missing, terminals)
    priced = price(rides, by_card, inputs.day, fares, anomalies, hold)
    counts = {"batches": len(good), "rides_verified": len(pool), "rides_checked": checked}
    counts["taps"] = sum(p.taps for p in good)
    counts["denied_taps"] = sum(p.denied for p in good)
    return _day_result(inputs, rides, priced, anomalies, counts)


def _day_result(
    inputs: DayInputs,
    rides: Rides,
    priced: tuple[PricedRides, dict[tuple[str, str], list[int]], np.ndarray, int],
    anomalies: list[Anomaly],
    counts: dict[str, int],
) -> DayResult:
    """What the day pays, holds and resolves, from its priced rides."""
    day_text = inputs.day.isoformat()
    all_rides, by_line, held_mask, at_stake = priced
    was_held = rides.held
    assert was_held is not None
    paid_rows = np.flatnonzero(~held_mask)
    newly_held = np.flatnonzero(held_mask & ~was_held)
    resolved = np.flatnonzero(~held_mask & was_held)
    paid = PricedRides(
        rides.take(paid_rows),
        all_rides.fare_fen[paid_rows],
        all_rides.trip[paid_rows],
        all_rides.paired_terminal_id[paid_rows],
        all_rides.paired_seq[paid_rows],
    )
    if inputs.correction:
        anomalies = [replace(a, day=day_text) for a in anomalies]
    stats = {
        "batches": counts["batches"],
        "taps": counts["taps"],
        "denied_taps": counts["denied_taps"],
        "rides_verified": counts["rides_verified"],
        "rides_checked": counts["rides_checked"],
        "rides_paid": len(paid),
        "rides_held": int(held_mask.sum()),
        "held_resolved": len(resolved),
        "amount_fen": int(paid.fare_fen.sum()),
        "unpaired_at_stake_fen": at_stake,
    }
    return DayResult(
        day=day_text,
        rides=paid,
        totals=tuple(Total(day_text, o, ln, n, a) for (o, ln), (n, a) in sorted(by_line.items())),
        anomalies=tuple(sorted(set(anomalies))),
        held=tuple(_held_rides(rides, newly_held, day_text)),
        resolved=tuple(rides.where(int(r))[:2] for r in resolved),
        stats=stats,
    )


def _held_rides(rides: Rides, rows: np.ndarray, day: str) -> list[HeldRide]:
    assert rides.generation is not None
    out = []
    for r in rows.tolist():
        tid, seq, card = rides.where(r)
        flags = rides.flagged.get(r, ((), None))[0]
        out.append(
            HeldRide(
                tid,
                seq,
                day,
                int(rides.time_ms[r]),
                card,
                int(rides.counter[r]),
                rides.record_hash[r].tobytes(),
                int(rides.generation[r]),
                tuple(flags),
                rides.contexts[int(rides.context[r])],
            )
        )
    return out


def _hold_operators(
    missing: frozenset[int], terminals: Mapping[int, TerminalInfo]
) -> dict[str, frozenset[str]]:
    """Operators whose unpaired entries (exits) wait: one of their exit (entry) gates
    handed in nothing, and the other half of a trip may be on it."""
    entry: set[str] = set()
    exit_: set[str] = set()
    for tid in missing:
        t = terminals.get(tid)
        if t is None:
            continue
        if t.direction == Direction.EXIT:
            entry.add(t.operator)
        elif t.direction == Direction.ENTRY:
            exit_.add(t.operator)
    return {"entry": frozenset(entry), "exit": frozenset(exit_)}


def _clock_order(
    admitted: list[Admitted],
    starts: list[int],
    pool: Rides,
    fares: FareTable,
    anomalies: list[Anomaly],
) -> np.ndarray:
    """Rides not behind an earlier record of their terminal's chain by more than the
    clock tolerance (bool per pool row)."""
    ok = np.ones(len(pool), dtype=bool)
    tol = fares.clock_tolerance_s * 1000
    for a, start in zip(admitted, starts, strict=True):
        r = a.partial.rides
        if not len(r):
            continue
        before = r.time_before if r.time_before is not None else np.full(len(r), NO_TIME)
        floor = np.maximum(before, a.time_floor)
        behind = (floor > NO_TIME) & (floor - r.time_ms > tol)
        for i in np.flatnonzero(behind).tolist():
            ok[start + i] = False
            tid, seq, card = pool.where(start + i)
            anomalies.append(
                Anomaly(
                    "clock_behind",
                    terminal_id=tid,
                    seq=seq,
                    card_id=card,
                    batch=a.partial.batch_sha256.hex(),
                    detail=f"{int(floor[i] - r.time_ms[i])} ms behind an earlier record",
                )
            )
    return ok


def _not_taken(
    rides: Rides, taken: Callable[[np.ndarray, np.ndarray], np.ndarray], anomalies: list[Anomaly]
) -> np.ndarray:
    """Rows whose card counter no earlier night took."""
    mask = taken(rides.card_id, rides.counter)
    for row in np.flatnonzero(mask).tolist():
        tid, seq, card = rides.where(row)
        anomalies.append(
            Anomaly(
                "already_paid",
                terminal_id=tid,
                seq=seq,
                card_id=card,
                detail=f"counter {int(rides.counter[row])} was paid or held on an earlier "
                "night, or by tonight's correction of an earlier day",
            )
        )
    return np.flatnonzero(~mask)


def _reused_counters(rides: Rides, anomalies: list[Anomaly]) -> np.ndarray | None:
    """Rows to keep when a card counter was used twice (only its first use is paid), or
    None when no counter was (the usual night)."""
    o = np.lexsort((rides.counter, rides.card_id))
    card, counter = rides.card_id[o], rides.counter[o]
    if not np.any((card[1:] == card[:-1]) & (counter[1:] == counter[:-1])):
        return None
    first: dict[tuple[int, int], int] = {}
    repeats: dict[tuple[int, int], list[int]] = {}
    keys = zip(rides.card_id.tolist(), rides.counter.tolist(), strict=True)
    for row, key in enumerate(keys):
        seen = first.get(key)
        if seen is None:
            first[key] = row
        else:
            repeats.setdefault(key, [seen]).append(row)
    time_ms, tids, seqs = rides.time_ms, rides.terminal_id, rides.seq
    dropped: set[int] = set()
    for (card_id, count), group in repeats.items():
        group.sort(key=lambda i: (int(time_ms[i]), int(tids[i]), int(seqs[i])))
        for k, row in enumerate(group):
            if k:
                dropped.add(row)
            tid, seq, _ = rides.where(row)
            anomalies.append(
                Anomaly(
                    "reused_counter",
                    terminal_id=tid,
                    seq=seq,
                    card_id=card_id,
                    detail=f"counter {count} used {len(group)} times; "
                    + ("paid (first use)" if k == 0 else "not paid"),
                )
            )
    return np.array([i for i in range(len(rides)) if i not in dropped], dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Settlement:
    """A night: the settled day's result, the late days' corrections, and what was found.

    ``rides``, ``totals`` and ``stats`` are the settled day's; ``corrections`` hold one
    result per earlier day that a late batch reopened; ``anomalies`` has every finding
    of the night (a correction's carry its day).
    """

    day: str
    inputs: tuple[str, ...]  # the batch files considered, SHA-256 hex, sorted
    rides: PricedRides
    totals: tuple[Total, ...]
    anomalies: tuple[Anomaly, ...]
    stats: dict[str, int]
    corrections: tuple[DayResult, ...] = ()
    night: int = 0
    rerun: bool = False
    directory: dict[str, int] = field(default_factory=dict)
