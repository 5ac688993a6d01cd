"""Fixtures for the simulator tests: small seeded days run through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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


def run_sim(out: Path, *args: str, timeout: float = 240) -> SimRun:
    proc = subprocess.run(
        [sys.executable, "-m", "farecore", "sim", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return SimRun(out, proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> SimRun:
    out = tmp_path_factory.mktemp("sim") / "run-a"
    return run_sim(out, "--seed", "7", *SMALL)


@pytest.fixture(scope="session")
def small_run_again(tmp_path_factory: pytest.TempPathFactory) -> SimRun:
    out = tmp_path_factory.mktemp("sim") / "run-b"
    return run_sim(out, "--seed", "7", *SMALL)


# Seed 3 puts a pulled card, an expired card and a passback among the first 20 taps of
# gate 0, so the transport carries denials (and a card leaving mid-tap), not only accepts.
TRANSPORT_SEED = "3"
PN532 = ["--reader", "pn532", "--transport-taps", "20"]


@pytest.fixture(scope="session")
def pn532_run(tmp_path_factory: pytest.TempPathFactory) -> SimRun:
    out = tmp_path_factory.mktemp("sim") / "pn532-a"
    return run_sim(out, "--seed", TRANSPORT_SEED, *SMALL, *PN532)


@pytest.fixture(scope="session")
def pn532_run_again(tmp_path_factory: pytest.TempPathFactory) -> SimRun:
    out = tmp_path_factory.mktemp("sim") / "pn532-b"
    return run_sim(out, "--seed", TRANSPORT_SEED, *SMALL, *PN532)


@pytest.fixture(scope="session")
def virtual_run_seed3(tmp_path_factory: pytest.TempPathFactory) -> SimRun:
    out = tmp_path_factory.mktemp("sim") / "virtual-3"
    return run_sim(out, "--seed", TRANSPORT_SEED, *SMALL)
