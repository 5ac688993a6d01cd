"""One lane of the simulated day: a station controller driving its gates through their taps.

A lane's gates are built from their ``gates/gate-N.toml`` by the wiring every real gate
uses (``farecore.gate.wiring.build_gate``), with the lane's station journal, a clock
guard and durable marks in the run's state directory, on the simulated clock. They
share one station journal (their passback state in the same file) and commit in groups:
a tap's gate opens once the commit that holds its ride returns
(``farecore.gate.controller``). At 13:00 simulated time generation 2 of the revocation
table is published into the lane's table path (an atomic rename) and taken into force
by ``poll()``, after the rides decided under generation 1 are durable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from farecore.decide.decision import Decision
from farecore.gate.config import load_gate_config
from farecore.gate.controller import StationController
from farecore.gate.runtime import Gate
from farecore.gate.wiring import Station, WiredGate, build_gate
from farecore.journal.station import StationJournal
from readers.virtual import VirtualReader
from sim.card import VirtualCard
from sim.transport import Link, Transport, open_link
from sim.workload import FAULT_PULLED
from sim.world import SimError, World

if TYPE_CHECKING:
    from farecore.fleet.metrics import FleetMetrics, GateMetrics

__all__ = ["LaneJob", "LaneResult", "SimTime", "run_lane"]

_BOOT = "farecore-sim"  # the passback state's boot: the whole day is one


class SimTime:
    """The simulated time and nonce the lane's gates read for the tap they are about to
    take; also the passback state's monotonic clock (one boot: the day)."""

    __slots__ = ("nonce", "now_ms")

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.nonce = b"\0" * 16

    def clock_ms(self) -> int:
        return self.now_ms

    def next_nonce(self) -> bytes:
        return self.nonce


@dataclass(frozen=True, slots=True)
class LaneResult:
    """What one lane measures, filled in as it runs (per-tap arrays: one entry a tap)."""

    got: npt.NDArray[np.uint8]  # the decision's code (0 ACCEPT, else a Reason)
    latency_us: npt.NDArray[np.float64]  # the engine's own timing of each decision
    gate_us: npt.NDArray[np.float64]  # tap to gate open, the commit included
    span_ns: npt.NDArray[np.int64]  # first tap starts, last tap durable
    # commits, taps they made durable, issuer signatures verified, listed instead
    groups: npt.NDArray[np.int64]
    # ns: the lane thread's CPU, the committer thread's CPU, waiting for commits
    cpu_ns: npt.NDArray[np.int64]
    close_ns: npt.NDArray[np.int64]  # closing the station journal

    @classmethod
    def zeros(cls, taps: int) -> LaneResult:
        return cls(
            got=np.zeros(taps, dtype=np.uint8),
            latency_us=np.zeros(taps),
            gate_us=np.zeros(taps),
            span_ns=np.zeros(2, dtype=np.int64),
            groups=np.zeros(4, dtype=np.int64),
            cpu_ns=np.zeros(3, dtype=np.int64),
            close_ns=np.zeros(1, dtype=np.int64),
        )


@dataclass(frozen=True, slots=True)
class LaneJob:
    """A lane's share of the day: its taps (indices into the workload, in time order)."""

    world: World
    lane_id: str
    taps: npt.NDArray[np.int64]
    work: Path  # the run's work directory
    transport: Transport | None  # the taps that cross a real transport, if any
    progress: Any  # shared array of taps done; this lane counts into progress[slot]
    slot: int
    metrics: FleetMetrics | None = None  # the worker's, when the run serves metrics
    # A simulated year's lane (``sim.year_tasks``) runs day after day on one station
    # journal: it opens all its gates, idle ones too (each terminal hands in a batch a
    # day), takes the day's two revocation tables from their own paths, keeps its
    # gates' marks in its own state directory, and numbers its nonces across the year.
    all_gates: tuple[int, ...] | None = None  # None: the gates the lane's taps use
    tables: tuple[Path, Path] | None = None  # None: the run's revocation/gen{1,2}.frt
    state_dir: Path | None = None  # None: the gate configurations' [state] dir
    tap_base: int = 0  # added to the tap's number in its nonce
    # The gates' clock when they are built (None: the start of the day). A year's lane
    # starts at its first tap: its gates' marks hold yesterday's late taps, after the
    # midnight that starts the day.
    start_ms: int | None = None


def run_lane(job: LaneJob, out: LaneResult) -> None:
    """Run the lane's taps through its station controller; fill in ``out``."""
    wl = job.world.workload
    if job.all_gates is None:
        lane_gates = sorted({int(x) for x in wl.gate[job.taps]})
    else:
        lane_gates = sorted(job.all_gates)
    station_journal = StationJournal.open(
        job.work / "journals" / f"station-{job.lane_id}.sqlite",
        [job.world.gates[g].terminal_id for g in lane_gates],
    )
    with contextlib.ExitStack() as stack:
        stack.callback(station_journal.close)
        lane = _Lane(job, out, station_journal)
        lane.open_gates(lane_gates, stack)
        if job.transport is not None and job.transport.gate in lane.gates:
            lane.link = open_link(job.transport)
            stack.callback(lane.link.close)
        lane.play()
        stack.pop_all()
    lane.close()


class _Lane:
    """The state of one lane's day: its gates, its controller, its clock and riders."""

    def __init__(self, job: LaneJob, out: LaneResult, journal: StationJournal) -> None:
        world = job.world
        self.job, self.out, self.journal = job, out, journal
        self.time = SimTime(world.clock.start_ms if job.start_ms is None else job.start_ms)
        met = np.unique(world.workload.card[job.taps])
        # The gates of one station controller share their verified credentials, in a
        # cache sized for every card the controller meets in the day.
        self.station = Station(
            journal,
            monotonic=self.time.clock_ms,
            boot=_BOOT,
            cache_size=max(100_000, len(met)),
        )
        # This lane's gates read the table in force at their own path; at 13:00
        # simulated time generation 2 is published there.
        self.in_force = job.work / "revocation" / f"in-force-{job.lane_id}.frt"
        self.gates: dict[int, tuple[WiredGate, VirtualReader]] = {}
        self.watched: list[GateMetrics] = []  # the gates' metrics, if the run serves them
        self.riders: dict[int, VirtualCard] = {}  # the lane's cards, kept between taps
        self.started: dict[int, tuple[int, int]] = {}  # id(decision) -> (n, start ns)
        self.link: Link | None = None
        self.published = False
        self.controller = StationController(
            journal, world.opts.max_group, opened=self._opened, one_rider_per_gate=False
        )
        # Simulated time runs far faster than the day: a gate's next rider comes seconds
        # of simulated time after the last, when the last commit (about a millisecond) is
        # long done. So a gate's next tap need not wait for that commit here; each gate
        # still opens only once its own ride is durable (one_rider_per_gate off).

    def open_gates(self, lane_gates: list[int], stack: contextlib.ExitStack) -> None:
        """Build each gate from its configuration, exactly as ``farecore gate`` does."""
        run_dir = self.job.work.parent
        if self.job.tables is None:
            os.link(run_dir / "revocation" / "gen1.frt", self.in_force)
        else:
            _publish(self.job.tables[0], self.in_force)  # yesterday's is there
        for g in lane_gates:
            tid = self.job.world.gates[g].terminal_id
            cfg = load_gate_config(run_dir / "gates" / f"gate-{tid}.toml")
            cfg = dataclasses.replace(cfg, revocation_table=self.in_force)
            if self.job.state_dir is not None:
                state = self.job.state_dir
                cfg = dataclasses.replace(cfg, state_dir=state, revocation_store=state / "tables")
            reader = VirtualReader(f"gate-{tid}")
            wired = build_gate(
                cfg,
                reader,
                station=self.station,
                clock_ms=self.time.clock_ms,
                nonce=self.time.next_nonce,
                revocation_poll_s=None,
            )
            stack.callback(wired.close)
            self.gates[g] = (wired, reader)
            if self.job.metrics is not None:
                from farecore.fleet.metrics import watch_gate

                self.watched.append(watch_gate(self.job.metrics, wired, cfg))

    def _opened(self, group: list[tuple[Gate, Decision]]) -> None:
        end = time.perf_counter_ns()
        for _, decision in group:
            n, t0 = self.started.pop(id(decision))
            self.out.gate_us[n] = (end - t0) / 1000

    def publish_gen2(self) -> None:
        """Make the rides decided under generation 1 durable, publish generation 2 at the
        lane's table path and have every gate take it into force."""
        self.controller.flush()
        tables = self.job.tables
        _publish(
            self.job.work.parent / "revocation" / "gen2.frt" if tables is None else tables[1],
            self.in_force,
        )
        for wired, _ in self.gates.values():
            if wired.revocation is None or not wired.revocation.poll():
                raise SimError(f"lane {self.job.lane_id}: generation 2 was not taken into force")
        for watched in self.watched:
            watched.refresh()  # generation 2 in force, in the gates' metrics
        self.published = True

    def play(self) -> None:
        """Every tap of the lane, in simulated-time order."""
        job, wl, out = self.job, self.job.world.workload, self.out
        taps = job.taps
        seed = job.world.opts.seed.to_bytes(8, "big")
        base = job.tap_base
        switch = job.world.clock.revocation_gen2_ms
        # Plain lists: indexing numpy arrays one scalar at a time is slow.
        columns = zip(
            taps.tolist(),
            wl.gate[taps].tolist(),
            wl.time_ms[taps].tolist(),
            wl.card[taps].tolist(),
            wl.counter[taps].tolist(),
            (wl.fault[taps] == FAULT_PULLED).tolist(),
            strict=True,
        )
        out.span_ns[0] = time.perf_counter_ns()
        cpu0 = time.thread_time_ns()
        for n, (i, g, now_ms, card_index, counter, pulled) in enumerate(columns):
            self.time.now_ms = now_ms
            if not self.published and now_ms >= switch:
                self.publish_gen2()
            self.time.nonce = hashlib.sha256(seed + (base + i).to_bytes(8, "big")).digest()[:16]
            decision = self.tap(n, i, g, self.card(card_index, counter, pulled))
            out.got[n] = 0 if decision.reason is None else int(decision.reason)
            out.latency_us[n] = decision.timings.total_us
            if n % 64 == 63:
                job.progress[job.slot] += 64
        self.controller.flush()
        out.span_ns[1] = time.perf_counter_ns()
        out.cpu_ns[0] = time.thread_time_ns() - cpu0
        job.progress[job.slot] += len(taps) % 64

    def card(self, card_index: int, counter: int, pulled: bool) -> VirtualCard:
        """The rider's card as it is at this tap. The population's cards exist before the
        day: the parent made every key and credential before the workers forked."""
        factory = self.job.world.cards
        card = self.riders.get(card_index)
        if card is None:
            card = self.riders[card_index] = factory.card(card_index, counter, pulled)
        else:
            factory.retap(card, counter, pulled)
        return card

    def tap(self, n: int, i: int, g: int, card: VirtualCard) -> Decision:
        """Tap ``card`` at gate ``g`` (the lane's ``n``-th tap, the day's ``i``-th)."""
        wired, reader = self.gates[g]
        t0 = time.perf_counter_ns()
        transport = self.job.transport
        if self.link is not None and transport is not None and i in transport.taps:
            self.controller.flush()
            decision = self.link.tap(wired.gate, card)  # gate.process: its own commit
            self.out.gate_us[n] = (time.perf_counter_ns() - t0) / 1000
            return decision
        # Staged now; the gate opens once the commit holding the ride returns.
        decision = self.controller.tap(wired.gate, reader.tap(card))
        reader.remove()
        self.started[id(decision)] = (n, t0)
        return decision

    def close(self) -> None:
        """After the day: where the lane's time went; then close the gates and the station
        journal, whose rows move from the recent tables to their terminals' tables."""
        out, controller, journal = self.out, self.controller, self.journal
        # The lane thread's CPU (deciding, staging, the simulated cards' signatures), the
        # committer thread's, and the wait for commits.
        out.cpu_ns[1:] = (round(journal.commit_cpu_s * 1e9), round(controller.wait_s * 1e9))
        validators = [wired.gate.validator for wired, _ in self.gates.values()]
        out.groups[:] = (
            controller.groups,
            controller.grouped_taps,
            sum(v.issuer_checks for v in validators),
            sum(v.issuer_vouched for v in validators),
        )
        try:
            with contextlib.ExitStack() as stack:
                if self.link is not None:
                    stack.callback(self.link.close)
                for wired, _ in self.gates.values():
                    stack.callback(wired.close)
        finally:
            t_close = time.perf_counter_ns()
            journal.close()
            out.close_ns[0] = time.perf_counter_ns() - t_close
            # The day's cards (tens of thousands at full scale), freed here: the lane's
            # objects form reference cycles, so they would otherwise wait for the cycle
            # collector, which would then walk every one of them.
            self.riders.clear()
        if journal.move_error is not None:
            raise SimError(f"lane {self.job.lane_id}: {journal.move_error}")


def _publish(table: Path, in_force: Path) -> None:
    """Put ``table`` at ``in_force`` by an atomic rename, as a table publisher does."""
    staged = in_force.with_suffix(".staged")
    staged.unlink(missing_ok=True)  # left by a run that stopped here
    os.link(table, staged)
    os.replace(staged, in_force)
