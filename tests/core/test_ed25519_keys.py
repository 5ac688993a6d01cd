"""Ed25519 public keys farecore refuses although RFC 8032 decoding accepts them.

A key of small order makes one signature verify for every message: a card office that
signed such a key would have issued a card whose every challenge anyone can answer. A
y at or above p spells a point a second way, which would slip past a duplicate check.
"""

from __future__ import annotations

import pytest

from farecore.card.crypto import Algorithm, PrivateKey, load_public_key
from farecore.errors import MalformedInput

SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
]
NOT_CANONICAL = [
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1: the identity
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


@pytest.mark.parametrize("key", SMALL_ORDER + NOT_CANONICAL)
def test_a_small_order_or_second_spelling_key_is_refused(key: str) -> None:
    with pytest.raises(MalformedInput, match="not an Ed25519 public key"):
        load_public_key(Algorithm.ED25519, bytes.fromhex(key))


def test_an_ordinary_key_still_loads_and_verifies() -> None:
    key = PrivateKey(Algorithm.ED25519, bytes(range(32)))
    load_public_key(Algorithm.ED25519, key.public_bytes).verify(key.sign(b"m"), b"m")
