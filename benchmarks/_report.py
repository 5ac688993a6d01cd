"""Shared reporting for benchmarks: the JSON every benchmark writes, and a printed table.

The JSON (``benchmarks/results/NAME.json``, read by ``benchmarks/report.py``):

- ``benchmark`` (its name), ``quick`` (bool), ``date`` (UTC, ISO 8601, when it finished);
- ``machine``: ``cpu`` (model name), ``cores`` (logical CPUs), ``memory_gib``, ``os``,
  ``python``, and the versions of numpy, numba and cryptography;
- ``metrics``: name → number (or null, or a short string), units in the name
  (``_us``, ``_ms``, ``_s``, ``_mb``, ``_per_s``);
- ``goals``: each with ``name`` (what it compares with what), ``value``, ``op``
  (``<=``, ``>=``, ``<``, ``>``), ``target``, ``unit`` and ``met``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import operator
import os
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from farecore import logs

RESULTS = Path(__file__).parent / "results"
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gib() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages / (1 << 30), 1)


def _os() -> str:
    kernel = f"{platform.system()} {platform.release()}"
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        return kernel
    return f"{release.get('PRETTY_NAME', release.get('NAME', '?'))}, {kernel}"


def machine() -> dict[str, Any]:
    """The machine a benchmark ran on, as the report table shows it."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": _os(),
        "python": platform.python_version(),
    }
    for name in ("numpy", "numba", "cryptography"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


@contextlib.contextmanager
def logged(prog: str) -> Iterator[None]:
    """A benchmark's progress and warnings on stderr as ``PROG: message`` lines (the
    convention of :mod:`farecore.logs`; ``FARECORE_LOG=debug`` shows debug lines)."""
    try:
        level = logs.level_from(False)
    except ValueError:
        level = logging.INFO
    with logs.to_stderr(prog, level, packages=(*logs.PACKAGES, "__main__")):
        yield


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
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
