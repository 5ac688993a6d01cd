"""The golden vectors and the keys, keyring and policy they describe (for any test area).

A plain module with a unique name, so that test files can import it wherever they are;
`from conftest import …` would pick whichever conftest.py came first on sys.path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import IssuerKey, Keyring
from farecore.decide.validator import TerminalPolicy

VECTORS_PATH = Path(__file__).parent / "vectors" / "card-vectors.json"
# The superset with algorithm 3 (CARD-SPEC §4a): the same cases plus SM2 ones.
SM2_VECTORS_PATH = Path(__file__).parents[1] / "farecore" / "data" / "card-vectors-sm2.json"


def load_vectors() -> dict[str, Any]:
    return json.loads(VECTORS_PATH.read_text())


def load_sm2_vectors() -> dict[str, Any]:
    return json.loads(SM2_VECTORS_PATH.read_text())


def vector_private_key(entry: dict[str, Any]) -> PrivateKey:
    alg = Algorithm.from_label(entry["algorithm"])
    secret = (
        entry.get("ed25519_seed") or entry.get("sm2_private_scalar") or entry["p256_private_scalar"]
    )
    return PrivateKey(alg, bytes.fromhex(secret))


def vector_keyring(vectors: dict[str, Any]) -> Keyring:
    return Keyring(
        [
            IssuerKey(
                k["key_id"],
                Algorithm.from_label(k["algorithm"]),
                bytes.fromhex(k["public_key"]),
                label=k["label"],
            )
            for k in vectors["keyring"]
        ]
    )


def vector_policy(vectors: dict[str, Any]) -> TerminalPolicy:
    t = vectors["terminal"]
    return TerminalPolicy(
        t["terminal_id"], frozenset(t["accepted_regions"]), frozenset(t["accepted_categories"])
    )
