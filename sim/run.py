"""Runs a simulated day end to end: set up a city, tap through the real engine, settle, check.

Setup makes the cards and writes everything a real deployment has into the run
directory: keys, keyring, the issuer's list of its credentials, revocation lists, fares,
gate configurations. The day then runs through the real ``Gate`` / ``Validator`` /
``run_tap`` path over virtual readers (with ``--reader pcsc`` or ``pn532`` a share of one
gate's taps crosses a real transport, see ``sim.transport``), in worker processes, each a
station controller whose gates share one durable station journal. Every decision is
compared with the workload's ground truth; the batches are exported and
settled, and the money compared with the fare of every legitimate ride.

Simulated time drives everything that reaches a journal or a settlement (tap times,
nonces from the seed), so a seed reproduces decisions and settlement bytes. Wall clocks
are read only to measure speed. This module must never loosen the engine to make a
check pass: a wrong decision or a money mismatch is reported and fails the run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from farecore.card.keys import SigningKey
from farecore.decide.checks import NO_PASSBACK, PassbackCheck, RevocationEntry
from farecore.decide.decision import Decision
from farecore.decide.issued import IssuedList
from farecore.decide.revocation import HotRevocation, TableStore
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.errors import FarecoreError
from farecore.gate.controller import StationController
from farecore.gate.runtime import Gate
from farecore.journal.batch import export_batch
from farecore.journal.passback import PassbackRule, PassbackStore
from farecore.journal.station import StationJournal
from farecore.journal.terminal import JournalReader, TapContext
from farecore.settlement import Ledger, find_batches, load_inputs, run_settlement
from readers.virtual import VirtualReader
from sim.card import VirtualCard
from sim.ceiling import crypto_us_per_tap
from sim.deploy import DIRECTIONS, ISSUED_LIST, write_city
from sim.issuer import QINGDAO, Issuer, derive_key
from sim.network import GatePlan, Network
from sim.population import CardFactory, FraudMix, Population
from sim.transport import (
    TRANSPORTS,
    Link,
    Transport,
    open_link,
    start_transport,
    stop_transport,
    transport_figures,
)
from sim.workload import FAULT_PULLED, DayClock, Workload, reimburse

__all__ = ["SimError", "SimOptions", "run_simulation"]

SIM_DAY = dt.date(2026, 3, 2)


class SimError(FarecoreError):
    """The simulation could not be set up or run (not: it found wrong decisions)."""


@dataclass(frozen=True, slots=True)
class SimOptions:
    out: Path
    seed: int = 1
    cards: int = 20_000
    taps: int = 40_000
    gates: int = 16
    reader: str = "virtual"
    mix: FraudMix = field(default_factory=FraudMix)
    workers: int | None = None  # None: one per CPU
    lanes: int = 1  # station controllers (threads) per worker, each with its own journal
    max_group: int = 32  # taps made durable by one commit of a station journal
    transport_taps: int = 20  # with --reader pcsc/pn532: this many taps go through it
    plots: bool = True
    ceiling_ops: int = 0  # >0: time the crypto ceiling in the workers around the tap phase

    def __post_init__(self) -> None:
        if self.cards < 100 or self.taps < 10 or self.gates < 5:
            raise ValueError("need --cards >= 100, --taps >= 10 and --gates >= 5")
        if not 0 <= self.seed < 1 << 64:
            raise ValueError(f"--seed must be 0..{(1 << 64) - 1}, not {self.seed}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be at least 1, not {self.workers}")
        if not 1 <= self.lanes <= 64:
            raise ValueError(f"--lanes must be between 1 and 64, not {self.lanes}")
        if not 1 <= self.max_group <= 1000:
            raise ValueError("--max-group must be between 1 and 1000")
        if self.reader not in ("virtual", *TRANSPORTS):
            raise ValueError(f"--reader {self.reader}: one of virtual, {', '.join(TRANSPORTS)}")
        if self.transport_taps < 1:
            raise ValueError("--transport-taps must be at least 1")
        if self.ceiling_ops < 0:
            raise ValueError("ceiling_ops must not be negative")


@dataclass(frozen=True, slots=True)
class _World:
    """Everything a worker needs, rebuilt identically in every process from the options."""

    opts: SimOptions
    network: Network
    gates: list[GatePlan]
    clock: DayClock
    population: Population
    workload: Workload
    issuer: Issuer
    forger: SigningKey
    revocation_signer: SigningKey
    revoked_gen1: list[RevocationEntry]
    revoked_gen2: list[RevocationEntry]
    cards: CardFactory  # every card's key and credential, made before the workers fork

    def terminal_key(self, terminal_id: int) -> SigningKey:
        return SigningKey(
            "terminal", terminal_id, derive_key(self._seed(), f"terminal-{terminal_id}")
        )

    def _seed(self) -> str:
        return f"farecore-sim/{self.opts.seed}"


def _build_world(opts: SimOptions) -> _World:
    seed = f"farecore-sim/{opts.seed}"
    network = Network()
    gates = network.plan_gates(opts.gates)
    clock = DayClock(SIM_DAY)
    population = Population.generate(opts.seed, opts.cards, opts.mix)
    workload = Workload.generate(opts.seed, opts.taps, population, gates, network, clock, opts.mix)
    issuer = Issuer.from_seed(seed, key_id=1)
    forger = SigningKey("issuer", 1, derive_key(seed, "forger"))
    gen1, gen2 = [], []
    for i in population.indices_of("revoked_before"):
        at = clock.revocation_gen1_ms // 1000 - 86_400 * (1 + int(i) % 90)
        gen1.append(RevocationEntry(int(population.card_ids[i]), at, 1 + int(i) % 5))
    for i in population.indices_of("revoked_during"):
        at = clock.revocation_gen2_ms // 1000 - 60 * (5 + int(i) % 120)
        gen2.append(RevocationEntry(int(population.card_ids[i]), at, 2))
    signer = SigningKey("revocation", 1, derive_key(seed, "revocation-1"))
    cards = CardFactory(opts.seed, population, issuer, forger, clock.start_ms // 1000)
    return _World(
        opts,
        network,
        gates,
        clock,
        population,
        workload,
        issuer,
        forger,
        signer,
        gen1,
        gen1 + gen2,
        cards,
    )


class _TapInput:
    """The simulated clock and nonce a Gate reads for the tap it is about to take."""

    __slots__ = ("nonce", "now_ms")

    def __init__(self) -> None:
        self.now_ms = 0
        self.nonce = b"\0" * 16

    def clock_ms(self) -> int:
        return self.now_ms

    def next_nonce(self) -> bytes:
        return self.nonce


_WORLD: _World | None = None  # set before fork; workers inherit it


_TRANSPORT: Transport | None = None  # set before fork, like _WORLD


class _SimClock:
    """Simulated time for the passback store's monotonic clock (one boot: the day)."""

    __slots__ = ("now_ms",)

    def __init__(self) -> None:
        self.now_ms = 0

    def __call__(self) -> int:
        return self.now_ms


@dataclass(frozen=True, slots=True)
class _LaneResult:
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
    def zeros(cls, taps: int) -> _LaneResult:
        return cls(
            got=np.zeros(taps, dtype=np.uint8),
            latency_us=np.zeros(taps),
            gate_us=np.zeros(taps),
            span_ns=np.zeros(2, dtype=np.int64),
            groups=np.zeros(4, dtype=np.int64),
            cpu_ns=np.zeros(3, dtype=np.int64),
            close_ns=np.zeros(1, dtype=np.int64),
        )


def _lane(
    world: _World,
    lane_id: str,
    taps: np.ndarray,
    out: _LaneResult,
    progress: Any,
    slot: int,
    work: Path,
) -> None:
    """One station controller: drive its gates through their taps in simulated-time order.

    The controller's gates share one station journal (their passback state in the same
    file) and commit in groups: a tap's gate opens once the commit that holds its ride
    returns (``farecore.journal.station``).
    """
    wl, clock, opts = world.workload, world.clock, world.opts
    keyring = world.issuer.keyring()
    signer = world.revocation_signer.public()
    # This lane's gates read the table in force at their own path; at 13:00 simulated
    # time generation 2 is published there (atomic rename) and picked up by poll().
    in_force = work / "revocation" / f"in-force-{lane_id}.frt"
    os.link(work.parent / "revocation" / "gen1.frt", in_force)
    published = False
    # The population's cards exist before the day: the parent made every key and
    # credential before the workers forked (a real gate never pays for issuing a card).
    factory = world.cards
    riders: dict[int, VirtualCard] = {}  # the lane's cards, kept from one tap to the next
    met = np.unique(wl.card[taps])
    # The issuer's signed list of what it issued: listed credentials need no issuer
    # signature check, even on a card's first tap at this controller.
    issued = IssuedList.open(work.parent / ISSUED_LIST, keyring)
    seed = opts.seed.to_bytes(8, "big")
    windows = {"metro_entry": clock.passback_metro_s, "bus": clock.passback_bus_s}
    sim_clock = _SimClock()
    stores: dict[str, PassbackStore] = {}
    gates: dict[int, tuple[Gate, VirtualReader, _TapInput]] = {}
    shared_cache: dict[bytes, object] = {}
    links: list[Link] = []
    lane_gates = sorted({int(x) for x in wl.gate[taps]})
    station = StationJournal.open(
        work / "journals" / f"station-{lane_id}.sqlite",
        [world.gates[g].terminal_id for g in lane_gates],
    )
    # The lanes' gates adopt the published table into one shared store, as a host's gates do.
    store = TableStore(work / "state" / "tables")
    with station, HotRevocation(in_force, signer, poll_interval_s=None, store=store) as revocation:
        try:
            for g in lane_gates:
                plan = world.gates[g]
                passback: PassbackCheck = NO_PASSBACK
                if plan.role in windows:
                    if plan.place not in stores:
                        stores[plan.place] = PassbackStore.in_station(
                            station,
                            PassbackRule(windows[plan.role]),
                            plan.place,
                            monotonic=sim_clock,
                            boot="farecore-sim",
                        )
                    passback = stores[plan.place]
                policy = TerminalPolicy(plan.terminal_id, frozenset({QINGDAO}))
                # The gates of one station controller share their verified credentials,
                # in a cache sized for every card the controller meets in the day.
                validator = Validator(
                    policy,
                    keyring,
                    revocation,
                    passback,
                    cache_size=max(100_000, len(met)),
                    cache=shared_cache,
                    issued=[issued],
                )
                tin = _TapInput()
                reader = VirtualReader(f"gate-{plan.terminal_id}")
                reader.open()
                gate = Gate(
                    reader,
                    validator,
                    journal=station.terminal(plan.terminal_id),
                    context=TapContext(plan.operator, plan.line, plan.place, DIRECTIONS[plan.role]),
                    passback=passback,
                    place=plan.place,
                    role=plan.role,
                    clock_ms=tin.clock_ms,
                    nonce=tin.next_nonce,
                )
                gates[g] = (gate, reader, tin)
            got, latency, gate_us = out.got, out.latency_us, out.gate_us
            transport = _TRANSPORT if _TRANSPORT is not None and _TRANSPORT.gate in gates else None
            if transport is not None:
                link = open_link(transport)
                links.append(link)
            perf = time.perf_counter_ns
            switch = clock.revocation_gen2_ms
            started: dict[int, tuple[int, int]] = {}  # id(decision) -> (n, start ns)

            def opened(group: list[tuple[Any, Decision]]) -> None:
                end = perf()
                for _, decision in group:
                    n, t0 = started.pop(id(decision))
                    gate_us[n] = (end - t0) / 1000

            # Simulated time runs far faster than the day: a gate's next rider comes
            # seconds of simulated time after the last, when the last commit (about a
            # millisecond) is long done. So a gate's next tap need not wait for that
            # commit here; each gate still opens only once its own ride is durable.
            controller = StationController(
                station, opts.max_group, opened=opened, one_rider_per_gate=False
            )
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
            out.span_ns[0] = perf()
            cpu0 = time.thread_time_ns()
            for n, (i, g, now_ms, card_index, counter, pulled) in enumerate(columns):
                gate, reader, tin = gates[g]
                tin.now_ms = sim_clock.now_ms = now_ms
                if not published and tin.now_ms >= switch:
                    controller.flush()  # the rides decided under generation 1 durable first
                    staged = in_force.with_suffix(".staged")
                    os.link(work.parent / "revocation" / "gen2.frt", staged)
                    os.replace(staged, in_force)
                    if not revocation.poll():
                        raise SimError(f"lane {lane_id}: generation 2 was not taken into force")
                    published = True
                tin.nonce = hashlib.sha256(seed + i.to_bytes(8, "big")).digest()[:16]
                card = riders.get(card_index)
                if card is None:
                    card = riders[card_index] = factory.card(card_index, counter, pulled)
                else:
                    factory.retap(card, counter, pulled)
                t0 = perf()
                if transport is not None and i in transport.taps:
                    controller.flush()
                    decision = link.tap(gate, card)  # gate.process: its own commit
                    gate_us[n] = (perf() - t0) / 1000
                else:
                    # Staged now; the gate opens once the commit holding the ride returns.
                    decision = controller.tap(gate, reader.tap(card))
                    reader.remove()
                    started[id(decision)] = (n, t0)
                got[n] = 0 if decision.reason is None else int(decision.reason)
                latency[n] = decision.timings.total_us
                if n % 64 == 63:
                    progress[slot] += 64
            controller.flush()
            out.span_ns[1] = perf()
            # Where the lane's time went: its own thread's CPU (deciding, staging, the
            # simulated cards' signatures), the committer thread's, and the wait for commits.
            out.cpu_ns[:] = (
                time.thread_time_ns() - cpu0,
                round(station.commit_cpu_s * 1e9),
                round(controller.wait_s * 1e9),
            )
            validators = [gate.validator for gate, _, _ in gates.values()]
            out.groups[:] = (
                controller.groups,
                controller.grouped_taps,
                sum(v.issuer_checks for v in validators),
                sum(v.issuer_vouched for v in validators),
            )
            progress[slot] += len(taps) % 64
            # After the day: the station file's rows move from the recent tables to their
            # terminals' tables as the controller closes it (``farecore.journal.station``).
            t_close = perf()
            station.close()
            out.close_ns[0] = perf() - t_close
            if station.move_error is not None:
                raise SimError(f"lane {lane_id}: {station.move_error}")
        finally:
            for link in links:
                link.close()


def _probe(barrier: Any, ops: int) -> float:
    """All workers at once: time the crypto ceiling (us per tap), then go on together."""
    try:
        barrier.wait(timeout=600)
        us = crypto_us_per_tap(ops)
        barrier.wait(timeout=600)
    except threading.BrokenBarrierError:
        return 0.0  # another worker failed: the run reports that, not a ceiling
    return us


def _worker(
    k: int, lanes: list[np.ndarray], progress: Any, work_dir: Path, barrier: Any = None
) -> None:
    world = _WORLD
    assert world is not None
    ceiling_us = np.zeros(2)
    if barrier is not None:
        ceiling_us[0] = _probe(barrier, world.opts.ceiling_ops)
    # With several lanes (threads), hand the GIL over quickly when a lane's commit
    # returns, so that lane does not sit out a whole 5 ms switch interval.
    sys.setswitchinterval(float(os.environ.get("FARECORE_SIM_SWITCH_S", "0.0005")))
    results = [_LaneResult.zeros(len(t)) for t in lanes]
    errors: list[BaseException] = []

    def run_lane(j: int) -> None:
        try:
            _lane(world, f"{k}-{j}", lanes[j], results[j], progress, k * 64 + j, work_dir)
        except BaseException as exc:  # reported by the parent as a failed worker
            errors.append(exc)

    if len(lanes) == 1:
        run_lane(0)
    else:
        threads = [threading.Thread(target=run_lane, args=(j,)) for j in range(len(lanes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if barrier is not None:
        if errors:
            barrier.abort()  # the others must not wait for a worker that failed
        else:
            ceiling_us[1] = _probe(barrier, world.opts.ceiling_ops)
    if errors:
        if isinstance(errors[0], FarecoreError):
            # A failure the engine names (a journal that cannot commit, a table that
            # does not verify): one line for the operator, not a traceback.
            print(f"farecore sim: worker {k}: {errors[0]}", file=sys.stderr, flush=True)
            sys.exit(3)
        raise errors[0]
    np.savez(
        work_dir / f"worker-{k}.npz",
        taps=np.concatenate(lanes) if lanes else np.zeros(0, np.int64),
        got=np.concatenate([r.got for r in results]),
        latency_us=np.concatenate([r.latency_us for r in results]),
        gate_us=np.concatenate([r.gate_us for r in results]),
        spans=np.array([r.span_ns for r in results if r.got.size]).reshape(-1, 2),
        groups=np.sum([r.groups for r in results], axis=0),
        cpu_ns=np.sum([r.cpu_ns for r in results], axis=0),
        close_ns=np.max([r.close_ns for r in results], axis=0),
        ceiling_us=ceiling_us,
    )


def _partition(world: _World, workers: int, lanes: int) -> list[list[np.ndarray]]:
    """Places (all gates of a station or bus) to workers and lanes, balanced by taps."""
    wl = world.workload
    place_of = np.array([_hash_place(g.place) for g in world.gates])
    tap_place = place_of[wl.gate]
    counts = defaultdict(int)
    for p, c in zip(*np.unique(tap_place, return_counts=True), strict=True):
        counts[int(p)] = int(c)
    bins = workers * lanes
    load = [0] * bins
    owner: dict[int, int] = {}
    for p in sorted(counts, key=lambda p: (-counts[p], p)):
        b = min(range(bins), key=lambda b: (load[b], b))
        owner[p] = b
        load[b] += counts[p]
    tap_bin = np.array([owner[int(p)] for p in place_of])[wl.gate]
    return [
        [np.flatnonzero(tap_bin == w * lanes + j) for j in range(lanes)] for w in range(workers)
    ]


def _ceiling_figures(ceiling_us: list[list[float]], taps_per_s: float) -> dict[str, Any]:
    """The crypto-bound ceiling the workers timed, all at once, before and after the tap
    phase: as many of those crypto-only taps per second as the worker processes make."""
    if not ceiling_us or not all(b > 0 and a > 0 for b, a in ceiling_us):
        return {}
    before = sum(1e6 / b for b, _ in ceiling_us)
    after = sum(1e6 / a for _, a in ceiling_us)
    rate = (before + after) / 2
    return {
        "ceiling": {
            "taps_per_second": round(rate, 1),
            "before": round(before, 1),
            "after": round(after, 1),
            "crypto_us_per_tap": [[round(b, 1), round(a, 1)] for b, a in ceiling_us],
            "ratio": round(taps_per_s / rate, 3),
        }
    }


def _cpu_figures(cpu_ns: np.ndarray, taps: int) -> dict[str, Any]:
    """CPU per tap of the controllers' own threads and of their committer threads, and
    the seconds the controllers stood waiting for commits (summed over lanes)."""
    lane_ns, commit_ns, wait_ns = (int(x) for x in cpu_ns)
    return {
        "cpu_us_per_tap": {
            "controller": round(lane_ns / max(taps, 1) / 1000, 1),
            "committer": round(commit_ns / max(taps, 1) / 1000, 1),
        },
        "commit_wait_s": round(wait_ns / 1e9, 4),
    }


def _hash_place(place: str) -> int:
    return int.from_bytes(hashlib.sha256(place.encode()).digest()[:6], "big")


def _start_transport(world: _World, workdir: Path) -> Any:
    """Route the first taps of gate 0 through the chosen transport (see sim.transport);
    return what has to be stopped after the tap phase (pcscd, or None for pn532)."""
    global _TRANSPORT
    first = np.flatnonzero(world.workload.gate == 0)[: world.opts.transport_taps]
    daemon, _TRANSPORT = start_transport(world.opts.reader, workdir, 0, first)
    return daemon


def _stop_transport(daemon: Any) -> None:
    global _TRANSPORT
    _TRANSPORT = None
    stop_transport(daemon)


def run_simulation(opts: SimOptions, stream: TextIO = sys.stdout) -> dict[str, Any]:
    """Run the day; return the summary (also written to RUNDIR/summary.json)."""
    global _WORLD, _TRANSPORT
    from sim.summary import build_summary, print_summary, show_progress, write_plots

    # Absolute: pcscd is handed paths under it and does not resolve them from our cwd.
    out = opts.out.absolute()
    if out.exists() and any(out.iterdir()):
        raise SimError(f"{out} exists and is not empty; choose a new --out directory")
    out.mkdir(parents=True, exist_ok=True)
    t_setup = time.perf_counter()
    world = _build_world(opts)
    print(
        f"farecore sim: issuing {opts.cards:,} cards and the issuer's signed list of them",
        file=stream,
        flush=True,
    )
    write_city(world, out)
    work = out / "work"
    for sub in ("journals", "passback", "revocation"):
        (work / sub).mkdir(parents=True)
    setup_s = time.perf_counter() - t_setup
    print(
        f"farecore sim: {len(world.workload):,} taps, {len(world.population):,} cards, "
        f"{len(world.gates)} gates; setup {setup_s:.1f} s",
        file=stream,
        flush=True,
    )
    if len(world.workload) < opts.taps:
        print(
            f"farecore sim: note: {opts.cards:,} cards can only make {len(world.workload):,} "
            f"taps in a day (one card's trips are 90 min apart); use more --cards",
            file=stream,
            flush=True,
        )

    workers = opts.workers or os.cpu_count() or 1
    parts = _partition(world, workers, opts.lanes)
    ctx = mp.get_context("fork")
    progress = ctx.Array("q", workers * 64, lock=False)
    barrier = ctx.Barrier(workers) if opts.ceiling_ops else None
    _WORLD = world
    daemon = _start_transport(world, out / "work" / "pcscd") if opts.reader in TRANSPORTS else None
    via = sorted(_TRANSPORT.taps) if _TRANSPORT is not None else []
    t0 = time.perf_counter()
    procs = [
        ctx.Process(target=_worker, args=(k, parts[k], progress, work, barrier), daemon=True)
        for k in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        show_progress(progress, len(world.workload), procs, stream, t0)
    finally:
        for p in procs:
            p.join()
        _WORLD = None
        _stop_transport(daemon)
    run_s = time.perf_counter() - t0
    failed = [k for k, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise SimError(
            f"worker(s) {failed} failed (exit codes {[procs[k].exitcode for k in failed]})"
        )
    n = len(world.workload)
    got = np.zeros(n, dtype=np.uint8)
    latency = np.zeros(n)
    gate_us = np.zeros(n)
    spans, groups, ceiling = [], np.zeros(4, dtype=np.int64), []
    cpu_ns = np.zeros(3, dtype=np.int64)
    close_ns = 0
    for k in range(workers):
        with np.load(work / f"worker-{k}.npz") as z:
            got[z["taps"]] = z["got"]
            latency[z["taps"]] = z["latency_us"]
            gate_us[z["taps"]] = z["gate_us"]
            spans.append(z["spans"])
            groups += z["groups"]
            cpu_ns += z["cpu_ns"]
            close_ns = max(close_ns, int(z["close_ns"][0]))
            ceiling.append(z["ceiling_us"].tolist())
    # The tap phase: from the first lane's first tap to the last lane's last durable
    # commit (monotonic clock, shared by the processes). Worker start-up (fork, opening
    # journals, the cards' keys) is reported apart, as start_s.
    span = np.concatenate(spans)
    wall = (int(span[:, 1].max()) - int(span[:, 0].min())) / 1e9 if span.size else run_s

    t_settle = time.perf_counter()
    batches = out / "batches"
    batches.mkdir()
    for jpath in sorted((work / "journals").glob("station-*.sqlite")):
        for tid in JournalReader.terminals_in(jpath):
            data = export_batch(jpath, SIM_DAY, world.terminal_key(tid), terminal_id=tid)
            (batches / f"terminal-{tid}-{SIM_DAY.isoformat()}.fcb").write_bytes(data)
    rev = out / "revocation"
    inputs = load_inputs(
        SIM_DAY,
        out / "terminals.csv",
        out / "keyring.json",
        out / "fares.toml",
        rev / "revoked-gen2.csv",
        [rev / "gen1.frt", rev / "gen2.frt"],
        out / "keys" / "revocation-1.pub",
    )
    with Ledger.open(out / "ledger.sqlite") as ledger:
        settlement = run_settlement(
            inputs, find_batches(batches), out / "settlement", jobs=workers, ledger=ledger
        )
    by_op: dict[str, int] = defaultdict(int)
    for total in settlement.totals:
        by_op[total.operator] += total.amount_fen
    settled = {
        "reimbursement_by_operator": dict(sorted(by_op.items())),
        "rides": settlement.stats.get("rides_paid", 0),
        "anomalies": [a.to_json() for a in settlement.anomalies],
        "stats": settlement.stats,
    }
    settle_s = time.perf_counter() - t_settle
    wl = world.workload
    # The settlement pays one service day: a tap after midnight (the exit of a late trip)
    # belongs to the next day's batches, and its entry is an unpaired entry today, by
    # the rule in docs/settlement.md. The ground truth counts the same day.
    in_day = wl.time_ms < world.clock.start_ms + 86_400_000
    expected_money = reimburse(
        wl.time_ms, wl.card, wl.gate, (wl.expected == 0) & in_day, world.gates, world.network
    )
    summary = build_summary(
        world,
        got,
        latency,
        gate_us,
        wall,
        settled,
        expected_money,
        {
            "setup_s": setup_s,
            "settle_s": settle_s,
            "workers": workers,
            "lanes": opts.lanes,
            # Fork to the first tap (perf_counter is CLOCK_MONOTONIC, shared by processes).
            "start_s": round(int(span[:, 0].min()) / 1e9 - t0, 2) if span.size else 0.0,
            "commits": int(groups[0]),
            "taps_per_commit": round(float(groups[1]) / max(int(groups[0]), 1), 2),
            "issuer_checks_per_tap": round(float(groups[2]) / max(n, 1), 3),
            "issuer_listed_per_tap": round(float(groups[3]) / max(n, 1), 3),
            **_cpu_figures(cpu_ns, n),
            # The slowest lane's close of its station journal after the day (the move of
            # its rows to their terminals' tables), outside the tap phase's time.
            "journal_close_s": round(close_ns / 1e9, 3),
            "transport": transport_figures(opts.reader, via, latency, got, wl.expected),
            **_ceiling_figures(ceiling if opts.ceiling_ops else [], n / wall if wall else 0.0),
        },
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if opts.plots:
        write_plots(out, world, latency)
    print_summary(summary, stream)
    return summary
