"""farecore's SM2 against two independent implementations, and its own checks.

Tongsuo (tongsuopy) and the plain reference (``sm2_reference``) must give farecore's
verdict on every SM2 signature in the vectors and on random keys and messages. The raw
backend (gmssl-pyx) is asked too: where it alone would accept what §4a forbids, farecore
must refuse, and this file names those cases.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("gmssl_pyx", reason="the SM2 backend: pip install 'farecore[sm]'")
pytest.importorskip("tongsuopy", reason="the second SM2 implementation (dev extra)")

import gmssl_pyx
import sm2_reference as ref
from card_vectors import SM2_VECTORS_PATH
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.card import sm2
from farecore.card.credential import CREDENTIAL_SIGNING_TAG
from farecore.card.crypto import Algorithm, PrivateKey, load_public_key
from farecore.card.proof import auth_message
from farecore.errors import BadSignature, MalformedInput

V = json.loads(SM2_VECTORS_PATH.read_text())
RING = {k["key_id"]: k for k in V["keyring"]}
N = sm2.N

# What the raw backend accepts and §4a forbids. gmssl-pyx takes a 64-byte X ‖ Y, so the
# key's prefix byte is farecore's to check: a hybrid 06/07 key is a valid point.
LIBRARY_ALONE_ACCEPTS = {
    "sm2: issuer-signed card key in SEC1 hybrid form (06/07 || X || Y), signature valid "
    "for that point [card]"
}

Triple = tuple[str, bytes, bytes, bytes, bool]


def _triples() -> Iterator[Triple]:
    """(id, key, message, signature, valid?) of every SM2 signature in the vectors."""
    for case in V["cases"] + V["negative_cases"]:
        raw = bytes.fromhex(case["credential"])
        name = case["name"]
        issuer = RING.get(int.from_bytes(raw[2:6], "big"))
        if raw[1] == 3 and issuer is not None and issuer["algorithm"] == "SM2-SM3":
            valid = case["expect"] != "BAD_CREDENTIAL_SIGNATURE"
            key = bytes.fromhex(issuer["public_key"])
            yield (f"{name} [issuer]", key, CREDENTIAL_SIGNING_TAG + raw[:-64], raw[-64:], valid)
        auth = bytes.fromhex(case["auth_response"])
        if len(raw) == 157 and raw[27] == 3 and len(auth) == 68:
            message = auth_message(
                int.from_bytes(raw[6:14], "big"),
                int.from_bytes(auth[:4], "big"),
                bytes.fromhex(case["challenge"]),
            )
            valid = case["expect"] != "CARD_AUTH_FAILED"
            yield (f"{name} [card]", raw[28:93], message, auth[4:], valid)


TRIPLES = list(_triples())


def farecore_verdict(key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        load_public_key(Algorithm.SM2_SM3, key).verify(signature, message)
    except (MalformedInput, BadSignature):
        return False
    return True


def raw_backend_verdict(key: bytes, message: bytes, signature: bytes) -> bool:
    """gmssl-pyx alone, as a caller without farecore's checks would use it."""
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        return bool(gmssl_pyx.sm2_verify(key[1:], message, der))
    except gmssl_pyx.GmsslInnerError:
        return False


def test_every_sm2_signature_of_the_vectors_is_here() -> None:
    assert len(TRIPLES) >= 30
    assert sum(not t[4] for t in TRIPLES) >= 20
    assert {t[0] for t in TRIPLES} >= LIBRARY_ALONE_ACCEPTS


@pytest.mark.parametrize("triple", TRIPLES, ids=lambda t: t[0])
def test_implementations_agree_on_every_vector(triple: Triple, capfd: Any) -> None:
    name, key, message, signature, valid = triple
    assert farecore_verdict(key, message, signature) is valid
    assert ref.verify(key, message, signature) is valid
    assert ref.tongsuo_verify(key, message, signature) is valid
    assert capfd.readouterr().err == ""  # farecore's refusals trace nothing on stderr
    if name in LIBRARY_ALONE_ACCEPTS:
        assert raw_backend_verdict(key, message, signature) and not valid
    else:
        assert raw_backend_verdict(key, message, signature) is valid


def test_r_n_minus_s_is_refused_by_everyone() -> None:
    key = PrivateKey.generate(Algorithm.SM2_SM3)
    sig = key.sign(b"ride")
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    twin = sig[:32] + (N - s).to_bytes(32, "big")
    assert farecore_verdict(key.public_bytes, b"ride", sig)
    for verdict in (farecore_verdict, ref.verify, ref.tongsuo_verify, raw_backend_verdict):
        assert not verdict(key.public_bytes, b"ride", twin), verdict
    assert (r, s) != (r, N - s)


@pytest.mark.parametrize(
    ("r", "s"),
    [(0, 1), (1, 0), (N, 1), (1, N), (2**256 - 1, 2**256 - 1), (1, N - 1), (N - 5, 5)],
    ids=["r=0", "s=0", "r=n", "s=n", "all-ones", "t=0", "t=0b"],
)
def test_out_of_range_signatures_never_reach_the_backend(r: int, s: int) -> None:
    with pytest.raises(BadSignature, match="out of range|r \\+ s"):
        sm2.signature_scalars(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


@pytest.mark.parametrize("size", [0, 63, 65, 72])
def test_a_signature_of_the_wrong_size_is_refused(size: int) -> None:
    key = load_public_key(Algorithm.SM2_SM3, bytes.fromhex(RING[1363410947]["public_key"]))
    with pytest.raises(BadSignature, match="64"):
        key.verify(b"\x01" * size, b"m")


def _point(prefix: int = 4) -> bytes:
    return bytes([prefix]) + bytes.fromhex(RING[1363410947]["public_key"])[1:]


@pytest.mark.parametrize(
    "raw",
    [
        _point(2),
        _point(3),
        _point(6),
        _point(7),
        _point()[1:],
        _point() + b"\x00",
        _point()[:33],
        b"\x04" + bytes(64),  # the point at infinity, as some encoders spell it
        _point()[:-1] + bytes([_point()[-1] ^ 1]),  # off the curve
        b"\x04" + sm2.P.to_bytes(32, "big") + _point()[33:],  # x = p
        b"\x04" + (sm2.GX + sm2.P).to_bytes(33, "big")[1:] + sm2.GY.to_bytes(32, "big"),
    ],
    ids=[
        "02",
        "03",
        "06",
        "07",
        "64 bytes",
        "66 bytes",
        "33 bytes",
        "infinity",
        "off",
        "x=p",
        "x+p",
    ],
)
def test_only_an_uncompressed_curve_point_is_a_key(raw: bytes) -> None:
    with pytest.raises(MalformedInput):
        load_public_key(Algorithm.SM2_SM3, raw)


secrets_ = st.integers(min_value=1, max_value=N - 2).map(lambda d: d.to_bytes(32, "big"))


@settings(max_examples=40, deadline=None)
@given(secret=secrets_, message=st.binary(max_size=200), bit=st.integers(0, 511))
def test_farecore_signs_tongsuo_verifies(secret: bytes, message: bytes, bit: int) -> None:
    key = PrivateKey(Algorithm.SM2_SM3, secret)
    assert key.public_bytes == ref.public_key(int.from_bytes(secret, "big"))
    sig = key.sign(message)
    assert ref.tongsuo_verify(key.public_bytes, message, sig)
    flipped = bytearray(sig)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert not farecore_verdict(key.public_bytes, message, bytes(flipped))
    assert not ref.tongsuo_verify(key.public_bytes, message, bytes(flipped))
    assert not farecore_verdict(key.public_bytes, message + b"\x00", sig)


@settings(max_examples=40, deadline=None)
@given(secret=secrets_, message=st.binary(max_size=200), bit=st.integers(0, 1599))
def test_tongsuo_signs_farecore_verifies(secret: bytes, message: bytes, bit: int) -> None:
    d = int.from_bytes(secret, "big")
    public = ref.public_key(d)
    sig = ref.tongsuo_sign(d, message)
    assert farecore_verdict(public, message, sig)
    if message:
        flipped = bytearray(message)
        flipped[(bit // 8) % len(message)] ^= 1 << (bit % 8)
        assert not farecore_verdict(public, bytes(flipped), sig)


@settings(max_examples=200, deadline=None)
@given(r=st.integers(1, N - 1), s=st.integers(1, N - 1))
def test_der_conversion_is_the_standard_one(r: int, s: int) -> None:
    der = sm2.raw_to_der(r, s)
    assert der == encode_dss_signature(r, s)
    assert decode_dss_signature(der) == (r, s)
    assert sm2.der_to_raw(der) == r.to_bytes(32, "big") + s.to_bytes(32, "big")


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30\x00",
        b"\x31\x06\x02\x01\x01\x02\x01\x01",
        b"\x30\x06\x02\x01\x01\x02\x01\x00",
        b"\x30\x07\x02\x01\x01\x02\x01\x01\x00",
        b"\x30\x06\x02\x01\x01\x02\x02\x01",
    ],
)
def test_malformed_der_from_the_backend_is_refused(der: bytes) -> None:
    with pytest.raises(BadSignature, match="malformed DER"):
        sm2.der_to_raw(der)


def test_the_stderr_trap_drops_only_the_backend_trace(capfd: Any) -> None:
    def noisy() -> int:
        os.write(2, b"/project/GmSSL/src/sm2_sign.c:265:sm2_fast_verify():\nkept line\n")
        return 7

    assert sm2._trap.call(noisy) == 7
    assert capfd.readouterr().err == "kept line\n"
    assert sm2._trap.call(lambda: 8) == 8
    assert capfd.readouterr().err == ""


def test_a_failed_verify_writes_nothing_to_stderr(capfd: Any) -> None:
    key = PrivateKey.generate(Algorithm.SM2_SM3)
    with pytest.raises(BadSignature):
        key.public_key().verify(key.sign(b"a"), b"b")
    assert capfd.readouterr().err == ""
    sig = key.sign(b"a")
    der = sm2.raw_to_der(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    assert not gmssl_pyx.sm2_verify(key.public_bytes[1:], b"b", der)
    assert "sm2_sign.c" in capfd.readouterr().err  # what the trap is for


def test_signatures_use_a_fresh_nonce() -> None:
    key = PrivateKey.generate(Algorithm.SM2_SM3)
    assert len({key.sign(b"same") for _ in range(8)}) == 8
