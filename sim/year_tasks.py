"""One lane's day of a simulated year: the task a process pool or a Dask worker runs.

A lane is a station controller with a fixed set of places for the whole year, so each
of its terminals' hash chains lives in one station journal (``work/journals/
station-yK.sqlite``) that the lane continues day after day. A task runs one lane
through one day: it opens the lane's journal and builds the lane's gates from their
configurations, plays the day's taps, and closes everything again; what carries over
to the next day is on disk (the journal, the gates' marks in the lane's own state
directory). The task needs the year's cards: a forked pool worker inherits them from
the parent (``remember_base``), a Dask worker makes them once per process from the
options (``base_world``). The task returns the lane's per-tap results.

This module must never settle and never decide a verdict: the runner (``sim.year``)
does both, in day order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from farecore.commands.gate import GATE_SWITCH_INTERVAL_S
from farecore.journal.batch import export_batch
from sim.lane import LaneJob, LaneResult, run_lane
from sim.workload import DayClock, Workload
from sim.world import World
from sim.year_world import YearOptions, build_base, day_tables, year_day

__all__ = [
    "LaneDay",
    "base_world",
    "day_batches",
    "export_lane",
    "lane_journal",
    "plan_lanes",
    "remember_base",
    "run_lane_day",
]

_BASE: dict[str, World] = {}


def _key(opts: YearOptions, cards: int) -> str:
    return json.dumps([opts.fingerprint(), cards], sort_keys=True)


def remember_base(opts: YearOptions, cards: int, world: World) -> None:
    """Keep the parent's base world, so forked pool workers find it made: every card's
    credential, and no key object (each worker makes the keys of the cards it meets,
    once; keys held here would be copied into each worker as it used them)."""
    world.cards.forget_keys()
    _BASE.clear()
    _BASE[_key(opts, cards)] = world


def base_world(opts: YearOptions, cards: int) -> World:
    """The year's base world in this process: made once (every card's key and
    credential included), then reused by every task the process runs."""
    key = _key(opts, cards)
    world = _BASE.get(key)
    if world is None:
        _BASE.clear()
        world = build_base(opts, cards)
        for index in range(cards):
            world.cards.material(index)
        _BASE[key] = world
    return world


def _place_key(place: str) -> int:
    # As sim.workers: a place's number, the same in every process.
    return int.from_bytes(hashlib.sha256(place.encode()).digest()[:6], "big")


def lane_journal(work: Path, lane: int) -> Path:
    return work / "journals" / f"station-y{lane}.sqlite"


def day_batches(out: Path, index: int) -> Path:
    """Where day ``index``'s batches go: ``out/batches/DATE``."""
    return out / "batches" / year_day(index).isoformat()


def export_lane(world: World, out: Path, lane: int, gates: tuple[int, ...], index: int) -> None:
    """Each of the lane's terminals' signed batch of day ``index``, from the lane's
    journal, into ``day_batches``: each continues its terminal's chain from the batch
    before. A lane exports its own, in its worker, as soon as its day is played."""
    day = year_day(index)
    batches = day_batches(out, index)
    batches.mkdir(parents=True, exist_ok=True)
    path = lane_journal(out / "work", lane)
    for g in gates:
        tid = world.gates[g].terminal_id
        data = export_batch(path, day, world.terminal_key(tid), terminal_id=tid)
        (batches / f"terminal-{tid}-{day.isoformat()}.fcb").write_bytes(data)


def plan_lanes(world: World, lanes: int) -> list[tuple[int, ...]]:
    """The year's lanes: places (all gates of a station or a bus) balanced over
    ``lanes`` controllers by the taps of ``world``'s day; every gate in one lane."""
    counts: dict[int, int] = defaultdict(int)
    place_of = [_place_key(g.place) for g in world.gates]
    for g in world.workload.gate.tolist():
        counts[place_of[g]] += 1
    places = sorted(set(place_of), key=lambda p: (-counts[p], p))
    load = [0] * lanes
    owner: dict[int, int] = {}
    for p in places:
        b = min(range(lanes), key=lambda b: (load[b], b))
        owner[p] = b
        load[b] += counts[p] + 1
    return [
        tuple(g.index for g in world.gates if owner[place_of[g.index]] == k) for k in range(lanes)
    ]


@dataclass(frozen=True, slots=True)
class LaneDay:
    """One lane's day: what a worker needs besides the base world."""

    opts: YearOptions
    cards: int
    index: int  # day of the year, 0-based
    lane: int
    gates: tuple[int, ...]  # the lane's gates (indices into the world's gates)
    taps: npt.NDArray[np.int64]  # the lane's taps: indices into the day's workload
    workload: Workload
    tap_base: int  # taps of the year before this day: nonces never repeat

    def __post_init__(self) -> None:
        if not self.gates:
            raise ValueError(f"lane {self.lane} has no gates")


def run_lane_day(task: LaneDay) -> tuple[int, npt.NDArray[np.int64], LaneResult]:
    """Run the lane's taps of the day through its station controller, then export its
    terminals' batches of the day; (lane, taps, results)."""
    base = base_world(task.opts, task.cards)
    world = dataclasses.replace(base, clock=DayClock(year_day(task.index)), workload=task.workload)
    out = task.opts.out.absolute()
    work = out / "work"
    gen1, gen2, _ = day_tables(out, task.index)
    # As sim.workers: hand the GIL over quickly when a lane's commit returns.
    sys.setswitchinterval(GATE_SWITCH_INTERVAL_S)
    result = LaneResult.zeros(len(task.taps))
    job = LaneJob(
        world,
        f"y{task.lane}",
        task.taps,
        work,
        None,
        [0],
        0,
        all_gates=task.gates,
        tables=(gen1, gen2),
        state_dir=work / "state" / f"lane-{task.lane}",
        tap_base=task.tap_base,
        start_ms=_first_tap_ms(task),
    )
    run_lane(job, result)
    export_lane(base, out, task.lane, task.gates, task.index)
    return task.lane, task.taps, result


def _first_tap_ms(task: LaneDay) -> int | None:
    """The lane's first tap of the day (the day's, if the lane has none): when its gates
    are built, after yesterday's late exits that their marks hold."""
    times = task.workload.time_ms
    if len(task.taps):
        return int(times[task.taps[0]])
    return int(times[0]) if len(times) else None
