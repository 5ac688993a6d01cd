"""What a simulated day proved: the confusion table, the money, the speed, and the plots.

It turns the raw per-tap results (expected and got codes, latencies) and the settlement
totals into ``summary.json``, a one-screen text report and two PNG plots, and shows the
live progress line while the day runs. It must never change a verdict: a wrong decision
or a money mismatch is counted here, not excused.
"""

from __future__ import annotations

import multiprocessing.connection as mp_connection
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from sim.population import CARD_KINDS
from sim.workload import FAULT_PASSBACK, FAULT_PULLED, FAULT_REVISIT, label_name
from sim.world import World

__all__ = ["build_summary", "print_summary", "show_progress", "write_plots"]


def _fraud_kinds(world: World) -> npt.NDArray[np.object_]:
    """The scenario of each tap: a bad card's kind, a tap fault, or 'normal'."""
    wl = world.workload
    kinds = np.array(CARD_KINDS, dtype=object)[world.population.kinds[wl.card]]
    kinds[wl.fault == FAULT_PASSBACK] = "passback"
    kinds[wl.fault == FAULT_REVISIT] = "revisit"
    kinds[wl.fault == FAULT_PULLED] = "pulled"
    return kinds


def build_summary(
    world: World,
    got: npt.NDArray[np.uint8],
    latency_us: npt.NDArray[np.float64],
    gate_us: npt.NDArray[np.float64],
    wall_s: float,
    settled: dict[str, Any],
    expected_money: dict[str, dict[str, int]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """``summary.json``: the decisions against the ground truth, the money, the speed."""
    wl = world.workload
    wrong = int(np.count_nonzero(wl.expected != got))
    expected_by_op = {op: sum(lines.values()) for op, lines in expected_money.items()}
    got_by_op = settled["reimbursement_by_operator"]
    ops = sorted(set(expected_by_op) | set(got_by_op))
    settlement_ok = all(expected_by_op.get(op, 0) == got_by_op.get(op, 0) for op in ops)
    return {
        "seed": world.opts.seed,
        "crypto": world.opts.crypto,
        "day": world.clock.day.isoformat(),
        "cards": len(world.population),
        "gates": len(world.gates),
        "taps": len(wl),
        **_decisions(world, got),
        "reimbursement_by_operator": dict(sorted(got_by_op.items())),
        "expected_reimbursement_by_operator": dict(sorted(expected_by_op.items())),
        "expected_reimbursement_by_line": expected_money,
        "settlement_matches": settlement_ok,
        "settled_rides": settled["rides"],
        "anomalies": settled["anomalies"],
        "taps_per_second": round(len(wl) / wall_s, 1) if wall_s > 0 else None,
        "run_seconds": round(wall_s, 3),
        "latency_us": _percentiles(latency_us),
        "gate_latency_us": _percentiles(gate_us),
        "engine": extra,
        "ok": wrong == 0 and settlement_ok,
    }


def _percentiles(us: npt.NDArray[np.float64]) -> dict[str, float]:
    return {
        "p50": round(float(np.percentile(us, 50)), 1),
        "p99": round(float(np.percentile(us, 99)), 1),
    }


def _decisions(world: World, got: npt.NDArray[np.uint8]) -> dict[str, Any]:
    """Wrong decisions, decisions by reason, the confusion table and the scenarios."""
    expected = world.workload.expected
    confusion: Counter[tuple[str, str]] = Counter(
        zip(map(label_name, expected.tolist()), map(label_name, got.tolist()), strict=True)
    )
    kinds = _fraud_kinds(world)
    by_kind: dict[str, dict[str, int]] = {}
    for kind in sorted(set(kinds.tolist())):
        mask = kinds == kind
        by_kind[kind] = {
            "taps": int(mask.sum()),
            "denied": int(np.count_nonzero(got[mask] != 0)),
            "wrong": int(np.count_nonzero(got[mask] != expected[mask])),
        }
    decisions = Counter(map(label_name, got.tolist()))
    return {
        "wrong_decisions": int(np.count_nonzero(expected != got)),
        "decisions_by_reason": dict(sorted(decisions.items())),
        "confusion": {
            exp: {g: n for (e, g), n in sorted(confusion.items()) if e == exp}
            for exp in sorted({e for e, _ in confusion})
        },
        "scenarios": by_kind,
    }


def print_summary(s: dict[str, Any], out: TextIO) -> None:
    """The one-screen report of a day."""
    w = out.write
    w("\n")
    w(
        f"farecore sim  day {s['day']}  seed {s['seed']}  {s['cards']:,} cards  {s['gates']} gates"
        f"  crypto {s.get('crypto', 'ed25519')}\n"
    )
    w(
        f"  taps {s['taps']:,} in {s['run_seconds']:.1f} s = {s['taps_per_second']:,.0f} taps/s"
        f"   decision p50 {s['latency_us']['p50']:.0f} us  p99 {s['latency_us']['p99']:.0f} us"
        f"   (with journal p50 {s['gate_latency_us']['p50']:.0f} us)\n"
    )
    _print_engine(s["engine"], w)
    _print_decisions(s, w)
    w("  reimbursement (fen): settlement vs ground truth\n")
    exp = s["expected_reimbursement_by_operator"]
    for op in sorted(set(exp) | set(s["reimbursement_by_operator"])):
        got = s["reimbursement_by_operator"].get(op, 0)
        want = exp.get(op, 0)
        w(f"    {op:<16} {got:>14,}  {want:>14,}  {'ok' if got == want else 'MISMATCH'}\n")
    kinds = Counter(a["kind"] for a in s["anomalies"])
    w(f"  anomalies found by the settlement: {dict(kinds) if kinds else 'none'}\n")
    verdict = "OK" if s["ok"] else "FAILED"
    w(
        f"  {verdict}: {s['wrong_decisions']} wrong decisions; settlement "
        f"{'equals' if s['settlement_matches'] else 'DIFFERS FROM'} the ground truth\n"
    )
    out.flush()


def _print_engine(e: dict[str, Any], w: Callable[[str], Any]) -> None:
    """Commits, CPU per tap, the crypto ceiling and the transport, where measured."""
    if "commits" in e:
        w(
            f"  {e['commits']:,} journal commits ({e['taps_per_commit']:.1f} taps each), "
            f"{e['issuer_checks_per_tap']:.2f} issuer checks per tap "
            f"({e['issuer_listed_per_tap']:.2f} listed instead), "
            f"workers started in {e['start_s']:.1f} s\n"
        )
    cpu = e.get("cpu_us_per_tap")
    if cpu:
        w(
            f"  CPU per tap: {cpu['controller']:.0f} us deciding (the controllers' threads, "
            f"the simulated cards' signatures included), {cpu['committer']:.0f} us committing; "
            f"{e['commit_wait_s']:.2f} s waiting for commits; "
            f"journals closed in {e.get('journal_close_s', 0.0):.2f} s after the day\n"
        )
    c = e.get("ceiling")
    if c:
        w(
            f"  crypto ceiling (card signature + its verification per tap, timed in the "
            f"workers around the taps): {c['taps_per_second']:,.0f} taps/s; "
            f"this day {c['ratio']:.2f} of it\n"
        )
    tr = e.get("transport", {})
    if tr.get("taps"):
        w(
            f"  {tr['taps']} taps through {tr['reader']}: decision p50 {tr['latency_p50_us']:.0f} us"
            f"  p99 {tr['latency_p99_us']:.0f} us\n"
        )


def _print_decisions(s: dict[str, Any], w: Callable[[str], Any]) -> None:
    """The confusion table, expected against got, and the scenarios."""
    w("  expected -> got:\n")
    for exp, row in s["confusion"].items():
        cells = "  ".join(f"{g}={n:,}" for g, n in row.items())
        flag = "" if set(row) == {exp} else "   <-- WRONG"
        w(f"    {exp:<26} {cells}{flag}\n")
    w("  scenarios (taps / denied / wrong):\n")
    items = list(s["scenarios"].items())
    for k in range(0, len(items), 3):
        w(
            "    "
            + "   ".join(
                f"{name:<15}{v['taps']:>8,} /{v['denied']:>7,} /{v['wrong']:>3}"
                for name, v in items[k : k + 3]
            )
            + "\n"
        )


def write_plots(out_dir: Any, world: World, latency_us: npt.NDArray[np.float64]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wl = world.workload
    hours = (wl.time_ms - world.clock.start_ms) // 3_600_000
    counts = np.bincount(np.clip(hours, 0, 23), minlength=24)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(np.arange(24), counts, color="#3b6ea5")
    ax.set_xlabel("hour of day (Qingdao time)")
    ax.set_ylabel("taps")
    ax.set_title(f"Taps per hour, {world.clock.day.isoformat()} (seed {world.opts.seed})")
    fig.tight_layout()
    fig.savefig(out_dir / "taps_per_hour.png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    top = float(np.percentile(latency_us, 99.9)) if len(latency_us) else 1.0
    ax.hist(np.clip(latency_us, 0, top), bins=80, color="#a54a3b")
    ax.set_yscale("log")
    ax.set_xlabel("decision latency (us), clipped at p99.9")
    ax.set_ylabel("taps")
    ax.set_title("Decision latency, card present to decision")
    fig.tight_layout()
    fig.savefig(out_dir / "latency_histogram.png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def show_progress(progress: Any, total: int, procs: list[Any], stream: TextIO, t0: float) -> None:
    """A live line of taps done and taps/s while the worker processes run."""
    tty = stream.isatty()
    last_line = 0.0
    first_tap: float | None = None  # when taps were first seen: the rate counts from there
    final_rate: float | None = None  # taps/s when every tap was seen done
    while any(p.is_alive() for p in procs):
        # Wake at the display interval, or at once when a worker ends: the tap phase's
        # wall clock (and so taps/s) must not include a polling sleep.
        mp_connection.wait([p.sentinel for p in procs if p.is_alive()], timeout=0.25)
        done = sum(progress[:])
        now = time.perf_counter()
        elapsed = now - t0
        if done and first_tap is None:
            first_tap = now
        if first_tap is None:
            text = f"workers starting (making the cards they will meet)  {elapsed:6.1f} s"
        elif done >= total:
            # Every lane is past its last tap: the workers close their station journals
            # (moving the day's rows to their terminals' tables) and end.
            if final_rate is None:
                final_rate = done / (now - first_tap) if now > first_tap else 0.0
            text = (
                f"taps {done:>9,}/{total:,} (100.0 %)  {final_rate:8,.0f} taps/s; closing the "
                f"station journals  {elapsed:6.1f} s"
            )
        else:
            rate = done / (now - first_tap) if now > first_tap else 0.0
            text = (
                f"taps {done:>9,}/{total:,} ({100 * done / max(1, total):5.1f} %)  "
                f"{rate:8,.0f} taps/s  {elapsed:6.1f} s"
            )
        if tty:
            stream.write("\r" + text)
            stream.flush()
        elif elapsed - last_line >= 5.0:
            stream.write(text + "\n")
            stream.flush()
            last_line = elapsed
    if tty:
        stream.write("\n")
