"""Fixtures for the serial PN532 tests: an emulated PN532 on a real pty, our reader on it.

Each emulator lives behind a symlink in the test's tmp dir, so a pty closed and
reopened keeps the path the reader was given.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from farecore.checks import InMemoryRevocation, RevocationEntry
from farecore.crypto import Algorithm
from farecore.validator import TerminalPolicy, Validator
from readers.pn532 import Pn532Reader
from sim.card import CardFaults, VirtualCard
from sim.issuer import Issuer
from sim.pn532_emulator import Pn532Emulator

NOW_MS = 1_796_083_200_000


@dataclass(frozen=True)
class Deck:
    """Deterministic cards of every kind, and the decision a gate owes each kind."""

    issuer: Issuer
    stranger: Issuer  # same key id, another key: its cards are forgeries
    revoked_id: int = 4242
    now_ms: int = NOW_MS  # terminal time of every tap: all non-expired cards are valid

    expected: ClassVar[dict[str, str]] = {
        "good": "ACCEPT",
        "good_p256": "ACCEPT",
        "forged": "BAD_CREDENTIAL_SIGNATURE",
        "clone": "CARD_AUTH_FAILED",
        "revoked": "REVOKED",
        "expired": "EXPIRED",
        "removed_select": "UNREADABLE",
        "removed_read": "UNREADABLE",
        "removed_auth": "UNREADABLE",
    }

    def card(self, kind: str, card_id: int) -> VirtualCard:
        if kind == "good":
            return self.issuer.card(card_id)
        if kind == "good_p256":
            return self.issuer.card(card_id, card_algorithm=Algorithm.P256)
        if kind == "forged":
            return self.stranger.card(card_id)
        if kind == "clone":
            return VirtualCard.clone(self.issuer.card(card_id))
        if kind == "revoked":
            return self.issuer.card(self.revoked_id)
        if kind == "expired":
            return self.issuer.card(card_id, valid_from=1_700_000_000, valid_until=1_790_000_000)
        if kind.startswith("removed_"):
            return self.issuer.card(card_id, faults=CardFaults(remove_at=kind[8:]))
        raise ValueError(kind)

    def validator(self) -> Validator:
        revocation = InMemoryRevocation([RevocationEntry(self.revoked_id, 1_790_000_000, 2)], 1)
        policy = TerminalPolicy(0xC1C1, frozenset({370200}))
        return Validator(policy, self.issuer.keyring(), revocation)


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
