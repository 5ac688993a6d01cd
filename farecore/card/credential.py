"""The card credential: its byte layout, a strict parser, and the issuer's builder.

Layout (CARD-SPEC §4), big-endian::

    0  version:1   1 issuer_alg:1   2 issuer_key_id:4   6 card_id:8   14 category:1
    15 region:4    19 valid_from:4  23 valid_until:4    27 card_key_alg:1
    28 card_public_key:k (32 Ed25519, 65 P-256 or SM2)  28+k issuer_signature:64

Parsing checks shape only: ``parse_unverified`` never looks at the signature. Whether the
issuer really signed it is the validator's business, with a keyring.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.errors import MalformedCredential

__all__ = [
    "CREDENTIAL_SIGNING_TAG",
    "FORMAT_VERSION",
    "Credential",
    "CredentialFields",
    "build_credential",
    "parse_unverified",
]

FORMAT_VERSION = 1
CREDENTIAL_SIGNING_TAG = b"RJCARD/credential/v1"
_HEADER = struct.Struct(">BBIQBIIIB")  # 28 bytes up to the card public key
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF
# Every code of the spec (§4), whether or not this machine can verify it: a credential's
# shape never depends on an optional backend (docs/crypto-sm2.md). A dict, not
# ``Algorithm(code)``: every tap parses a credential, and the enum's call is slow.
_ALGORITHMS = {int(alg): alg for alg in Algorithm}
_KEY_LENGTHS = {alg: alg.public_key_length for alg in Algorithm}


def _algorithm(code: int) -> Algorithm:
    """``Algorithm(code)``, with its ValueError for anything that is not a code."""
    try:
        return _ALGORITHMS[code]
    except (KeyError, TypeError):
        return Algorithm(code)  # raises the enum's own error (or takes what it accepts)


@dataclass(frozen=True, slots=True)
class CredentialFields:
    """The issuer-chosen content of a credential, before it is signed."""

    issuer_algorithm: Algorithm
    issuer_key_id: int
    card_id: int
    category: int
    region: int
    valid_from: int
    valid_until: int
    card_key_algorithm: Algorithm
    card_public_key: bytes
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.version != FORMAT_VERSION:
            raise MalformedCredential(f"unknown credential version {self.version}")
        for name, value in (
            ("issuer_key_id", self.issuer_key_id),
            ("region", self.region),
            ("valid_from", self.valid_from),
            ("valid_until", self.valid_until),
        ):
            if not 0 <= value <= _U32_MAX:
                raise MalformedCredential(f"{name} {value} does not fit in a uint32")
        if not 0 < self.card_id <= _U64_MAX:
            raise MalformedCredential("card id must be a non-zero uint64")
        if not 0 <= self.category <= 0xFF:
            raise MalformedCredential(f"category {self.category} does not fit in a byte")
        if self.valid_until <= self.valid_from:
            raise MalformedCredential("valid_until must be greater than valid_from")
        try:
            object.__setattr__(self, "issuer_algorithm", _algorithm(self.issuer_algorithm))
            object.__setattr__(self, "card_key_algorithm", _algorithm(self.card_key_algorithm))
        except ValueError as exc:
            raise MalformedCredential(str(exc)) from None
        if len(self.card_public_key) != _KEY_LENGTHS[self.card_key_algorithm]:
            raise MalformedCredential(
                f"{self.card_key_algorithm.label} card key must be "
                f"{self.card_key_algorithm.public_key_length} bytes, got {len(self.card_public_key)}"
            )

    def to_signed_bytes(self) -> bytes:
        """The bytes the issuer signs (after the tag): everything up to the signature."""
        return (
            _HEADER.pack(
                self.version,
                self.issuer_algorithm,
                self.issuer_key_id,
                self.card_id,
                self.category,
                self.region,
                self.valid_from,
                self.valid_until,
                self.card_key_algorithm,
            )
            + self.card_public_key
        )


@dataclass(frozen=True, slots=True)
class Credential:
    """A parsed credential whose issuer signature has not necessarily been checked."""

    fields: CredentialFields
    issuer_signature: bytes
    raw: bytes

    @property
    def card_id(self) -> int:
        return self.fields.card_id

    @property
    def signed_message(self) -> bytes:
        """The exact message the issuer signature covers, tag included."""
        return CREDENTIAL_SIGNING_TAG + self.raw[:-64]


def parse_unverified(data: bytes) -> Credential:
    """Parse credential bytes strictly; raise MalformedCredential on any deviation.

    The issuer signature is *not* verified here. Results are cached by the exact bytes,
    because the same card taps again and again.
    """
    return _parse_cached(bytes(data))


@functools.lru_cache(maxsize=65_536)
def _parse_cached(data: bytes) -> Credential:
    if len(data) not in (124, 157):
        raise MalformedCredential(f"credential is {len(data)} bytes; expected 124 or 157")
    version, issuer_alg, key_id, card_id, category, region, vfrom, vuntil, card_alg = (
        _HEADER.unpack_from(data)
    )
    if version != FORMAT_VERSION:
        raise MalformedCredential(f"unknown credential version {version}")
    issuer = _ALGORITHMS.get(issuer_alg)
    if issuer is None:
        raise MalformedCredential(f"unknown issuer algorithm {issuer_alg}")
    card = _ALGORITHMS.get(card_alg)
    if card is None:
        raise MalformedCredential(f"unknown card key algorithm {card_alg}")
    k = _KEY_LENGTHS[card]
    if len(data) != 28 + k + 64:
        raise MalformedCredential(
            f"credential is {len(data)} bytes but a {card.label} card key needs {28 + k + 64}"
        )
    fields = CredentialFields(
        issuer, key_id, card_id, category, region, vfrom, vuntil, card, data[28 : 28 + k], version
    )
    return Credential(fields=fields, issuer_signature=data[28 + k :], raw=data)


def build_credential(fields: CredentialFields, issuer_key: PrivateKey) -> bytes:
    """The issuer's side: sign ``fields`` and return the credential bytes for the card."""
    if issuer_key.algorithm != fields.issuer_algorithm:
        raise ValueError(
            f"issuer key is {issuer_key.algorithm.label} but the credential names "
            f"{fields.issuer_algorithm.label}"
        )
    body = fields.to_signed_bytes()
    return body + issuer_key.sign(CREDENTIAL_SIGNING_TAG + body)
