"""Fixtures for the simulator tests: small seeded days run through the real CLI."""

from __future__ import annotations

import pytest
from sim_support import SMALL, TRANSPORT_SEED, SimRun, run_sim


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
