"""The gate cycle over the virtual reader: a state machine with card faults, and a session."""

from __future__ import annotations

import io
import json
import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from farecore.card.crypto import Algorithm
from farecore.decide.checks import InMemoryRevocation, RevocationEntry
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.runtime import Gate
from readers.virtual import VirtualReader
from sim.card import STEPS, CardFaults, VirtualCard
from sim.issuer import Issuer

ISSUER = Issuer.from_seed("gate-tests", key_id=5)
STRANGER = Issuer.from_seed("stranger", key_id=5)  # same key id, another key: a forgery
NOW_MS = 1_796_083_200_000
POLICY = TerminalPolicy(0xABCDEF, frozenset({370200}), frozenset({1, 2, 3, 4}))
REVOKED_ID = 4242


def make_card(kind: str, card_id: int) -> VirtualCard:
    """A card of a given kind; returns it with the decision label a gate must give."""
    if kind == "good":
        return ISSUER.card(card_id)
    if kind == "good_p256":
        return ISSUER.card(card_id, card_algorithm=Algorithm.P256)
    if kind == "forged":
        return STRANGER.card(card_id)
    if kind == "clone":
        return VirtualCard.clone(ISSUER.card(card_id))
    if kind == "expired":
        return ISSUER.card(card_id, valid_from=1_700_000_000, valid_until=1_790_000_000)
    if kind == "not_yet_valid":
        return ISSUER.card(card_id, valid_from=1_800_000_000)
    if kind == "wrong_region":
        return ISSUER.card(card_id, region=370100)
    if kind == "unknown_category":
        return ISSUER.card(card_id, category=5)  # 5 is real but this gate does not accept it
    if kind == "revoked":
        return ISSUER.card(REVOKED_ID)
    if kind == "blocked":
        return ISSUER.card(card_id, counter=0xFFFFFFFF)
    raise ValueError(kind)


EXPECTED = {
    "good": "ACCEPT",
    "good_p256": "ACCEPT",
    "forged": "BAD_CREDENTIAL_SIGNATURE",
    "clone": "CARD_AUTH_FAILED",
    "expired": "EXPIRED",
    "not_yet_valid": "NOT_YET_VALID",
    "wrong_region": "WRONG_REGION",
    "unknown_category": "CATEGORY_NOT_ACCEPTED",
    "revoked": "REVOKED",
    "blocked": "CARD_BLOCKED",
}


def make_gate(log: io.StringIO | None = None) -> tuple[Gate, VirtualReader]:
    reader = VirtualReader()
    reader.open()
    revocation = InMemoryRevocation([RevocationEntry(REVOKED_ID, 1_790_000_000, 2)], generation=3)
    validator = Validator(POLICY, ISSUER.keyring(), revocation)
    return Gate(reader, validator, log=log, clock_ms=lambda: NOW_MS), reader


class GateCycle(RuleBasedStateMachine):
    """Random taps of random kinds, with random transport faults, against one gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.reader = make_gate()
        self.regular = ISSUER.card(1001)
        self.regular_counter = 0

    @rule(kind=st.sampled_from(sorted(EXPECTED)), card_id=st.integers(1, 2**64 - 1))
    def tap(self, kind: str, card_id: int) -> None:
        card = make_card(kind, card_id if card_id != REVOKED_ID else 1)
        decision = self.gate.process(self.reader.tap(card))
        assert decision.label == EXPECTED[kind], (kind, decision.detail)
        if decision.accepted:
            assert decision.proof is not None
            assert decision.revocation_generation == 3

    @rule()
    def tap_regular(self) -> None:
        decision = self.gate.process(self.reader.tap(self.regular))
        self.regular_counter += 1
        assert decision.accepted
        assert decision.counter == self.regular_counter

    @rule(
        step=st.sampled_from(STEPS),
        fault=st.sampled_from(["remove", "sw", "truncate", "extra"]),
        sw=st.sampled_from([0x6A82, 0x6985, 0x6700, 0x6D00, 0x9000, 0x6F00]),
        n=st.integers(1, 3),
    )
    def tap_with_fault(self, step: str, fault: str, sw: int, n: int) -> None:
        faults = CardFaults(
            remove_at=step if fault == "remove" else None,
            wrong_sw={step: sw} if fault == "sw" else {},
            truncate={step: n} if fault == "truncate" else {},
            extra={step: b"\x00" * n} if fault == "extra" else {},
        )
        card = ISSUER.card(777, faults=faults)
        decision = self.gate.process(self.reader.tap(card))
        assert decision.label == "UNREADABLE", (step, fault, decision.label)
        assert decision.detail

    @rule()
    def tap_slow(self) -> None:
        card = ISSUER.card(778, faults=CardFaults(delay_s=0.001))
        assert self.gate.process(self.reader.tap(card)).accepted

    @invariant()
    def counter_moves_only_on_authentication(self) -> None:
        assert self.regular.counter == self.regular_counter


TestGateCycle = GateCycle.TestCase
TestGateCycle.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


def test_a_thousand_taps_of_mixed_cards_with_zero_wrong_decisions() -> None:
    log = io.StringIO()
    gate, reader = make_gate(log)
    rng = random.Random(2026)
    kinds = list(EXPECTED) + ["good"] * 10 + ["removed"] * 2
    regulars = [ISSUER.card(10_000 + i) for i in range(50)]
    wrong = []
    for i in range(1000):
        kind = rng.choice(kinds)
        if kind == "good":
            card, want = rng.choice(regulars), "ACCEPT"
        elif kind == "removed":
            step = rng.choice(STEPS)
            card, want = ISSUER.card(20_000 + i, faults=CardFaults(remove_at=step)), "UNREADABLE"
        else:
            card, want = make_card(kind, 30_000 + i), EXPECTED[kind]
        decision = gate.process(reader.tap(card))
        if decision.label != want:
            wrong.append((i, kind, want, decision.label, decision.detail))
    assert wrong == []
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert len(lines) == 1000
    assert sum(line["decision"] == "ACCEPT" for line in lines) > 400
    assert all(line["card"] == "-" or line["card"].startswith("****") for line in lines)
