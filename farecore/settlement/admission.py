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
  (rewritten or replayed history); never paid;
- ``second_batch``: it continues the chain, but its terminal already handed in a batch
  for its day, which that day was settled as complete with: the chain moves past it
  (so later batches still link) and none of its rides is paid.

A terminal the ledger has never seen starts its chain at seq 1, from the genesis hash;
on a ledger's first night (a deployment that starts settling), at its lowest batch.
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

SETTLED, REJECTED, HELD, RETRY = "settled", "rejected", "held", "retry"
GENESIS = b"\x00" * 32


@dataclass(frozen=True, slots=True)
class Admitted:
    """A batch that continues its terminal's chain, and the latest time before it."""

    partial: Partial
    time_floor: int  # the latest record time of the chain before this batch


@dataclass(slots=True)
class Admission:
    admitted: list[Admitted] = field(default_factory=list)  # in (terminal, seq) order
    chain_only: list[Partial] = field(default_factory=list)  # move the chain, pay nothing
    outcomes: dict[bytes, str] = field(default_factory=dict)  # batch SHA-256 -> outcome
    anomalies: list[Anomaly] = field(default_factory=list)


def _empty(p: Partial) -> bool:
    return p.last_seq < p.first_seq


@dataclass(frozen=True, slots=True)
class Settled:
    """What the ledger says of the chains before tonight."""

    heads: dict[int, Head]
    links_at: Callable[[int, int, bytes], bool]  # the chain has hash h after seq s
    has_day: Callable[[int, str], bool]  # the terminal's batch of that day is settled
    first_night: bool  # the ledger holds no night yet


def admit(partials: Iterable[Partial], settled: Settled) -> Admission:
    """Admit ``partials`` against the chains the ledger holds."""
    out = Admission()
    by_terminal: dict[int, list[Partial]] = defaultdict(list)
    for p in partials:
        if not p.ok:
            out.outcomes[p.batch_sha256] = RETRY if p.retry else REJECTED
            out.anomalies.extend(p.anomalies)
        else:
            by_terminal[p.terminal_id].append(p)
    for tid in sorted(by_terminal):
        _admit_terminal(tid, by_terminal[tid], settled, out)
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


def _admit_terminal(tid: int, parts: list[Partial], settled: Settled, out: Admission) -> None:
    remaining = sorted(parts, key=lambda p: (p.first_seq, p.last_seq, p.day, p.batch_sha256))
    known = settled.heads.get(tid)
    links_at = settled.links_at
    first = remaining[0]
    head: Head
    if known is not None:
        head = known
    elif settled.first_night:  # settling starts: its lowest batch starts the chain
        head = Head(first.first_seq - 1, first.prev_hash, NO_TIME)
    else:  # a new terminal's journal starts at seq 1
        head = Head(0, GENESIS, NO_TIME)
    settled_reach = head.last_seq
    days = set()

    def take(p: Partial) -> None:
        """Admit ``p``, or only its place in the chain when its day is already in."""
        nonlocal head
        out.outcomes[p.batch_sha256] = SETTLED
        if p.day in days or settled.has_day(tid, p.day):
            out.chain_only.append(p)
            out.anomalies.append(
                _name(
                    "second_batch",
                    p,
                    f"terminal {tid} already handed in its batch of {p.day}; "
                    f"seq {p.first_seq}..{p.last_seq} not paid",
                )
            )
        else:
            days.add(p.day)
            out.admitted.append(Admitted(p, head.max_time_ms))
        head = Head(
            max(head.last_seq, p.last_seq),
            p.tail_hash,
            max(head.max_time_ms, p.max_time_ms),
        )

    while remaining:
        nxt = [p for p in remaining if p.first_seq == head.last_seq + 1]
        behind = [p for p in remaining if p.first_seq <= head.last_seq]
        for p in behind:
            remaining.remove(p)
            late_empty = _empty(p) and p.first_seq <= settled_reach + 1
            if (
                late_empty
                and p.day not in days
                and not settled.has_day(tid, p.day)
                and links_at(tid, p.first_seq - 1, p.prev_hash)
            ):
                days.add(p.day)
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
                take(p)
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
        take(p)
    if remaining:
        gap_to = min(p.first_seq for p in remaining) - 1
        for p in remaining:
            out.outcomes.setdefault(p.batch_sha256, HELD)
            if out.outcomes[p.batch_sha256] == HELD:
                out.anomalies.append(
                    _name(
                        "seq_gap",
                        p,
                        f"seq {head.last_seq + 1}..{gap_to} not settled before this batch; held",
                        seq=head.last_seq + 1,
                    )
                )
