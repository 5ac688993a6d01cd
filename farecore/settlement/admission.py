"""Which batches a night may pay: each terminal's chain continued from the ledger.

A terminal's batches are admitted in chain order from the head the ledger holds (the
last settled seq and hash): a batch must start at the next seq and link to the head's
hash. A terminal the ledger has never seen starts its chain with its lowest batch.
What does not continue the chain is named and not paid:

- ``seq_gap``: records are missing before the batch; it is held (reconsidered every
  night until the missing batch arrives);
- ``chain_break``: it starts at the next seq but links to another hash; held;
- ``chain_fork``: two different batches continue the same head; both held;
- ``chain_conflict``: it overlaps records already settled, or admitted tonight
  (rewritten or replayed history); never paid.

This module only orders and judges batch boundaries; it never looks inside rides.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from farecore.settlement.anomalies import Anomaly
from farecore.settlement.ledger import Head
from farecore.settlement.unit import NO_TIME, Partial

__all__ = ["Admission", "Admitted", "admit"]

SETTLED, REJECTED, HELD = "settled", "rejected", "held"


@dataclass(frozen=True, slots=True)
class Admitted:
    """A batch that continues its terminal's chain, and the latest time before it."""

    partial: Partial
    time_floor: int  # the latest record time of the chain before this batch


@dataclass(slots=True)
class Admission:
    admitted: list[Admitted] = field(default_factory=list)  # in (terminal, seq) order
    outcomes: dict[bytes, str] = field(default_factory=dict)  # batch SHA-256 -> outcome
    anomalies: list[Anomaly] = field(default_factory=list)


def _empty(p: Partial) -> bool:
    return p.last_seq < p.first_seq


def admit(
    partials: Iterable[Partial],
    heads: dict[int, Head],
    links_at: Callable[[int, int, bytes], bool],
) -> Admission:
    """Admit ``partials`` against ``heads``.

    ``links_at(terminal, seq, hash)`` says whether the settled chain has ``hash`` after
    record ``seq`` (how a late empty batch, which holds no record, proves its place).
    """
    out = Admission()
    by_terminal: dict[int, list[Partial]] = defaultdict(list)
    for p in partials:
        if not p.ok:
            out.outcomes[p.batch_sha256] = REJECTED
            out.anomalies.extend(p.anomalies)
        else:
            by_terminal[p.terminal_id].append(p)
    for tid in sorted(by_terminal):
        _admit_terminal(tid, by_terminal[tid], heads.get(tid), links_at, out)
    return out


def _name(kind: str, p: Partial, detail: str, seq: int = -1) -> Anomaly:
    return Anomaly(
        kind,
        terminal_id=p.terminal_id,
        seq=p.first_seq if seq < 0 else seq,
        batch=p.batch_sha256.hex(),
        detail=detail,
        file=p.file,
        day=p.day,
    )


def _admit_terminal(
    tid: int,
    parts: list[Partial],
    head: Head | None,
    links_at: Callable[[int, int, bytes], bool],
    out: Admission,
) -> None:
    remaining = sorted(parts, key=lambda p: (p.first_seq, p.last_seq, p.day, p.batch_sha256))
    if head is None:  # a new terminal: its lowest batch starts the chain
        first = remaining[0]
        head = Head(first.first_seq - 1, first.prev_hash, NO_TIME)
    settled_reach = head.last_seq
    while remaining:
        nxt = [p for p in remaining if p.first_seq == head.last_seq + 1]
        behind = [p for p in remaining if p.first_seq <= head.last_seq]
        for p in behind:
            remaining.remove(p)
            late_empty = _empty(p) and p.first_seq <= settled_reach + 1
            if late_empty and links_at(tid, p.first_seq - 1, p.prev_hash):
                out.admitted.append(Admitted(p, NO_TIME))  # a late day with no record
                out.outcomes[p.batch_sha256] = SETTLED
                continue
            out.outcomes[p.batch_sha256] = REJECTED
            out.anomalies.append(
                _name(
                    "chain_conflict",
                    p,
                    f"seq {p.first_seq}..{p.last_seq} overlaps the chain settled or admitted "
                    f"up to seq {head.last_seq}",
                )
            )
        if not nxt:
            break
        # Empty batches (idle days) hold no record: each may follow the head in turn.
        empties = [p for p in nxt if _empty(p)]
        for p in empties:
            remaining.remove(p)
            if p.prev_hash == head.tail_hash:
                out.admitted.append(Admitted(p, head.max_time_ms))
                out.outcomes[p.batch_sha256] = SETTLED
            else:
                out.outcomes[p.batch_sha256] = HELD
                out.anomalies.append(
                    _name("chain_break", p, "empty batch does not link to the chain's hash")
                )
        full = [p for p in nxt if not _empty(p)]
        if not full:
            continue
        if len(full) > 1:
            for p in full:
                remaining.remove(p)
                out.outcomes[p.batch_sha256] = HELD
                out.anomalies.append(
                    _name(
                        "chain_fork",
                        p,
                        f"{len(full)} different batches continue seq {head.last_seq}",
                    )
                )
            break
        p = full[0]
        if p.prev_hash != head.tail_hash:
            remaining.remove(p)
            out.outcomes[p.batch_sha256] = HELD
            out.anomalies.append(
                _name("chain_break", p, f"does not link to the hash after seq {head.last_seq}")
            )
            break
        remaining.remove(p)
        out.admitted.append(Admitted(p, head.max_time_ms))
        out.outcomes[p.batch_sha256] = SETTLED
        head = Head(p.last_seq, p.tail_hash, max(head.max_time_ms, p.max_time_ms))
    if remaining:
        gap_to = min(p.first_seq for p in remaining) - 1
        for p in remaining:
            out.outcomes.setdefault(p.batch_sha256, HELD)
            if out.outcomes[p.batch_sha256] == HELD:
                out.anomalies.append(
                    _name(
                        "seq_gap",
                        p,
                        f"seq {head.last_seq + 1}..{gap_to} missing before this batch; held",
                        seq=head.last_seq + 1,
                    )
                )
