"""Fuzz the revocation delta (``.frd``) and its view over a base table.

``RevocationDelta.verify`` promises TableRejected for anything it does not serve, and to
serve exactly the bytes the trusted signer signed; ``RevocationView.over`` promises
TableRejected for a delta that does not fit its base. Mutating a real delta mostly breaks
the signature, so a second target signs what it draws with the trusted key, the way a
builder bug would: then the structure checks and the checks against the base meet
arbitrary columns. A view that is served must answer exactly as the base with the
delta's changes applied, by a plain dict.
"""

from __future__ import annotations

import hashlib
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fuzz_support import attempt, fuzz_settings, mutated
from hypothesis import event, given
from hypothesis import strategies as st

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import PublicKeyFile, SigningKey
from farecore.decide.revocation import (
    RevocationDelta,
    RevocationTable,
    RevocationView,
    build_delta,
    build_table,
)
from farecore.decide.revocation.delta import DeltaHeader
from farecore.errors import TableRejected

pytestmark = pytest.mark.fuzz

SIGNER = SigningKey(
    "revocation", 21, PrivateKey(Algorithm.ED25519, hashlib.sha256(b"fuzz-delta").digest())
)
TRUSTED: PublicKeyFile = SIGNER.public()
U64 = 2**64 - 1
BASE = {0: (10, 1), 5: (11, 2), 17: (12, 3), 2**40: (13, 4), 2**63: (14, 5), U64: (15, 6)}


def _columns(entries: dict[int, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = sorted(entries)
    return (
        np.array(ids, dtype=np.uint64),
        np.array([entries[i][0] for i in ids], dtype=np.int64),
        np.array([entries[i][1] for i in ids], dtype=np.uint8),
    )


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-delta-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def base(workdir: Path) -> RevocationTable:
    build_table(*_columns(BASE), SIGNER, 7, 1_790_000_000, workdir / "base.frt")
    return RevocationTable.open(workdir / "base.frt", TRUSTED)


@pytest.fixture(scope="module")
def genuine(workdir: Path, base: RevocationTable) -> bytes:
    current = {**BASE, 6: (20, 1), 17: (21, 6)}
    del current[2**40]
    build_delta(base, *_columns(current), SIGNER, 9, 1_790_000_100, workdir / "d.frd")
    return (workdir / "d.frd").read_bytes()


@fuzz_settings(2.0)
@given(draw=st.data())
def test_mutated_delta_is_rejected(genuine: bytes, draw: st.DataObject) -> None:
    data = draw.draw(mutated(genuine))
    opened = attempt(lambda: RevocationDelta.verify(data, TRUSTED), TableRejected)
    if isinstance(opened, RevocationDelta):
        assert data == genuine  # one signature and one hash pin every byte


_ids = st.one_of(st.sampled_from([*BASE, 1, 6, 18, U64 - 1]), st.integers(0, U64))


@st.composite
def signed_deltas(draw: st.DrawFn) -> tuple[bytes, int, int, bool, int, bool]:
    """The parts of a delta over ``BASE`` (body, added and removed counts, whether it names
    the genuine base, the base generation it names), and whether every part was built
    right (then it must open and fit the base). The test signs it with the trusted key."""
    right = True

    def choose(label: str) -> bool:
        nonlocal right
        built = draw(st.integers(0, 3), label=label) > 0  # mostly right, to go deep
        right &= built
        return built

    add = draw(st.lists(_ids, max_size=6), label="added")
    remove = draw(st.lists(st.sampled_from(sorted(BASE)) | _ids, max_size=4), label="removed")
    if choose("sorted unique"):
        add, remove = sorted(set(add)), sorted(set(remove) - set(add))
    if choose("removed held by the base"):
        remove = [r for r in remove if r in BASE]
    else:
        remove = sorted(set(remove) | {draw(st.integers(1, 4))})
    n = len(add)
    times = draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n))
    reasons = draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
    if not choose("times and reasons"):
        times = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n))
        reasons = draw(st.lists(st.integers(0, 255), min_size=n, max_size=n))
    body = (
        struct.pack(f"<{n}Q", *add)
        + struct.pack(f"<{n}q", *times)
        + struct.pack(f"<{len(remove)}Q", *remove)
        + bytes(reasons)
    )
    genuine_base = choose("the base's header hash")
    base_generation = 7 if choose("the base's generation") else draw(st.integers(0, 6))
    return body, n, len(remove), genuine_base, base_generation, right


def _sign(base: RevocationTable, parts: tuple[bytes, int, int, bool, int, bool]) -> bytes:
    body, n, m, genuine_base, base_generation, _ = parts
    header = DeltaHeader(
        signer_algorithm=int(SIGNER.algorithm),
        signer_key_id=SIGNER.key_id,
        generation=9,
        created_at=1,
        base_generation=base_generation,
        base_header_sha256=hashlib.sha256(base.header_bytes()).digest()
        if genuine_base
        else bytes(32),
        n_add=n,
        n_remove=m,
        body_size=len(body),
        body_sha256=hashlib.sha256(body).digest(),
    )
    return header.pack(SIGNER.sign(header.signed_bytes())) + body


@fuzz_settings(2.0)
@given(delta=signed_deltas())
def test_signed_deltas_are_served_only_when_sound(
    base: RevocationTable, delta: tuple[bytes, int, int, bool, int, bool]
) -> None:
    data, built_right = _sign(base, delta), delta[-1]
    opened = attempt(lambda: RevocationDelta.verify(data, TRUSTED), TableRejected)
    view: RevocationView | TableRejected
    if isinstance(opened, RevocationDelta):
        view = attempt(lambda: RevocationView.over(base, opened), TableRejected)
    else:
        view = opened
    event("served" if isinstance(view, RevocationView) else str(view).split(": ", 1)[-1][:24])
    if isinstance(view, TableRejected):
        assert not built_right, f"a delta built right was refused: {view}"
        return
    d = view.delta
    model = dict(BASE)
    for card in d.remove_ids.tolist():
        assert card in model and card not in d.add_ids.tolist()
        del model[card]
    for card, at, why in zip(
        d.add_ids.tolist(), d.add_revoked_at.tolist(), d.add_reasons.tolist(), strict=True
    ):
        assert at >= 0 and 1 <= why <= 6
        model[card] = (at, why)
    probes = sorted({*model, *BASE, 1, 2, 6, 18, U64 - 1})
    for card in probes:
        entry = view.lookup(card)
        assert (None if entry is None else (entry.revoked_at, entry.reason)) == model.get(card)
    assert view.count == len(model)
    found = view.revoked_at_many(np.array(probes, dtype=np.uint64)).tolist()
    assert found == [model[p][0] if p in model else -1 for p in probes]
