"""Running a simulated year through the CLI in tests: a few days at a small scale.

A plain module with a unique name so the year's test files can import it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Every fraud kind, with many cards revoked during the year (each on one day of it), so
# that a few days already refuse cards revoked on an earlier day.
MIX = (
    "expired=0.02,forged=0.02,clone=0.02,other_region=0.02,"
    "revoked_before=0.02,revoked_during=0.2,passback=0.05,pulled=0.04"
)
# 1,200 cards, about 300 rides a day, 12 gates, two worker processes.
SMALL = ["--scale", "0.004", "--gates", "12", "--workers", "2", "--fraud-mix", MIX]


@dataclass(frozen=True)
class YearRun:
    out: Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.out / "year-summary.json").read_text())

    @property
    def state(self) -> dict[str, Any]:
        return json.loads((self.out / "year-state.json").read_text())


def run_year_cli(
    out: Path, *args: str, kill_at: str | None = None, timeout: float = 240
) -> YearRun:
    """``farecore sim --out OUT ARGS``; ``kill_at`` makes the run die at that point
    (the simulator's test hook, ``taps:N`` or ``night:N``) as a killed run would."""
    env = dict(os.environ)
    env.pop("FARECORE_SIM_YEAR_KILL_AT", None)
    if kill_at is not None:
        env["FARECORE_SIM_YEAR_KILL_AT"] = kill_at
    proc = subprocess.run(
        [sys.executable, "-m", "farecore", "sim", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return YearRun(out, proc.returncode, proc.stdout, proc.stderr)


def settlement_files(out: Path) -> dict[str, bytes]:
    """Every night's batches and settlement outputs, by relative path."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for sub in ("batches", "settlement")
        for p in sorted((out / sub).rglob("*"))
        if p.is_file()
    }
