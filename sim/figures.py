"""The engine's figures of a day for ``summary.json``: commits, CPU, the crypto ceiling.

Taken from the workers' results (``sim.workers.DayResults``); timings only, never a
verdict.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from sim.transport import transport_figures
from sim.workers import DayResults
from sim.world import World

__all__ = ["engine_figures", "tap_phase_s"]


def tap_phase_s(results: DayResults, fallback_s: float) -> float:
    """From the first lane's first tap to the last lane's last durable commit (the
    monotonic clock, shared by the processes); worker start-up is not in it."""
    span = results.spans
    if not span.size:
        return fallback_s
    return (int(span[:, 1].max()) - int(span[:, 0].min())) / 1e9


def engine_figures(
    world: World, results: DayResults, t0: float, via: list[int], times: dict[str, Any]
) -> dict[str, Any]:
    """``summary.json``'s engine section; ``t0`` is when the workers were forked
    (perf_counter: CLOCK_MONOTONIC, shared by processes), ``times`` the phases' seconds."""
    opts, n, groups = world.opts, len(world.workload), results.groups
    wall = tap_phase_s(results, 0.0)
    span = results.spans
    return {
        **times,
        "lanes": opts.lanes,
        # Fork to the first tap.
        "start_s": round(int(span[:, 0].min()) / 1e9 - t0, 2) if span.size else 0.0,
        "commits": int(groups[0]),
        "taps_per_commit": round(float(groups[1]) / max(int(groups[0]), 1), 2),
        "issuer_checks_per_tap": round(float(groups[2]) / max(n, 1), 3),
        "issuer_listed_per_tap": round(float(groups[3]) / max(n, 1), 3),
        **_cpu_figures(results.cpu_ns, n),
        # The slowest lane's close of its station journal after the day (the move of
        # its rows to their terminals' tables), outside the tap phase's time.
        "journal_close_s": round(results.close_ns / 1e9, 3),
        "transport": transport_figures(
            opts.reader, via, results.latency_us, results.got, world.workload.expected
        ),
        **_ceiling_figures(
            results.ceiling_us if opts.ceiling_ops else [], n / wall if wall else 0.0
        ),
    }


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


def _cpu_figures(cpu_ns: npt.NDArray[np.int64], taps: int) -> dict[str, Any]:
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
