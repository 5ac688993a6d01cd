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
from farecore.settlement.partial import NO_TIME, Partial

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
    chain = _Chain(tid, parts, settled, out)
    while chain.remaining:
        chain.refuse_behind()
        nxt = [p for p in chain.remaining if p.first_seq == chain.head.last_seq + 1]
        if not nxt:
            break
        # Empty batches (idle days) hold no record: each may follow the head in turn.
        for p in [p for p in nxt if _empty(p)]:
            chain.follow_empty(p)
        full = [p for p in nxt if not _empty(p)]
        if full and not chain.follow(full):
            break
    chain.hold_gap()


class _Chain:
    """One terminal's chain during admission: its head, and the batches not yet judged."""

    def __init__(self, tid: int, parts: list[Partial], settled: Settled, out: Admission) -> None:
        self.tid, self.settled, self.out = tid, settled, out
        self.remaining = sorted(
            parts, key=lambda p: (p.first_seq, p.last_seq, p.day, p.batch_sha256)
        )
        known = settled.heads.get(tid)
        first = self.remaining[0]
        if known is not None:
            self.head = known
        elif settled.first_night:  # settling starts: its lowest batch starts the chain
            self.head = Head(first.first_seq - 1, first.prev_hash, NO_TIME)
        else:  # a new terminal's journal starts at seq 1
            self.head = Head(0, GENESIS, NO_TIME)
        self.settled_reach = self.head.last_seq
        self.days: set[str] = set()

    def _judge(self, p: Partial, outcome: str, kind: str, detail: str, seq: int = -1) -> None:
        self.remaining.remove(p)
        self.out.outcomes[p.batch_sha256] = outcome
        self.out.anomalies.append(_name(kind, p, detail, seq))

    def _day_taken(self, day: str) -> bool:
        return day in self.days or self.settled.has_day(self.tid, day)

    def take(self, p: Partial) -> None:
        """Admit ``p``, or only its place in the chain when its day is already in."""
        out, head = self.out, self.head
        self.remaining.remove(p)
        out.outcomes[p.batch_sha256] = SETTLED
        if self._day_taken(p.day):
            out.chain_only.append(p)
            out.anomalies.append(
                _name(
                    "second_batch",
                    p,
                    f"terminal {self.tid} already handed in its batch of {p.day}; "
                    f"seq {p.first_seq}..{p.last_seq} not paid",
                )
            )
        else:
            self.days.add(p.day)
            out.admitted.append(Admitted(p, head.max_time_ms))
        self.head = Head(
            max(head.last_seq, p.last_seq), p.tail_hash, max(head.max_time_ms, p.max_time_ms)
        )

    def refuse_behind(self) -> None:
        """Batches that start at or before the head: an idle day's empty batch that
        arrives late and links where it should is admitted; the rest overlap history."""
        for p in [p for p in self.remaining if p.first_seq <= self.head.last_seq]:
            late_empty = _empty(p) and p.first_seq <= self.settled_reach + 1
            if (
                late_empty
                and not self._day_taken(p.day)
                and self.settled.links_at(self.tid, p.first_seq - 1, p.prev_hash)
            ):
                self.remaining.remove(p)
                self.days.add(p.day)
                self.out.admitted.append(Admitted(p, NO_TIME))  # a late day with no record
                self.out.outcomes[p.batch_sha256] = SETTLED
                continue
            self._judge(
                p,
                REJECTED,
                "chain_conflict",
                f"seq {p.first_seq}..{p.last_seq} overlaps the chain settled or admitted "
                f"up to seq {self.head.last_seq}",
            )

    def follow_empty(self, p: Partial) -> None:
        if p.prev_hash == self.head.tail_hash:
            self.take(p)
        else:
            self._judge(p, HELD, "chain_break", "empty batch does not link to the chain's hash")

    def follow(self, full: list[Partial]) -> bool:
        """Admit the one batch with records that continues the head; False (the chain
        stops here tonight) on a fork or a break."""
        if len(full) > 1:
            for p in full:
                detail = f"{len(full)} different batches continue seq {self.head.last_seq}"
                self._judge(p, HELD, "chain_fork", detail)
            return False
        p = full[0]
        if p.prev_hash != self.head.tail_hash:
            detail = f"does not link to the hash after seq {self.head.last_seq}"
            self._judge(p, HELD, "chain_break", detail)
            return False
        self.take(p)
        return True

    def hold_gap(self) -> None:
        """What is left waits for the records missing before it."""
        if not self.remaining:
            return
        head, outcomes = self.head, self.out.outcomes
        gap_to = min(p.first_seq for p in self.remaining) - 1
        for p in self.remaining:
            outcomes.setdefault(p.batch_sha256, HELD)
            if outcomes[p.batch_sha256] == HELD:
                self.out.anomalies.append(
                    _name(
                        "seq_gap",
                        p,
                        f"seq {head.last_seq + 1}..{gap_to} not settled before this batch; held",
                        seq=head.last_seq + 1,
                    )
                )
