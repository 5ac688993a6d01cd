"""Properties of the codecs and the validator, checked by hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from farecore.card.apdu import CommandApdu, split_response
from farecore.card.credential import CredentialFields, build_credential, parse_unverified
from farecore.card.crypto import Algorithm
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.errors import MalformedApdu, MalformedCredential
from farecore.gate.tap import run_tap
from readers.virtual import VirtualReader
from sim.card import VirtualCard
from sim.issuer import Issuer, derive_key

ISSUER = Issuer.from_seed("properties", key_id=77)
ISSUER_P256 = Issuer.from_seed("properties-p256", key_id=78, algorithm=Algorithm.P256)
KEYRING = ISSUER.keyring().add(ISSUER_P256.keyring_entry())
POLICY = TerminalPolicy(9, frozenset({370200}))
NOW_MS = 1_796_083_200_000
CARD_KEYS = {alg: derive_key("prop-card", alg.label, alg) for alg in Algorithm}

u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def fields(draw: st.DrawFn) -> CredentialFields:
    issuer = draw(st.sampled_from([ISSUER, ISSUER_P256]))
    card_alg = draw(st.sampled_from(list(Algorithm)))
    valid_from = draw(st.integers(0, 0xFFFFFFFE))
    return CredentialFields(
        issuer_algorithm=issuer.key.algorithm,
        issuer_key_id=issuer.key.key_id,
        card_id=draw(st.integers(1, 2**64 - 1)),
        category=draw(st.integers(0, 255)),
        region=draw(u32),
        valid_from=valid_from,
        valid_until=draw(st.integers(valid_from + 1, 0xFFFFFFFF)),
        card_key_algorithm=card_alg,
        card_public_key=CARD_KEYS[card_alg].public_bytes,
    )


def _issuer_for(f: CredentialFields) -> Issuer:
    return ISSUER if f.issuer_key_id == ISSUER.key.key_id else ISSUER_P256


@given(fields())
def test_credential_round_trips(f: CredentialFields) -> None:
    raw = build_credential(f, _issuer_for(f).key.private)
    parsed = parse_unverified(raw)
    assert parsed.fields == f
    assert parsed.raw == raw
    assert len(raw) == 28 + f.card_key_algorithm.public_key_length + 64


@given(st.binary(max_size=200))
def test_parser_never_raises_anything_but_malformed(data: bytes) -> None:
    try:
        parse_unverified(data)
    except MalformedCredential:
        pass


def _good_card(card_alg: Algorithm = Algorithm.ED25519) -> VirtualCard:
    key = CARD_KEYS[card_alg]
    return VirtualCard(ISSUER.credential(0x1234_5678_9ABC, key), key)


@pytest.mark.parametrize("card_alg", list(Algorithm))
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_of_a_credential_is_denied(
    card_alg: Algorithm, data: st.DataObject
) -> None:
    card = _good_card(card_alg)
    raw = bytearray(card.credential)
    i = data.draw(st.integers(0, len(raw) - 1), label="index")
    raw[i] ^= data.draw(st.integers(1, 255), label="xor")
    tampered = VirtualCard(bytes(raw), card.key)
    decision = run_tap(VirtualReader().tap(tampered), Validator(POLICY, KEYRING), NOW_MS, b"n" * 16)
    assert not decision.accepted


class _Relay:
    """Relays to a genuine card but rewrites one byte of the authentication answer."""

    def __init__(self, card: VirtualCard, index: int, xor: int) -> None:
        self.card, self.index, self.xor = card, index, xor

    def transmit(self, apdu: bytes) -> bytes:
        rsp = bytearray(self.card.process_apdu(apdu))
        if apdu[1] == 0x88:
            rsp[self.index] ^= self.xor
        return bytes(rsp)


@given(st.integers(0, 69), st.integers(1, 255))
def test_any_single_byte_change_of_an_auth_response_is_denied(index: int, xor: int) -> None:
    decision = run_tap(
        _Relay(_good_card(), index, xor), Validator(POLICY, KEYRING), NOW_MS, b"n" * 16
    )
    assert not decision.accepted
    if index >= 68:  # the status word: no longer 90 00
        assert decision.label in ("UNREADABLE", "CARD_BLOCKED")


class _Garbage:
    """A genuine card, except that one step's answer is replaced by arbitrary bytes."""

    def __init__(self, step: int, garbage: bytes) -> None:
        self.card = _good_card()
        self.step, self.garbage, self.calls = step, garbage, 0

    def transmit(self, apdu: bytes) -> bytes:
        rsp = self.card.process_apdu(apdu)
        self.calls += 1
        return self.garbage if self.calls - 1 == self.step else rsp


def _well_formed(step: int, answer: bytes) -> bool:
    if len(answer) < 2 or answer[-2:] != b"\x90\x00":
        return False
    data = answer[:-2]
    if step == 0:
        return len(data) == 2 and data[0] == 1
    if step == 1:
        try:
            parse_unverified(data)
        except MalformedCredential:
            return False
        return True
    return len(data) == 68


@given(st.integers(0, 2), st.binary(max_size=300))
def test_arbitrary_bytes_from_the_card_never_escape_the_validator(
    step: int, garbage: bytes
) -> None:
    decision = run_tap(_Garbage(step, garbage), Validator(POLICY, KEYRING), NOW_MS, b"n" * 16)
    if step == 2 and garbage == b"\x69\x83":
        assert decision.label == "CARD_BLOCKED"
    elif not _well_formed(step, garbage):
        assert decision.label == "UNREADABLE"
    elif step > 0:
        assert not decision.accepted  # well-formed but not what the genuine card said


@given(st.binary(max_size=300))
def test_command_apdu_parse_only_raises_malformed(data: bytes) -> None:
    try:
        cmd = CommandApdu.parse(data)
    except MalformedApdu:
        return
    assert CommandApdu.parse(cmd.encode()) == cmd


@given(
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=255),
    st.one_of(st.none(), st.integers(1, 256)),
)
def test_command_apdu_round_trips(
    cla: int, ins: int, p1: int, p2: int, body: bytes, le: int | None
) -> None:
    cmd = CommandApdu(cla, ins, p1, p2, body, le)
    assert CommandApdu.parse(cmd.encode()) == cmd


@given(st.binary(max_size=2))
def test_short_responses_have_no_status_word(data: bytes) -> None:
    assume(len(data) < 2)
    with pytest.raises(MalformedApdu):
        split_response(data)


@given(command=st.binary(min_size=4, max_size=40), response=st.binary(max_size=40))
def test_t0_is_completed_at_most_once(command: bytes, response: bytes) -> None:
    from farecore.card.apdu import complete_t0, t0_followup

    sent: list[bytes] = []

    def exchange(apdu: bytes) -> bytes:
        sent.append(apdu)
        return b"\x61\x10"  # a card that would ask again, for ever

    out = complete_t0(command, response, exchange)
    assert len(sent) <= 1
    if t0_followup(command, response) is None:
        assert out == response and not sent
    elif response[-2] == 0x61:
        assert sent == [bytes((command[0] & 3, 0xC0, 0, 0, response[-1]))]
        assert out == response[:-2] + b"\x61\x10"
    else:
        assert sent[0][:-1] == command[:-1] and sent[0][-1] == response[-1]
