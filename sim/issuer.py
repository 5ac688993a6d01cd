"""A card issuer for tests and the simulator: deterministic keys and personalised cards.

Everything is derived from a seed, so a simulator run or a test is reproducible down to
the bytes. Real issuance happens elsewhere; this mirrors its output, not its process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TypedDict, Unpack

from farecore.card import sm2
from farecore.card.credential import CredentialFields, build_credential
from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import IssuerKey, Keyring, SigningKey
from sim.card import CardFaults, VirtualCard

__all__ = ["QINGDAO", "CredentialOptions", "Issuer", "derive_key", "scalar_in_range"]

QINGDAO = 370200
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def scalar_in_range(algorithm: Algorithm, secret: bytes) -> bool:
    """Whether a 32-byte ``secret`` is a valid private key of ``algorithm``: any 32 bytes
    for Ed25519 (a seed), 1 ≤ d ≤ n−1 for P-256, 1 ≤ d ≤ n−2 for SM2 (1 + d must be
    invertible mod n)."""
    d = int.from_bytes(secret, "big")
    if algorithm == Algorithm.P256:
        return 0 < d < _P256_ORDER
    if algorithm == Algorithm.SM2_SM3:
        return 0 < d < sm2.N - 1
    return True


def derive_key(
    seed: bytes | str, label: str, algorithm: Algorithm = Algorithm.ED25519
) -> PrivateKey:
    """A private key derived from ``seed`` and ``label`` (never use this for real keys).
    A scalar out of its curve's range is skipped for the next counter's."""
    if isinstance(seed, str):
        seed = seed.encode()
    for counter in range(256):
        secret = hashlib.sha256(seed + b"/" + label.encode() + bytes([counter])).digest()
        if scalar_in_range(algorithm, secret):
            return PrivateKey(algorithm, secret)
    raise AssertionError("no scalar in range in 256 tries")  # probability about 2^-8000


class CredentialOptions(TypedDict, total=False):
    """The keyword options of :meth:`Issuer.credential`, for callers that pass them on."""

    category: int
    region: int | None
    valid_from: int | None
    valid_until: int | None
    signer: SigningKey | None


@dataclass
class Issuer:
    """An issuer key with its id, and the defaults of the cards it personalises."""

    key: SigningKey
    region: int = QINGDAO
    valid_from: int = 1_764_547_200  # 2025-12-01
    valid_until: int = 1_922_313_600  # 2030-12-01

    @classmethod
    def from_seed(
        cls, seed: bytes | str, key_id: int = 1, algorithm: Algorithm = Algorithm.ED25519
    ) -> Issuer:
        return cls(SigningKey("issuer", key_id, derive_key(seed, f"issuer-{key_id}", algorithm)))

    def keyring_entry(self) -> IssuerKey:
        return IssuerKey(self.key.key_id, self.key.algorithm, self.key.private.public_bytes)

    def keyring(self) -> Keyring:
        return Keyring([self.keyring_entry()])

    def credential(
        self,
        card_id: int,
        card_key: PrivateKey,
        *,
        category: int = 1,
        region: int | None = None,
        valid_from: int | None = None,
        valid_until: int | None = None,
        signer: SigningKey | None = None,
    ) -> bytes:
        signer = signer or self.key
        fields = CredentialFields(
            issuer_algorithm=signer.algorithm,
            issuer_key_id=signer.key_id,
            card_id=card_id,
            category=category,
            region=self.region if region is None else region,
            valid_from=self.valid_from if valid_from is None else valid_from,
            valid_until=self.valid_until if valid_until is None else valid_until,
            card_key_algorithm=card_key.algorithm,
            card_public_key=card_key.public_bytes,
        )
        return build_credential(fields, signer.private)

    def card(
        self,
        card_id: int,
        *,
        seed: bytes | str = b"cards",
        card_algorithm: Algorithm = Algorithm.ED25519,
        faults: CardFaults | None = None,
        counter: int = 0,
        **credential_options: Unpack[CredentialOptions],
    ) -> VirtualCard:
        """A personalised virtual card whose key derives from ``seed`` and ``card_id``."""
        card_key = derive_key(seed, f"card-{card_id}", card_algorithm)
        cred = self.credential(card_id, card_key, **credential_options)
        return VirtualCard(cred, card_key, counter=counter, faults=faults)
