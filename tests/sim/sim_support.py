"""Running the simulator CLI in tests: small seeded days, and their results.

A plain module with a unique name so test files can import it; ``from conftest import``
would pick whichever conftest.py came first on sys.path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Every fraud kind at a share high enough that a 2,500-tap day has several of each.
MIX = (
    "expired=0.02,forged=0.02,clone=0.02,other_region=0.02,"
    "revoked_before=0.02,revoked_during=0.03,passback=0.05,pulled=0.04"
)
SMALL = ["--cards", "1000", "--taps", "2500", "--gates", "8", "--fraud-mix", MIX, "--no-plots"]


@dataclass(frozen=True)
class SimRun:
    out: Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.out / "summary.json").read_text())


def run_sim(out: Path, *args: str, timeout: float = 240, cwd: Path | None = None) -> SimRun:
    """Run the CLI; with ``cwd``, ``out`` is passed relative to it (as a user would)."""
    arg = str(out.relative_to(cwd)) if cwd is not None else str(out)
    proc = subprocess.run(
        [sys.executable, "-m", "farecore", "sim", "--out", arg, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    return SimRun(out, proc.returncode, proc.stdout, proc.stderr)


TRANSPORT_SEED = "3"
