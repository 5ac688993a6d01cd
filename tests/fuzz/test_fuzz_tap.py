"""Fuzz the tap: a card that answers each APDU with damaged, arbitrary or transport-split
bytes, driven through the real reader channel, transaction machine and validator.

The promise (CARD-SPEC §3 and §7): an answer of the wrong shape (a bad or missing status
word, a wrong length, a foreign spec version, a card gone mid-tap) is UNREADABLE, or
CARD_BLOCKED for a bare ``69 83`` to INTERNAL AUTHENTICATE; nothing but CardIOError comes
out of the channel; and ACCEPT only ever follows the genuine card's own credential and
signature over this tap's challenge, which must also verify on their own. A card that
answers genuinely, however the T=0 transport splits its answers, is accepted.
"""

from __future__ import annotations

import hashlib

import pytest
from fuzz_support import attempt, fuzz_settings, mutated
from hypothesis import event, given
from hypothesis import strategies as st

from farecore.card.apdu import (
    READ_CREDENTIAL,
    SELECT_RONGJUN,
    CommandApdu,
    complete_t0,
    internal_authenticate,
    split_response,
)
from farecore.card.credential import parse_unverified
from farecore.card.proof import parse_auth_response
from farecore.card.transaction import Outcome, Transaction
from farecore.decide.decision import Decision, Reason
from farecore.decide.issued import IssuedList, build_issued_list
from farecore.decide.validator import Validator
from farecore.errors import CardIOError, MalformedApdu, MalformedCredential
from farecore.gate.tap import run_tap
from readers.virtual import VirtualChannel, VirtualReader
from sim.card import VirtualCard
from sim.deck import Deck
from sim.issuer import derive_key

pytestmark = pytest.mark.fuzz

DECK = Deck.from_seed("fuzz-tap")
KEYRING = DECK.issuer.keyring()
NONCE = b"fuzz-tap-nonce16"
CARD_ID = 0x5EED_0001
KINDS = ("good", "good_p256", "clone")
# The genuine credentials on the issuer's list: the validator that trusts the list must
# decide exactly as the one that checks every issuer signature.
_LISTED = build_issued_list(
    [(kind, DECK.card(kind, CARD_ID).credential) for kind in ("good", "good_p256")],
    DECK.issuer.key,
    generation=1,
    created_at=0,
)
VALIDATORS = {
    "checks every signature": DECK.validator(),
    "trusts the issued list": Validator(
        DECK.validator().policy,
        KEYRING,
        DECK.validator().revocation,
        issued=[IssuedList.from_bytes(_LISTED, KEYRING)],
    ),
}
_INS_STEP = {0xA4: "select", 0xB0: "read", 0x88: "auth"}
# Mostly genuine answers, so that the damage often lands on a later step.
_ACTIONS = ["pass"] * 4 + ["mutate"] * 2 + ["garbage", "status", "remove", "61xx", "6Cxx"]
_STATUS_WORDS = st.sampled_from(
    [bytes.fromhex(sw) for sw in ("6983", "6700", "6985", "6A82", "6A86", "6D00", "6E00")]
) | st.binary(min_size=2, max_size=2)


def _card(kind: str) -> VirtualCard:
    if kind == "clone":  # the genuine credential, a key of the cloner's (fixed: reproducible)
        return VirtualCard.clone(DECK.card("good", CARD_ID), derive_key("fuzz-tap", "cloner"))
    return DECK.card(kind, CARD_ID)


class _Relay:
    """A genuine card behind a relay that draws, for each command, what to answer instead.

    The T=0 actions split a genuine answer across ``61 xx`` / GET RESPONSE or answer
    ``6C xx`` first; the follow-up the terminal sends is checked against the spec and
    answered with the (possibly damaged) rest.
    """

    def __init__(self, card: VirtualCard, draw: st.DataObject, actions: list[str]) -> None:
        self.card, self.draw, self.actions = card, draw, actions
        self.genuine: dict[str, bytes] = {}
        self.followup: tuple[bytes, bytes] | None = None  # (expected command, answer)

    def process_apdu(self, apdu: bytes) -> bytes:
        if self.followup is not None:
            expected, answer = self.followup
            self.followup = None
            assert apdu == expected, f"T=0 follow-up {apdu.hex()}, expected {expected.hex()}"
            return answer
        genuine = self.card.process_apdu(apdu)
        self.genuine[_INS_STEP.get(apdu[1], apdu[:2].hex())] = genuine
        action = self.draw.draw(st.sampled_from(_ACTIONS), label="action")
        self.actions.append(action)
        if action == "pass":
            return genuine
        if action == "mutate":
            return self.draw.draw(mutated(genuine), label="mutated answer")
        if action == "garbage":
            return self.draw.draw(st.binary(max_size=300), label="garbage answer")
        if action == "status":
            sw = self.draw.draw(_STATUS_WORDS, label="status word")
            return self.draw.draw(st.sampled_from([genuine[:-2], b""]), label="data") + sw
        if action == "remove":
            raise CardIOError("card left the field (fuzz)")
        rest = self._maybe_damaged
        if action == "61xx":
            cut = self.draw.draw(st.integers(0, len(genuine) - 2), label="split at")
            le = self.draw.draw(st.integers(0, 255), label="61 xx")
            get_response = bytes((apdu[0] & 0x03, 0xC0, 0x00, 0x00, le))
            self.followup = (get_response, rest(genuine[cut:]))
            return genuine[:cut] + bytes((0x61, le))
        le = self.draw.draw(st.integers(0, 255), label="6C xx")
        self.followup = (apdu[:-1] + bytes((le,)), rest(genuine))
        return bytes((0x6C, le))

    def _maybe_damaged(self, answer: bytes) -> bytes:
        if self.draw.draw(st.booleans(), label="damage the follow-up answer"):
            return self.draw.draw(mutated(answer), label="damaged follow-up")
        return answer


class _Watch:
    """The terminal's view of the channel: every (command, final answer), and every
    exception the channel raised (which must all be CardIOError)."""

    def __init__(self, channel: VirtualChannel) -> None:
        self.channel = channel
        self.log: list[tuple[bytes, bytes]] = []
        self.raised: list[BaseException] = []

    def transmit(self, apdu: bytes) -> bytes:
        try:
            answer = self.channel.transmit(apdu)
        except BaseException as exc:
            self.raised.append(exc)
            raise
        self.log.append((apdu, answer))
        return answer


def _shape_verdict(step: str, answer: bytes) -> Reason | None:
    """What CARD-SPEC §3 makes of one final answer: UNREADABLE, CARD_BLOCKED, or None
    when it has the shape of a success (then the validator judges its content)."""
    if step == "auth" and answer == b"\x69\x83":
        return Reason.CARD_BLOCKED
    if len(answer) < 2 or answer[-2:] != b"\x90\x00":
        return Reason.UNREADABLE
    data = answer[:-2]
    if step == "select":
        ok = len(data) == 2 and data[0] == 1
    elif step == "read":
        try:
            parse_unverified(data)
            ok = True
        except MalformedCredential:
            ok = False
    else:
        ok = len(data) == 68
    return None if ok else Reason.UNREADABLE


def _check(decision: Decision, watch: _Watch, relay: _Relay, kind: str) -> None:
    assert all(isinstance(exc, CardIOError) for exc in watch.raised), watch.raised
    steps = ["select", "read", "auth"]
    expected: Reason | None = None
    for (_, answer), step in zip(watch.log, steps, strict=False):
        expected = _shape_verdict(step, answer)
        if expected is not None:
            break
    else:
        if len(watch.log) < 3:  # the channel failed before all three answers came
            expected = Reason.UNREADABLE
    if expected is not None:
        assert decision.reason == expected, (decision.label, decision.detail)
        return
    assert decision.reason not in (Reason.UNREADABLE, Reason.CARD_BLOCKED), decision.detail
    if not decision.accepted:
        return
    # ACCEPT: the genuine card's credential and its answer to this very challenge...
    assert kind != "clone"
    assert decision.credential == relay.card.credential
    counter, signature = parse_auth_response(relay.genuine["auth"][:-2])
    assert (decision.counter, decision.card_signature) == (counter, signature)
    # ...which also verify on their own, as the settlement will check them.
    proof = decision.proof
    assert proof is not None
    proof.verify(KEYRING)


@fuzz_settings(2.0)
@given(
    kind=st.sampled_from(KINDS),
    validator=st.sampled_from(sorted(VALIDATORS)),
    draw=st.data(),
)
def test_damaged_answers_never_accept(kind: str, validator: str, draw: st.DataObject) -> None:
    actions: list[str] = []
    relay = _Relay(_card(kind), draw, actions)
    watch = _Watch(VirtualReader().tap(relay))
    decision = run_tap(watch, VALIDATORS[validator], DECK.now_ms, NONCE)
    event(decision.label)
    _check(decision, watch, relay, kind)
    # The terminal saw the genuine bytes, however the transport carried them: ACCEPT.
    genuine = [relay.genuine.get(step) for step in ("select", "read", "auth")]
    if kind != "clone" and [answer for _, answer in watch.log] == genuine:
        assert decision.accepted, (actions, decision.label, decision.detail)


@fuzz_settings()
@given(answers=st.lists(st.binary(max_size=200) | st.none(), min_size=3, max_size=3))
def test_transaction_machine_takes_any_answers(answers: list[bytes | None]) -> None:
    tx = Transaction(hashlib.sha256(b"challenge").digest())
    for answer in answers:
        if tx.next_command() is None:
            break
        if answer is None:
            tx.transport_failed("gone")
        else:
            tx.receive(answer)
    result = tx.result()
    if result.outcome is Outcome.COMPLETE:
        assert result.credential is not None and result.signature is not None
        assert all(a is not None and a.endswith(b"\x90\x00") for a in answers)


@pytest.mark.parametrize("validator", sorted(VALIDATORS))
@pytest.mark.parametrize("kind", ["good", "good_p256"])
def test_the_genuine_card_is_accepted(kind: str, validator: str) -> None:
    # The anchor of the oracle above: the undamaged card passes, proof and all.
    card = _card(kind)
    decision = run_tap(VirtualReader().tap(card), VALIDATORS[validator], DECK.now_ms, NONCE)
    assert decision.accepted, decision.detail
    assert decision.proof is not None
    decision.proof.verify(KEYRING)


# --- the APDU codec -------------------------------------------------------------------


@fuzz_settings()
@given(raw=st.binary(max_size=300))
def test_command_apdu_parse(raw: bytes) -> None:
    # The card side's reading of a command (the virtual card and the emulators use it).
    command = attempt(lambda: CommandApdu.parse(raw), MalformedApdu)
    if not isinstance(command, MalformedApdu):
        assert CommandApdu.parse(command.encode()) == command
    response = attempt(lambda: split_response(raw), MalformedApdu)
    if not isinstance(response, MalformedApdu):
        assert response.encode() == raw


@fuzz_settings()
@given(
    command=st.sampled_from([SELECT_RONGJUN, READ_CREDENTIAL, internal_authenticate(bytes(32))])
    | st.binary(min_size=4, max_size=40),
    response=st.binary(max_size=40),
    followup=st.binary(max_size=40),
)
def test_t0_completion_takes_any_answers(command: bytes, response: bytes, followup: bytes) -> None:
    sent: list[bytes] = []

    def exchange(apdu: bytes) -> bytes:
        sent.append(apdu)
        return followup

    answer = complete_t0(command, response, exchange)
    assert len(sent) <= 1 and isinstance(answer, bytes)
