"""Fuzz the issuer's list of issued credentials and the text file it is built from.

``IssuedList.from_bytes`` promises IssuedListError for anything it does not hold, and to
hold exactly the bytes the issuer signed. A second target signs what it generates with
the issuer's key (as an issuer's own bug would), so the checks after the signature meet
arbitrary counts, padding and bodies. ``read_credential_lines`` promises MalformedInput.
"""

from __future__ import annotations

import hashlib
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz_support import attempt, fuzz_settings, mutated
from hypothesis import given
from hypothesis import strategies as st

from farecore.decide.issued import (
    HEADER_SIZE,
    LIST_SIGNING_TAG,
    MAGIC,
    IssuedList,
    IssuedListError,
    build_issued_list,
    peek_generation,
    read_credential_lines,
)
from farecore.errors import MalformedInput
from sim.issuer import Issuer, derive_key

pytestmark = pytest.mark.fuzz

ISSUER = Issuer.from_seed("fuzz-issued", key_id=12)
OTHER = Issuer.from_seed("fuzz-issued/other", key_id=13)
KEYRING = ISSUER.keyring().add(OTHER.keyring_entry())
CREDENTIALS = [ISSUER.credential(i, derive_key("fuzz-issued", f"card-{i}")) for i in (1, 2, 3)]
GENUINE = build_issued_list(
    [(f"card {i}", c) for i, c in enumerate(CREDENTIALS)], ISSUER.key, generation=4, created_at=5
)
_SIGNED = struct.Struct("<8sHHB3xI4xQQQ32s48x")


def _check(data: bytes, genuine: bytes | None = GENUINE) -> None:
    peek_generation(data)  # unverified, but it never raises either
    listed = attempt(lambda: IssuedList.from_bytes(data, KEYRING), IssuedListError)
    if isinstance(listed, IssuedListError):
        return
    if genuine is not None:
        assert data == genuine  # one signature and one hash pin every byte
    digests = list(listed.digests())
    assert digests == sorted(set(digests)) and len(digests) == listed.count
    assert all(d in listed for d in digests)


@fuzz_settings()
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@fuzz_settings(2.0)
@given(mutated(GENUINE))
def test_mutated_list(data: bytes) -> None:
    _check(data)


@st.composite
def signed_lists(draw: st.DrawFn) -> bytes:
    """Any header fields and body, signed by the issuer whose key id it names."""
    signer = draw(st.sampled_from([ISSUER, OTHER]))
    body = draw(
        st.sampled_from([b"".join(sorted(hashlib.sha256(c).digest() for c in CREDENTIALS))])
        | st.binary(max_size=100)
        | st.lists(st.binary(min_size=32, max_size=32), max_size=4).map(b"".join)
    )
    count = draw(st.sampled_from([len(body) // 32]) | st.integers(0, 2**64 - 1))
    signed = _SIGNED.pack(
        draw(st.sampled_from([MAGIC, b"FCISSUEX"])),
        draw(st.sampled_from([1, 2])),
        draw(st.sampled_from([HEADER_SIZE, 128])),
        draw(st.sampled_from([int(signer.key.algorithm), 2, 0])),
        signer.key.key_id,
        draw(st.integers(0, 2**64 - 1)),
        draw(st.integers(0, 2**64 - 1)),
        count,
        draw(st.sampled_from([hashlib.sha256(body).digest(), bytes(32)])),
    )
    padding = draw(st.sampled_from([bytes(HEADER_SIZE - 192), b"\x01" * (HEADER_SIZE - 192)]))
    return signed + signer.key.sign(LIST_SIGNING_TAG + signed) + padding + body


@fuzz_settings(2.0)
@given(signed_lists())
def test_signed_lists_are_held_only_when_sound(data: bytes) -> None:
    _check(data, genuine=None)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-issued-") as tmp:
        yield Path(tmp)


@fuzz_settings()
@given(
    text=st.one_of(
        mutated(b"# issued\n" + b"\n".join(c.hex().encode() for c in CREDENTIALS) + b"\n\n"),
        st.binary(max_size=200),
    )
)
def test_credential_lines(workdir: Path, text: bytes) -> None:
    path = workdir / "issued.txt"
    path.write_bytes(text)
    lines = attempt(lambda: list(read_credential_lines(path)), MalformedInput)
    if not isinstance(lines, MalformedInput):
        for where, raw in lines:
            assert where.startswith(f"{path}:") and isinstance(raw, bytes)
