"""A simulated year of Qingdao's free rides, end to end, against this machine's crypto ceiling.

The subject is ``farecore sim --year`` (in-process call of ``sim.year.run_year``): the
calibrated year (300,000 cards, 27 million rides, 45 million yuan at scale 1), every
tap through the real engine on two worker processes with durable station journals,
every night settled through one ledger and checked to the fen. The baseline is the
crypto the issue counts per tap (one card signature and one terminal verification,
Ed25519), timed by as many processes as the run's workers, all at once, just before
and just after the run: the ceiling in taps per second. The settlement verifies each
paid tap's card signature once more, timed the same way, so the report also states the
crypto floor of the full year: its taps at the ceiling plus its nights' verifications,
the time no engine on these cores could beat without dropping a check.

Goals (issue #22): the full year in at most 90 minutes on this 2-core machine, peak
memory at most 2 GB, the year's rides and yuan within 2 % of the targets. ``--quick``
runs the first 7 days at scale 1 (a few minutes); the full-year time is then
extrapolated from the run's own rate and marked so (the measured goal is listed as not
measured). Peak memory is the peak of the whole run's proportional set size: the PSS of
this process and of all its descendants (``/proc/PID/smaps_rollup``) summed, so a page
that forked workers share with this process counts once, split among them; sampled
every 5 seconds and whenever a process starts or ends (see ``_PssPeak``), and reported
with each process's share at the peak. The
largest resident set of this process and of its largest worker (``getrusage``) are
reported too; their sum counts shared pages twice, an upper bound.

    python benchmarks/bench_year.py [--quick] [--out PATH] [--days N] [--scale S]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _report import goal, write_report

from sim.calibration import TARGET_RIDES
from sim.ceiling import crypto_us_per_tap, verify_us_per_ride
from sim.year import run_year
from sim.year_world import YearOptions

_PROBE_OPS = 2000  # signatures and verifications per process, per ceiling timing


def _ceiling(workers: int) -> tuple[float, float]:
    """Taps/s of a tap's crypto alone, and verifications/s of a paid ride's at the
    settlement, ``workers`` processes at once."""
    with mp.get_context("fork").Pool(workers) as pool:
        us = pool.map(crypto_us_per_tap, [_PROBE_OPS] * workers)
        verify_us = pool.map(verify_us_per_ride, [_PROBE_OPS] * workers)
    return sum(1e6 / u for u in us), sum(1e6 / u for u in verify_us)


class _PssPeak:
    """Samples the PSS of this process and its descendants in a thread: every
    ``_PSS_EVERY_S`` seconds, and at once when a process starts or ends (the list of
    processes is read each second, which is cheap). Reading a process's PSS walks its
    page tables, about 25 ms for a worker with a year's heap; once a second for every
    process that cost about 3 % of the machine, inside the measured time. The heaps grow
    slowly; what is not seen is a process's last seconds (up to 5) before it ends, which
    matters for the shortest-lived, a night's settlement workers (some 10 to 15 s)."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self.peak_parts: list[int] = []  # at the peak: each process's PSS (kB), largest first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss", daemon=True)

    def __enter__(self) -> _PssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        seen: set[int] = set()
        last = 0.0
        while True:
            tree = _tree(os.getpid())
            now = time.monotonic()
            if tree != seen or now - last >= _PSS_EVERY_S:
                seen, last = tree, now
                parts = sorted((_pss_kb(pid) for pid in tree), reverse=True)
                if sum(parts) > self.peak_kb:
                    self.peak_kb, self.peak_parts = sum(parts), parts
            if self._stop.wait(1.0):
                return

    @property
    def peak_mb(self) -> float:
        return round(self.peak_kb / 1024, 1)


_PSS_EVERY_S = 5.0


def _tree(root: int) -> set[int]:
    """``root`` and every process descending from it."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # ended meanwhile
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            parent[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, pp in parent.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def _pss_kb(pid: int) -> int:
    """The PSS (kB) of process ``pid``; 0 if it has ended."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _peak_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return round(own, 1), round(children, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first 7 days (a few minutes)")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument("--days", type=int, default=None, help="days to run (default 365, 7 quick)")
    parser.add_argument("--scale", type=float, default=1.0, help="the calibration's scale")
    parser.add_argument("--keep", default=None, help="run directory to keep (default: temporary)")
    args = parser.parse_args()
    days = args.days or (7 if args.quick else 365)
    workers = os.cpu_count() or 1
    ceiling_before = _ceiling(workers)
    tmp = Path(tempfile.mkdtemp(prefix="bench-year-"))
    run_dir = Path(args.keep) if args.keep else tmp / "run"
    t0 = time.perf_counter()
    try:
        opts = YearOptions(out=run_dir, days=days, scale=args.scale, workers=workers)
        with _PssPeak() as pss:
            summary = run_year(opts, stream=sys.stdout, progress=sys.stderr)
        wall = time.perf_counter() - t0
        setup = summary["setup_seconds"]  # the cards, their keys and the issued list
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ceiling_after = _ceiling(workers)
    parts = [round(kb / 1024, 1) for kb in pss.peak_parts]
    report(args, summary, wall, setup, (ceiling_before, ceiling_after), workers, pss.peak_mb, parts)


def report(
    args: argparse.Namespace,
    s: dict[str, Any],
    wall: float,
    setup: float,
    ceilings: tuple[tuple[float, float], tuple[float, float]],
    workers: int,
    pss_mb: float,
    pss_parts_mb: list[float],
) -> None:
    ceiling = (ceilings[0][0] + ceilings[1][0]) / 2
    verify_rate = (ceilings[0][1] + ceilings[1][1]) / 2
    days_s = s["days_seconds"]
    rate = s["taps"] / days_s if days_s > 0 else 0.0
    tap_rate = s["taps"] / s["tap_seconds"] if s["tap_seconds"] else 0.0
    taps_per_ride = s["taps"] / max(s["rides"], 1)
    full_taps = TARGET_RIDES * taps_per_ride
    # The setup grows with the cards; at scale S it made S times the year's cards.
    full_setup = setup / s["scale"]
    extrapolated = (full_setup + full_taps / rate) / 60 if rate else None
    # The crypto no engine can skip: each tap's card signature and its verification at
    # the gate (the ceiling), and each paid tap's verification again at night.
    full_paid = full_taps * s["settled_taps"] / max(s["taps"], 1)
    floor = (full_taps / ceiling + full_paid / verify_rate) / 60 if ceiling else None
    own, children = _peak_mb()
    full_run = s["days"] == 365 and s["scale"] == 1.0
    metrics = {
        "days": s["days"],
        "scale": s["scale"],
        "cards": s["cards"],
        "workers": workers,
        "taps": s["taps"],
        "rides": s["rides"],
        "settled_fen": s["settled_fen"],
        "target_rides": s["target_rides"],
        "target_fen": s["target_fen"],
        "rides_deviation_pct": s["rides_deviation_pct"],
        "fen_deviation_pct": s["fen_deviation_pct"],
        "wrong_decisions": s["wrong_decisions"],
        "nights_money_ok": s["days_money_ok"],
        "anomalies": s["anomalies"],
        "wall_s": round(wall, 1),
        "setup_s": round(setup, 1),
        "days_s": days_s,
        # Summed over the days; a day's taps overlap the night before, so these two
        # add up to more than days_s.
        "tap_phase_s": s["tap_seconds"],
        "night_phase_s": s["night_seconds"],
        "taps_per_second": round(rate, 1),
        "tap_phase_taps_per_second": round(tap_rate, 1),
        "ceiling_taps_per_second": round(ceiling, 1),
        "ceiling_before": round(ceilings[0][0], 1),
        "ceiling_after": round(ceilings[1][0], 1),
        "settlement_verifications_per_second": round(verify_rate, 1),
        "ratio_to_ceiling": round(rate / ceiling, 3) if ceiling else None,
        "tap_phase_ratio_to_ceiling": round(tap_rate / ceiling, 3) if ceiling else None,
        "peak_rss_mb_parent": own,
        "peak_rss_mb_largest_worker": children,
        "peak_pss_mb_all_processes": pss_mb,
        "peak_pss_mb_by_process": pss_parts_mb,
        # An upper bound only: a forked worker's RSS counts the pages it shares.
        "peak_rss_mb_parent_plus_worker": round(own + children, 1),
        "full_year_taps_estimated": round(full_taps),
        "full_year_minutes_extrapolated": round(extrapolated, 1) if extrapolated else None,
        "settled_taps": s["settled_taps"],
        "full_year_crypto_floor_minutes": round(floor, 1) if floor else None,
        "full_year_minutes_over_crypto_floor": (
            round(extrapolated / floor, 2) if extrapolated and floor else None
        ),
        "crypto_floor": "27 M rides x taps per ride / ceiling + the paid taps among them / "
        "the settlement's verifications per second; no other work counted",
        "extrapolation": "setup / scale + 27 M rides x this run's taps per ride / this run's "
        "taps per second over its days (tap phases and nights)",
    }
    goals = [
        goal(
            "full calibrated year (365 days, scale 1), wall time on 2 cores",
            round(wall / 60, 1) if full_run else None,
            "<=",
            90,
            "min",
        ),
        goal(
            "full year wall time, EXTRAPOLATED from this run's taps/s",
            metrics["full_year_minutes_extrapolated"],
            "<=",
            90,
            "min",
        ),
        goal(
            "the year's crypto floor (its signatures alone at this run's ceiling, no other "
            "work): what the 90 minutes leave for everything else",
            metrics["full_year_crypto_floor_minutes"],
            "<=",
            90,
            "min",
        ),
        goal(
            "peak memory of the run: PSS of all its processes, summed",
            pss_mb,
            "<=",
            2048,
            "MB",
        ),
        goal(
            "peak memory, largest process (parent or worker, RSS)",
            max(own, children),
            "<=",
            2048,
            "MB",
        ),
        goal(
            "rides vs Qingdao's 27 M (x scale, share of days run), deviation",
            abs(s["rides_deviation_pct"]),
            "<=",
            2,
            "%",
        ),
        goal(
            "yuan vs Qingdao's 45 M (x scale, share of days run), deviation",
            abs(s["fen_deviation_pct"]),
            "<=",
            2,
            "%",
        ),
        goal(
            "nights equal to the ground truth to the fen",
            s["days_money_ok"] / max(s["days"], 1),
            ">=",
            1.0,
            "share",
        ),
    ]
    rows = [
        (
            "taps/s over the days vs ceiling",
            f"{rate:,.0f}",
            f"{ceiling:,.0f}",
            f"{rate / ceiling:.2f}" if ceiling else "-",
            "-",
        ),
        (
            "taps/s in the tap phases vs ceiling",
            f"{tap_rate:,.0f}",
            f"{ceiling:,.0f}",
            f"{tap_rate / ceiling:.2f}" if ceiling else "-",
            "-",
        ),
        (
            "full year (min), extrapolated vs its crypto floor",
            f"{extrapolated:,.1f}" if extrapolated else "-",
            f"{floor:,.1f}" if floor else "-",
            f"{extrapolated / floor:.2f}" if extrapolated and floor else "-",
            "<= 90",
        ),
        ("peak RSS parent / worker (MB)", f"{own:,.0f}", f"{children:,.0f}", "-", "<= 2048"),
        ("peak PSS, all processes (MB)", f"{pss_mb:,.0f}", "-", "-", "<= 2048"),
        (
            "rides / yuan deviation (%)",
            f"{s['rides_deviation_pct']:+.2f}",
            f"{s['fen_deviation_pct']:+.2f}",
            "-",
            "within 2",
        ),
    ]
    write_report("year", args.quick, metrics, goals, args.out, rows)


if __name__ == "__main__":
    main()
