"""A simulated year's totals against Qingdao's figures: the summary and its printout.

Taken from the days' records (``year-state.json``); numbers only, never a verdict on a
single tap: a day's record already says whether its decisions and its money were right.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, TextIO

from sim.calibration import TARGET_FEN, TARGET_RIDES, Targets
from sim.year_world import YearOptions

__all__ = ["against_targets", "print_comparison", "year_summary"]


def against_targets(
    targets: Targets, scale: float, days: int, rides: int, fen: int
) -> dict[str, Any]:
    """Qingdao's figures for the first ``days`` days (their share of the year's rides)
    times ``scale``, and how far ``rides`` and ``fen`` are from them."""
    share = sum(targets.rides[:days]) / max(sum(targets.rides), 1)
    target_rides = round(TARGET_RIDES * scale * share)
    target_fen = round(TARGET_FEN * scale * share)
    return {
        "target_rides": target_rides,
        "target_fen": target_fen,
        "rides_deviation_pct": round(100 * (rides - target_rides) / max(target_rides, 1), 3),
        "fen_deviation_pct": round(100 * (fen - target_fen) / max(target_fen, 1), 3),
    }


def year_summary(opts: YearOptions, targets: Targets, days: list[dict[str, Any]]) -> dict[str, Any]:
    """The year's totals against Qingdao's figures (at the run's scale)."""
    n = len(days)
    rides = sum(d["rides"] for d in days)
    fen = sum(d["settled_fen"] for d in days)
    anomalies: dict[str, int] = defaultdict(int)
    for d in days:
        for kind, count in d["anomalies"].items():
            anomalies[kind] += count
    wrong = sum(d.get("wrong_decisions") or 0 for d in days)
    ok = n == opts.days and wrong == 0 and all(d["money_ok"] and d["taps_ok"] for d in days)
    return {
        "days": n,
        "first_day": days[0]["day"] if days else None,
        "last_day": days[-1]["day"] if days else None,
        "scale": opts.scale,
        "cards": targets.cards,
        "taps": sum(d["taps"] for d in days),
        "settled_taps": sum(d["settled_taps"] for d in days),
        "rides": rides,
        "settled_fen": fen,
        "expected_fen": sum(d["expected_fen"] for d in days),
        **against_targets(targets, opts.scale, n, rides, fen),
        "venue_visits_planned": sum(d["venue_visits_planned"] for d in days),
        "venue_entries": sum(d["venue_entries"] for d in days),
        "venue_fen": sum(d["settled_venue_fen"] for d in days),
        "wrong_decisions": wrong,
        "days_money_ok": sum(1 for d in days if d["money_ok"]),
        "days_unchecked": sum(1 for d in days if d.get("wrong_decisions") is None),
        "anomalies": dict(sorted(anomalies.items())),
        "tap_seconds": round(sum(d.get("tap_s", 0.0) for d in days), 1),
        "night_seconds": round(sum(d.get("night_s", 0.0) for d in days), 1),
        "ok": ok,
    }


def print_comparison(s: dict[str, Any], stream: TextIO) -> None:
    """The year against Qingdao's figures: rides, yuan, deviation."""
    w = stream.write
    scale = s["scale"]
    what = "the year" if s["days"] == 365 else f"{s['days']} days of the year (their share)"
    w(
        f"\nfarecore sim  {s['first_day']} .. {s['last_day']}  {s['cards']:,} cards  "
        f"scale {scale:g}\n"
    )
    w(f"  {s['taps']:,} taps; Qingdao's figures for {what}, times the scale:\n")
    w(f"    {'':8}{'simulated':>16}{'target':>16}{'deviation':>12}\n")
    w(
        f"    {'rides':8}{s['rides']:>16,}{s['target_rides']:>16,}"
        f"{s['rides_deviation_pct']:>+11.2f}%\n"
    )
    w(
        f"    {'yuan':8}{s['settled_fen'] / 100:>16,.2f}{s['target_fen'] / 100:>16,.2f}"
        f"{s['fen_deviation_pct']:>+11.2f}%\n"
    )
    if scale != 1:
        w(
            f"  at full scale: {s['rides'] / scale / 1e6:.2f} million rides, "
            f"{s['settled_fen'] / 100 / scale / 1e6:.2f} million yuan\n"
        )
    w(
        f"  venues (parks, scenic spots, museums; not rides): {s['venue_entries']:,} free "
        f"entries of {s['venue_visits_planned']:,} planned visits, "
        f"{s['venue_fen'] / 100:,.2f} yuan at their ticket prices\n"
        f"  settlement: {s['days_money_ok']}/{s['days']} nights equal the ground truth to the fen; "
        f"anomalies {s['anomalies'] or 'none'}\n"
    )
    if s["days_unchecked"]:
        w(
            f"  {s['days_unchecked']} night(s) found settled on resuming, their decisions "
            "not compared (the run stopped between the night and its record)\n"
        )
    verdict = "OK" if s["ok"] else "FAILED"
    w(f"  {verdict}: {s['wrong_decisions']} wrong decisions\n")
    stream.flush()
