"""The merge's array steps agree with plain-Python oracles on arbitrary nights.

The travel check picks candidate pairs with floating point and then decides each in
integers; the counter check and the per-card order are numpy sorts. Each is held here to
a straightforward Python version of the same rule.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.card.crypto import Algorithm
from farecore.journal.terminal import Direction
from farecore.settlement.anomalies import Anomaly
from farecore.settlement.merge import MergeOptions, _reused_counters
from farecore.settlement.rides import Rides
from farecore.settlement.terminals import TerminalInfo
from farecore.settlement.travel import travel

TIDS = (1, 2, 3, 4, 5)


@st.composite
def nights(draw: st.DrawFn, coord: int) -> tuple[Rides, dict[int, TerminalInfo]]:
    n = draw(st.integers(0, 40))
    keys = draw(
        st.lists(
            st.tuples(st.sampled_from(TIDS), st.integers(1, 60)),
            min_size=n,
            max_size=n,
            unique=True,
        )
    )
    keys.sort()  # (terminal, seq) order, unique
    cards = draw(st.lists(st.sampled_from([7, 8, 2**64 - 1]), min_size=n, max_size=n))
    times = draw(st.lists(st.integers(0, 4_000_000), min_size=n, max_size=n))
    counters = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    registered = draw(st.lists(st.sampled_from(TIDS), unique=True, min_size=1))
    terminals = {
        t: TerminalInfo(
            t,
            "op",
            "L",
            f"P{t}",
            Direction.BOARD,
            Algorithm.ED25519,
            bytes(32),
            draw(st.integers(-coord, coord)),
            draw(st.integers(-coord, coord)),
        )
        for t in registered
    }
    rides = Rides(
        (("op", "L", "P", int(Direction.BOARD)),),
        np.zeros(n, dtype=np.int32),
        np.array([k[0] for k in keys], dtype=np.uint64),
        np.array([k[1] for k in keys], dtype=np.uint64),
        np.array(times, dtype=np.int64),
        np.array(cards, dtype=np.uint64),
        np.array(counters, dtype=np.int64),
        np.zeros((n, 32), dtype=np.uint8),
        {},
    )
    return rides, terminals


@st.composite
def edge_nights(draw: st.DrawFn) -> tuple[Rides, dict[int, TerminalInfo], MergeOptions]:
    """Nights whose distances sit on the travel check's edges (min distance and speed)."""
    coords = draw(
        st.lists(
            st.tuples(st.integers(-50_000, 50_000), st.integers(-50_000, 50_000)),
            min_size=2,
            max_size=len(TIDS),
        )
    )
    tids = TIDS[: len(coords)]
    dists = [
        math.isqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2)
        for a, b in itertools.combinations(coords, 2)
    ]
    kmh = draw(st.integers(1, 300))
    opts = MergeOptions(
        max_speed_kmh=kmh, min_travel_m=draw(st.sampled_from(dists)) + draw(st.integers(-1, 1))
    )
    # Time steps on the speed edge of every distance: dist * 3600 == kmh * step, +- 1 ms.
    steps = sorted({max(0, d * 3600 // kmh + e) for d in dists for e in (-1, 0, 1)})
    terminals = {
        t: TerminalInfo(t, "op", "L", f"P{t}", Direction.BOARD, Algorithm.ED25519, bytes(32), x, y)
        for t, (x, y) in zip(tids, coords, strict=True)
    }
    next_seq = dict.fromkeys(tids, 1)
    rows = []
    for card in (7, 8):
        t = draw(st.integers(0, 10_000))
        for _ in range(draw(st.integers(0, 8))):
            tid = draw(st.sampled_from(tids))
            rows.append((tid, next_seq[tid], t, card))
            next_seq[tid] += 1
            t += draw(st.sampled_from(steps))
    rows.sort()
    n = len(rows)
    rides = Rides(
        (("op", "L", "P", int(Direction.BOARD)),),
        np.zeros(n, dtype=np.int32),
        np.array([r[0] for r in rows], dtype=np.uint64),
        np.array([r[1] for r in rows], dtype=np.uint64),
        np.array([r[2] for r in rows], dtype=np.int64),
        np.array([r[3] for r in rows], dtype=np.uint64),
        np.zeros(n, dtype=np.int64),
        np.zeros((n, 32), dtype=np.uint8),
        {},
    )
    return rides, terminals, opts


def travel_oracle(
    rides: Rides, terminals: dict[int, TerminalInfo], opts: MergeOptions
) -> set[tuple[int, int, int, str]]:
    rows = [
        (int(c), int(t), int(tid), int(s))
        for c, t, tid, s in zip(
            rides.card_id, rides.time_ms, rides.terminal_id, rides.seq, strict=True
        )
    ]
    out = set()
    for a, b in itertools.pairwise(sorted(rows)):
        if a[0] != b[0] or a[2] == b[2] or a[2] not in terminals or b[2] not in terminals:
            continue
        ta, tb = terminals[a[2]], terminals[b[2]]
        dist = math.isqrt((ta.x_m - tb.x_m) ** 2 + (ta.y_m - tb.y_m) ** 2)
        if dist >= opts.min_travel_m and dist * 3600 > opts.max_speed_kmh * (b[1] - a[1]):
            out.add(
                (b[2], b[3], b[0], f"{dist} m in {b[1] - a[1]} ms after terminal {a[2]} seq {a[3]}")
            )
    return out


def _got(anomalies: list[Anomaly]) -> set[tuple[int, int, int, str]]:
    return {(a.terminal_id, a.seq, a.card_id, a.detail) for a in anomalies}


@settings(max_examples=300, deadline=None)
@given(nights(coord=200_000), st.integers(0, 5000), st.integers(1, 400))
def test_travel_arrays_equal_the_integer_oracle(night, min_m: int, kmh: int) -> None:  # type: ignore[no-untyped-def]
    rides, terminals = night
    opts = MergeOptions(max_speed_kmh=kmh, min_travel_m=min_m)
    found: list[Anomaly] = []
    travel(rides, rides.by_card(), terminals, opts, found)
    assert len(found) == len(_got(found))
    assert _got(found) == travel_oracle(rides, terminals, opts)


@settings(max_examples=400, deadline=None)
@given(edge_nights())
def test_travel_arrays_on_the_edges_equal_the_integer_oracle(night) -> None:  # type: ignore[no-untyped-def]
    rides, terminals, opts = night
    found: list[Anomaly] = []
    travel(rides, rides.by_card(), terminals, opts, found)
    assert _got(found) == travel_oracle(rides, terminals, opts)


@settings(max_examples=100, deadline=None)
@given(nights(coord=2**40))
def test_travel_with_huge_coordinates_equals_the_oracle(night) -> None:  # type: ignore[no-untyped-def]
    rides, terminals = night
    opts = MergeOptions()
    found: list[Anomaly] = []
    travel(rides, rides.by_card(), terminals, opts, found)
    assert _got(found) == travel_oracle(rides, terminals, opts)


@settings(max_examples=300, deadline=None)
@given(nights(coord=10))
def test_reused_counter_check_equals_a_set(night) -> None:  # type: ignore[no-untyped-def]
    rides, _ = night
    pairs = list(zip(rides.card_id.tolist(), rides.counter.tolist(), strict=True))
    found: list[Anomaly] = []
    kept = _reused_counters(rides, found)
    assert (kept is None) == (len(set(pairs)) == len(pairs))
    if kept is not None:
        # Exactly one use of each (card, counter) is kept: the earliest.
        kept_pairs = [pairs[i] for i in kept.tolist()]
        assert sorted(set(kept_pairs)) == sorted(kept_pairs) == sorted(set(pairs))

        def when(j: int) -> tuple[int, int, int]:
            return (int(rides.time_ms[j]), int(rides.terminal_id[j]), int(rides.seq[j]))

        for i in kept.tolist():
            same = [j for j, p in enumerate(pairs) if p == pairs[i]]
            assert min(same, key=when) == i


@settings(max_examples=200, deadline=None)
@given(nights(coord=10))
def test_card_order_equals_a_python_sort(night) -> None:  # type: ignore[no-untyped-def]
    rides, _ = night
    rows = [
        (int(c), int(t), int(tid), int(s), i)
        for i, (c, t, tid, s) in enumerate(
            zip(rides.card_id, rides.time_ms, rides.terminal_id, rides.seq, strict=True)
        )
    ]
    assert rides.by_card().tolist() == [r[4] for r in sorted(rows)]
