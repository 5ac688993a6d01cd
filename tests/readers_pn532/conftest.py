"""Fixtures for the serial PN532 tests: an emulated PN532 on a real pty, our reader on it.

Each emulator lives behind a symlink in the test's tmp dir, so a pty closed and
reopened keeps the path the reader was given.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from readers.pn532 import Pn532Reader
from sim.deck import Deck
from sim.issuer import Issuer
from sim.pn532_emulator import Pn532Emulator

NOW_MS = 1_796_083_200_000


@pytest.fixture(scope="session")
def deck() -> Deck:
    return Deck(Issuer.from_seed("pn532-tests", key_id=9), Issuer.from_seed("forger", key_id=9))


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Pn532Emulator]:
    with Pn532Emulator(str(tmp_path / "pn532")) as emu:
        yield emu


@pytest.fixture
def reader(emulator: Pn532Emulator) -> Iterator[Pn532Reader]:
    with Pn532Reader(emulator.path) as opened:
        yield opened
