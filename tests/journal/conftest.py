"""Fixtures for the journal, passback and batch tests: real cards, validator and files."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from journal_support import TERMINAL_ID

from farecore.card.keys import SigningKey
from farecore.decide.decision import Decision
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import run_tap
from farecore.journal.terminal import Journal
from readers.virtual import VirtualReader
from sim.card import VirtualCard
from sim.issuer import Issuer, derive_key


@pytest.fixture(scope="session")
def issuer() -> Issuer:
    return Issuer.from_seed("journal-tests")


@pytest.fixture(scope="session")
def terminal_key() -> SigningKey:
    return SigningKey("terminal", TERMINAL_ID, derive_key("journal-tests", "terminal"))


@pytest.fixture
def tapper(issuer: Issuer) -> Callable[[int, int], Decision]:
    """tap(card_id, now_ms) -> Decision, with persistent virtual cards."""
    validator = Validator(TerminalPolicy(TERMINAL_ID, frozenset({370200})), issuer.keyring())
    reader = VirtualReader()
    cards: dict[int, VirtualCard] = {}

    def tap(card_id: int, now_ms: int) -> Decision:
        card = cards.get(card_id)
        if card is None:
            card = cards[card_id] = issuer.card(card_id)
        return run_tap(reader.tap(card), validator, now_ms, os.urandom(16))

    return tap


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "journal.sqlite", TERMINAL_ID)
    yield j
    j.close()
