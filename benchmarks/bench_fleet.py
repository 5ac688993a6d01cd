"""The fleet: keeping a city's gates current. One JSON report, written by sections.

Each section measures one part of issue #21 and adds its metrics and goals to the one
report (``benchmarks/results/fleet.json``); a section not run (``--section``) lists its
goals with a null value. Sections:

``propagation`` (benchmarks/fleet_propagation.py): 5,000 simulated gates (``--quick``:
500 polling every 3 s) follow a package served by a real nginx, each polling every 30 s;
a revocation published as a delta must reach 99 % of them within 60 s (two polling
intervals), against the polling interval itself and the cost of an unchanged poll.

``delta`` (revocation deltas, docs/revocation-format.md *Deltas*). A gate holds a base
table of 10 M ids (``--quick``: 1 M, and the goal names say so) in its table store, with
durable marks, as ``farecore gate`` wires it. Goals:

- the file of a delta of 1,000 revocations is at most 32 KB;
- putting such a delta in force (``HotRevocation.offer``: read, verify, check against the
  base, copy into the store, record in the marks, swap) takes at most 50 ms at p99 over
  repeated deltas; the baseline, measured interleaved, is what a new base costs the same
  gate (copy into a fresh store and verify every byte);
- no tap waits more than 1 ms because of it: a tap thread, due every 200 µs, takes a
  snapshot and looks an id up, and each tap is timed from when it was due to its answer
  (so a wait for the GIL counts); the longest of the taps due while a delta is being put
  in force, against the longest of the same thread's taps due while none is (30 ms
  windows of each alternate in one run). The rates of taps over 1 ms in both, and the
  machine's load average, are reported with it: on a shared machine the longest tap of
  either kind is mostly other processes' doing.

    python benchmarks/bench_fleet.py [--quick] [--section NAME ...] [--out PATH]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from _report import goal, logged, percentile, write_report

from farecore.atomicfile import write_atomic
from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import SigningKey
from farecore.decide.revocation import (
    HotRevocation,
    RevocationInForce,
    RevocationTable,
    RevocationView,
    TableStore,
    build_delta,
    build_table,
)
from farecore.gate.marks import GateMarks

KEY = SigningKey("revocation", 1, PrivateKey(Algorithm.ED25519, bytes(range(32))))
clock = time.perf_counter
_log = logging.getLogger(__name__)
_T0 = clock()


def progress(what: str) -> None:
    _log.info("[%6.1f s] %s", clock() - _T0, what)


Row = tuple[str, str, str, str, str]


@dataclass
class Context:
    quick: bool
    directory: Path


@dataclass
class Result:
    metrics: dict[str, Any] = field(default_factory=dict)
    values: dict[str, float | None] = field(default_factory=dict)  # goal name -> value
    rows: list[Row] = field(default_factory=list)


@dataclass(frozen=True)
class Section:
    name: str
    goals: Callable[[Context], list[tuple[str, str, float, str]]]  # name, op, target, unit
    run: Callable[[Context], Result]


# --- section: delta ---------------------------------------------------------------------

DELTA_SIZE = 1_000
TAP_EVERY_S = 200e-6


def _base_size(ctx: Context) -> tuple[int, str]:
    return (1_000_000, "1M-id base (--quick)") if ctx.quick else (10_000_000, "10M-id base")


def _delta_goals(ctx: Context) -> list[tuple[str, str, float, str]]:
    _, label = _base_size(ctx)
    return [
        (f"delta of {DELTA_SIZE:,} revocations, file size", "<=", 32 * 1024, "bytes"),
        (f"delta apply p99 (offer to swapped), {label}", "<=", 50.0, "ms"),
        (f"longest tap wait while deltas are applied, {label}", "<=", 1.0, "ms"),
    ]


def _base_columns(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n sorted, distinct ids spread over most of the uint64 range (random gaps, no sort)."""
    rng = np.random.default_rng(seed)
    ids = np.cumsum(rng.integers(1, 2**40, size=n, dtype=np.uint64), dtype=np.uint64)
    times = np.full(n, 1_790_000_000, dtype=np.int64)
    reasons = rng.integers(1, 7, size=n, dtype=np.uint8)
    return ids, times, reasons


def _deltas(
    base: RevocationTable, columns: tuple[np.ndarray, ...], count: int, out: Path
) -> list[Path]:
    """``count`` deltas over ``base``, generations 2.., each adding 1,000 fresh ids (built
    from the whole current list, as ``farecore revocation delta`` builds them)."""
    ids, times, reasons = columns
    rng = np.random.default_rng(7)
    paths = []
    for k in range(count):
        new = np.unique(rng.integers(1, 2**64 - 1, size=DELTA_SIZE + 16, dtype=np.uint64))
        new = new[base.find_many(new) < 0][:DELTA_SIZE]
        at = np.searchsorted(ids, new)
        path = out / f"delta-{k + 2}.frd"
        build_delta(
            base,
            np.insert(ids, at, new),
            np.insert(times, at, 1_790_000_100 + k),
            np.insert(reasons, at, 2),
            KEY,
            k + 2,
            1_790_000_100 + k,
            path,
        )
        paths.append(path)
    return paths


def _gate(directory: Path, published: Path) -> HotRevocation:
    """A gate's revocation source as ``farecore gate`` wires it: a private store, durable
    marks written before each table or view goes in force."""
    marks = GateMarks.load(directory / "marks.json", 1)

    def adopt(held: RevocationInForce) -> None:
        marks.revocation = held.floor_mark()
        marks.save()

    return HotRevocation(published, KEY.public(), poll_interval_s=None,
                         store=TableStore(directory / "tables"), on_adopt=adopt)  # fmt: skip


def _new_base_cost(published: Path, directory: Path) -> float:
    """Seconds for a gate to take a new base: copy into an empty store, verify it all. The
    copy stays until the section ends: removing hundreds of MB now would tax the next
    measured fsyncs (the file system discards the freed blocks)."""
    store = TableStore(directory)
    t0 = clock()
    table = store.adopt(published, KEY.public())
    table.lookup(12345)
    elapsed = clock() - t0
    del table
    return elapsed


def _lookup_ns(held: RevocationInForce, queries: list[int], rounds: int) -> float:
    lookup, best = held.lookup, []
    for _ in range(rounds):
        t0 = clock()
        for q in queries:
            lookup(q)
        best.append((clock() - t0) / len(queries) * 1e9)
    return statistics.median(best)


class _Tapper:
    """A tap thread: due every ``TAP_EVERY_S``, it takes a snapshot and looks an id up; each
    tap's time runs from when it was due to its answer (so a wait for the GIL counts).
    Times go into preallocated arrays: the measuring must not feed the garbage collector
    objects that a collection would then scan during a measured tap."""

    def __init__(self, hot: HotRevocation, queries: list[int], most: int = 1 << 20) -> None:
        self.hot, self.queries = hot, queries
        self._due = np.zeros(most)
        self._done = np.zeros(most)
        self._n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taps")

    @property
    def samples(self) -> list[tuple[float, float]]:
        """(due, answered) of every tap, in order."""
        return list(zip(self._due[: self._n].tolist(), self._done[: self._n].tolist(), strict=True))

    def _run(self) -> None:
        snapshot, queries, due_at, done_at = self.hot.snapshot, self.queries, self._due, self._done
        n, most, count = 0, len(self._due), len(self.queries)
        due = clock()
        while not self._stop.is_set() and n < most:
            due += TAP_EVERY_S
            wait = due - clock()
            if wait > 0:
                time.sleep(wait)
            else:
                due = clock()  # fell behind (a long wait): count from now, do not burst
            snapshot().lookup(queries[n % count])
            done_at[n] = clock()
            due_at[n] = due
            n += 1
            self._n = n

    def __enter__(self) -> _Tapper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _tap_waits(
    samples: list[tuple[float, float]], windows: list[tuple[float, float]], margin: float
) -> tuple[list[float], list[float]]:
    """Tap times (ms) of the taps due while a delta was being put in force, and of those
    due at least ``margin`` away from every such window. Taps are sorted by when they were
    due, never by how long they took: a long tap is not more likely to count as either."""
    starts = np.array([w[0] for w in windows])
    ends = np.array([w[1] for w in windows])
    during, idle = [], []
    for due, done in samples:
        i = int(np.searchsorted(starts, due, side="right")) - 1  # the last window begun
        ms = (done - due) * 1e3
        if i >= 0 and due <= ends[i]:
            during.append(ms)
        elif (i < 0 or due > ends[i] + margin) and (
            i + 1 >= len(starts) or due < starts[i + 1] - margin
        ):
            idle.append(ms)
    return during, idle


def run_delta(ctx: Context) -> Result:
    # As `farecore gate` runs: a tap waits at most this long behind a background thread.
    from farecore.commands.gate import GATE_SWITCH_INTERVAL_S

    sys.setswitchinterval(GATE_SWITCH_INTERVAL_S)
    n, _ = _base_size(ctx)
    applies = 40 if ctx.quick else 120
    baselines = 3 if ctx.quick else 5
    res = Result()
    d = ctx.directory / "delta"
    d.mkdir()
    progress(f"building the base of {n:,} ids")
    columns = _base_columns(n, seed=n)
    base_path = d / "base.frt"
    build_table(*columns, KEY, 1, 1_790_000_000, base_path)
    base = RevocationTable.open(base_path, KEY.public())
    progress(f"building {applies} deltas of {DELTA_SIZE:,} revocations")
    t0 = clock()
    deltas = _deltas(base, columns, applies, d)
    build_s = (clock() - t0) / applies
    size = deltas[0].stat().st_size
    res.metrics.update(
        base_ids=n,
        base_file_mb=round(base_path.stat().st_size / 1e6, 1),
        delta_revocations=DELTA_SIZE,
        delta_file_bytes=size,
        delta_build_s=round(build_s, 3),
        python_switch_interval_ms=sys.getswitchinterval() * 1e3,
    )
    res.values[_delta_goals(ctx)[0][0]] = size
    os.sync()  # the set-up's hundreds of MB of dirty pages would otherwise tax every fsync

    # Apply: one gate, each delta in turn; a new base's cost measured between them.
    progress("applying deltas (offer to swapped), interleaved with new-base adoptions")
    apply_ms, base_ms = [], []
    every = max(1, applies // baselines)
    with _gate(d / "gate-a", base_path) as hot:
        for k, delta in enumerate(deltas):
            if k % every == 0 and len(base_ms) < baselines:
                base_ms.append(_new_base_cost(base_path, d / f"fresh-{k}") * 1e3)
            t0 = clock()
            swapped = hot.offer(base_path, delta)
            apply_ms.append((clock() - t0) * 1e3)
            if not swapped:
                raise SystemExit(f"{delta} was not swapped in")
        view = hot.snapshot()
        assert isinstance(view, RevocationView)
        # Mostly absent ids, one in a hundred held (by the delta or by the base).
        rng = np.random.default_rng(3)
        q = rng.integers(0, 2**64 - 1, size=200_000, dtype=np.uint64)
        held = np.concatenate([view.delta.add_ids, base.ids[:: max(1, n // DELTA_SIZE)]])
        q[::100] = rng.choice(held, size=q[::100].size)
        queries = q.tolist()
        table_ns = _lookup_ns(base, queries, 3)
        view_ns = _lookup_ns(view, queries, 3)
    p50_ms, p99_ms = statistics.median(apply_ms), percentile(apply_ms, 99)
    base_med = statistics.median(base_ms)
    res.metrics.update(
        apply_p50_ms=round(p50_ms, 3),
        apply_p99_ms=round(p99_ms, 3),
        apply_max_ms=round(max(apply_ms), 3),
        applies=len(apply_ms),
        new_base_adopt_p50_ms=round(base_med, 1),
        apply_p99_vs_new_base=round(p99_ms / base_med, 4),
        table_lookup_ns=round(table_ns, 1),
        view_lookup_ns=round(view_ns, 1),
        view_vs_table_lookup=round(view_ns / table_ns, 3),
    )
    res.values[_delta_goals(ctx)[1][0]] = round(p99_ms, 3)
    res.rows += [
        (f"delta file ({DELTA_SIZE:,} revocations)", f"{size:,} B", "", "", "<= 32 KB"),
        ("delta apply p50 (ms)", f"{p50_ms:.2f}", f"{base_med:.0f}", f"{p50_ms / base_med:.3f}", ""),
        ("delta apply p99 (ms)", f"{p99_ms:.2f}", f"{base_med:.0f}", f"{p99_ms / base_med:.3f}",
         "<= 50 ms"),
        ("lookup, view vs table (ns)", f"{view_ns:.0f}", f"{table_ns:.0f}",
         f"{view_ns / table_ns:.2f}", ""),
    ]  # fmt: skip

    # Taps: a fresh gate takes the same deltas again while a tap thread runs. Windows of
    # three kinds take turns: idle, a delta put in force, and a control that makes the
    # same durable writes as putting a delta in force (the delta file and the marks, each
    # fsynced with its directory) and nothing else: what fsync alone costs the taps here.
    progress("taps while deltas are applied, while the same writes are made, and idle")
    windows: list[tuple[float, float]] = []
    controls: list[tuple[float, float]] = []
    tap_apply_ms = []
    with _gate(d / "gate-b", base_path) as hot, _Tapper(hot, queries) as taps:
        for k, delta in enumerate(deltas):
            time.sleep(0.03)  # idle
            t0 = clock()
            hot.offer(base_path, delta)
            t1 = clock()
            windows.append((t0, t1))
            tap_apply_ms.append((t1 - t0) * 1e3)
            time.sleep(0.03)  # idle
            t0 = clock()
            write_atomic(d / "control" / f"{k}.frd", delta.read_bytes(), 0o444)
            write_atomic(d / "control-marks.json", b'{"revocation": %d}\n' % k, 0o600)
            controls.append((t0, clock()))
        time.sleep(0.03)
    during, _ = _tap_waits(taps.samples, windows, margin=0.005)
    control, _ = _tap_waits(taps.samples, controls, margin=0.005)
    both = sorted(windows + controls)
    _, idle = _tap_waits(taps.samples, both, margin=0.005)
    worst, idle_worst, control_worst = max(during), max(idle), max(control)
    res.metrics.update(
        taps=len(taps.samples),
        load_average_1min=round(os.getloadavg()[0], 2),
        apply_with_taps_p50_ms=round(statistics.median(tap_apply_ms), 3),
        apply_with_taps_p99_ms=round(percentile(tap_apply_ms, 99), 3),
        tap_during_vs_idle_max=round(worst / idle_worst, 3),
        tap_during_vs_control_max=round(worst / control_worst, 3),
    )
    for kind, waits in (("during_apply", during), ("control_writes", control), ("idle", idle)):
        res.metrics.update(
            {
                f"taps_{kind}": len(waits),
                f"tap_{kind}_max_ms": round(max(waits), 3),
                f"tap_{kind}_p99_ms": round(percentile(waits, 99), 3),
                f"tap_{kind}_p999_ms": round(percentile(waits, 99.9), 3),
                f"taps_{kind}_over_1ms": sum(1 for w in waits if w > 1.0),
            }
        )
    res.values[_delta_goals(ctx)[2][0]] = round(worst, 3)
    res.rows += [
        ("longest tap wait vs idle (ms)", f"{worst:.3f}", f"{idle_worst:.3f}",
         f"{worst / idle_worst:.2f}", "<= 1 ms"),
        ("longest tap wait vs same fsyncs (ms)", f"{worst:.3f}", f"{control_worst:.3f}",
         f"{worst / control_worst:.2f}", ""),
        ("tap p99 during apply vs idle (ms)", f"{percentile(during, 99):.3f}",
         f"{percentile(idle, 99):.3f}", f"{percentile(during, 99) / percentile(idle, 99):.2f}",
         ""),
    ]  # fmt: skip
    if ctx.quick:
        res.metrics["note"] = f"--quick: a {n // 1_000_000}M-id base; the full run uses 10M ids"
    return res


# --- section: propagation (benchmarks/fleet_propagation.py) ------------------------------


def _propagation_plan(ctx: Context) -> Any:
    from fleet_propagation import FULL, QUICK

    return QUICK if ctx.quick else FULL


def _propagation_goals(ctx: Context) -> list[tuple[str, str, float, str]]:
    plan = _propagation_plan(ctx)
    name = (
        f"revocation reaches 99 % of {plan.gates} gates within {plan.goal_s:g} s "
        f"({plan.poll_s:g} s polls via nginx)"
    )
    return [(name, "<=", plan.goal_s, "s")]


def run_propagation(ctx: Context) -> Result:
    """A published revocation reaching simulated gates that poll a real nginx."""
    from fleet_propagation import measure_propagation

    got = measure_propagation(ctx.quick, ctx.directory / "propagation")
    prefix = "propagation_"
    metrics = {k.removeprefix(prefix): v for k, v in got["metrics"].items()}
    values = {g["name"]: g["value"] for g in got["goals"]}
    return Result(metrics, values, got["rows"])


SECTIONS = [
    Section("delta", _delta_goals, run_delta),
    Section("propagation", _propagation_goals, run_propagation),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run, under 60 s")
    parser.add_argument(
        "--section",
        action="append",
        choices=[s.name for s in SECTIONS],
        help="run only this section (repeatable; default: all)",
    )
    parser.add_argument("--out", default=None, help="JSON output path")
    args = parser.parse_args()
    chosen = set(args.section or [s.name for s in SECTIONS])
    metrics: dict[str, Any] = {}
    goals: list[dict[str, Any]] = []
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        ctx = Context(args.quick, Path(tmp))
        for section in SECTIONS:
            result = section.run(ctx) if section.name in chosen else Result()
            metrics.update({f"{section.name}_{k}": v for k, v in result.metrics.items()})
            rows += result.rows
            for name, op, target, unit in section.goals(ctx):
                goals.append(goal(name, result.values.get(name), op, target, unit))
    metrics["sections"] = ",".join(s.name for s in SECTIONS if s.name in chosen)
    write_report("fleet", args.quick, metrics, goals, args.out, rows)


if __name__ == "__main__":
    with logged("bench_fleet"):
        main()
