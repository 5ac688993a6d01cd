"""Every golden vector of CARD-SPEC §8 gives the exact bytes and the exact reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from card_vectors import VECTORS_PATH, vector_private_key

from farecore.card.apdu import READ_CREDENTIAL, SELECT_RONGJUN, internal_authenticate
from farecore.card.credential import CredentialFields, build_credential, parse_unverified
from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import Keyring, SigningKey
from farecore.card.proof import verify_credential
from farecore.decide.issued import IssuedList, build_issued_list
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.errors import BadSignature, MalformedInput
from farecore.gate.tap import run_tap
from readers.virtual import VirtualReader
from sim.card import VirtualCard

CASES = json.loads(VECTORS_PATH.read_text())


def test_tests_copy_is_the_packaged_copy() -> None:
    packaged = Path(__file__).resolve().parents[2] / "farecore" / "data" / "card-vectors.json"
    assert VECTORS_PATH.resolve().read_bytes() == packaged.read_bytes()


@pytest.mark.parametrize("entry", CASES["keyring"], ids=lambda e: e["label"])
def test_issuer_keys_derive_their_public_keys(entry: dict[str, Any]) -> None:
    assert vector_private_key(entry).public_bytes.hex() == entry["public_key"]


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: c["name"])
def test_issuer_builds_the_exact_credential(case: dict[str, Any], vectors: dict[str, Any]) -> None:
    f = case["fields"]
    issuer_entry = next(k for k in vectors["keyring"] if k["key_id"] == f["issuer_key_id"])
    fields = CredentialFields(
        issuer_algorithm=Algorithm(f["issuer_algorithm"]),
        issuer_key_id=f["issuer_key_id"],
        card_id=f["card_id"],
        category=f["category"],
        region=f["region"],
        valid_from=f["valid_from"],
        valid_until=f["valid_until"],
        card_key_algorithm=Algorithm(f["card_key_algorithm"]),
        card_public_key=bytes.fromhex(f["card_public_key"]),
        version=f["version"],
    )
    raw = build_credential(fields, vector_private_key(issuer_entry))
    assert raw.hex() == case["credential"]
    assert len(raw) == case["credential_length"]
    assert parse_unverified(raw).fields == fields


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: c["name"])
def test_virtual_card_answers_byte_for_byte(case: dict[str, Any]) -> None:
    key = vector_private_key(case["card_key"])
    assert key.public_bytes.hex() == case["card_key"]["public_key"]
    card = VirtualCard(bytes.fromhex(case["credential"]), key)
    assert card.process_apdu(SELECT_RONGJUN) == bytes.fromhex("01009000")
    assert card.process_apdu(READ_CREDENTIAL).hex() == case["credential"] + "9000"
    rsp = card.process_apdu(internal_authenticate(bytes.fromhex(case["challenge"])))
    assert rsp.hex() == case["auth_response"] + "9000"
    assert int.from_bytes(rsp[:4], "big") == case["counter"]


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: c["name"])
def test_positive_case_is_accepted_through_a_reader(
    case: dict[str, Any], keyring: Keyring, policy: TerminalPolicy, now_ms: int
) -> None:
    card = VirtualCard(bytes.fromhex(case["credential"]), vector_private_key(case["card_key"]))
    challenge = bytes.fromhex(case["challenge"])
    nonce = challenge[16:]
    decision = run_tap(VirtualReader().tap(card), Validator(policy, keyring), now_ms, nonce)
    assert decision.label == case["expect"] == "ACCEPT"
    # The vector challenge carries its own terminal id and time; ours carries the policy's.
    assert decision.counter == 1
    assert decision.card_id == case["fields"]["card_id"]


class _ScriptedCard:
    """Answers with fixed bytes: the vector's credential and auth response."""

    def __init__(self, credential: bytes, auth: bytes) -> None:
        self.credential, self.auth = credential, auth

    def process_apdu(self, apdu: bytes) -> bytes:
        if apdu == SELECT_RONGJUN:
            return bytes.fromhex("01009000")
        if apdu == READ_CREDENTIAL:
            return self.credential + b"\x90\x00"
        return self.auth + b"\x90\x00"

    transmit = process_apdu


@pytest.mark.parametrize("case", CASES["cases"] + CASES["negative_cases"], ids=lambda c: c["name"])
def test_every_case_gives_its_reason(
    case: dict[str, Any], keyring: Keyring, policy: TerminalPolicy, now_ms: int
) -> None:
    challenge = bytes.fromhex(case["challenge"])
    terminal_id = int.from_bytes(challenge[:8], "big")
    # The vectors' responses sign the challenge as given, so the terminal must issue
    # exactly that challenge: same terminal id, time and nonce.
    policy = TerminalPolicy(terminal_id, policy.accepted_regions, policy.accepted_categories)
    time_ms = int.from_bytes(challenge[8:16], "big")
    card = _ScriptedCard(bytes.fromhex(case["credential"]), bytes.fromhex(case["auth_response"]))
    assert time_ms == now_ms  # the vectors' challenge was made at the terminal's "now"
    decision = run_tap(card, Validator(policy, keyring), time_ms, challenge[16:])
    assert decision.challenge == challenge
    assert decision.label == case["expect"]


def _issued_lists(vectors: dict[str, Any], keyring: Keyring) -> list[IssuedList]:
    """A list per vector issuer key, of every vector credential that key really signed."""
    lists = []
    for entry in vectors["keyring"]:
        key = SigningKey("issuer", entry["key_id"], vector_private_key(entry))
        mine = []
        for case in CASES["cases"] + CASES["negative_cases"]:
            raw = bytes.fromhex(case["credential"])
            try:
                verify_credential(parse_unverified(raw), keyring)
            except (MalformedInput, BadSignature):
                continue
            if parse_unverified(raw).fields.issuer_key_id == key.key_id:
                mine.append((case["name"], raw))
        lists.append(IssuedList.from_bytes(build_issued_list(mine, key, 1, 0), keyring))
    return lists


@pytest.mark.parametrize("case", CASES["cases"] + CASES["negative_cases"], ids=lambda c: c["name"])
def test_every_case_gives_its_reason_with_the_issued_lists(
    case: dict[str, Any], vectors: dict[str, Any], keyring: Keyring, policy: TerminalPolicy
) -> None:
    """The issuer's lists change which signatures a terminal checks, never a decision."""
    challenge = bytes.fromhex(case["challenge"])
    policy = TerminalPolicy(
        int.from_bytes(challenge[:8], "big"), policy.accepted_regions, policy.accepted_categories
    )
    validator = Validator(policy, keyring, issued=_issued_lists(vectors, keyring))
    card = _ScriptedCard(bytes.fromhex(case["credential"]), bytes.fromhex(case["auth_response"]))
    decision = run_tap(card, validator, int.from_bytes(challenge[8:16], "big"), challenge[16:])
    assert decision.label == case["expect"]


def test_p256_signature_is_not_required_to_be_deterministic(
    keyring: Keyring, policy: TerminalPolicy, now_ms: int
) -> None:
    case = next(c for c in CASES["cases"] if c["name"] == "p256-issuer/p256-card")
    key = vector_private_key(case["card_key"])
    challenge = bytes.fromhex(case["challenge"])
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from farecore.card.proof import auth_message

    ec_key = ec.derive_private_key(int.from_bytes(key.secret, "big"), ec.SECP256R1())
    der = ec_key.sign(auth_message(1, 1, challenge), ec.ECDSA(hashes.SHA256()))  # random k
    r, s = decode_dss_signature(der)
    auth = (1).to_bytes(4, "big") + r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert auth.hex() != case["auth_response"]
    card = _ScriptedCard(bytes.fromhex(case["credential"]), auth)
    terminal_policy = TerminalPolicy(
        int.from_bytes(challenge[:8], "big"), policy.accepted_regions, policy.accepted_categories
    )
    decision = run_tap(card, Validator(terminal_policy, keyring), now_ms, challenge[16:])
    assert decision.accepted


def test_private_key_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        PrivateKey(Algorithm.ED25519, b"short")
