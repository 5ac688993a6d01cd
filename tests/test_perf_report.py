"""benchmarks/report.py: one Markdown table from the benchmarks' JSON, or one clear error."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", BENCHMARKS / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "benchmark": "tap",
        "quick": True,
        "date": "2026-03-02T04:05:06Z",
        "machine": {
            "cpu": "Test CPU 9000",
            "cores": 2,
            "memory_gib": 8.0,
            "os": "Debian GNU/Linux 12 (bookworm), Linux 6.1",
            "python": "3.11.7",
        },
        "metrics": {
            "tap_p50_us": 187.0,
            "tap_p99_us": 350.5,
            "first_tap_p50_us": 325.0,
            "tap_p50_over_raw": 1.21,
        },
        "goals": [
            {
                "name": "tap p50 vs raw crypto",
                "value": 1.21,
                "op": "<=",
                "target": 1.3,
                "unit": "ratio",
                "met": True,
            },
            {
                "name": "tap p99",
                "value": 2.5,
                "op": "<=",
                "target": 2.0,
                "unit": "ms",
                "met": False,
            },
            {
                "name": "50 M memory",
                "value": None,
                "op": "<=",
                "target": 1.1,
                "unit": "ratio",
                "met": False,
            },
        ],
    }
    doc.update(changes)
    return doc


def _write(folder: Path, doc: Any, name: str = "tap.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def test_renders_machine_goals_latencies_and_ratios(tmp_path: Path) -> None:
    report = _report()
    results = tmp_path / "results"
    _write(results, _result())
    out = tmp_path / "performance.md"
    assert report.main(["--results", str(results), "--out", str(out)]) == 0
    page = out.read_text()
    assert "| `bench_tap.py` | 2026-03-02T04:05:06Z | quick | Test CPU 9000 | 2 | 8.0 GiB |" in page
    assert "| tap | tap p50 vs raw crypto | 1.21× | ≤ 1.3× | yes |" in page
    assert "| tap | tap p99 | 2.50 ms | ≤ 2 ms | **no** |" in page
    assert "| tap | 50 M memory | not measured | ≤ 1.1× | not measured |" in page
    assert "| tap | tap | 187 µs | 350 µs |" in page  # p50 and its p99 twin
    assert "| tap | first_tap | 325 µs | – |" in page  # a p50 with no p99
    assert "| tap | tap_p50_over_raw | 1.21 |" in page
    assert "Engine-only tap time" in page  # what bench_tap.py says it measures


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ("{not json", "not JSON"),
        ([1, 2], "not a JSON object"),
        (_result(date=None), "no 'date'"),
        (_result(machine={"cores": 2, "os": "x", "python": "3"}), "'machine' has no 'cpu'"),
        (
            _result(
                goals=[{"name": "g", "value": 1, "op": "=~", "target": 1, "unit": "s", "met": True}]
            ),
            "unknown op '=~'",
        ),
        (
            _result(
                goals=[
                    {
                        "name": "g",
                        "value": "fast",
                        "op": "<=",
                        "target": 1,
                        "unit": "s",
                        "met": True,
                    }
                ]
            ),
            "goals[0] value is not a number",
        ),
        (_result(goals=[{"name": "g"}]), "goals[0] has no 'value'"),
    ],
)
def test_a_malformed_result_is_named_and_nothing_is_written(
    tmp_path: Path, doc: Any, says: str
) -> None:
    results = tmp_path / "results"
    _write(results, _result(), "good.json")
    bad = _write(results, doc, "bad.json")
    out = tmp_path / "performance.md"
    r = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "report.py"),
            "--results",
            str(results),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"report: error: {bad}: ") and says in lines[0], r.stderr
    assert not out.exists()
