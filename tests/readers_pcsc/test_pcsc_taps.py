"""Hundreds of mixed taps through real pcscd + vpcd, each checked against its expected decision."""

from __future__ import annotations

import random
from typing import Any

from farecore.decide.decision import Reason
from farecore.gate.tap import run_tap
from readers.pcsc import PcscReader
from sim.deck import Deck
from sim.vpcd import VpcdCardServer

REMOVED_KINDS = ["removed_select", "removed_read", "removed_auth"]
# Every kind the deck knows, good cards twice as often.
PLAIN_KINDS = ["good", *(k for k in sorted(Deck.expected) if k not in REMOVED_KINDS)]


def _plan(seed: int, taps: int, removals: int) -> list[str]:
    rng = random.Random(seed)
    kinds = [rng.choice(PLAIN_KINDS) for _ in range(taps - removals)]
    kinds += [REMOVED_KINDS[i % len(REMOVED_KINDS)] for i in range(removals)]
    rng.shuffle(kinds)
    return kinds


def _label(reason: Reason | None) -> str:
    return "ACCEPT" if reason is None else reason.name


def test_mixed_taps_zero_wrong_decisions(
    deck: Any, card_server: VpcdCardServer, reader: PcscReader, now_ms: int
) -> None:
    validator = deck.validator()
    rng = random.Random(5)
    plan = _plan(seed=2026, taps=210, removals=6)
    wrong: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    for i, kind in enumerate(plan):
        card = deck.card(kind, card_id=1000 + i)
        # A card swapped in behind the live link is a new card to the validator; a card
        # pulled mid-transaction leaves the field empty, and the next one is inserted.
        if card_server.card is None:
            card_server.insert(card)
        else:
            card_server.swap(card)
        channel = reader.wait_for_card(5)
        assert channel is not None, f"tap {i}: no card seen"
        decision = run_tap(channel, validator, now_ms + i, rng.randbytes(16))
        got = _label(decision.reason)
        seen.add(got)
        if got != deck.expected[kind]:
            wrong.append((i, kind, f"{got} {decision.detail}"))
        if kind.startswith("removed_"):
            assert reader.wait_for_removal(3), f"tap {i}: pcscd never saw the card leave"
    assert wrong == []
    assert len(plan) >= 200
    assert seen == set(deck.expected.values())


def test_removed_mid_apdu_then_next_card_works(
    deck: Any, card_server: VpcdCardServer, reader: PcscReader, now_ms: int
) -> None:
    validator = deck.validator()
    for n, step in enumerate(["select", "read", "auth"]):
        card_server.insert(deck.card(f"removed_{step}", card_id=50 + n))
        channel = reader.wait_for_card(5)
        assert channel is not None
        decision = run_tap(channel, validator, now_ms, bytes(16))
        assert decision.reason is Reason.UNREADABLE, decision
        assert "CardIOError" in decision.detail
        assert card_server.card is None  # the card's fault pulled it
        assert reader.wait_for_removal(3)
        card_server.insert(deck.card("good", card_id=60 + n))
        channel = reader.wait_for_card(5)
        assert channel is not None
        assert run_tap(channel, validator, now_ms, bytes(16)).accepted
        card_server.remove()
        assert reader.wait_for_removal(3)


def test_insert_remove_cycles(
    deck: Any, card_server: VpcdCardServer, reader: PcscReader, now_ms: int
) -> None:
    validator = deck.validator()
    assert reader.wait_for_card(0.3) is None  # empty field: a timeout, not an error
    for n in range(3):
        card_server.insert(deck.card("good", card_id=70 + n))
        channel = reader.wait_for_card(5)
        assert channel is not None
        decision = run_tap(channel, validator, now_ms, bytes(16))
        assert decision.accepted and decision.card_id == 70 + n
        assert not reader.wait_for_removal(0.1)  # still there
        card_server.remove()
        assert reader.wait_for_removal(3)
        # pcscd polls ~400 ms: a faster re-insertion could go unseen (docs/readers-pcsc.md).
        assert reader.wait_for_card(0.6) is None


def test_a_failed_card_leaves_no_ghost_for_the_next_tap(
    deck: Any, card_server: VpcdCardServer, card_server_01: VpcdCardServer, now_ms: int
) -> None:
    """A card that fails mid-transaction is gone from vpcd at once, but pcscd still shows
    its slot present until its next poll. The next card, in the other slot, must be the
    next tap: never a connect to the failed card's slot and an UNREADABLE for no card."""
    validator = deck.validator()
    with PcscReader("Virtual PCD 00 0?") as reader:
        for n, step in enumerate(["select", "read", "auth"] * 3):
            card_server.insert(deck.card(f"removed_{step}", card_id=70 + n))
            channel = reader.wait_for_card(5)
            assert channel is not None and reader.name == "Virtual PCD 00 00"
            assert run_tap(channel, validator, now_ms, bytes(16)).reason is Reason.UNREADABLE
            card_server_01.insert(deck.card("good", card_id=80 + n))  # at once, in the other slot
            assert reader.wait_for_removal(3)
            channel = reader.wait_for_card(5)
            assert channel is not None
            decision = run_tap(channel, validator, now_ms, bytes(16))
            assert (reader.name, decision.card_id, decision.accepted) == (
                "Virtual PCD 00 01",
                80 + n,
                True,
            ), decision
            card_server_01.remove()
            assert reader.wait_for_removal(3)
