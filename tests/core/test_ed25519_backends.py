"""The two Ed25519 backends (libsodium through PyNaCl, OpenSSL through cryptography)
accept exactly the same signatures and make exactly the same ones.

A gate may run on one and the night on the other, and two Dask workers may differ: if
their verdicts could differ, which machine ran a unit would change the money. The one
place they differ on their own is an R of small order, which libsodium refuses and
OpenSSL accepts when the equation balances; farecore refuses it before either runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.card import crypto
from farecore.card.crypto import Algorithm, PrivateKey, load_public_key
from farecore.errors import BadSignature, MalformedInput

L = 2**252 + 27742317777372353535851937790883648493
BACKENDS = ("cryptography", "nacl")


@pytest.fixture(autouse=True)
def _restore_backend() -> Iterator[None]:
    yield
    crypto.set_ed25519_backend("auto")


def _verdict(backend: str, public: bytes, signature: bytes, message: bytes) -> str:
    crypto.set_ed25519_backend(backend)
    try:
        load_public_key(Algorithm.ED25519, public).verify(signature, message)
    except MalformedInput:
        return "bad key"
    except BadSignature:
        return "refused"
    return "accepted"


def _verdicts(public: bytes, signature: bytes, message: bytes) -> dict[str, str]:
    return {b: _verdict(b, public, signature, message) for b in BACKENDS}


def _identity_r_signature(seed: bytes, message: bytes) -> tuple[bytes, bytes]:
    """A signature whose R is the identity and whose equation balances: s = h·a, so
    [s]B - [h]A = 0 = R. Only the holder of the key can make one."""
    digest = bytearray(hashlib.sha512(seed).digest()[:32])
    digest[0] &= 248
    digest[31] &= 127
    digest[31] |= 64
    a = int.from_bytes(digest, "little")
    public = PrivateKey(Algorithm.ED25519, seed).public_bytes
    r = (1).to_bytes(32, "little")
    h = int.from_bytes(hashlib.sha512(r + public + message).digest(), "little") % L
    return public, r + (h * a % L).to_bytes(32, "little")


def test_the_default_is_libsodium_when_pynacl_is_installed() -> None:
    crypto.set_ed25519_backend("auto")
    assert crypto.ed25519_backend() == "nacl"


def test_an_unknown_backend_is_named() -> None:
    with pytest.raises(ValueError, match="unknown Ed25519 backend 'openssl'"):
        crypto.set_ed25519_backend("openssl")


def test_an_identity_r_that_openssl_alone_would_accept_is_refused_by_both() -> None:
    seed, message = bytes(range(32)), b"challenge"
    public, signature = _identity_r_signature(seed, message)
    # OpenSSL by itself takes it: this is why farecore checks R first.
    ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    for backend in BACKENDS:
        crypto.set_ed25519_backend(backend)
        key = load_public_key(Algorithm.ED25519, public)
        with pytest.raises(BadSignature, match="R is a point of small order"):
            key.verify(signature, message)


@pytest.mark.parametrize(
    "r",
    [
        "0100000000000000000000000000000000000000000000000000000000000080",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "0000000000000000000000000000000000000000000000000000000000000000",
    ],
)
def test_every_spelling_of_a_small_order_r_is_refused(r: str) -> None:
    seed, message = bytes(range(32)), b"challenge"
    public, signature = _identity_r_signature(seed, message)
    forged = bytes.fromhex(r) + signature[32:]
    assert _verdicts(public, forged, message) == {b: "refused" for b in BACKENDS}


def test_s_plus_l_is_refused_by_both() -> None:
    key = PrivateKey(Algorithm.ED25519, bytes(range(32)))
    signature = key.sign(b"m")
    s = int.from_bytes(signature[32:], "little") + L
    malleated = signature[:32] + s.to_bytes(32, "little")
    with pytest.raises(InvalidSignature):  # OpenSSL refuses it too, on its own
        ed25519.Ed25519PublicKey.from_public_bytes(key.public_bytes).verify(malleated, b"m")
    assert _verdicts(key.public_bytes, malleated, b"m") == {b: "refused" for b in BACKENDS}


@settings(max_examples=150, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=200))
def test_both_signers_make_the_same_signature(seed: bytes, message: bytes) -> None:
    made = {}
    for backend in BACKENDS:
        crypto.set_ed25519_backend(backend)
        key = PrivateKey(Algorithm.ED25519, seed)
        made[backend] = (key.public_bytes, key.sign(message))
    assert made["nacl"] == made["cryptography"]
    public, signature = made["nacl"]
    assert _verdicts(public, signature, message) == {b: "accepted" for b in BACKENDS}


_MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 511)),
    st.tuples(st.just("r"), st.binary(min_size=32, max_size=32)),
    st.tuples(st.just("s"), st.integers(0, 2**256 - 1)),
    st.tuples(st.just("s+kL"), st.integers(1, 15)),
    st.tuples(st.just("identity r"), st.just(0)),
    st.tuples(st.just("random"), st.binary(min_size=64, max_size=64)),
    st.tuples(st.just("other message"), st.just(0)),
)


@settings(max_examples=400, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    message=st.binary(max_size=100),
    mutation=_MUTATIONS,
    public=st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
)
def test_both_backends_give_the_same_verdict_on_any_signature(
    seed: bytes, message: bytes, mutation: tuple[str, object], public: bytes | None
) -> None:
    key = PrivateKey(Algorithm.ED25519, seed)
    signature = key.sign(message)
    what, arg = mutation
    if what == "flip":
        assert isinstance(arg, int)
        b = bytearray(signature)
        b[arg // 8] ^= 1 << (arg % 8)
        signature = bytes(b)
    elif what == "r":
        assert isinstance(arg, bytes)
        signature = arg + signature[32:]
    elif what == "s":
        assert isinstance(arg, int)
        signature = signature[:32] + arg.to_bytes(32, "little")
    elif what == "s+kL":
        assert isinstance(arg, int)
        s = int.from_bytes(signature[32:], "little") + arg * L
        if s < 2**256:
            signature = signature[:32] + s.to_bytes(32, "little")
    elif what == "identity r":
        signature = _identity_r_signature(seed, message)[1]
    elif what == "random":
        assert isinstance(arg, bytes)
        signature = arg
    else:
        message += b"!"
    verdicts = _verdicts(public or key.public_bytes, signature, message)
    assert verdicts["nacl"] == verdicts["cryptography"], verdicts
