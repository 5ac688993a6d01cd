"""The lookup kernels agree with a plain-Python set on arbitrary ids, boundaries included.

Marked ``kernels``: CI runs these again with NUMBA_DISABLE_JIT=1, so they stay small.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.card.keys import PublicKeyFile
from farecore.decide.revocation import RevocationTable, _kernels
from farecore.decide.revocation.format import filter_bits_for, index_bits_for

pytestmark = pytest.mark.kernels

U64 = 2**64 - 1
BOUNDARY = [0, 1, 2**32, 2**63 - 1, 2**63, 2**63 + 1, U64 - 1, U64]
uint64s = st.one_of(st.sampled_from(BOUNDARY), st.integers(0, U64))
# Clustered ids (dense runs, as sequential issuance makes) as well as scattered ones.
clustered = st.integers(0, 2**20).map(lambda x: 10_000_000_000 + x)
id_sets = st.sets(st.one_of(uint64s, clustered), max_size=300)


class Arrays:
    """The in-memory equivalent of a table's columns, built by the build kernels."""

    def __init__(self, ids: set[int]) -> None:
        self.ids = np.array(sorted(ids), dtype=np.uint64)
        n = len(ids)
        self.bits = index_bits_for(n)
        self.fbits = filter_bits_for(n)
        self.min_id = int(self.ids[0]) if n else 0
        self.max_id = int(self.ids[-1]) if n else 0
        self.shift = max(0, (self.max_id - self.min_id).bit_length() - self.bits)
        self.index = _kernels.build_index(
            self.ids, np.uint64(self.min_id), self.shift, 1 << self.bits
        )
        self.filt = np.zeros((1 << self.fbits) // 8, dtype=np.uint8)
        self.fshift = max(0, (self.max_id - self.min_id).bit_length() - self.fbits)
        _kernels.build_filter(self.ids, np.uint64(self.min_id), self.fshift, self.filt)

    def one(self, key: int) -> int:
        return int(
            _kernels.find_one(
                self.ids,
                self.index,
                np.uint64(self.min_id),
                np.uint64(self.max_id),
                self.shift,
                key,
            )
        )

    def many(self, keys: list[int]) -> tuple[int, list[int]]:
        out = np.empty(len(keys), dtype=np.int64)
        found = _kernels.find_many(
            self.ids,
            self.index,
            self.filt,
            np.uint64(self.min_id),
            np.uint64(self.max_id),
            self.shift,
            self.fshift,
            np.array(keys, dtype=np.uint64),
            out,
        )
        return int(found), [int(x) for x in out]


def oracle(ids: set[int], key: int) -> int:
    return sorted(ids).index(key) if key in ids else -1


@settings(max_examples=150, deadline=None)
@given(ids=id_sets, queries=st.lists(st.one_of(uint64s, clustered), max_size=50))
def test_single_and_batch_agree_with_a_set(ids: set[int], queries: list[int]) -> None:
    arrays = Arrays(ids)
    # Ask for every member too, so hits are checked as well as misses.
    keys = queries + sorted(ids) + BOUNDARY
    expected = [oracle(ids, k) for k in keys]
    assert [arrays.one(k) for k in keys] == expected
    found, positions = arrays.many(keys)
    assert positions == expected
    assert found == sum(1 for p in expected if p >= 0)


@settings(max_examples=60, deadline=None)
@given(ids=id_sets)
def test_verify_accepts_what_build_made(ids: set[int]) -> None:
    arrays = Arrays(ids)
    n = len(ids)
    known = np.zeros(256, dtype=np.uint8)
    known[1] = 1
    problem = _kernels.verify_body(
        arrays.ids,
        np.zeros(n, dtype=np.int64),
        np.ones(n, dtype=np.uint8),
        arrays.index,
        arrays.filt,
        np.uint64(arrays.min_id),
        np.uint64(arrays.max_id),
        arrays.shift,
        arrays.fshift,
        known,
    )
    assert tuple(problem) == (0, 0)


@pytest.mark.parametrize("ids", [[], [0], [U64], [0, U64], BOUNDARY, list(range(1000))])
def test_boundary_tables(ids: list[int]) -> None:
    arrays = Arrays(set(ids))
    for key in [*BOUNDARY, 2, 999, 1000]:
        assert arrays.one(key) == oracle(set(ids), key)
        assert arrays.many([key])[1] == [oracle(set(ids), key)]


def test_ids_never_go_through_float64() -> None:
    # 2^53 + 1 is the first integer float64 cannot hold; its neighbours must stay apart.
    ids = {2**53, 2**53 + 1, 2**63 + 1, U64}
    arrays = Arrays(ids)
    assert arrays.one(2**53 + 1) == 1
    assert arrays.one(2**53 + 2) == -1
    assert arrays.one(2**63) == -1
    assert arrays.many([2**53 + 1, 2**53 + 2, U64 - 1, U64])[1] == [1, -1, -1, 3]


@settings(max_examples=40, deadline=None)
@given(ids=id_sets, queries=st.lists(uint64s, max_size=30))
def test_table_lookup_agrees_with_a_set(
    ids: set[int],
    queries: list[int],
    signer: PublicKeyFile,
    writer: Callable[..., Any],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.frt"
        writer(path, ids, 1)
        table = RevocationTable.open(path, signer)
        keys = queries + sorted(ids) + BOUNDARY
        for key in keys:
            entry = table.lookup(key)
            assert (entry is not None) == (key in ids)
            if entry is not None:
                assert entry.card_id == key and entry.reason == 1
            assert table.find(key) == oracle(ids, key)
        positions = table.find_many(np.array(keys, dtype=np.uint64))
        assert [int(p) for p in positions] == [oracle(ids, k) for k in keys]
        assert table.lookup(-1) is None and table.lookup(2**64) is None
        del table
