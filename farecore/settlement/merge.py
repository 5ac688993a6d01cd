"""One service day's settlement: admitted batches in, what is paid and held out.

The checks that need more than one batch run here, in a fixed order: each ride's time
against its terminal's chain; (terminal, seq) duplicates; a card counter used twice
tonight, or taken by an earlier night; the revocation generation the ride was decided
under; the operators' anti-passback rules across all of a place's gates. Then rides held
by earlier nights rejoin, flags are raised (impossible travel, revoked-after, stale
tables), and pairing and pricing (``pricing``) decide what is paid and what waits.
Rides are columns (``rides.Rides``). This module must never verify signatures (the
units did), read files, nor use floats for money.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from farecore.journal.records import Direction
from farecore.settlement.admission import Admitted
from farecore.settlement.anomalies import Anomaly
from farecore.settlement.fares import FareTable
from farecore.settlement.ledger import HeldRide, TakenRide
from farecore.settlement.pricing import price
from farecore.settlement.rides import Context, PricedRides, Rides
from farecore.settlement.terminals import TerminalInfo
from farecore.settlement.unit import NO_TIME, Partial

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
class RevocationGeneration:
    """A revocation table the settlement was given: which cards its generation held."""

    generation: int
    created_at: int  # UTC Unix seconds
    holds: Callable[[np.ndarray], np.ndarray]  # uint64 card ids -> bool mask


@dataclass(frozen=True, slots=True)
class MergeOptions:
    """Limits for the travel check; ``revoked_at`` maps card id to UTC Unix seconds;
    ``generations`` are the signed tables given, for the generation rule."""

    max_speed_kmh: int = 120
    min_travel_m: int = 2000
    revoked_at: Mapping[int, int] = field(default_factory=dict)
    generations: tuple[RevocationGeneration, ...] = ()
    revocation_max_age_s: int = 172_800


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
    day = inputs.day
    day_text = day.isoformat()
    good = [a.partial for a in inputs.admitted]
    anomalies: list[Anomaly] = [a for p in good for a in p.anomalies]
    pool, starts = _pool(good)
    # Admission took each terminal's batches in chain order, so no (terminal, seq)
    # appears twice in the pool.
    rides = pool.take(np.flatnonzero(_clock_order(inputs.admitted, starts, pool, fares, anomalies)))
    first_uses = _reused_counters(rides, anomalies)
    if first_uses is not None:
        rides = rides.take(first_uses)
    rides = rides.take(_not_taken(rides, inputs.taken, anomalies))
    rides = rides.take(_not_revoked(rides, opts, anomalies))
    rides = rides.take(_passback(rides, inputs.context, fares, terminals, anomalies))
    new_count = len(rides)
    rides = _with_held(rides, inputs.held)
    _flags(rides, opts, anomalies)
    by_card = rides.by_card()
    _travel(rides, by_card, terminals, opts, anomalies)
    priced, by_line, held_mask, at_stake = price(
        rides, by_card, day, fares, anomalies, _hold_operators(inputs.missing, terminals)
    )
    was_held = rides.held
    assert was_held is not None
    paid_rows = np.flatnonzero(~held_mask)
    newly_held = np.flatnonzero(held_mask & ~was_held)
    resolved = np.flatnonzero(~held_mask & was_held)
    paid = PricedRides(
        rides.take(paid_rows),
        priced.fare_fen[paid_rows],
        priced.trip[paid_rows],
        priced.paired_terminal_id[paid_rows],
        priced.paired_seq[paid_rows],
    )
    if inputs.correction:
        anomalies = [replace(a, day=day_text) for a in anomalies]
    stats = {
        "batches": len(good),
        "taps": sum(p.taps for p in good),
        "denied_taps": sum(p.denied for p in good),
        "rides_verified": len(pool),
        "rides_checked": new_count,
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


def _not_revoked(rides: Rides, opts: MergeOptions, anomalies: list[Anomaly]) -> np.ndarray:
    """Rows that no revocation table given shows a gate would have refused.

    Two rules; the generation a ride records is the terminal's own word, so it is used
    only to refuse, never to excuse:

    - by generation: a ride is judged by the newest table given whose generation is at
      or below the one it records; if that table holds the card, the gate that looked
      the card up there refused it;
    - by age: a gate may not decide on a table older than the maximum age, so at a
      ride's time every table it could hold was made after ``created_at + max_age``
      minus that age; a ride at or after that point of a table holding the card (and
      every later table given holding it too) was refused, whatever generation it names.
    """
    gens = sorted(opts.generations, key=lambda g: g.generation)
    gen = rides.generation
    assert gen is not None
    refused = np.zeros(len(rides), dtype=bool)
    why: dict[int, str] = {}
    for i, g in enumerate(gens):
        upper = gens[i + 1].generation if i + 1 < len(gens) else np.iinfo(np.int64).max
        rows = np.flatnonzero((gen >= g.generation) & (gen < upper))
        for row in rows[g.holds(rides.card_id[rows])].tolist():
            refused[row] = True
            why[row] = (
                f"decided under generation {int(gen[row])}; "
                f"generation {g.generation} already held the card"
            )
        since_ms = (g.created_at + opts.revocation_max_age_s) * 1000
        rows = np.flatnonzero(~refused & (rides.time_ms >= since_ms))
        hit = rows[g.holds(rides.card_id[rows])]
        for later in gens[i + 1 :]:
            hit = hit[later.holds(rides.card_id[hit])]
        for row in hit.tolist():
            refused[row] = True
            why[row] = (
                f"generation {g.generation} (made at {g.created_at}) held the card more than "
                f"{opts.revocation_max_age_s} s before the ride; the ride names generation "
                f"{int(gen[row])}"
            )
    # A farecore gate names a generation on every ride it accepts: a ride naming none
    # has no claim to have been decided before its card's revocation.
    if gens:
        rows = np.flatnonzero(~refused & (gen < 0))
        hit = np.zeros(len(rows), dtype=bool)
        for g in gens:
            hit |= g.holds(rides.card_id[rows])
        for row in rows[hit].tolist():
            refused[row] = True
            why[row] = "the ride names no revocation generation, and a table given holds the card"
    for row in sorted(why):
        tid, seq, card = rides.where(row)
        anomalies.append(
            Anomaly("revoked_at_ride", terminal_id=tid, seq=seq, card_id=card, detail=why[row])
        )
    return np.flatnonzero(~refused)


def _passback(
    rides: Rides,
    context: list[TakenRide],
    fares: FareTable,
    terminals: Mapping[int, TerminalInfo],
    anomalies: list[Anomaly],
) -> np.ndarray:
    """Rows the operators' anti-passback rules let through, walked as the gates do.

    Per (operator, place) — or per terminal, with scope "terminal" — and card, in time
    order: a ride less than the window after the last ride let through there is
    refused, and a refused ride does not restart the window. Rides earlier nights took
    (``context``) count as let through.
    """
    n = len(rides)
    windows = np.zeros(len(rides.contexts), dtype=np.int64)
    for code, (op, _line, _place, direction) in enumerate(rides.contexts):
        policy = fares.policy(op)
        windows[code] = 0 if policy is None else policy.window_s(direction) * 1000
    window = windows[rides.context] if n else np.zeros(0, dtype=np.int64)
    subject = np.flatnonzero(window > 0)
    if not len(subject):
        return np.arange(n)
    keys: dict[tuple[str, str, int], int] = {}

    def key_of(terminal_id: int, op: str, place: str) -> int:
        policy = fares.policy(op)
        per_gate = policy is not None and policy.passback_scope == "terminal"
        return keys.setdefault((op, place, terminal_id if per_gate else -1), len(keys))

    # A ride's place key comes from its terminal (whose rides all share one context).
    terms, first, inverse = np.unique(
        rides.terminal_id[subject], return_index=True, return_inverse=True
    )
    per_terminal = np.zeros(len(terms), dtype=np.int64)
    for i, (tid, row) in enumerate(zip(terms.tolist(), first.tolist(), strict=True)):
        op, _line, place, _direction = rides.contexts[int(rides.context[subject[row]])]
        per_terminal[i] = key_of(tid, op, place)
    key = per_terminal[inverse]
    anchors: list[tuple[int, int, int]] = []  # (key, card, time) of rides taken before
    for taken in context:
        info = terminals.get(taken.terminal_id)
        rule = fares.policy(info.operator) if info is not None else None
        if info is None or rule is None or not rule.window_s(int(info.direction)):
            continue
        anchor_key = key_of(taken.terminal_id, info.operator, info.place)
        anchors.append((anchor_key, taken.card_id, taken.time_ms))
    card = rides.card_id[subject]
    tms = rides.time_ms[subject]
    o = np.lexsort((rides.seq[subject], rides.terminal_id[subject], tms, card, key))
    k, c, t, w = key[o], card[o], tms[o], window[subject][o]
    same = (k[1:] == k[:-1]) & (c[1:] == c[:-1])
    close = np.zeros(len(o), dtype=bool)
    close[1:] = same & (t[1:] - t[:-1] < w[1:])
    # Only (place, card) groups with two rides inside a window, or a ride taken before,
    # need the exact walk; on an honest night that is a handful.
    suspects = {(int(k[i]), int(c[i])) for i in np.flatnonzero(close).tolist()}
    anchor_at: dict[tuple[int, int], list[int]] = {}
    for ak, acard, at in anchors:
        anchor_at.setdefault((ak, acard), []).append(at)
    if anchor_at:
        cards_before = np.fromiter({g[1] for g in anchor_at}, dtype=np.uint64)
        near = np.flatnonzero(np.isin(c, cards_before))
        present = set(zip(k[near].tolist(), c[near].tolist(), strict=True))
        suspects |= {g for g in anchor_at if g in present}
    if not suspects:
        return np.arange(n)
    refused = np.zeros(n, dtype=bool)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (ki, ci) in enumerate(zip(k.tolist(), c.tolist(), strict=True)):
        if (ki, ci) in suspects:
            groups.setdefault((ki, ci), []).append(i)
    for g, idx in groups.items():
        events = [(int(t[i]), 1, i) for i in idx] + [(at, 0, -1) for at in anchor_at.get(g, [])]
        events.sort()
        last: int | None = None
        for when, is_ride, i in events:
            if not is_ride:
                last = when if last is None else max(last, when)
                continue
            if last is not None and 0 <= when - last < int(w[i]):
                row = int(subject[o[i]])
                refused[row] = True
                tid, seq, card_id = rides.where(row)
                anomalies.append(
                    Anomaly(
                        "passback",
                        terminal_id=tid,
                        seq=seq,
                        card_id=card_id,
                        detail=f"{when - last} ms after the card's last ride there",
                    )
                )
                continue
            last = when
    return np.flatnonzero(~refused)


def _with_held(rides: Rides, held: list[HeldRide]) -> Rides:
    """The day's checked rides with the rides earlier nights held for it appended (each
    with the context it was verified in, whatever the register says now)."""
    if not held:
        return rides
    contexts = list(rides.contexts)
    codes = {c: i for i, c in enumerate(contexts)}
    context, flagged = [], dict(rides.flagged)
    n = len(rides)
    for i, h in enumerate(held):
        ctx: Context = h.context
        if ctx not in codes:
            codes[ctx] = len(contexts)
            contexts.append(ctx)
        context.append(codes[ctx])
        if h.flags:
            flagged[n + i] = (h.flags, h.generation if h.generation >= 0 else None)
    assert rides.generation is not None and rides.held is not None
    return Rides(
        tuple(contexts),
        np.concatenate([rides.context, np.array(context, dtype=np.int32)]),
        np.concatenate([rides.terminal_id, np.array([h.terminal_id for h in held], np.uint64)]),
        np.concatenate([rides.seq, np.array([h.seq for h in held], np.uint64)]),
        np.concatenate([rides.time_ms, np.array([h.time_ms for h in held], np.int64)]),
        np.concatenate([rides.card_id, np.array([h.card_id for h in held], np.uint64)]),
        np.concatenate([rides.counter, np.array([h.counter for h in held], np.int64)]),
        np.concatenate(
            [
                rides.record_hash,
                np.frombuffer(b"".join(h.record_hash for h in held), np.uint8).reshape(-1, 32),
            ]
        ),
        flagged,
        np.concatenate([rides.generation, np.array([h.generation for h in held], np.int64)]),
        np.concatenate([rides.held, np.ones(len(held), dtype=bool)]),
    )


def _pool(good: list[Partial]) -> tuple[Rides, list[int]]:
    """Every partial's rides in one table, in ``good`` order; and where each one starts."""
    contexts: dict[Context, int] = {}
    starts: list[int] = []
    context, tids, flagged = [], [], {}
    n = 0
    for p in good:
        r = p.rides
        starts.append(n)
        if not len(r):
            continue
        code = contexts.setdefault((r.operator, r.line, r.place, r.direction), len(contexts))
        context.append(np.full(len(r), code, dtype=np.int32))
        tids.append(np.full(len(r), p.terminal_id, dtype=np.uint64))
        for row, flags, generation in r.flagged:
            flagged[n + row] = (flags, generation)
        n += len(r)
    parts = [p.rides for p in good]

    def joined(name: str, dtype: type) -> np.ndarray:
        columns = [getattr(r, name) for r in parts if getattr(r, name) is not None]
        return np.concatenate(columns).astype(dtype, copy=False) if columns else np.zeros(0, dtype)

    hashes = np.frombuffer(b"".join(r.record_hash for r in parts), dtype=np.uint8)
    pool = Rides(
        tuple(contexts),
        np.concatenate(context) if context else np.zeros(0, np.int32),
        np.concatenate(tids) if tids else np.zeros(0, np.uint64),
        joined("seq", np.uint64),
        joined("time_ms", np.int64),
        joined("card_id", np.uint64),
        joined("counter", np.int64),
        hashes.reshape(-1, 32),
        flagged,
        joined("generation", np.int64),
    )
    return pool, starts


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


def _flags(rides: Rides, opts: MergeOptions, anomalies: list[Anomaly]) -> None:
    """Rides after their card's revocation, and rides under a stale table."""
    revoked_at = {c: at for c, at in opts.revoked_at.items() if 0 <= c < 1 << 64}
    held = rides.held
    assert held is not None
    if revoked_at and len(rides):
        revoked_cards = np.array(sorted(revoked_at), dtype=np.uint64)
        pos = np.searchsorted(revoked_cards, rides.card_id)
        hit = revoked_cards[np.minimum(pos, len(revoked_cards) - 1)] == rides.card_id
        for row in np.flatnonzero(hit & ~held).tolist():
            tid, seq, card_id = rides.where(row)
            revoked = revoked_at[card_id]
            if int(rides.time_ms[row]) >= revoked * 1000:
                anomalies.append(
                    Anomaly(
                        "after_revocation",
                        terminal_id=tid,
                        seq=seq,
                        card_id=card_id,
                        detail=f"revoked at {revoked}",
                    )
                )
    for row, (flags, generation) in rides.flagged.items():
        if "revocation_stale" in flags and not held[row]:
            tid, seq, card_id = rides.where(row)
            anomalies.append(
                Anomaly(
                    "stale_table",
                    terminal_id=tid,
                    seq=seq,
                    card_id=card_id,
                    detail=f"generation {generation}",
                )
            )


# Above this many metres a squared distance could leave int64: use the exact Python path.
_ARRAY_COORD_LIMIT = 1 << 30


def _travel(
    rides: Rides,
    by_card: np.ndarray,
    terminals: Mapping[int, TerminalInfo],
    opts: MergeOptions,
    anomalies: list[Anomaly],
) -> None:
    """Flag a card seen at two places further apart than it could travel in between.

    Consecutive rides of a card (in time order) are compared. Arrays pick the pairs that
    may be too fast, with a margin that only lets more pairs through; each of those is
    then decided exactly, in integers, by ``_travel_check``.
    """
    if not _may_be_far(terminals, opts.min_travel_m) or len(rides) < 2:
        return
    o = by_card
    card, tid, tms = rides.card_id[o], rides.terminal_id[o], rides.time_ms[o]
    maybe = (card[1:] == card[:-1]) & (tid[1:] != tid[:-1])
    assert rides.held is not None
    both_held = rides.held[o]
    maybe &= ~(both_held[1:] & both_held[:-1])  # flagged on the night they were held
    if all(
        abs(t.x_m) <= _ARRAY_COORD_LIMIT and abs(t.y_m) <= _ARRAY_COORD_LIMIT
        for t in terminals.values()
    ):
        ids, where = np.unique(tid, return_inverse=True)
        known = np.zeros(len(ids), dtype=bool)
        xs = np.zeros(len(ids), dtype=np.float64)
        ys = np.zeros(len(ids), dtype=np.float64)
        for k, t in enumerate(ids.tolist()):
            info = terminals.get(t)
            if info is not None:
                known[k], xs[k], ys[k] = True, info.x_m, info.y_m
        ok, x, y = known[where], xs[where], ys[where]
        # math.isqrt(d2) <= sqrt(d2) <= hypot(dx, dy) + 1: "+ 1" never drops a true pair.
        reach = np.hypot(x[1:] - x[:-1], y[1:] - y[:-1]) + 1.0
        elapsed = (tms[1:] - tms[:-1]).astype(np.float64)
        maybe &= ok[1:] & ok[:-1] & (reach >= opts.min_travel_m)
        maybe &= reach * 3600.0 > opts.max_speed_kmh * elapsed
    for j in np.flatnonzero(maybe).tolist():
        _travel_check(rides, int(o[j]), int(o[j + 1]), terminals, opts, anomalies)


def _travel_check(
    rides: Rides,
    a: int,
    b: int,
    terminals: Mapping[int, TerminalInfo],
    opts: MergeOptions,
    anomalies: list[Anomaly],
) -> None:
    """The exact test for two consecutive rides ``a``, ``b`` of one card."""
    (ta_id, a_seq, _), (tb_id, b_seq, card_id) = rides.where(a), rides.where(b)
    ta, tb = terminals.get(ta_id), terminals.get(tb_id)
    if ta is None or tb is None or ta_id == tb_id:
        return
    dist = math.isqrt((ta.x_m - tb.x_m) ** 2 + (ta.y_m - tb.y_m) ** 2)
    dt_ms = int(rides.time_ms[b]) - int(rides.time_ms[a])
    # faster than max_speed_kmh: dist/dt_ms m/ms = dist*3600/dt_ms km/h
    if dist >= opts.min_travel_m and dist * 3600 > opts.max_speed_kmh * dt_ms:
        anomalies.append(
            Anomaly(
                "impossible_travel",
                terminal_id=tb_id,
                seq=b_seq,
                card_id=card_id,
                detail=f"{dist} m in {dt_ms} ms after terminal {ta_id} seq {a_seq}",
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
