"""The days a night pays: each earlier day a late batch reopened, then the settled day.

Each day is settled by ``merge.settle_day`` with what the ledger says around it (its
held rides, the rides earlier nights took near it, the terminals already settled for
it); the counters one day takes are barred from the days after it tonight.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np

from farecore.decide.revocation import RevocationInForce
from farecore.journal.batch import day_bounds_ms
from farecore.settlement.admission import Admission, Admitted
from farecore.settlement.fares import FareTable
from farecore.settlement.inputs import SettlementInputs
from farecore.settlement.ledger import Ledger, TakenRide
from farecore.settlement.merge import DayInputs, DayResult, settle_day
from farecore.settlement.options import MergeOptions, RevocationGeneration
from farecore.settlement.partial import Partial

__all__ = ["merge_options", "settle_days"]

_NO_CARDS = np.zeros(0, dtype=np.uint64)


def merge_options(inputs: SettlementInputs, admitted: list[Partial]) -> MergeOptions:
    """The revocation knowledge the merge needs, for the cards that rode tonight."""
    revoked = dict(inputs.revoked_at)
    cards = np.unique(np.concatenate([p.rides.card_id for p in admitted] or [_NO_CARDS]))
    gens = []
    for table in inputs.tables:
        found = table.find_many(cards)
        at = table.revoked_at
        for card, pos in zip(cards[found >= 0].tolist(), found[found >= 0].tolist(), strict=True):
            when = int(at[pos])
            revoked[card] = min(when, revoked.get(card, when))
        gens.append(
            RevocationGeneration(
                int(table.generation),
                int(table.created_at),
                _holder(table),
            )
        )
    return MergeOptions(
        revoked_at=revoked,
        generations=tuple(gens),
        revocation_max_age_s=inputs.fares.revocation_max_age_s,
    )


def _holder(table: RevocationInForce) -> Callable[[np.ndarray], np.ndarray]:
    def holds(cards: np.ndarray) -> np.ndarray:
        found: np.ndarray = table.find_many(np.ascontiguousarray(cards, dtype=np.uint64)) >= 0
        return found

    return holds


_DAY_MS = 86_400_000


def _max_window_ms(fares: FareTable) -> int:
    return max((w for p in fares.operators for _, w in p.passback_s), default=0) * 1000


def _context_bounds(day: dt.date, fares: FareTable) -> tuple[int, int]:
    """[start, end) of the rides that can bear on ``day``'s: a passback window before its
    first possible time; with a venue, the whole service days on either side its rides
    may stray into within the clock tolerance (an entry is checked against its own day)."""
    start, end = day_bounds_ms(day, fares.utc_offset_min)
    tol = fares.clock_tolerance_s * 1000
    venues = any(p.kind == "venue" for p in fares.operators)
    before = max(_max_window_ms(fares), _DAY_MS if venues else 0)
    return start - tol - before, end + tol + (_DAY_MS if venues else 0)


def _context(
    ledger: Ledger, night: int, day: dt.date, fares: FareTable, tonight: list[TakenRide]
) -> list[TakenRide]:
    """Rides taken around ``day`` by earlier nights and by the days settled before it
    tonight (a correction's rides bear on the next day's)."""
    low, high = _context_bounds(day, fares)
    earlier = ledger.taken_between(night, low, high)
    return earlier + [r for r in tonight if low <= r.time_ms < high]


def _taken_check(
    ledger: Ledger, night: int, tonight: set[tuple[int, int]]
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def taken(cards: np.ndarray, counters: np.ndarray) -> np.ndarray:
        mask = ledger.taken_mask(night, cards, counters)
        if tonight:
            seen = np.fromiter({card for card, _ in tonight}, dtype=np.uint64)
            for i in np.flatnonzero(np.isin(cards, seen)).tolist():
                if (int(cards[i]), int(counters[i])) in tonight:
                    mask[i] = True
        return mask

    return taken


def settle_days(
    inputs: SettlementInputs,
    admission: Admission,
    ledger: Ledger,
    night: int,
    opts: MergeOptions,
) -> tuple[list[DayResult], DayResult]:
    """Each earlier day a late batch reopened (its correction, oldest first), then the
    settled day. Every day is settled the same way; the counters each one takes are
    barred from the days after it tonight."""
    by_day: dict[str, list[Admitted]] = {inputs.day.isoformat(): []}
    for a in admission.admitted:
        by_day.setdefault(a.partial.day, []).append(a)
    results: list[DayResult] = []
    taken: set[tuple[int, int]] = set()
    taken_rides: list[TakenRide] = []
    for day_text in sorted(by_day):
        day, admitted = dt.date.fromisoformat(day_text), by_day[day_text]
        present = ledger.settled_terminals(night, day_text) | {
            a.partial.terminal_id for a in admitted
        }
        result = settle_day(
            DayInputs(
                day,
                admitted,
                ledger.held(night, day_text),
                _context(ledger, night, day, inputs.fares, taken_rides),
                frozenset(inputs.terminals) - present,
                _taken_check(ledger, night, taken),
                correction=day != inputs.day,
            ),
            inputs.fares,
            inputs.terminals,
            opts,
        )
        results.append(result)
        rides = result.rides.rides
        cards, counters = rides.card_id.tolist(), rides.counter.tolist()
        taken |= set(zip(cards, counters, strict=True))
        taken |= {(h.card_id, h.counter) for h in result.held}
        # As the ledger will hold them: every ride paid or held tonight, where and when.
        taken_rides += [
            TakenRide(c, k, t, ms)
            for c, k, t, ms in zip(
                cards, counters, rides.terminal_id.tolist(), rides.time_ms.tolist(), strict=True
            )
        ]
        taken_rides += [
            TakenRide(h.card_id, h.counter, h.terminal_id, h.time_ms) for h in result.held
        ]
    return results[:-1], results[-1]
