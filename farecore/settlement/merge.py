"""The deterministic merge: partial results in, the night's settlement out.

Partials are first put in a canonical order (by batch SHA-256) and exact duplicates are
dropped, so neither the order in which workers finished nor a batch ingested twice can
change a byte of the result. Then: chain continuity between batches, ride-level
deduplication and conflicts, reused counters, impossible travel, revocation and stale
table flags, then metro entry/exit pairing and pricing (``pricing``). Rides are columns
(``rides.Rides``). This module must never verify signatures (the units did) nor use
floats for money.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from farecore.settlement.anomalies import Anomaly
from farecore.settlement.fares import FareTable
from farecore.settlement.pricing import price
from farecore.settlement.rides import Context, PricedRides, Rides
from farecore.settlement.terminals import TerminalInfo
from farecore.settlement.unit import Partial

__all__ = ["MergeOptions", "Settlement", "Total", "merge"]


@dataclass(frozen=True, slots=True)
class MergeOptions:
    """Limits for the travel check; ``revoked_at`` maps card id to UTC Unix seconds."""

    max_speed_kmh: int = 120
    min_travel_m: int = 2000
    revoked_at: Mapping[int, int] = field(default_factory=dict)


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
    rides: PricedRides
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
    pool, starts = _pool(good)
    kept, dropped = _dedupe(good, starts, pool, anomalies)
    rides = pool.take(kept)
    first_uses = _reused_counters(rides, anomalies)
    if first_uses is not None:
        rides = rides.take(first_uses)
    _flags(rides, opts, anomalies)
    by_card = rides.by_card()
    _travel(rides, by_card, terminals, opts, anomalies)
    priced, by_line = price(rides, by_card, day, fares, anomalies)
    day_text = day.isoformat()
    stats = {
        "batches": len(ordered),
        "batches_rejected": sum(1 for p in ordered if not p.ok),
        "taps": sum(p.taps for p in good if p.day == day_text),
        "denied_taps": sum(p.denied for p in good if p.day == day_text),
        "rides_verified": len(pool),
        "duplicates_dropped": dropped,
        "rides_paid": len(priced),
        "amount_fen": int(priced.fare_fen.sum()),
        "anomalies": len(anomalies),
    }
    return Settlement(
        day=day_text,
        inputs=tuple(k.hex() for k in sorted(unique)),
        rides=priced,
        totals=tuple(Total(day_text, o, ln, n, a) for (o, ln), (n, a) in sorted(by_line.items())),
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
        columns = [getattr(r, name) for r in parts]
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
    )
    return pool, starts


def _dedupe(
    good: list[Partial], starts: list[int], pool: Rides, anomalies: list[Anomaly]
) -> tuple[np.ndarray, int]:
    """Pool rows unique by (terminal, seq), in that order; duplicates dropped, clashes named."""
    by_terminal: dict[int, list[int]] = defaultdict(list)
    for k, p in enumerate(good):
        by_terminal[p.terminal_id].append(k)
    pieces: list[np.ndarray] = []
    dropped = 0
    for tid, ks in sorted(by_terminal.items()):
        rows = [np.arange(starts[k], starts[k] + len(good[k].rides)) for k in ks]
        by_seq = sorted(range(len(ks)), key=lambda i: (good[ks[i]].first_seq, good[ks[i]].last_seq))
        # The usual night: one terminal's batches tile disjoint seq ranges, and a
        # partial's rides are in seq order, so concatenating them is already sorted
        # and unique. Only overlapping batches need the keyed comparison below, in the
        # canonical (batch SHA-256) order, since which copy comes first counts there.
        ranges = [(good[ks[i]].first_seq, good[ks[i]].last_seq) for i in by_seq]
        if all(a[1] < b[0] for a, b in itertools.pairwise(ranges)):
            pieces += [rows[i] for i in by_seq]
            continue
        unique, n = _dedupe_rows(tid, np.concatenate(rows).tolist(), pool, anomalies)
        pieces.append(unique)
        dropped += n
    if not pieces:
        return np.zeros(0, dtype=np.int64), 0
    return np.concatenate(pieces), dropped


def _dedupe_rows(
    tid: int, rows: list[int], pool: Rides, anomalies: list[Anomaly]
) -> tuple[np.ndarray, int]:
    """One terminal's rows (canonical order) unique by seq; same record twice is dropped,
    different records under one seq are both withheld and named."""
    first: dict[int, int] = {}
    clashes: dict[int, dict[bytes, int]] = {}
    dropped = 0
    record = pool.record_hash
    for row, seq in zip(rows, pool.seq[rows].tolist(), strict=True):
        seen = first.get(seq)
        if seen is None:
            first[seq] = row
        elif record[seen].tobytes() == record[row].tobytes():
            dropped += 1
        else:
            group = clashes.setdefault(seq, {record[seen].tobytes(): seen})
            group.setdefault(record[row].tobytes(), row)
    for seq, group in sorted(clashes.items()):
        del first[seq]
        for h in sorted(group):
            anomalies.append(
                Anomaly(
                    "conflicting_duplicate",
                    terminal_id=tid,
                    seq=seq,
                    card_id=int(pool.card_id[group[h]]),
                    detail=f"record {h.hex()[:16]}",
                )
            )
    return np.array([first[k] for k in sorted(first)], dtype=np.int64), dropped


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
    if revoked_at and len(rides):
        revoked_cards = np.array(sorted(revoked_at), dtype=np.uint64)
        pos = np.searchsorted(revoked_cards, rides.card_id)
        hit = revoked_cards[np.minimum(pos, len(revoked_cards) - 1)] == rides.card_id
        for row in np.flatnonzero(hit).tolist():
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
        if "revocation_stale" in flags:
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
