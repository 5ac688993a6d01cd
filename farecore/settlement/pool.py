"""The day's rides in one table: every admitted batch's columns, then the held rides.

Each batch's rides share their terminal's context, so a context is stored once and each
row carries its code.
"""

from __future__ import annotations

import numpy as np

from farecore.settlement.ledger import HeldRide
from farecore.settlement.partial import Partial
from farecore.settlement.rides import Context, Rides

__all__ = ["pool_rides", "with_held"]


def pool_rides(good: list[Partial]) -> tuple[Rides, list[int]]:
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


def with_held(rides: Rides, held: list[HeldRide]) -> Rides:
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
