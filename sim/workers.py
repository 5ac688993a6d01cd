"""The day's taps spread over worker processes, each running its lanes, and their results.

Places (all gates of a station or a bus) go to workers and lanes balanced by taps, so a
place's passback state lives in one station journal. A worker gets everything it needs
as arguments (a :class:`WorkerJob` and its lanes' taps); with the fork start method they
are inherited, not pickled. It writes its lanes' results to ``worker-K.npz`` in the work
directory, which the parent gathers into one :class:`DayResults`.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from farecore.card.crypto import Algorithm
from farecore.commands.gate import GATE_SWITCH_INTERVAL_S
from farecore.errors import FarecoreError
from sim.ceiling import crypto_us_per_tap
from sim.lane import LaneJob, LaneResult, run_lane
from sim.transport import Transport
from sim.world import World

if TYPE_CHECKING:
    from farecore.fleet.metrics import FleetMetrics

__all__ = ["DayResults", "WorkerJob", "gather", "partition", "run_worker"]

Taps = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class WorkerJob:
    """What every worker shares: the world, the work directory and the shared counters."""

    world: World
    work: Path
    transport: Transport | None
    progress: Any  # shared array of taps done, 64 slots a worker (one a lane)
    barrier: Any  # with --measure-ceiling: all workers time the ceiling at once


@dataclass(frozen=True, slots=True)
class DayResults:
    """Every worker's results, per tap in workload order, and the lanes' totals."""

    got: npt.NDArray[np.uint8]
    latency_us: npt.NDArray[np.float64]
    gate_us: npt.NDArray[np.float64]
    spans: npt.NDArray[np.int64]  # one row a lane with taps: first tap start, last durable
    groups: npt.NDArray[np.int64]  # commits, taps in them, issuer checks, listed instead
    cpu_ns: npt.NDArray[np.int64]  # lanes' CPU, committers' CPU, waiting for commits
    close_ns: int  # the slowest lane's close of its station journal
    ceiling_us: list[list[float]]  # per worker: crypto us per tap before and after


def partition(world: World, workers: int, lanes: int) -> list[list[Taps]]:
    """Places (all gates of a station or bus) to workers and lanes, balanced by taps."""
    wl = world.workload
    place_of = np.array([_hash_place(g.place) for g in world.gates])
    tap_place = place_of[wl.gate]
    counts: dict[int, int] = defaultdict(int)
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


def _hash_place(place: str) -> int:
    return int.from_bytes(hashlib.sha256(place.encode()).digest()[:6], "big")


def _probe(barrier: Any, ops: int, algorithms: tuple[Algorithm, ...]) -> float:
    """All workers at once: time the crypto ceiling (us per tap), then go on together."""
    try:
        barrier.wait(timeout=600)
        us = crypto_us_per_tap(ops, algorithms=algorithms)
        barrier.wait(timeout=600)
    except threading.BrokenBarrierError:
        return 0.0  # another worker failed: the run reports that, not a ceiling
    return us


def run_worker(job: WorkerJob, k: int, lanes: list[Taps]) -> None:
    """Worker ``k``: run its lanes (threads when more than one), save their results."""
    ceiling_us = np.zeros(2)
    if job.barrier is not None:
        ceiling_us[0] = _probe(
            job.barrier, job.world.opts.ceiling_ops, job.world.opts.card_algorithms()
        )
    # With several lanes (threads), hand the GIL over quickly when a lane's commit
    # returns, so that lane does not sit out a whole 5 ms switch interval: as a gate does.
    sys.setswitchinterval(GATE_SWITCH_INTERVAL_S)
    results = [LaneResult.zeros(len(t)) for t in lanes]
    metrics = _metrics(job.world.opts.metrics_dir)
    try:
        errors = _run_lanes(job, k, lanes, results, metrics)
    finally:
        if metrics is not None:
            metrics.close()  # this worker's gates are closed: their live gauges go
    if job.barrier is not None:
        if errors:
            job.barrier.abort()  # the others must not wait for a worker that failed
        else:
            ceiling_us[1] = _probe(
                job.barrier, job.world.opts.ceiling_ops, job.world.opts.card_algorithms()
            )
    if errors:
        if isinstance(errors[0], FarecoreError):
            # A failure the engine names (a journal that cannot commit, a table that
            # does not verify): one line for the operator, not a traceback.
            print(f"farecore sim: worker {k}: {errors[0]}", file=sys.stderr, flush=True)
            sys.exit(3)
        raise errors[0]
    _save(job.work / f"worker-{k}.npz", lanes, results, ceiling_us)


def _metrics(directory: Path | None) -> FleetMetrics | None:
    """This worker's gates' metrics, written into ``directory`` for the parent to serve."""
    if directory is None:
        return None
    from farecore.fleet.metrics import FleetMetrics, use_multiprocess_dir

    use_multiprocess_dir(directory)
    return FleetMetrics()


def _run_lanes(
    job: WorkerJob,
    k: int,
    lanes: list[Taps],
    results: list[LaneResult],
    metrics: FleetMetrics | None = None,
) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(j: int) -> None:
        slot = k * 64 + j
        lane = LaneJob(
            job.world, f"{k}-{j}", lanes[j], job.work, job.transport, job.progress, slot, metrics
        )
        try:
            run_lane(lane, results[j])
        except BaseException as exc:  # reported by the parent as a failed worker
            errors.append(exc)

    if len(lanes) == 1:
        run(0)
    else:
        threads = [threading.Thread(target=run, args=(j,)) for j in range(len(lanes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return errors


def _save(
    path: Path, lanes: list[Taps], results: list[LaneResult], ceiling_us: npt.NDArray[Any]
) -> None:
    np.savez(
        path,
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


def gather(work: Path, workers: int, taps: int) -> DayResults:
    """The workers' saved results, put back in workload order."""
    got = np.zeros(taps, dtype=np.uint8)
    latency = np.zeros(taps)
    gate_us = np.zeros(taps)
    spans, ceiling = [], []
    groups = np.zeros(4, dtype=np.int64)
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
    span = np.concatenate(spans).astype(np.int64).reshape(-1, 2)
    return DayResults(got, latency, gate_us, span, groups, cpu_ns, close_ns, ceiling)
