"""A publisher's files for the package tests: keys, keyring, tables, made deterministically."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from farecore.card.keys import IssuerKey, Keyring, PublicKeyFile, SigningKey, save_signing_key
from farecore.decide.revocation import build_table
from sim.issuer import Issuer, derive_key

REGION = 370200


@dataclass
class Publisher:
    """Everything a card office and a publisher hold, in ``root``."""

    root: Path
    issuer: Issuer
    revocation: SigningKey
    revocation_pub: Path
    publishing: SigningKey
    publishing_key: Path
    keyring: Path
    out: Path

    @classmethod
    def make(cls, root: Path, seed: str = "fleet") -> Publisher:
        root.mkdir(parents=True, exist_ok=True)
        issuer = Issuer.from_seed(seed)
        revocation = SigningKey("revocation", 77, derive_key(seed, "revocation"))
        _, rpub = save_signing_key(revocation, root / "revocation")
        publishing = SigningKey("publishing", 501, derive_key(seed, "publishing"))
        pkey, _ = save_signing_key(publishing, root / "publisher")
        ring = Keyring([issuer.keyring_entry()], [_entry(publishing)])
        ring.save(root / "keyring.json")
        return cls(
            root, issuer, revocation, rpub, publishing, pkey, root / "keyring.json", root / "pkg"
        )

    def table(self, generation: int, revoked: list[int], created_at: int | None = None) -> Path:
        out = self.root / f"table-{generation}.frt"
        build_table(
            revoked,
            [1_790_000_000] * len(revoked),
            [1] * len(revoked),
            self.revocation,
            generation,
            int(time.time()) if created_at is None else created_at,
            out,
        )
        return out

    def signer(self) -> PublicKeyFile:
        return self.revocation.public()


def _entry(key: SigningKey) -> IssuerKey:
    return IssuerKey(key.key_id, key.algorithm, key.private.public_bytes)


def publishing_entry(key: SigningKey) -> IssuerKey:
    return _entry(key)
