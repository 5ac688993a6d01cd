"""The impossible-travel flag: a card seen at two places further apart than it could go.

Arrays pick the pairs of consecutive rides that may be too fast; each is then decided
exactly, in integers (docs/settlement.md, "Impossible travel"). The flag never stops a
payment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from farecore.settlement.anomalies import Anomaly
from farecore.settlement.options import MergeOptions
from farecore.settlement.rides import Rides
from farecore.settlement.terminals import TerminalInfo

__all__ = ["travel"]

# Above this many metres a squared distance could leave int64: use the exact Python path.
_ARRAY_COORD_LIMIT = 1 << 30


def travel(
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
