"""The signature schemes of the Rongjun card, behind one small interface.

Ed25519 (RFC 8032), ECDSA P-256 over SHA-256 with raw ``r ‖ s`` signatures, and SM2 with
SM3 (CARD-SPEC §4a, ``farecore.card.sm2``; its backend is the optional ``sm`` extra). All
give 64-byte signatures. Ed25519 runs on libsodium when the ``nacl`` extra is installed,
on OpenSSL otherwise; farecore refuses keys and R values of small order before either
runs, so the two accept exactly the same signatures. Each scheme is one entry of ``_SCHEMES`` (how to decode a public
key, make a signer from a 32-byte secret, and draw a new secret), so a new algorithm is
one class and one ``Algorithm`` member. Verification returns None or raises :class:`BadSignature`; it never
returns a bool a caller could forget to check. Decoded public keys are cached, because
decoding a P-256 point costs as much as half a verification.

This module must never read the clock, the disk or the network.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from farecore.card import sm2
from farecore.errors import BadSignature, MalformedInput

__all__ = [
    "SIGNATURE_LENGTH",
    "Algorithm",
    "PrivateKey",
    "PublicKey",
    "ed25519_backend",
    "load_public_key",
    "set_ed25519_backend",
]

SIGNATURE_LENGTH = 64
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class Algorithm(enum.IntEnum):
    """Algorithm codes as they appear on the card (CARD-SPEC §4)."""

    ED25519 = 1
    P256 = 2
    SM2_SM3 = 3

    @property
    def public_key_length(self) -> int:
        return _SCHEMES[self].public_key_length

    @property
    def label(self) -> str:
        return _SCHEMES[self].label

    @classmethod
    def from_label(cls, label: str) -> Algorithm:
        for alg in cls:
            if label.lower() in (alg.label.lower(), alg.name.lower()):
                return alg
        known = " or ".join(repr(alg.label) for alg in cls)
        raise ValueError(f"unknown algorithm {label!r}: expected {known}")


class PublicKey(Protocol):
    """A decoded public key that can check signatures."""

    algorithm: Algorithm
    raw: bytes

    def verify(self, signature: bytes, message: bytes) -> None:
        """Return None if ``signature`` is valid for ``message``; raise BadSignature otherwise."""
        ...


class _Signer(Protocol):
    """A scheme's private key: its public half and its signing function."""

    public_bytes: bytes

    def sign(self, message: bytes) -> bytes: ...


class _Scheme(Protocol):
    """One signature scheme: a new algorithm is one of these and one Algorithm member."""

    label: str
    public_key_length: int

    def public(self, raw: bytes) -> PublicKey:
        """Decode a public key; MalformedInput if ``raw`` is not one."""
        ...

    def signer(self, secret: bytes) -> _Signer:
        """The private key of a 32-byte secret; ValueError if it is out of range."""
        ...

    def new_secret(self) -> bytes: ...


def _check_length(signature: bytes) -> None:
    if len(signature) != SIGNATURE_LENGTH:
        raise BadSignature(f"signature is {len(signature)} bytes, expected 64")


def _check_ed25519_signature(signature: bytes) -> None:
    """What farecore refuses before either backend runs: a wrong length, and an R of
    small order (some y of ``_ED25519_SMALL_ORDER_R``, sign bit ignored). No genuine
    signer makes such an R (its nonce would have to be 0 mod L); OpenSSL accepts one
    that balances, libsodium refuses it, and the two must agree."""
    _check_length(signature)
    if int.from_bytes(signature[:32], "little") & _Y_MASK in _ED25519_SMALL_ORDER_R:
        raise BadSignature("Ed25519 signature's R is a point of small order")


class _Ed25519Public:
    """Ed25519 verification through OpenSSL (cryptography)."""

    __slots__ = ("_key", "algorithm", "raw")

    def __init__(self, raw: bytes) -> None:
        self.algorithm = Algorithm.ED25519
        self.raw = raw
        try:
            self._key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise MalformedInput(f"not an Ed25519 public key: {exc}") from None

    def verify(self, signature: bytes, message: bytes) -> None:
        _check_ed25519_signature(signature)
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            raise BadSignature("Ed25519 signature does not verify") from None


class _NaclEd25519Public:
    """Ed25519 verification through libsodium (PyNaCl): about twice as fast as OpenSSL
    here. With farecore's checks on the key and on R, both accept exactly the same
    signatures (tests/core/test_ed25519_backends.py), so which one runs never changes a
    decision or a fen."""

    __slots__ = ("algorithm", "raw")

    def __init__(self, raw: bytes) -> None:
        self.algorithm = Algorithm.ED25519
        self.raw = raw

    def verify(self, signature: bytes, message: bytes) -> None:
        _check_ed25519_signature(signature)
        try:
            _nacl_open(signature + message, self.raw)
        except _NaclBadSignature:
            raise BadSignature("Ed25519 signature does not verify") from None


class _P256Public:
    __slots__ = ("_key", "algorithm", "raw")

    def __init__(self, raw: bytes) -> None:
        self.algorithm = Algorithm.P256
        self.raw = raw
        if len(raw) != 65 or raw[0] != 0x04:
            raise MalformedInput(
                "a P-256 public key must be 65 bytes, SEC1 uncompressed (04 ‖ X ‖ Y)"
            )
        try:
            self._key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError as exc:
            raise MalformedInput(f"not a P-256 point: {exc}") from None

    def verify(self, signature: bytes, message: bytes) -> None:
        _check_length(signature)
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
            raise BadSignature("ECDSA signature component out of range")
        try:
            self._key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise BadSignature("ECDSA P-256 signature does not verify") from None


class _Ed25519Signer:
    """Through OpenSSL. Ed25519 signatures are deterministic (RFC 8032): both signers
    give the same bytes for the same seed and message."""

    __slots__ = ("public_bytes", "sign")

    def __init__(self, secret: bytes) -> None:
        key = ed25519.Ed25519PrivateKey.from_private_bytes(secret)
        self.public_bytes = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.sign = key.sign


class _NaclEd25519Signer:
    """Through libsodium, about a third faster: a simulated card signs on every tap."""

    __slots__ = ("_expanded", "public_bytes")

    def __init__(self, secret: bytes) -> None:
        self.public_bytes, self._expanded = _nacl_seed_keypair(secret)

    def sign(self, message: bytes) -> bytes:
        return _nacl_sign(message, self._expanded)[:SIGNATURE_LENGTH]


class _P256Signer:
    __slots__ = ("_key", "public_bytes")

    def __init__(self, secret: bytes) -> None:
        scalar = int.from_bytes(secret, "big")
        if not 0 < scalar < _P256_ORDER:
            raise ValueError("P-256 private scalar out of range")
        self._key = ec.derive_private_key(scalar, ec.SECP256R1())
        self.public_bytes = self._key.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )

    def sign(self, message: bytes) -> bytes:
        # Deterministic (RFC 6979): the same message always gives the same signature,
        # which is what makes the golden vectors byte-exact.
        der = self._key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


_ED25519_P = (1 << 255) - 19
_Y_MASK = (1 << 255) - 1
# The y of every point of small order (1, 2, 4, 8): a key there makes one signature
# verify for every message, so anyone could answer a card's challenge. RFC 8032 decoding
# accepts them; farecore refuses them, and any y >= p (a second spelling of a point).
_ED25519_SMALL_ORDER_Y = frozenset(
    int.from_bytes(bytes.fromhex(h), "little") & ((1 << 255) - 1)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    )
)
# As libsodium's list for R: the same points, and y = p and p + 1 (0 and 1 spelt again).
_ED25519_SMALL_ORDER_R = _ED25519_SMALL_ORDER_Y | {_ED25519_P, _ED25519_P + 1}


class _Ed25519:
    label = "Ed25519"
    public_key_length = 32

    def public(self, raw: bytes) -> PublicKey:
        if len(raw) != 32:
            raise MalformedInput("an Ed25519 public key must be 32 bytes")
        y = int.from_bytes(raw, "little") & _Y_MASK
        if y >= _ED25519_P:
            raise MalformedInput("not an Ed25519 public key: not in canonical form")
        if y in _ED25519_SMALL_ORDER_Y:
            raise MalformedInput("not an Ed25519 public key: a point of small order")
        return _ed25519_class(raw)

    def signer(self, secret: bytes) -> _Signer:
        return _ed25519_signer(secret)

    def new_secret(self) -> bytes:
        key = ed25519.Ed25519PrivateKey.generate()
        return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


class _P256:
    label = "ECDSA-P256"
    public_key_length = 65

    def public(self, raw: bytes) -> PublicKey:
        return _P256Public(raw)

    def signer(self, secret: bytes) -> _Signer:
        return _P256Signer(secret)

    def new_secret(self) -> bytes:
        return (
            ec.generate_private_key(ec.SECP256R1())
            .private_numbers()
            .private_value.to_bytes(32, "big")
        )


class _SM2Public:
    """An SM2 public key: the point checked and Z computed once, here; the backend is
    asked only about in-range signatures (``farecore.card.sm2``)."""

    __slots__ = ("_xy", "_z", "algorithm", "raw")

    def __init__(self, raw: bytes) -> None:
        self.algorithm = Algorithm.SM2_SM3
        self.raw = raw
        self._xy = sm2.parse_public_key(raw)
        sm2.backend()  # a key that cannot be used must not load (docs/crypto-sm2.md)
        self._z = sm2.z_value(self._xy)

    def verify(self, signature: bytes, message: bytes) -> None:
        r, s = sm2.signature_scalars(signature)
        if not sm2.verify_digest(self._xy, sm2.message_digest(self._z, message), r, s):
            raise BadSignature("SM2 signature does not verify")


class _SM2Signer:
    __slots__ = ("_secret", "_z", "public_bytes")

    def __init__(self, secret: bytes) -> None:
        sm2.secret_scalar(secret)
        sm2.backend()
        self._secret = secret
        self.public_bytes = sm2.public_from_secret(secret)
        self._z = sm2.z_value(self.public_bytes[1:])

    def sign(self, message: bytes) -> bytes:
        # The backend draws a fresh random nonce for every signature.
        return sm2.sign_digest(self._secret, sm2.message_digest(self._z, message))


class _SM2:
    label = "SM2-SM3"
    public_key_length = 65

    def public(self, raw: bytes) -> PublicKey:
        return _SM2Public(raw)

    def signer(self, secret: bytes) -> _Signer:
        return _SM2Signer(secret)

    def new_secret(self) -> bytes:
        return sm2.new_secret()


_SCHEMES: dict[Algorithm, _Scheme] = {
    Algorithm.ED25519: _Ed25519(),
    Algorithm.P256: _P256(),
    Algorithm.SM2_SM3: _SM2(),
}

try:  # the optional ``nacl`` extra: libsodium, the faster of the two Ed25519 backends
    from nacl.bindings import crypto_sign as _nacl_sign
    from nacl.bindings import crypto_sign_open as _nacl_open
    from nacl.bindings import crypto_sign_seed_keypair as _nacl_seed_keypair
    from nacl.exceptions import BadSignatureError as _NaclBadSignature

    _HAVE_NACL = True
except ImportError:  # pragma: no cover - the CI installs the extra
    _HAVE_NACL = False

_ed25519_class: type[_Ed25519Public] | type[_NaclEd25519Public] = _Ed25519Public
_ed25519_signer: type[_Ed25519Signer] | type[_NaclEd25519Signer] = _Ed25519Signer


def ed25519_backend() -> str:
    """The Ed25519 backend in use: ``"nacl"`` (libsodium) or ``"cryptography"`` (OpenSSL)."""
    return "nacl" if _ed25519_class is _NaclEd25519Public else "cryptography"


def set_ed25519_backend(name: str) -> None:
    """Choose the Ed25519 backend for verifying and signing: ``"auto"`` (libsodium when
    PyNaCl is installed, the default), ``"nacl"`` or ``"cryptography"``. Both accept
    the same signatures and make the same ones; only the speed differs."""
    global _ed25519_class, _ed25519_signer
    if name == "auto":
        name = "nacl" if _HAVE_NACL else "cryptography"
    if name == "cryptography":
        _ed25519_class, _ed25519_signer = _Ed25519Public, _Ed25519Signer
    elif name == "nacl":
        if not _HAVE_NACL:
            raise ValueError("the 'nacl' backend needs PyNaCl: pip install 'farecore[nacl]'")
        _ed25519_class, _ed25519_signer = _NaclEd25519Public, _NaclEd25519Signer
    else:
        raise ValueError(f"unknown Ed25519 backend {name!r}: use 'auto', 'nacl' or 'cryptography'")
    load_public_key.cache_clear()


@functools.lru_cache(maxsize=262_144)
def load_public_key(algorithm: Algorithm, raw: bytes) -> PublicKey:
    """Decode a public key once; later calls with the same bytes return the cached object.

    Raises MalformedInput if the bytes are not a key of that algorithm.
    """
    scheme = _SCHEMES.get(algorithm)
    if scheme is None:
        raise MalformedInput(f"unknown algorithm code {int(algorithm)}")
    return scheme.public(raw)


class PrivateKey:
    """A signing key of one scheme, from its 32-byte secret (an Ed25519 seed, a P-256 or
    SM2 scalar). ``sign(message)`` returns a 64-byte signature."""

    __slots__ = ("algorithm", "public_bytes", "secret", "sign")

    def __init__(self, algorithm: Algorithm, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError("a private key is 32 bytes (Ed25519 seed, P-256 or SM2 scalar)")
        self.algorithm = Algorithm(algorithm)
        self.secret = bytes(secret)
        signer = _SCHEMES[self.algorithm].signer(self.secret)
        self.public_bytes: bytes = signer.public_bytes
        # The scheme's own bound function: a card signs on every tap, with no dispatch.
        self.sign: Callable[[bytes], bytes] = signer.sign

    @classmethod
    def generate(cls, algorithm: Algorithm) -> PrivateKey:
        return cls(algorithm, _SCHEMES[Algorithm(algorithm)].new_secret())

    def public_key(self) -> PublicKey:
        return load_public_key(self.algorithm, self.public_bytes)

    def __repr__(self) -> str:
        return f"PrivateKey({self.algorithm.label}, <secret>)"


set_ed25519_backend("auto")
