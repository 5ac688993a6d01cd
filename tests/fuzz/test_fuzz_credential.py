"""Fuzz the credential parser: MalformedCredential, or a credential that re-encodes to
exactly the bytes it came from."""

from __future__ import annotations

import pytest
from fuzz_support import attempt, fuzz_settings, mutated
from hypothesis import given
from hypothesis import strategies as st

from farecore.card.credential import parse_unverified
from farecore.card.crypto import Algorithm
from farecore.errors import MalformedCredential
from sim.issuer import Issuer, derive_key

pytestmark = pytest.mark.fuzz

ISSUER = Issuer.from_seed("fuzz-credential", key_id=31)
GENUINE = [
    ISSUER.credential(0xC0FFEE, derive_key("fuzz-credential", "card", alg)) for alg in Algorithm
]


def _check(data: bytes) -> None:
    cred = attempt(lambda: parse_unverified(data), MalformedCredential)
    if isinstance(cred, MalformedCredential):
        return
    f = cred.fields
    assert cred.raw == data
    assert f.to_signed_bytes() + cred.issuer_signature == data
    assert len(cred.issuer_signature) == 64
    assert f.card_id != 0 and f.valid_until > f.valid_from


@fuzz_settings()
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@fuzz_settings()
@given(st.sampled_from(GENUINE).flatmap(mutated))
def test_mutated_genuine_credentials(data: bytes) -> None:
    _check(data)


@fuzz_settings(0.5)
@given(st.sampled_from(GENUINE), st.integers(0, 27), st.integers(0, 255))
def test_every_header_byte_value(base: bytes, index: int, value: int) -> None:
    # The 28-byte header holds every field the parser judges: try each byte at each value.
    _check(base[:index] + bytes([value]) + base[index + 1 :])
