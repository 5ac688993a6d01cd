"""Shared reporting for benchmarks: the JSON shape of BENCHMARKS.md and a printed table."""

from __future__ import annotations

import json
import operator
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    for name in ("numpy", "numba", "cryptography"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def p50(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def goal(name: str, value: float | None, op: str, target: float, unit: str) -> dict[str, Any]:
    met = value is not None and bool(_OPS[op](value, target))
    return {"name": name, "value": value, "op": op, "target": target, "unit": unit, "met": met}


def write_report(
    benchmark: str,
    quick: bool,
    metrics: dict[str, Any],
    goals: list[dict[str, Any]],
    out: str | None,
    rows: list[tuple[str, str, str, str, str]] | None = None,
) -> Path:
    """Write the JSON report and print a table for people; return the JSON path."""
    path = Path(out) if out else RESULTS / f"{benchmark}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": benchmark,
        "quick": quick,
        "machine": machine(),
        "metrics": metrics,
        "goals": goals,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    table = rows or []
    if table:
        print(f"{'metric':<34} {'value':>12} {'baseline':>12} {'ratio':>8}  goal")
        for metric, value, base, ratio, target in table:
            print(f"{metric:<34} {value:>12} {base:>12} {ratio:>8}  {target}")
    print()
    for g in goals:
        shown = "n/a" if g["value"] is None else f"{g['value']:.3f}"
        print(
            f"[{'MET' if g['met'] else 'NOT MET'}] {g['name']}: {shown} {g['op']} {g['target']} {g['unit']}"
        )
    print(f"\nwrote {path}")
    return path
