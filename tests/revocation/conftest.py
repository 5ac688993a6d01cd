"""Fixtures for the revocation tests: deterministic signer keys and a table factory."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import PublicKeyFile, SigningKey
from farecore.decide.revocation import TableSummary, build_table


def signing_key(label: str, key_id: int, role: str = "revocation") -> SigningKey:
    secret = hashlib.sha256(f"revocation-tests/{label}".encode()).digest()
    return SigningKey(role, key_id, PrivateKey(Algorithm.ED25519, secret))


SIGNER = signing_key("signer", 21)
IMPOSTOR_SAME_ID = signing_key("impostor", 21)
OTHER_ID = signing_key("other", 22)


def write_table(
    path: Path,
    ids: Iterable[int],
    generation: int,
    *,
    created_at: int = 1_790_000_000,
    key: SigningKey = SIGNER,
    reason: int = 1,
) -> TableSummary:
    id_list = list(ids)
    arr = np.array(id_list, dtype=np.uint64)
    times = np.arange(len(id_list), dtype=np.int64) + 1_700_000_000
    reasons = np.full(len(id_list), reason, dtype=np.uint8)
    return build_table(arr, times, reasons, key, generation, created_at, path)


@pytest.fixture(autouse=True)
def _quiet_uint64_wrap() -> Iterator[None]:
    # With NUMBA_DISABLE_JIT=1 the kernels run on numpy scalars, whose (intended)
    # uint64 wrap-around in the filter hash would otherwise warn.
    with np.errstate(over="ignore"):
        yield


@pytest.fixture(scope="session")
def signer() -> PublicKeyFile:
    return SIGNER.public()


@pytest.fixture(scope="session")
def keys() -> dict[str, SigningKey]:
    """The trusted signer, an impostor with the same key id, and a key with another id."""
    return {"signer": SIGNER, "impostor": IMPOSTOR_SAME_ID, "other": OTHER_ID}


@pytest.fixture(scope="session")
def writer() -> Callable[..., TableSummary]:
    """``writer(path, ids, generation, created_at=..., key=..., reason=...)``."""
    return write_table
