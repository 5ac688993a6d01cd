"""Runs a simulated year: every day through the real engine, every night through one ledger.

``farecore sim --year`` (or ``--days N``) issues the year's cards once, then plays the
days of 2026 in order. Each day is sized by the calibration (``sim.calibration``:
Qingdao's 27 million rides and 45 million yuan at ``--scale`` 1, spread over the
calendar of ``sim.calendar``) and generated with its ground truth (``sim.year_world``).
Its taps run in parallel over the year's lanes: each lane is a station controller with
a fixed set of places, run as one task per day (``sim.year_tasks``) on a local process
pool or on a Dask cluster (``--scheduler``; ``sim.year_pool``). A lane continues its
station journal from day to day, so every terminal has one hash chain all year, and
exports its terminals' batches of the day when it has played it. Once all lanes have,
the night is settled through the one ledger (``sim.year_settle``), in day order, while
the next day (generated meanwhile) is tapped; the decisions and the money are checked
against the ground truth to the fen, and the day's record is added to the state file
(``year-state.json``, written atomically). A rerun with the same ``--out`` and the same
options continues after the last settled night, after undoing what a stop left behind.
The totals against Qingdao's figures are ``sim.year_report``'s.

Wall clocks are read only for speed and the progress line. This module must never
loosen a check: a wrong decision or a wrong fen fails the run (exit status 1).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from farecore.atomicfile import write_atomic
from farecore.settlement import Ledger
from sim.calendar import year_calendar
from sim.calibration import Targets, fare_means
from sim.deploy import issued_lists, write_city
from sim.network import METRO_BANDS
from sim.settle import expected_money
from sim.venues import VENUE_OPERATOR
from sim.workload import boardings
from sim.world import SimError, World
from sim.year_pool import Executor, executor
from sim.year_report import against_targets, print_comparison, year_summary
from sim.year_settle import lane_results, night_figures, rollback, settle_night
from sim.year_tasks import LaneDay, base_world, day_batches, plan_lanes, remember_base
from sim.year_world import (
    YearOptions,
    build_base,
    day_world,
    revocation_days,
    write_day_tables,
    year_day,
)

__all__ = ["STATE_FILE", "YearOptions", "day_truth", "parse_state", "plan_year", "run_year"]

STATE_FILE = "year-state.json"
_STATE_FORMAT = "farecore-sim-year/1"
# A test hook: die abruptly at a named point ("taps:N" after day N's taps, before its
# night; "night:N" after night N is in the ledger, before its record), as a killed run.
_KILL_AT = "FARECORE_SIM_YEAR_KILL_AT"


def run_year(
    opts: YearOptions, stream: TextIO = sys.stdout, progress: TextIO = sys.stderr
) -> dict[str, Any]:
    """Run (or continue) the year; return its summary (also ``RUNDIR/year-summary.json``)."""
    out = opts.out.absolute()
    targets = Targets.of(year_calendar(), opts.scale)
    # A Dask scheduler is reached before anything is written; local workers fork at the
    # first day's tasks, after the cards are made, and inherit them.
    with executor(opts) as pool:
        state = _open_state(out, opts)
        t_setup = time.perf_counter()
        base = _base(opts, out, targets.cards, state, stream)
        if state is None:
            state = {"format": _STATE_FORMAT, "options": opts.fingerprint(), "days": []}
            _write_state(out, state)
        year = _Year(opts, out, base, targets, state, stream, progress)
        year.setup_s = time.perf_counter() - t_setup
        with Ledger.open(out / "ledger.sqlite") as ledger:
            year.catch_up(ledger)
            year.run(ledger, pool)
    summary = year.summary()
    write_atomic(out / "year-summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    print_comparison(summary, stream)
    return summary


def _base(
    opts: YearOptions, out: Path, cards: int, state: dict[str, Any] | None, stream: TextIO
) -> World:
    """The year's cards (and, for a new run, the deployment written into ``out``)."""
    t0 = time.perf_counter()
    if state is None:
        _say(stream, f"issuing {cards:,} cards and the issuer's signed list of them")
    else:
        _say(stream, f"continuing {out} after day {len(state['days'])} of {opts.days}")
    base = base_world(opts, cards)
    if state is None:
        _set_up(base, out)
    remember_base(opts, cards, base)  # forked pool workers inherit the cards
    took = time.perf_counter() - t0
    _say(stream, f"{cards:,} cards, {len(base.gates)} gates; setup {took:.1f} s")
    return base


def _say(stream: TextIO, message: str) -> None:
    print(f"farecore sim: {message}", file=stream, flush=True)


def _set_up(base: World, out: Path) -> None:
    write_city(base, out)
    for sub in ("journals", "passback", "revocation", "state"):
        (out / "work" / sub).mkdir(parents=True, exist_ok=True)


def _open_state(out: Path, opts: YearOptions) -> dict[str, Any] | None:
    """The state of the run in ``out`` to continue, or None for a new run; refuses a
    directory that is not an unfinished year with the same options."""
    path = out / STATE_FILE
    if not path.exists():
        if out.exists() and any(out.iterdir()):
            raise SimError(f"{out} exists and is not a simulated year; choose a new --out")
        out.mkdir(parents=True, exist_ok=True)
        return None
    try:
        state = parse_state(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SimError(f"{path}: cannot continue from it ({exc})") from None
    differ = [k for k, v in opts.fingerprint().items() if state["options"].get(k) != v]
    if differ:
        raise SimError(
            f"{out} was started with other options ({', '.join(differ)}); "
            "rerun with the same options to continue, or choose a new --out"
        )
    return state


_DAY_KEYS = {
    "day": str,
    "taps": int,
    "rides": int,
    "expected_fen": int,
    "settled_fen": int,
    "money_ok": bool,
    "taps_ok": bool,
    "anomalies": dict,
    "carry": dict,
    "venue_visits_planned": int,
    "venue_entries": int,
    "venue_fen": int,
    "settled_venue_fen": int,
}


def parse_state(data: bytes) -> dict[str, Any]:
    """The state file, checked for what a continued run reads (ValueError if not)."""
    if len(data) > 64 << 20:
        raise ValueError("larger than 64 MiB")
    try:
        state = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise ValueError(f"not a {_STATE_FORMAT} file")
    if not isinstance(state.get("options"), dict) or not isinstance(state.get("days"), list):
        raise ValueError("no options or no days")
    for n, day in enumerate(state["days"]):
        if not isinstance(day, dict):
            raise ValueError(f"day {n + 1} is not a record")
        for key, kind in _DAY_KEYS.items():
            if type(day.get(key)) is not kind:
                raise ValueError(f"day {n + 1}: {key} is missing or not a {kind.__name__}")
        if day["day"] != year_day(n).isoformat():
            raise ValueError(f"day {n + 1} is {day['day']!r}, not {year_day(n).isoformat()}")
        wrong = day.get("wrong_decisions")
        if wrong is not None and type(wrong) is not int:
            raise ValueError(f"day {n + 1}: wrong_decisions is not an integer")
        carry = day["carry"]
        if type(carry.get("taps")) is not int or not isinstance(carry.get("by_operator"), dict):
            raise ValueError(f"day {n + 1}: a malformed carry")
        if not all(
            type(v) is int for v in [*carry["by_operator"].values(), *day["anomalies"].values()]
        ):
            raise ValueError(f"day {n + 1}: a count that is not an integer")
    return state


def _write_state(out: Path, state: dict[str, Any]) -> None:
    write_atomic(out / STATE_FILE, (json.dumps(state, sort_keys=True) + "\n").encode())


def _kill_at(point: str) -> None:
    if os.environ.get(_KILL_AT) == point:
        os._exit(137)


class _Year:
    """The days of the run, the totals so far, and the progress line."""

    def __init__(
        self,
        opts: YearOptions,
        out: Path,
        base: World,
        targets: Targets,
        state: dict[str, Any],
        stream: TextIO,
        progress: TextIO,
    ) -> None:
        self.opts, self.out, self.base, self.targets = opts, out, base, targets
        self.state, self.stream, self.progress = state, stream, progress
        self.days: list[dict[str, Any]] = state["days"]
        self.revoked_on = revocation_days(base)
        self.means = fare_means(base.network, base.gates)
        # Each day's ground truth, known before its night: the records of the days done
        # hold it, and a day is added as it is generated.
        self.truths: list[dict[str, Any]] = list(self.days)
        self.lanes = plan_lanes(self._day(0)[0], opts.lane_count)
        self.started = time.perf_counter()
        self.days_s = 0.0
        self.setup_s = 0.0
        self.session_taps = 0
        self.session_rides = 0

    def _day(self, index: int) -> tuple[World, dict[str, Any]]:
        """Day ``index``'s world, aimed from the ground truth of the days before it, and
        its own ground truth."""
        before = self.truths[:index]
        rides = sum(d["rides"] for d in before)
        fen = sum(d["expected_fen"] for d in before)
        aim = self.targets.aim(index, rides, fen, self.means)
        world = day_world(self.base, index, aim, self.revoked_on)
        return world, day_truth(world, self.targets, before)

    def world(self, index: int) -> World:
        """Day ``index``'s world; its ground truth is kept for the next day's aim."""
        world, truth = self._day(index)
        del self.truths[index:]
        self.truths.append(truth)
        return world

    def catch_up(self, ledger: Ledger) -> None:
        """A continued run: the record of a night the ledger holds but the state does not
        (stopped in between), then undo what the stop left after the last night."""
        last = ledger.last_night()
        if last is not None and len(self.days) < self.opts.days:
            index = len(self.days)
            if last[1] == year_day(index):
                world = self.world(index)
                self._record(world, None, self.out / "settlement" / last[1].isoformat(), {})
        index = len(self.days)
        first_tap = None
        if index < self.opts.days:
            times = self.world(index).workload.time_ms
            first_tap = int(times.min()) if len(times) else None
        removed = rollback(self.out, self.base, self.lanes, ledger, index, first_tap)
        if removed:
            _say(self.stream, f"undid {removed:,} journal records of a day that was not settled")

    def run(self, ledger: Ledger, pool: Executor) -> None:
        """The days left, in order. Day d+1 is generated and its tables signed while day
        d's taps run; its taps run on the pool while night d is settled here. Each lane
        exports its batches of day d before its task ends, and a stop at any point is
        undone by the next run's rollback."""
        first, last = len(self.days), self.opts.days
        t_days = time.perf_counter()
        if first < last:
            pending = self._submit(pool, self._generate(first), first)
            for index in range(first, last):
                world, handle, t_taps = pending
                upcoming = self._generate(index + 1) if index + 1 < last else None
                results = pool.gather(handle)
                tap_s = time.perf_counter() - t_taps
                _kill_at(f"taps:{index}")
                t_night = time.perf_counter()
                batches = day_batches(self.out, index)
                if upcoming is not None:
                    pending = self._submit(pool, upcoming, index + 1)
                where = settle_night(
                    self.out,
                    index,
                    batches,
                    ledger,
                    self.opts.workers,
                    pool.units,
                    [self.out / name for name in issued_lists(self.base)],
                )
                _kill_at(f"night:{index}")
                got, _, totals = lane_results(results, len(world.workload))
                speed = {
                    "tap_s": round(tap_s, 3),
                    "night_s": round(time.perf_counter() - t_night, 3),
                    **totals,
                }
                record = self._record(world, got, where, speed)
                self.session_taps += record["taps"]
                self.session_rides += record["rides"]
                self._show(index)
        self.days_s += time.perf_counter() - t_days

    def _generate(self, index: int) -> World:
        """Generate day ``index`` and sign its tables (a day's ground truth depends only
        on the days before it, never on how they ran)."""
        world = self.world(index)
        write_day_tables(world, self.out, index)
        return world

    def _submit(self, pool: Executor, world: World, index: int) -> tuple[World, Any, float]:
        """Hand day ``index``'s lanes to the pool."""
        return world, pool.submit(self._tasks(world, index)), time.perf_counter()

    def _tasks(self, world: World, index: int) -> list[LaneDay]:
        wl = world.workload
        tap_base = sum(d["taps"] for d in self.truths[:index])
        cards = len(self.base.population)
        return [
            LaneDay(
                self.opts,
                cards,
                index,
                k,
                gates,
                np.flatnonzero(np.isin(wl.gate, np.array(gates))).astype(np.int64),
                wl,
                tap_base,
            )
            for k, gates in enumerate(self.lanes)
        ]

    def _record(self, world: World, got: Any, where: Path, speed: dict[str, Any]) -> dict[str, Any]:
        """Check the day against its ground truth; add its record to the state."""
        wl = world.workload
        entry = dict(self.truths[len(self.days)])
        settled = night_figures(where)
        entry.update(settled)
        entry.update(speed)
        entry["wrong_decisions"] = (
            None if got is None else int(np.count_nonzero(wl.expected != got))
        )
        entry["money_ok"] = entry["expected_by_operator"] == settled["settled_by_operator"]
        entry["taps_ok"] = entry["expected_taps_paid"] == settled["settled_taps"]
        self.days.append(entry)
        _write_state(self.out, self.state)
        return entry

    def _show(self, index: int) -> None:
        done, total = len(self.days), self.opts.days
        elapsed = time.perf_counter() - self.started
        rate = self.session_taps / elapsed if elapsed > 0 else 0.0
        rides_left = sum(self.targets.rides[done:total])
        left = elapsed / self.session_rides * rides_left if self.session_rides else 0.0
        text = (
            f"day {done}/{total} ({year_day(index).isoformat()})  "
            f"{sum(d['taps'] for d in self.days):,} taps  {rate:,.0f} taps/s  "
            f"elapsed {_hms(elapsed)}  left about {_hms(left)}"
        )
        if self.progress.isatty():
            end = "\n" if done == total else ""
            self.progress.write("\r" + text + end)
        else:
            self.progress.write(f"farecore sim: {text}\n")
        self.progress.flush()

    def summary(self) -> dict[str, Any]:
        summary = year_summary(self.opts, self.targets, self.days)
        summary["setup_seconds"] = round(self.setup_s, 1)
        summary["days_seconds"] = round(self.days_s, 1)
        return summary


def day_truth(world: World, targets: Targets, before: list[dict[str, Any]]) -> dict[str, Any]:
    """The ground truth of a day of the year: its rides, the fen owed per operator and
    the taps the settlement must pay, with what the day before carried over (the exits
    of its late trips, after midnight)."""
    wl, day = world.workload, world.clock.day
    in_day = wl.time_ms < world.clock.start_ms + 86_400_000
    accepted = wl.expected == 0
    carried: dict[str, Any] = before[-1]["carry"] if before else {}
    carried_taps = int(carried.get("taps", 0))
    expected_by_op: dict[str, int] = defaultdict(int)
    for op, lines in expected_money(world).items():
        expected_by_op[op] += sum(lines.values())
    venue_fen = expected_by_op.get(VENUE_OPERATOR, 0)  # not rides: outside the calibration
    venue = np.array([g.role == "venue" for g in world.gates], dtype=bool)[wl.gate]
    for op, fen in carried.get("by_operator", {}).items():
        expected_by_op[op] += int(fen)
    index = (day - targets.calendar[0].date).days
    return {
        "day": day.isoformat(),
        "kind": targets.calendar[index].kind,
        "taps": len(wl),
        "rides_target": int(targets.rides[index]),
        "rides": boardings(wl.card, wl.gate, accepted & in_day, world.gates) + carried_taps,
        "expected_fen": sum(expected_by_op.values()) - venue_fen,
        "venue_entries": int(np.count_nonzero(accepted & in_day & venue)),
        "venue_fen": venue_fen,
        "expected_by_operator": dict(sorted(expected_by_op.items())),
        "expected_taps_paid": int(np.count_nonzero(accepted & in_day)) + carried_taps,
        "venue_visits_planned": int(targets.venue_visits[index]),
        "carry": _carry(world, accepted & ~in_day),
    }


def plan_year(opts: YearOptions) -> dict[str, Any]:
    """The year's ground truth without the engine: every day generated and priced as a
    run would (the same days, the same calibration), nothing tapped or settled. A run
    settles exactly these figures, night by night; this shows them in seconds."""
    targets = Targets.of(year_calendar(), opts.scale)
    base = build_base(opts, targets.cards)  # cards are made lazily: none needed here
    revoked_on = revocation_days(base)
    means = fare_means(base.network, base.gates)
    days: list[dict[str, Any]] = []
    for index in range(opts.days):
        rides = sum(d["rides"] for d in days)
        fen = sum(d["expected_fen"] for d in days)
        aim = targets.aim(index, rides, fen, means)
        world = day_world(base, index, aim, revoked_on)
        truth = day_truth(world, targets, days)
        truth["metro_share"] = aim.metro_share
        days.append(truth)
    rides = sum(d["rides"] for d in days)
    fen = sum(d["expected_fen"] for d in days)
    return {
        "days": days,
        "rides": rides,
        "fen": fen,
        "taps": sum(d["taps"] for d in days),
        **against_targets(targets, opts.scale, opts.days, rides, fen),
        "bus_mean_fen": round(means[0], 2),
        "metro_mean_fen": round(means[1], 2),
    }


def _carry(world: World, late: Any) -> dict[str, Any]:
    """Accepted taps after midnight (exits of late trips): the next day's batches hold
    them, and the settlement pays each as an exit with no entry, the lowest band."""
    lowest = min(fen for _, fen in METRO_BANDS)
    by_op: dict[str, int] = defaultdict(int)
    for g in world.workload.gate[late].tolist():
        by_op[world.gates[g].operator] += lowest
    return {"taps": int(np.count_nonzero(late)), "by_operator": dict(sorted(by_op.items()))}


def _hms(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
