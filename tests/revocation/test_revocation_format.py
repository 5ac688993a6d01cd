"""Opening a table verifies every byte: each kind of damage is refused with a clear reason."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.card.keys import PublicKeyFile, SigningKey
from farecore.decide.revocation import RevocationTable
from farecore.decide.revocation.format import (
    HEADER_SIZE,
    SIGNED_SIZE,
    Header,
    layout_for,
    parse_header_unverified,
)
from farecore.errors import TableRejected

IDS = [5, 17, 2**40, 2**63, 2**64 - 1]


@pytest.fixture
def table_bytes(tmp_path: Path, writer: Callable[..., Any]) -> bytes:
    path = tmp_path / "good.frt"
    writer(path, IDS, 7, created_at=1_790_000_123)
    return path.read_bytes()


def open_bytes(tmp: Path, data: bytes, signer: PublicKeyFile) -> RevocationTable:
    path = tmp / "candidate.frt"
    path.write_bytes(data)
    return RevocationTable.open(path, signer)


def test_round_trip(tmp_path: Path, table_bytes: bytes, signer: PublicKeyFile) -> None:
    table = open_bytes(tmp_path, table_bytes, signer)
    assert (table.generation, table.created_at, table.count) == (7, 1_790_000_123, 5)
    assert table.signer_key_id == 21
    assert table.body_sha256 == hashlib.sha256(table_bytes[HEADER_SIZE:]).hexdigest()
    assert [int(x) for x in table.ids] == IDS
    entry = table.lookup(2**63)
    assert entry is not None and entry.revoked_at == 1_700_000_003 and entry.reason == 1
    assert table.lookup(6) is None


def test_columns_are_mapped_not_copied(
    tmp_path: Path, table_bytes: bytes, signer: PublicKeyFile
) -> None:
    table = open_bytes(tmp_path, table_bytes, signer)
    assert not table.ids.flags.writeable and not table.ids.flags.owndata
    assert table.ids.base is not None


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("tampered body", lambda b: b[:-1] + bytes([b[-1] ^ 1]), "body SHA-256"),
        ("tampered id", lambda b: b[:HEADER_SIZE] + b"\x01" + b[HEADER_SIZE + 1 :], "body SHA-256"),
        ("tampered header", lambda b: b[:24] + bytes([b[24] ^ 1]) + b[25:], "signature"),
        ("tampered signature", lambda b: b[:130] + bytes([b[130] ^ 1]) + b[131:], "signature"),
        ("truncated", lambda b: b[:-3], "truncated"),
        ("truncated header", lambda b: b[:100], "truncated"),
        ("zero-length", lambda b: b"", "empty file"),
        ("trailing bytes", lambda b: b + b"\x00", "unexpected bytes"),
        ("wrong magic", lambda b: b"XXXXXXXX" + b[8:], "not a farecore revocation table"),
        ("reserved byte", lambda b: b[:200] + b"\x01" + b[201:], "reserved"),
    ],
)
def test_damage_is_refused(
    tmp_path: Path,
    table_bytes: bytes,
    signer: PublicKeyFile,
    name: str,
    damage: Callable[[bytes], bytes],
    message: str,
) -> None:
    with pytest.raises(TableRejected, match=message):
        open_bytes(tmp_path, damage(table_bytes), signer)


def test_wrong_signer_is_refused(
    tmp_path: Path, writer: Callable[..., Any], keys: dict[str, SigningKey], signer: PublicKeyFile
) -> None:
    writer(tmp_path / "impostor.frt", IDS, 3, key=keys["impostor"])
    with pytest.raises(TableRejected, match="signature does not verify"):
        RevocationTable.open(tmp_path / "impostor.frt", signer)
    writer(tmp_path / "other.frt", IDS, 3, key=keys["other"])
    with pytest.raises(TableRejected, match="key id 22"):
        RevocationTable.open(tmp_path / "other.frt", signer)
    issuer_role = PublicKeyFile("issuer", 21, signer.algorithm, signer.public_key)
    with pytest.raises(TableRejected, match="role"):
        RevocationTable.open(tmp_path / "other.frt", issuer_role)


def test_missing_file_is_refused(tmp_path: Path, signer: PublicKeyFile) -> None:
    with pytest.raises(TableRejected, match="cannot open"):
        RevocationTable.open(tmp_path / "absent.frt", signer)


def _resign(data: bytes, body: bytes, key: SigningKey, **changes: Any) -> bytes:
    header, _ = parse_header_unverified(data)
    fields = {f: getattr(header, f) for f in Header.__slots__}  # type: ignore[attr-defined]
    fields.update(changes)
    fields["body_sha256"] = hashlib.sha256(body).digest()
    new = Header(**fields)
    return new.pack(key.sign(new.signed_bytes())) + body


def test_signed_but_unsorted_body_is_refused(
    tmp_path: Path, table_bytes: bytes, signer: PublicKeyFile, keys: dict[str, SigningKey]
) -> None:
    # A builder bug signed by the real key: the structure check still catches it.
    header, _ = parse_header_unverified(table_bytes)
    layout = layout_for(header.count, header.index_bits, header.filter_bits)
    body = bytearray(table_bytes[HEADER_SIZE:])
    ids = np.frombuffer(body, dtype="<u8", count=5, offset=layout.ids - HEADER_SIZE).copy()
    ids[[1, 2]] = ids[[2, 1]]
    body[layout.ids - HEADER_SIZE : layout.ids - HEADER_SIZE + 40] = ids.tobytes()
    with pytest.raises(TableRejected, match="not sorted"):
        open_bytes(tmp_path, _resign(table_bytes, bytes(body), keys["signer"]), signer)
    reasons = bytearray(table_bytes[HEADER_SIZE:])
    reasons[layout.reasons - HEADER_SIZE] = 99
    with pytest.raises(TableRejected, match="unknown reason"):
        open_bytes(tmp_path, _resign(table_bytes, bytes(reasons), keys["signer"]), signer)
    filt = bytearray(table_bytes[HEADER_SIZE:])
    start = layout.filter - HEADER_SIZE
    filt[start : start + layout.filter_bytes] = bytes(layout.filter_bytes)
    with pytest.raises(TableRejected, match="filter"):
        open_bytes(tmp_path, _resign(table_bytes, bytes(filt), keys["signer"]), signer)
    with pytest.raises(TableRejected, match="min/max"):
        open_bytes(
            tmp_path,
            _resign(table_bytes, table_bytes[HEADER_SIZE:], keys["signer"], min_id=4),
            signer,
        )


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_every_single_byte_change_is_refused(
    position: int, flip: int, signer: PublicKeyFile, writer: Callable[..., Any]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.frt"
        writer(path, IDS, 7)
        data = bytearray(path.read_bytes())
        data[position % len(data)] ^= flip
        path.write_bytes(bytes(data))
        with pytest.raises(TableRejected):
            RevocationTable.open(path, signer)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600))
def test_random_bytes_never_crash(data: bytes, signer: PublicKeyFile) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.frt"
        path.write_bytes(data)
        with pytest.raises(TableRejected):
            RevocationTable.open(path, signer)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE))
def test_header_parser_only_raises_table_rejected(data: bytes) -> None:
    # Random headers mostly fail on the magic; give them the right one too.
    for candidate in (data, b"FCREVTBL\x01\x00\x00\x01" + data[16:]):
        try:
            header, signature = parse_header_unverified(candidate)
        except TableRejected:
            continue
        assert len(signature) == 64 and header.signed_bytes() == candidate[:SIGNED_SIZE]


def test_file_is_page_aligned_columns(table_bytes: bytes) -> None:
    header, _ = parse_header_unverified(table_bytes)
    layout = layout_for(header.count, header.index_bits, header.filter_bits)
    for offset in (layout.ids, layout.revoked_at, layout.index, layout.filter, layout.reasons):
        assert offset % 64 == 0
    assert layout.end == len(table_bytes)
