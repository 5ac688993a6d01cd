"""card-vectors-sm2.json, every case, and the GB/T 32918.5 Annex A example (CARD-SPEC §4a).

The 51 cases go through the real tap path (scripted card answers, validator) and give
their reasons; the SM2 bytes are reproduced exactly with the vectors' deterministic nonce
(``sm2_reference``), and farecore's own randomly-nonced signatures are accepted too.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("gmssl_pyx", reason="the SM2 backend: pip install 'farecore[sm]'")

import sm2_reference as ref
from card_vectors import SM2_VECTORS_PATH, VECTORS_PATH, vector_keyring, vector_private_key

from farecore.card import sm2
from farecore.card.apdu import READ_CREDENTIAL, SELECT_RONGJUN
from farecore.card.credential import (
    CREDENTIAL_SIGNING_TAG,
    build_credential,
    parse_unverified,
)
from farecore.card.crypto import Algorithm, load_public_key
from farecore.card.keys import Keyring, SigningKey
from farecore.card.proof import auth_message, verify_credential
from farecore.decide.issued import IssuedList, build_issued_list
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.errors import BadSignature, MalformedInput
from farecore.gate.tap import run_tap
from readers.virtual import VirtualReader
from sim.card import VirtualCard

V = json.loads(SM2_VECTORS_PATH.read_text())
ALL = V["cases"] + V["negative_cases"]
SM2_CASES = [c for c in ALL if c not in json.loads(VECTORS_PATH.read_text())["cases"]]
ANNEX = V["sm2"]["annex_a_example"]
KEYRING = vector_keyring(V)


def _sm2_positive() -> list[dict[str, Any]]:
    return [c for c in V["cases"] if "sm2_intermediates" in c]


def test_the_file_is_the_old_vectors_plus_sm2() -> None:
    old = json.loads(VECTORS_PATH.read_text())
    assert V["keyring"][:2] == old["keyring"] and V["terminal"] == old["terminal"]
    for part in ("cases", "negative_cases"):
        assert [c for c in V[part] if c in old[part]] == old[part]
    assert len(old["cases"] + old["negative_cases"]) == 21
    assert len(ALL) == 51 and len(ALL) - 21 == 30


def test_curve_parameters_are_the_vectors() -> None:
    c = V["sm2"]
    got = (sm2.P, sm2.A, sm2.B, sm2.N, sm2.GX, sm2.GY)
    assert got == tuple(int(c[k], 16) for k in ("p", "a", "b", "n", "gx", "gy"))
    assert sm2.DEFAULT_ID == c["user_id"].encode() == ref.DEFAULT_ID


def test_annex_a_example() -> None:
    d = int(ANNEX["private_scalar"], 16)
    pub = bytes.fromhex(ANNEX["public_key"])
    msg = ANNEX["message_ascii"].encode()
    assert sm2.public_from_secret(bytes.fromhex(ANNEX["private_scalar"])) == pub
    z = sm2.z_value(sm2.parse_public_key(pub), ANNEX["user_id"].encode())
    assert z.hex() == ANNEX["z"]
    e = sm2.message_digest(z, msg)
    assert e.hex() == ANNEX["e"]
    sig = bytes.fromhex(ANNEX["signature"])
    assert ref.sign_with_k(d, e, int(ANNEX["k"], 16)) == sig
    load_public_key(Algorithm.SM2_SM3, pub).verify(sig, msg)
    assert ref.tongsuo_verify(pub, msg, sig)
    with pytest.raises(BadSignature):
        load_public_key(Algorithm.SM2_SM3, pub).verify(sig, b"message digesT")


@pytest.mark.parametrize("entry", V["keyring"], ids=lambda e: e["label"])
def test_keys_derive_their_public_keys(entry: dict[str, Any]) -> None:
    assert vector_private_key(entry).public_bytes.hex() == entry["public_key"]


@pytest.mark.parametrize("case", _sm2_positive(), ids=lambda c: c["name"])
def test_sm2_bytes_are_reproduced_with_the_deterministic_nonce(case: dict[str, Any]) -> None:
    raw = bytes.fromhex(case["credential"])
    f = case["fields"]
    issuer = next(k for k in V["keyring"] if k["key_id"] == f["issuer_key_id"])
    card_key = case["card_key"]
    steps = case["sm2_intermediates"]
    signatures = []
    if issuer["algorithm"] == "SM2-SM3":
        signatures.append(
            ("issuer_signature", issuer, CREDENTIAL_SIGNING_TAG + raw[:-64], raw[-64:])
        )
    else:  # an Ed25519 issuer is deterministic: farecore rebuilds the exact credential
        fields = parse_unverified(raw).fields
        assert build_credential(fields, vector_private_key(issuer)) == raw
    auth = bytes.fromhex(case["auth_response"])
    counter = int.from_bytes(auth[:4], "big")
    message = auth_message(f["card_id"], counter, bytes.fromhex(case["challenge"]))
    signatures.append(("card_signature", card_key, message, auth[4:]))
    assert set(steps) == {name for name, *_ in signatures}
    for name, key, msg, expected in signatures:
        d = int(key["sm2_private_scalar"], 16)
        pub = bytes.fromhex(key["public_key"])
        assert key["sm2_user_id"] == "1234567812345678"
        z = sm2.z_value(sm2.parse_public_key(pub))
        assert z.hex() == steps[name]["z"]
        assert sm2.message_digest(z, msg).hex() == steps[name]["e"]
        sig, k = ref.sign_deterministic(d, msg)
        assert (sig, f"{k:064x}") == (expected, steps[name]["k"])
        load_public_key(Algorithm.SM2_SM3, pub).verify(expected, msg)


@pytest.mark.parametrize("case", _sm2_positive(), ids=lambda c: c["name"])
def test_farecore_signs_what_the_vectors_accept(
    case: dict[str, Any], policy: TerminalPolicy, now_ms: int
) -> None:
    """farecore's card and issuer sign with random nonces: other bytes, same verdict."""
    f = case["fields"]
    issuer = vector_private_key(next(k for k in V["keyring"] if k["key_id"] == f["issuer_key_id"]))
    fields = parse_unverified(bytes.fromhex(case["credential"])).fields
    credential = build_credential(fields, issuer)
    if issuer.algorithm is Algorithm.SM2_SM3:
        assert credential.hex() != case["credential"]  # a fresh nonce
        assert credential[:-64].hex() == case["credential"][:-128]
    card = VirtualCard(credential, vector_private_key(case["card_key"]))
    assert card.process_apdu(SELECT_RONGJUN) == bytes.fromhex("01009000")
    assert card.process_apdu(READ_CREDENTIAL)[:-2] == credential
    card = VirtualCard(credential, vector_private_key(case["card_key"]))
    decision = run_tap(VirtualReader().tap(card), Validator(policy, KEYRING), now_ms, bytes(16))
    assert decision.label == "ACCEPT"


class _ScriptedCard:
    def __init__(self, credential: bytes, auth: bytes) -> None:
        self.credential, self.auth = credential, auth

    def transmit(self, apdu: bytes) -> bytes:
        if apdu == SELECT_RONGJUN:
            return bytes.fromhex("01009000")
        if apdu == READ_CREDENTIAL:
            return self.credential + b"\x90\x00"
        return self.auth + b"\x90\x00"


def _decide(case: dict[str, Any], policy: TerminalPolicy, validator_for: Any) -> str:
    challenge = bytes.fromhex(case["challenge"])
    policy = TerminalPolicy(
        int.from_bytes(challenge[:8], "big"), policy.accepted_regions, policy.accepted_categories
    )
    card = _ScriptedCard(bytes.fromhex(case["credential"]), bytes.fromhex(case["auth_response"]))
    time_ms = int.from_bytes(challenge[8:16], "big")
    decision = run_tap(card, validator_for(policy), time_ms, challenge[16:])
    assert decision.challenge == challenge
    return decision.label


@pytest.mark.parametrize("case", ALL, ids=lambda c: c["name"])
def test_every_case_gives_its_reason(case: dict[str, Any], policy: TerminalPolicy) -> None:
    assert _decide(case, policy, lambda p: Validator(p, KEYRING)) == case["expect"]


def _issued_lists(keyring: Keyring) -> list[IssuedList]:
    lists = []
    for entry in V["keyring"]:
        key = SigningKey("issuer", entry["key_id"], vector_private_key(entry))
        mine = []
        for case in ALL:
            raw = bytes.fromhex(case["credential"])
            try:
                cred = parse_unverified(raw)
                verify_credential(cred, keyring)
            except (MalformedInput, BadSignature):
                continue
            if cred.fields.issuer_key_id == key.key_id and (case["name"], raw) not in mine:
                mine.append((case["name"], raw))
        lists.append(IssuedList.from_bytes(build_issued_list(mine, key, 1, 0), keyring))
    return lists


def test_every_case_gives_its_reason_with_the_issued_lists(policy: TerminalPolicy) -> None:
    """An SM2 issuer's signed list vouches as the others do, and changes no decision."""
    lists = _issued_lists(KEYRING)
    assert any(lst.key_id == V["keyring"][2]["key_id"] for lst in lists)
    for case in ALL:
        got = _decide(case, policy, lambda p: Validator(p, KEYRING, issued=lists))
        assert got == case["expect"], case["name"]


def test_an_sm2_issuer_key_off_the_curve_is_a_keyring_error() -> None:
    """§4a: an issuer key of algorithm 3 that is no valid point is a keyring error."""
    entry = dict(V["keyring"][2])
    pub = bytearray.fromhex(entry["public_key"])
    pub[-1] ^= 1
    doc = {
        "format": "farecore-keyring/1",
        "keys": [
            {
                "key_id": entry["key_id"],
                "algorithm": "SM2-SM3",
                "public_key": pub.hex(),
                "status": "active",
                "retired_at": None,
                "label": "",
            }
        ],
    }
    with pytest.raises(MalformedInput, match="key entry 0: not a point of the SM2 curve"):
        Keyring.from_bytes(json.dumps(doc).encode())
