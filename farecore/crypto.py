"""The two signature schemes of the Rongjun card, behind one small interface.

Ed25519 (RFC 8032) and ECDSA P-256 over SHA-256 with raw ``r ‖ s`` signatures. Both give
64-byte signatures. Verification returns None or raises :class:`BadSignature`; it never
returns a bool a caller could forget to check. Decoded public keys are cached, because
decoding a P-256 point costs as much as half a verification.

This module must never read the clock, the disk or the network.
"""

from __future__ import annotations

import enum
import functools
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from farecore.errors import BadSignature, MalformedInput

__all__ = [
    "SIGNATURE_LENGTH",
    "Algorithm",
    "PrivateKey",
    "PublicKey",
    "load_public_key",
    "set_ed25519_backend",
]

SIGNATURE_LENGTH = 64
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class Algorithm(enum.IntEnum):
    """Algorithm codes as they appear on the card (CARD-SPEC §4)."""

    ED25519 = 1
    P256 = 2

    @property
    def public_key_length(self) -> int:
        return 32 if self is Algorithm.ED25519 else 65

    @property
    def label(self) -> str:
        return "Ed25519" if self is Algorithm.ED25519 else "ECDSA-P256"

    @classmethod
    def from_label(cls, label: str) -> Algorithm:
        for alg in cls:
            if label.lower() in (alg.label.lower(), alg.name.lower()):
                return alg
        raise ValueError(f"unknown algorithm {label!r}: expected 'Ed25519' or 'ECDSA-P256'")


class PublicKey(Protocol):
    """A decoded public key that can check signatures."""

    algorithm: Algorithm
    raw: bytes

    def verify(self, signature: bytes, message: bytes) -> None:
        """Return None if ``signature`` is valid for ``message``; raise BadSignature otherwise."""
        ...


class _Ed25519Public:
    __slots__ = ("_key", "algorithm", "raw")

    def __init__(self, raw: bytes) -> None:
        self.algorithm = Algorithm.ED25519
        self.raw = raw
        try:
            self._key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise MalformedInput(f"not an Ed25519 public key: {exc}") from None

    def verify(self, signature: bytes, message: bytes) -> None:
        if len(signature) != SIGNATURE_LENGTH:
            raise BadSignature(f"signature is {len(signature)} bytes, expected 64")
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            raise BadSignature("Ed25519 signature does not verify") from None


class _NaclEd25519Public:
    """Ed25519 verification through libsodium (PyNaCl), about twice as fast here."""

    __slots__ = ("_key", "algorithm", "raw")

    def __init__(self, raw: bytes) -> None:
        import nacl.signing

        # Decode once with cryptography so both backends refuse the same bad points.
        _Ed25519Public(raw)
        self.algorithm = Algorithm.ED25519
        self.raw = raw
        self._key = nacl.signing.VerifyKey(raw)

    def verify(self, signature: bytes, message: bytes) -> None:
        import nacl.exceptions

        if len(signature) != SIGNATURE_LENGTH:
            raise BadSignature(f"signature is {len(signature)} bytes, expected 64")
        try:
            self._key.verify(message, signature)
        except nacl.exceptions.BadSignatureError:
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
        if len(signature) != SIGNATURE_LENGTH:
            raise BadSignature(f"signature is {len(signature)} bytes, expected 64")
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
            raise BadSignature("ECDSA signature component out of range")
        try:
            self._key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise BadSignature("ECDSA P-256 signature does not verify") from None


_ed25519_class: type[_Ed25519Public] | type[_NaclEd25519Public] = _Ed25519Public


def set_ed25519_backend(name: str) -> None:
    """Choose the Ed25519 verifier: ``"cryptography"`` (default) or ``"nacl"`` (PyNaCl)."""
    global _ed25519_class
    if name == "cryptography":
        _ed25519_class = _Ed25519Public
    elif name == "nacl":
        try:
            import nacl.signing  # noqa: F401
        except ImportError:
            raise ValueError(
                "the 'nacl' backend needs PyNaCl: pip install 'farecore[nacl]'"
            ) from None
        _ed25519_class = _NaclEd25519Public
    else:
        raise ValueError(f"unknown Ed25519 backend {name!r}: use 'cryptography' or 'nacl'")
    load_public_key.cache_clear()


@functools.lru_cache(maxsize=262_144)
def load_public_key(algorithm: Algorithm, raw: bytes) -> PublicKey:
    """Decode a public key once; later calls with the same bytes return the cached object.

    Raises MalformedInput if the bytes are not a key of that algorithm.
    """
    if algorithm == Algorithm.ED25519:
        if len(raw) != 32:
            raise MalformedInput("an Ed25519 public key must be 32 bytes")
        return _ed25519_class(raw)
    if algorithm == Algorithm.P256:
        return _P256Public(raw)
    raise MalformedInput(f"unknown algorithm code {int(algorithm)}")


class PrivateKey:
    """A signing key: an Ed25519 seed or a P-256 scalar, both 32 bytes.

    P-256 signing is deterministic (RFC 6979), so the same message always gives the same
    signature; that is what makes the golden vectors byte-exact.
    """

    __slots__ = ("_ed25519", "_key", "algorithm", "secret")

    def __init__(self, algorithm: Algorithm, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError("a private key is 32 bytes (Ed25519 seed or P-256 scalar)")
        self.algorithm = Algorithm(algorithm)
        self.secret = bytes(secret)
        self._key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
        # The Ed25519 key again, typed as such: ``sign`` tells the two kinds apart by
        # this attribute, not by an isinstance check against cryptography's abstract key
        # classes on every signature.
        self._ed25519: ed25519.Ed25519PrivateKey | None = None
        if self.algorithm == Algorithm.ED25519:
            self._key = self._ed25519 = ed25519.Ed25519PrivateKey.from_private_bytes(self.secret)
        else:
            scalar = int.from_bytes(self.secret, "big")
            if not 0 < scalar < _P256_ORDER:
                raise ValueError("P-256 private scalar out of range")
            self._key = ec.derive_private_key(scalar, ec.SECP256R1())

    @classmethod
    def generate(cls, algorithm: Algorithm) -> PrivateKey:
        if algorithm == Algorithm.ED25519:
            key = ed25519.Ed25519PrivateKey.generate()
            from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

            seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            return cls(algorithm, seed)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        return cls(algorithm, ec_key.private_numbers().private_value.to_bytes(32, "big"))

    @property
    def public_bytes(self) -> bytes:
        pub = self._key.public_key()
        if isinstance(pub, ed25519.Ed25519PublicKey):
            return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

    def public_key(self) -> PublicKey:
        return load_public_key(self.algorithm, self.public_bytes)

    def sign(self, message: bytes) -> bytes:
        """Return a 64-byte signature over ``message``."""
        if self._ed25519 is not None:
            return self._ed25519.sign(message)
        key = self._key
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        der = key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def __repr__(self) -> str:
        return f"PrivateKey({self.algorithm.label}, <secret>)"
