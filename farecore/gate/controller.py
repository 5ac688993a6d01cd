"""The station controller: the taps of several gates, group-committed over one station
journal (``farecore.journal.station``). Each gate's ``Gate.stage`` puts its ride (and
lockout) in the journal's open group; the controller commits the group, then opens the
gates with ``Gate.complete``.

A gate opens only once the commit holding its ride is durable, and gates open in the
order their taps were decided.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from farecore.decide.decision import Decision
from farecore.gate.reader_port import CardChannel
from farecore.gate.runtime import Gate
from farecore.journal.station import Commit, StationJournal

__all__ = ["Opened", "StationController"]


Opened = Callable[[list[tuple["Gate", Decision]]], None]


class _Batch:
    """Taps of one group, in the order they were staged, and the set of their gates."""

    __slots__ = ("gates", "taps")

    def __init__(self) -> None:
        self.taps: list[tuple[Gate, Decision]] = []
        self.gates: set[Gate] = set()


class StationController:
    """Runs the taps of several gates with group commit over one station journal.

    ``tap`` decides a tap and stages its ride. A gate opens (its ``Gate.complete`` is
    called) only once the commit holding its ride is durable, and gates open in the
    order their taps were decided. The waiting group is handed to the committer when
    ``max_group`` taps wait (``send``), or on ``flush``; while it commits, the next group
    is decided. ``opened`` is told each group's taps as their gates open.

    ``one_rider_per_gate`` (the default, for real time): a gate whose last ride is not
    durable yet takes no new tap; its last group is committed first. A simulator that
    runs a day faster than real time may turn it off: in the simulated day a gate's
    next rider comes seconds after the last, long after the last commit returned.
    """

    def __init__(
        self,
        journal: StationJournal,
        max_group: int = 32,
        opened: Opened | None = None,
        *,
        one_rider_per_gate: bool = True,
    ) -> None:
        if not 1 <= max_group <= 10_000:
            raise ValueError("max_group must be between 1 and 10000")
        self.journal = journal
        self.max_group = max_group
        self.one_rider_per_gate = one_rider_per_gate
        self._opened = opened
        self._waiting = _Batch()
        self._committing: tuple[Commit, _Batch] | None = None
        self.groups = 0
        self.grouped_taps = 0
        self.wait_s = 0.0  # seconds the controller stood still until a commit was durable

    def busy(self, gate: Gate) -> bool:
        """True while ``gate``'s last ride is not durable yet (its gate still shut)."""
        committing = self._committing
        return gate in self._waiting.gates or (
            committing is not None and gate in committing[1].gates
        )

    def tap(self, gate: Gate, channel: CardChannel) -> Decision:
        """Decide a tap at ``gate`` (a ``farecore.gate.runtime.Gate`` on this station's journal)
        and stage its ride; the gate is signalled once the ride is durable."""
        waiting = self._waiting
        if self.one_rider_per_gate and gate in waiting.gates:
            self._commit_here()  # its last rider's ride must be durable first
        elif len(waiting.taps) >= self.max_group:
            self.send()
        committing = self._committing
        if committing is not None and (
            committing[0].done or (self.one_rider_per_gate and gate in committing[1].gates)
        ):
            self._finish()
        decision = gate.stage(channel)
        waiting = self._waiting
        waiting.taps.append((gate, decision))
        waiting.gates.add(gate)
        return decision

    def send(self) -> None:
        """Hand the waiting group to the committer. One commit is in flight at a time:
        the one before is waited for (and its gates opened) first."""
        self._finish()
        if self._waiting.taps:
            waiting, self._waiting = self._waiting, _Batch()
            self._committing = (self.journal.begin_commit(), waiting)

    def _commit_here(self) -> None:
        # The caller waits for this group anyway: commit it on this thread.
        self._finish()
        if self._waiting.taps:
            waiting, self._waiting = self._waiting, _Batch()
            self._stand_still(self.journal.commit)
            self._open(waiting)

    def finish(self) -> int:
        """Wait for the commit in flight, open its gates; return how many opened."""
        return self._finish()

    def flush(self) -> int:
        """Commit everything waiting and open its gates; return how many opened.

        Raises JournalError when a commit fails: none of those gates opens.
        """
        opened = self._finish()
        waiting = len(self._waiting.taps)
        self._commit_here()
        return opened + waiting

    def _finish(self) -> int:
        if self._committing is None:
            return 0
        commit, batch = self._committing
        self._committing = None
        self._stand_still(commit.wait)
        return self._open(batch)

    def _stand_still(self, until_durable: Callable[[], None]) -> None:
        """Run ``until_durable`` (a commit, or the wait for one), counting in ``wait_s``."""
        t0 = time.perf_counter()
        try:
            until_durable()
        finally:
            self.wait_s += time.perf_counter() - t0

    def _open(self, batch: _Batch) -> int:
        for gate, decision in batch.taps:
            gate.complete(decision)
        self.groups += 1
        self.grouped_taps += len(batch.taps)
        if self._opened is not None:
            self._opened(batch.taps)
        return len(batch.taps)
