"""d·G: farecore's comb over a table of G's multiples and its ladder, against the plain
reference (``sm2_reference``), on random scalars and on the edges of the range.

Needs no backend: the public key of a secret is farecore's own arithmetic.
"""

from __future__ import annotations

import sm2_reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.card import sm2

N = sm2.N
EDGES = [1, 2, 3, 255, 256, 257, 0xFFFF, 1 << 128, (1 << 255) - 1, 1 << 255, N - 3, N - 2]


def _reference(d: int) -> tuple[int, int]:
    point = ref.mul(d, ref.G)
    assert point is not None
    return point


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=N - 2) | st.sampled_from(EDGES))
def test_comb_and_ladder_agree_with_the_reference(d: int) -> None:
    want = _reference(d)
    assert sm2._base_mul(d) == want
    assert sm2._ladder(d) == want


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=255), st.integers(min_value=0, max_value=31))
def test_every_table_row_and_digit(digit: int, row: int) -> None:
    d = (digit << (8 * row)) or 1
    if d >= N - 1:
        d = N - 2
    assert sm2._base_mul(d) == _reference(d)


def test_public_from_secret_is_the_same_before_and_after_the_switch_to_the_comb() -> None:
    secrets = [sm2.new_secret() for _ in range(sm2._LADDER_KEYS + 5)]
    got = [sm2.public_from_secret(s) for s in secrets]
    for secret, pub in zip(secrets[::7], got[::7], strict=True):
        x, y = _reference(int.from_bytes(secret, "big"))
        assert pub == b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")
    assert sm2._keys_made > sm2._LADDER_KEYS
