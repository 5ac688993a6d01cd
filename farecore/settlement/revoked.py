"""The revocation checks of a day: rides a gate refused for a revoked card, and flags.

``not_revoked`` applies the tables the settlement was given (by generation and by age);
``revocation_flags`` raises ``after_revocation`` and ``stale_table`` on rides that are
paid, for review. See docs/settlement.md, step 4.
"""

from __future__ import annotations

import numpy as np

from farecore.settlement.anomalies import Anomaly
from farecore.settlement.options import MergeOptions
from farecore.settlement.rides import Rides

__all__ = ["not_revoked", "revocation_flags"]


def not_revoked(rides: Rides, opts: MergeOptions, anomalies: list[Anomaly]) -> np.ndarray:
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


def revocation_flags(rides: Rides, opts: MergeOptions, anomalies: list[Anomaly]) -> None:
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
