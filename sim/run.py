"""Runs a simulated day end to end: set up a city, tap through the real engine, settle, check.

Setup builds the world (``sim.world``) and writes everything a real deployment has into
the run directory (``sim.deploy``): keys, keyring, the issuer's list of its credentials,
revocation tables, fares, gate configurations. The day then runs in worker processes
(``sim.workers``), each with one or more lanes (``sim.lane``): station controllers whose
gates are built from their configurations by the real gate wiring and share one durable
station journal. With ``--reader pcsc`` or ``pn532`` a share of one gate's taps crosses
a real transport (``sim.transport``). Every decision is compared with the workload's
ground truth; the batches are exported and settled, and the money compared with the
fare of every legitimate ride (``sim.settle``).

Simulated time drives everything that reaches a journal or a settlement (tap times,
nonces from the seed), so a seed reproduces decisions and settlement bytes. Wall clocks
are read only to measure speed. This module must never loosen the engine to make a
check pass: a wrong decision or a money mismatch is reported and fails the run.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from sim.deploy import write_city
from sim.figures import engine_figures, tap_phase_s
from sim.settle import expected_money, export_batches, settle
from sim.summary import build_summary, print_summary, show_progress, write_plots
from sim.transport import TRANSPORTS, Transport, start_transport, stop_transport
from sim.workers import DayResults, WorkerJob, gather, partition, run_worker
from sim.world import SIM_DAY, SimError, SimOptions, World, build_world

__all__ = ["SIM_DAY", "SimError", "SimOptions", "run_simulation"]


def run_simulation(opts: SimOptions, stream: TextIO = sys.stdout) -> dict[str, Any]:
    """Run the day; return the summary (also written to RUNDIR/summary.json)."""
    if opts.crypto != "ed25519":  # stop before the run directory is made
        from farecore.card import sm2

        try:
            sm2.backend()
        except ValueError as exc:  # MalformedInput: the extra is not installed
            raise SimError(f"--crypto {opts.crypto}: {exc}") from None
    # Absolute: pcscd is handed paths under it and does not resolve them from our cwd.
    out = opts.out.absolute()
    if out.exists() and any(out.iterdir()):
        raise SimError(f"{out} exists and is not empty; choose a new --out directory")
    out.mkdir(parents=True, exist_ok=True)
    t_setup = time.perf_counter()
    world = _set_up(opts, out, stream)
    setup_s = time.perf_counter() - t_setup
    _say(
        stream,
        f"{len(world.workload):,} taps, {len(world.population):,} cards, "
        f"{len(world.gates)} gates; setup {setup_s:.1f} s",
    )
    if len(world.workload) < opts.taps:
        _say(
            stream,
            f"note: {opts.cards:,} cards can only make {len(world.workload):,} taps in a day "
            "(one card's trips are 90 min apart); use more --cards",
        )
    workers = opts.workers or os.cpu_count() or 1
    results, via, t0 = _run_day(world, out, workers, stream)
    run_s = time.perf_counter() - t0
    t_settle = time.perf_counter()
    settled = settle(world, out, export_batches(world, out), workers)
    times = {"setup_s": setup_s, "settle_s": time.perf_counter() - t_settle, "workers": workers}
    summary = build_summary(
        world,
        results.got,
        results.latency_us,
        results.gate_us,
        tap_phase_s(results, run_s),
        settled,
        expected_money(world),
        engine_figures(world, results, t0, via, times),
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if opts.plots:
        write_plots(out, world, results.latency_us)
    print_summary(summary, stream)
    return summary


def _say(stream: TextIO, message: str) -> None:
    print(f"farecore sim: {message}", file=stream, flush=True)


def _set_up(opts: SimOptions, out: Path, stream: TextIO) -> World:
    """Build the world and write the deployment into ``out``; make the work directory."""
    world = build_world(opts)
    _say(stream, f"issuing {opts.cards:,} cards and the issuer's signed list of them")
    write_city(world, out)
    for sub in ("journals", "passback", "revocation", "state"):
        (out / "work" / sub).mkdir(parents=True)
    return world


def _run_day(
    world: World, out: Path, workers: int, stream: TextIO
) -> tuple[DayResults, list[int], float]:
    """Fork the workers, show their progress, gather their results; also which taps
    went through the transport (none on the virtual reader) and when the workers forked."""
    work = out / "work"
    parts = partition(world, workers, world.opts.lanes)
    ctx = mp.get_context("fork")
    progress = ctx.Array("q", workers * 64, lock=False)
    barrier = ctx.Barrier(workers) if world.opts.ceiling_ops else None
    daemon, transport = _start_transport(world, work)
    job = WorkerJob(world, work, transport, progress, barrier)
    t0 = time.perf_counter()
    # Forked: the workers inherit the job (the world, every card made) as an argument.
    procs = [
        ctx.Process(target=run_worker, args=(job, k, parts[k]), daemon=True) for k in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        show_progress(progress, len(world.workload), procs, stream, t0)
    finally:
        for p in procs:
            p.join()
        stop_transport(daemon)
    failed = [k for k, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise SimError(
            f"worker(s) {failed} failed (exit codes {[procs[k].exitcode for k in failed]})"
        )
    via = sorted(transport.taps) if transport is not None else []
    return gather(work, workers, len(world.workload)), via, t0


def _start_transport(world: World, work: Path) -> tuple[Any, Transport | None]:
    """Route the first taps of gate 0 through the chosen transport (see sim.transport);
    return what has to be stopped after the tap phase (pcscd, or None) and the plan."""
    if world.opts.reader not in TRANSPORTS:
        return None, None
    first = np.flatnonzero(world.workload.gate == 0)[: world.opts.transport_taps]
    return start_transport(world.opts.reader, work / "pcscd", 0, first)
