"""One performance table from every benchmark's JSON: docs/performance.md.

Reads every ``benchmarks/results/*.json`` (written by ``benchmarks/bench_*.py``, shape in
``benchmarks/_report.py``) and writes one Markdown page: the machine and date of each
run, every goal with its value and whether it is met, the latencies (p50 and p99) and
the ratios each benchmark measured against its own baseline. A malformed file stops it
with one line naming the file and what is wrong, and exit status 2; nothing is written.

    python benchmarks/report.py [--results DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _report import RESULTS, logged

HERE = Path(__file__).parent
OUT = HERE.parent / "docs" / "performance.md"
OPS = {"<=": "≤", ">=": "≥", "<": "<", ">": ">"}
MACHINE_KEYS = ("cpu", "cores", "os", "python")
GOAL_KEYS = ("name", "value", "op", "target", "unit", "met")
UNITS = (  # metric-name suffix → unit shown (longest suffix first)
    ("_per_s", "/s"),
    ("_us", "µs"),
    ("_ns", "ns"),
    ("_ms", "ms"),
    ("_mb", "MB"),
    ("_s", "s"),
)
_log = logging.getLogger(__name__)


class MalformedResult(ValueError):
    """A results file that is not the shape ``_report.write_report`` writes."""


def _need(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise MalformedResult(f"{path}: {what}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def load(path: Path) -> dict[str, Any]:
    """One results file, checked; MalformedResult naming the file and the fault."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise MalformedResult(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise MalformedResult(f"{path}: not JSON: {exc}") from None
    _need(isinstance(doc, dict), path, "not a JSON object")
    _need(isinstance(doc.get("benchmark"), str) and doc["benchmark"], path, "no 'benchmark' name")
    _need(isinstance(doc.get("quick"), bool), path, "'quick' is not true or false")
    _need(isinstance(doc.get("date"), str), path, "no 'date' (re-run the benchmark)")
    machine = doc.get("machine")
    _need(isinstance(machine, dict), path, "no 'machine' object")
    for key in MACHINE_KEYS:
        _need(key in machine, path, f"'machine' has no '{key}' (re-run the benchmark)")
    _need(isinstance(doc.get("metrics"), dict), path, "no 'metrics' object")
    goals = doc.get("goals")
    _need(isinstance(goals, list), path, "no 'goals' list")
    for i, g in enumerate(goals):
        _need(isinstance(g, dict), path, f"goals[{i}] is not an object")
        for key in GOAL_KEYS:
            _need(key in g, path, f"goals[{i}] has no '{key}'")
        _need(g["op"] in OPS, path, f"goals[{i}] has an unknown op {g['op']!r}")
        _need(_is_number(g["target"]), path, f"goals[{i}] target is not a number")
        _need(
            g["value"] is None or _is_number(g["value"]), path, f"goals[{i}] value is not a number"
        )
    checked: dict[str, Any] = doc
    return checked


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not _is_number(value):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _with_unit(value: Any, unit: str, exact: bool = False) -> str:
    if value is None:
        return "not measured"
    shown = f"{value:g}" if exact else _num(value)
    return f"{shown}×" if unit == "ratio" else f"{shown} {unit}"


def _unit_of(metric: str) -> str:
    for suffix, unit in UNITS:
        if metric.endswith(suffix):
            return unit
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _what(name: str) -> str:
    """The first line of ``bench_NAME.py``'s docstring: what the benchmark measures."""
    script = HERE / f"bench_{name}.py"
    try:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")))
    except (OSError, SyntaxError):
        return ""
    return doc.splitlines()[0] if doc else ""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics, with those of a nested object as ``outer.inner`` (lists left out)."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(
                {f"{key}.{k}": v for k, v in value.items() if not isinstance(v, list | dict)}
            )
        elif not isinstance(value, list):
            flat[key] = value
    return flat


def _latencies(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, p50, p99) for every time metric named *p50* with a number, and its p99 twin."""
    rows = []
    for key, value in metrics.items():
        unit = _unit_of(key)
        if "p50" not in key or unit not in ("ns", "µs", "ms", "s") or not _is_number(value):
            continue
        twin = metrics.get(key.replace("p50", "p99"))
        what = key.replace("_p50", "").replace("p50_", "")
        for suffix, _ in UNITS:
            if what.endswith(suffix):
                what = what[: -len(suffix)]
                break
        p99 = f"{_num(twin)} {unit}".strip() if _is_number(twin) else "–"
        rows.append((what, f"{_num(value)} {unit}".strip(), p99))
    return rows


def _ratios(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Every metric that compares two figures measured in the same run."""
    return [
        (key, _num(value))
        for key, value in metrics.items()
        if _is_number(value) and ("_vs_" in key or "_over_" in key or "ratio" in key)
    ]


def render(docs: Sequence[dict[str, Any]]) -> str:
    """The Markdown page for these (checked) results, in benchmark-name order."""
    docs = sorted(docs, key=lambda d: d["benchmark"])
    out = [
        "# Performance",
        "",
        "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`; do not",
        "edit by hand. Each benchmark measures its baseline in the same run, interleaved with",
        "what it measures, so its ratios hold on a shared, noisy machine where absolute",
        "figures do not. A benchmark reports and does not judge: the tables say which goals",
        "were met on the machine and at the time shown. `--quick` runs are smaller than full",
        "ones (each script's `--help` says by how much).",
        "",
        "## Runs",
        "",
    ]
    rows: list[tuple[str, ...]] = []
    for d in docs:
        m = d["machine"]
        memory = m.get("memory_gib")
        rows.append(
            (
                f"`bench_{d['benchmark']}.py`",
                d["date"],
                "quick" if d["quick"] else "full",
                str(m["cpu"]),
                str(m["cores"]),
                "–" if memory is None else f"{memory} GiB",
                str(m["os"]),
                str(m["python"]),
            )
        )
    header = ("benchmark", "date (UTC)", "run", "CPU", "cores", "memory", "OS", "Python")
    out += _table(header, rows)
    out += ["", "## Goals", ""]
    rows = []
    for d in docs:
        for g in d["goals"]:
            met = "not measured" if g["value"] is None else ("yes" if g["met"] else "**no**")
            rows.append(
                (
                    d["benchmark"],
                    str(g["name"]),
                    _with_unit(g["value"], g["unit"]),
                    f"{OPS[g['op']]} {_with_unit(g['target'], g['unit'], exact=True)}",
                    met,
                )
            )
    out += _table(("benchmark", "goal", "value", "target", "met"), rows)
    notes = [
        f"- {d['benchmark']}: {key.removesuffix('_error')} not measured: {value}"
        for d in docs
        for key, value in d["metrics"].items()
        if key.endswith("_error") and isinstance(value, str)
    ]
    if notes:
        out += ["", *notes]
    out += ["", "## Latencies", ""]
    rows = [(d["benchmark"], *r) for d in docs for r in _latencies(_flat(d["metrics"]))]
    out += _table(("benchmark", "what", "p50", "p99"), rows) if rows else ["(none)"]
    out += ["", "## Ratios", ""]
    rows = [(d["benchmark"], *r) for d in docs for r in _ratios(_flat(d["metrics"]))]
    out += _table(("benchmark", "metric", "ratio"), rows) if rows else ["(none)"]
    out += ["", "## What each benchmark measures", ""]
    for d in docs:
        what = _what(d["benchmark"])
        out.append(f"- `bench_{d['benchmark']}.py`: {what}" if what else f"- `{d['benchmark']}`")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of *.json")
    parser.add_argument("--out", type=Path, default=OUT, help="Markdown file to write")
    args = parser.parse_args(argv)
    paths = sorted(args.results.glob("*.json"))
    if not paths:
        _log.error("error: no results in %s; run a benchmark first", args.results)
        return 2
    try:
        docs = [load(p) for p in paths]
    except MalformedResult as exc:
        _log.error("error: %s", exc)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(docs), encoding="utf-8")
    _log.info("wrote %s from %d results", args.out, len(docs))
    return 0


if __name__ == "__main__":
    with logged("report"):
        sys.exit(main())
