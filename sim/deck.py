"""A deck of virtual cards of every kind, each with the decision a gate owes it.

Tests of every transport (in-process, PC/SC, PN532) tap the same kinds of card and
expect the same decisions, so the deck lives here once. Everything is derived from the
issuers' seeds, so a deck is the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from farecore.card.crypto import Algorithm
from farecore.decide.checks import InMemoryRevocation, RevocationEntry
from farecore.decide.validator import TerminalPolicy, Validator
from sim.card import CardFaults, VirtualCard
from sim.issuer import QINGDAO, Issuer

__all__ = ["DECK_NOW_MS", "Deck"]

#: Terminal time of every tap: every card that is not meant to be expired is valid then.
DECK_NOW_MS = 1_796_083_200_000


@dataclass(frozen=True)
class Deck:
    """Cards by kind. ``stranger`` has the issuer's key id but another key: a forger."""

    issuer: Issuer
    stranger: Issuer
    revoked_id: int = 4242
    now_ms: int = DECK_NOW_MS
    terminal_id: int = 0xC1C1

    expected: ClassVar[dict[str, str]] = {
        "good": "ACCEPT",
        "good_p256": "ACCEPT",
        "forged": "BAD_CREDENTIAL_SIGNATURE",
        "clone": "CARD_AUTH_FAILED",
        "revoked": "REVOKED",
        "expired": "EXPIRED",
        "not_yet_valid": "NOT_YET_VALID",
        "wrong_region": "WRONG_REGION",
        "unknown_category": "CATEGORY_NOT_ACCEPTED",
        "blocked": "CARD_BLOCKED",
        "removed_select": "UNREADABLE",
        "removed_read": "UNREADABLE",
        "removed_auth": "UNREADABLE",
    }

    @classmethod
    def from_seed(cls, seed: str, key_id: int = 9) -> Deck:
        return cls(
            Issuer.from_seed(seed, key_id=key_id), Issuer.from_seed(f"{seed}/forger", key_id)
        )

    def card(self, kind: str, card_id: int) -> VirtualCard:
        issuer = self.issuer
        if kind == "good":
            return issuer.card(card_id)
        if kind == "good_p256":
            return issuer.card(card_id, card_algorithm=Algorithm.P256)
        if kind == "forged":
            return self.stranger.card(card_id)
        if kind == "clone":
            return VirtualCard.clone(issuer.card(card_id))
        if kind == "revoked":
            return issuer.card(self.revoked_id)
        if kind == "expired":
            return issuer.card(card_id, valid_from=1_700_000_000, valid_until=1_790_000_000)
        if kind == "not_yet_valid":
            return issuer.card(card_id, valid_from=1_800_000_000)
        if kind == "wrong_region":
            return issuer.card(card_id, region=370100)
        if kind == "unknown_category":
            return issuer.card(card_id, category=9)
        if kind == "blocked":
            return issuer.card(card_id, counter=0xFFFFFFFF)
        if kind.startswith("removed_"):
            return issuer.card(card_id, faults=CardFaults(remove_at=kind[len("removed_") :]))
        raise ValueError(f"unknown card kind {kind!r}: expected one of {sorted(self.expected)}")

    def validator(self) -> Validator:
        """A validator for Qingdao that knows the deck's issuer and revoked card."""
        revocation = InMemoryRevocation([RevocationEntry(self.revoked_id, 1_790_000_000, 2)], 1)
        policy = TerminalPolicy(self.terminal_id, frozenset({QINGDAO}))
        return Validator(policy, self.issuer.keyring(), revocation)
