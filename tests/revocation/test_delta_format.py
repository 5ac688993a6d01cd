"""Revocation deltas: the builder's diff, the view's answers, and every damage refused.

A delta is checked on its own (signature, sizes, body hash, sorted ids, known reasons)
and against its base (generation, the SHA-256 of the base's signed header, every removed
id held by the base). A view of a delta over its base answers exactly as a table of the
current list would; hypothesis holds both to a plain Python dict.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.card.keys import PublicKeyFile, SigningKey
from farecore.decide.revocation import (
    RevocationDelta,
    RevocationTable,
    RevocationView,
    build_delta,
    build_table,
)
from farecore.decide.revocation.delta import (
    DELTA_HEADER_SIZE,
    DELTA_SIGNED_SIZE,
    MAX_DELTA_ENTRIES,
    DeltaHeader,
    delta_size,
    parse_delta_header_unverified,
)
from farecore.errors import BuildError, KeyFileError, TableRejected

U64 = 2**64 - 1
BASE = {5: (100, 1), 17: (200, 2), 2**40: (300, 3), 2**63: (400, 4), U64: (500, 5)}
# 17 changes reason (an upsert), 2**40 is no longer revoked, 6 and 0 are new.
CURRENT = {5: (100, 1), 17: (200, 6), 2**63: (400, 4), U64: (500, 5), 6: (600, 1), 0: (7, 2)}


def columns(entries: dict[int, tuple[int, int]]) -> tuple[Any, Any, Any]:
    ids = sorted(entries)
    return (
        np.array(ids, dtype=np.uint64),
        np.array([entries[i][0] for i in ids], dtype=np.int64),
        np.array([entries[i][1] for i in ids], dtype=np.uint8),
    )


def base_table(
    path: Path, entries: dict[int, tuple[int, int]], key: SigningKey, gen: int = 5
) -> Any:
    build_table(*columns(entries), key, gen, 1_790_000_000, path)
    return RevocationTable.open(path, key.public())


@pytest.fixture
def pair(tmp_path: Path, keys: dict[str, SigningKey]) -> tuple[RevocationTable, Path]:
    base = base_table(tmp_path / "base.frt", BASE, keys["signer"])
    out = tmp_path / "d.frd"
    build_delta(base, *columns(CURRENT), keys["signer"], 9, 1_790_000_500, out)
    return base, out


def as_dict(
    view: RevocationView | RevocationTable, probes: list[int]
) -> dict[int, tuple[int, int]]:
    got = {}
    for card in probes:
        entry = view.lookup(card)
        if entry is not None:
            assert entry.card_id == card
            got[card] = (entry.revoked_at, entry.reason)
    return got


def test_round_trip_and_upsert(pair: tuple[RevocationTable, Path], signer: PublicKeyFile) -> None:
    base, path = pair
    delta = RevocationDelta.open(path, signer)
    assert (delta.generation, delta.base_generation, delta.created_at) == (9, 5, 1_790_000_500)
    assert [int(x) for x in delta.add_ids] == [0, 6, 17]
    assert [int(x) for x in delta.remove_ids] == [2**40]
    assert path.stat().st_size == delta_size(3, 1) == DELTA_HEADER_SIZE + 3 * 17 + 8
    view = RevocationView.over(base, delta)
    probes = sorted({*BASE, *CURRENT, 1, 4, 18, U64 - 1})
    assert as_dict(view, probes) == CURRENT
    assert as_dict(base, probes) == BASE  # the base is untouched
    assert view.count == len(CURRENT) and (view.generation, view.created_at) == (9, 1_790_000_500)
    keys = np.array(probes, dtype=np.uint64)
    times = view.revoked_at_many(keys).tolist()
    assert times == [CURRENT[p][0] if p in CURRENT else -1 for p in probes]
    found = view.find_many(keys)
    assert [view.revoked_at[int(f)] if f >= 0 else -1 for f in found] == times
    assert [view.reasons[int(f)] for f in found if f >= 0] == [
        CURRENT[p][1] for p in probes if p in CURRENT
    ]
    assert view.describe()["count"] == len(CURRENT)


def test_no_change_is_an_empty_delta(tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    base = base_table(tmp_path / "base.frt", BASE, keys["signer"])
    summary = build_delta(base, *columns(BASE), keys["signer"], 6, 1, tmp_path / "d.frd")
    assert (summary.added, summary.changed, summary.removed) == (0, 0, 0)
    assert summary.file_size == DELTA_HEADER_SIZE
    view = RevocationView.over(
        base, RevocationDelta.open(tmp_path / "d.frd", keys["signer"].public())
    )
    assert as_dict(view, sorted(BASE)) == BASE and view.count == len(BASE)


@settings(max_examples=60, deadline=None)
@given(
    base=st.dictionaries(
        st.integers(0, 300), st.tuples(st.integers(0, 3), st.integers(1, 6)), max_size=40
    ),
    current=st.dictionaries(
        st.integers(0, 300), st.tuples(st.integers(0, 3), st.integers(1, 6)), max_size=40
    ),
)
def test_a_view_answers_as_the_current_list(
    base: dict[int, tuple[int, int]],
    current: dict[int, tuple[int, int]],
    keys: dict[str, SigningKey],
) -> None:
    key = keys["signer"]
    with tempfile.TemporaryDirectory() as tmp:
        table = base_table(Path(tmp) / "b.frt", base, key)
        summary = build_delta(table, *columns(current), key, 6, 1, Path(tmp) / "d.frd")
        assert summary.removed == len(set(base) - set(current))
        assert summary.added == len(set(current) - set(base))
        view = RevocationView.over(table, RevocationDelta.open(Path(tmp) / "d.frd", key.public()))
        probes = list(range(0, 302))
        assert as_dict(view, probes) == current and view.count == len(current)
        found = view.revoked_at_many(np.array(probes, dtype=np.uint64)).tolist()
        assert found == [current[p][0] if p in current else -1 for p in probes]


def test_builder_refusals(tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    base = base_table(tmp_path / "base.frt", BASE, keys["signer"])
    out = tmp_path / "d.frd"
    with pytest.raises(BuildError, match="not above the base's generation 5"):
        build_delta(base, *columns(CURRENT), keys["signer"], 5, 1, out)
    with pytest.raises(KeyFileError, match="key id 21"):
        build_delta(base, *columns(CURRENT), keys["other"], 9, 1, out)
    ids, times, reasons = columns(CURRENT)
    with pytest.raises(BuildError, match="duplicate"):
        build_delta(base, np.append(ids, ids[:1]), np.append(times, 1), np.append(reasons, 1),
                    keys["signer"], 9, 1, out)  # fmt: skip
    with pytest.raises(BuildError, match="unknown reason"):
        build_delta(
            base, ids, times, np.full(ids.size, 9, dtype=np.uint8), keys["signer"], 9, 1, out
        )
    assert not out.exists()


def test_too_many_changes_is_a_new_base(tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    base = base_table(tmp_path / "base.frt", {}, keys["signer"])
    n = MAX_DELTA_ENTRIES + 1
    ids = np.arange(1, n + 1, dtype=np.uint64)
    with pytest.raises(BuildError, match="build a new base table instead"):
        build_delta(base, ids, np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.uint8),
                    keys["signer"], 6, 1, tmp_path / "d.frd")  # fmt: skip
    assert not (tmp_path / "d.frd").exists()


def _signed(
    key: SigningKey,
    base: RevocationTable,
    add: list[tuple[int, int, int]],
    remove: list[int],
    **fields: Any,
) -> bytes:
    """A delta signed by ``key`` holding exactly these columns (as a buggy builder might)."""
    body = (
        struct.pack(f"<{len(add)}Q", *[a[0] for a in add])
        + struct.pack(f"<{len(add)}q", *[a[1] for a in add])
        + struct.pack(f"<{len(remove)}Q", *remove)
        + bytes(a[2] for a in add)
    )
    values: dict[str, Any] = {
        "signer_algorithm": int(key.algorithm),
        "signer_key_id": key.key_id,
        "generation": 9,
        "created_at": 1,
        "base_generation": base.generation,
        "base_header_sha256": hashlib.sha256(base.header_bytes()).digest(),
        "n_add": len(add),
        "n_remove": len(remove),
        "body_size": len(body),
        "body_sha256": hashlib.sha256(body).digest(),
    }
    values.update(fields)
    header = DeltaHeader(**values)
    return header.pack(key.sign(header.signed_bytes())) + body


@pytest.mark.parametrize(
    ("add", "remove", "says"),
    [
        ([(6, 1, 1), (6, 1, 1)], [], "added ids are not sorted and unique"),
        ([(7, 1, 1), (6, 1, 1)], [], "added ids are not sorted and unique"),
        ([], [17, 5], "removed ids are not sorted and unique"),
        ([(6, -1, 1)], [], "negative revoked-at"),
        ([(6, 1, 0)], [], "unknown reason code"),
        ([(6, 1, 7)], [], "unknown reason code"),
        ([(5, 1, 1)], [5], "both added and removed"),
    ],
)
def test_a_signed_but_unsound_body_is_refused(
    tmp_path: Path, keys: dict[str, SigningKey], add: Any, remove: list[int], says: str
) -> None:
    base = base_table(tmp_path / "base.frt", BASE, keys["signer"])
    with pytest.raises(TableRejected, match=says):
        RevocationDelta.verify(_signed(keys["signer"], base, add, remove), keys["signer"].public())


def test_a_delta_must_fit_its_base_exactly(tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    key, pub = keys["signer"], keys["signer"].public()
    base = base_table(tmp_path / "base.frt", BASE, key)
    good = RevocationDelta.verify(_signed(key, base, [(6, 1, 1)], [17]), pub)
    assert RevocationView.over(base, good).count == len(BASE)
    gone = RevocationDelta.verify(_signed(key, base, [], [18]), pub, "gone.frd")
    with pytest.raises(TableRejected, match="removes card id 18, which its base does not hold"):
        RevocationView.over(base, gone)
    # The same generation, other contents: the header hash tells them apart.
    twin = base_table(tmp_path / "twin.frt", {**BASE, 18: (1, 1)}, key)
    with pytest.raises(TableRejected, match="names another base of generation 5"):
        RevocationView.over(twin, good)
    older = base_table(tmp_path / "older.frt", BASE, key, gen=4)
    with pytest.raises(TableRejected, match="over base generation 5, not over generation 4"):
        RevocationView.over(older, good)


def test_generation_must_be_above_the_base(tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    base = base_table(tmp_path / "base.frt", BASE, keys["signer"])
    with pytest.raises(ValueError, match="not above its base generation"):
        _signed(keys["signer"], base, [], [], generation=5)


def test_wrong_signers_are_refused(
    pair: tuple[RevocationTable, Path], keys: dict[str, SigningKey]
) -> None:
    _, path = pair
    for who, says in (("impostor", "signature does not verify"), ("other", "signed by key id 21")):
        with pytest.raises(TableRejected, match=says):
            RevocationDelta.open(path, keys[who].public())


def test_a_table_is_no_delta_and_a_delta_no_table(
    pair: tuple[RevocationTable, Path], signer: PublicKeyFile
) -> None:
    base, path = pair
    with pytest.raises(TableRejected, match="not a farecore revocation delta"):
        RevocationDelta.open(base.path, signer)
    with pytest.raises(TableRejected, match="not a farecore revocation table"):
        RevocationTable.open(path, signer)


def test_absurd_sizes_are_refused_before_reading(
    tmp_path: Path, pair: tuple[RevocationTable, Path], signer: PublicKeyFile
) -> None:
    _, path = pair
    data = path.read_bytes()
    # Counts beyond the bound (each fits its uint32 field): refused by the header alone.
    huge = bytearray(data)
    struct.pack_into("<II", huge, 80, 2**32 - 1, 2**32 - 1)
    with pytest.raises(TableRejected, match="more than the"):
        parse_delta_header_unverified(bytes(huge))
    # A file larger than any delta is refused from its size, without being read.
    big = tmp_path / "big.frd"
    with open(big, "wb") as fh:
        fh.write(data[:DELTA_HEADER_SIZE])
        fh.truncate(delta_size(MAX_DELTA_ENTRIES, 0) + 1)
    with pytest.raises(TableRejected, match="larger than any delta"):
        RevocationDelta.open(big, signer)
    empty = tmp_path / "empty.frd"
    empty.write_bytes(b"")
    with pytest.raises(TableRejected, match="empty file"):
        RevocationDelta.open(empty, signer)
    with pytest.raises(TableRejected, match="not a regular file"):
        RevocationDelta.open(tmp_path, signer)
    with pytest.raises(TableRejected, match="trailing|unexpected bytes after"):
        RevocationDelta.verify(data + b"\0", signer)
    with pytest.raises(TableRejected, match="truncated"):
        RevocationDelta.verify(data[:-1], signer)


def test_reserved_bytes_must_be_zero(pair: tuple[RevocationTable, Path]) -> None:
    _, path = pair
    data = path.read_bytes()
    for offset in (13, 14, 15, 20, 23, 192, 255):
        damaged = bytearray(data)
        damaged[offset] = 1
        with pytest.raises(TableRejected, match="reserved bytes are not zero"):
            parse_delta_header_unverified(bytes(damaged))


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_every_single_byte_change_is_refused(
    position: int, flip: int, signer: PublicKeyFile, keys: dict[str, SigningKey]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = base_table(Path(tmp) / "b.frt", BASE, keys["signer"])
        build_delta(base, *columns(CURRENT), keys["signer"], 9, 1, Path(tmp) / "d.frd")
        data = bytearray((Path(tmp) / "d.frd").read_bytes())
        data[position % len(data)] ^= flip
        with pytest.raises(TableRejected):
            RevocationDelta.verify(bytes(data), signer)


def test_every_byte_of_a_delta_is_pinned(
    pair: tuple[RevocationTable, Path], signer: PublicKeyFile
) -> None:
    # Exhaustive over the positions of a small delta: the header's signature and the body
    # hash leave no byte that can change unnoticed, reserved and padding bytes included.
    data = pair[1].read_bytes()
    for position in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[position] ^= flip
            with pytest.raises(TableRejected):
                RevocationDelta.verify(bytes(damaged), signer)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=700))
def test_random_bytes_never_crash(data: bytes, signer: PublicKeyFile) -> None:
    for candidate in (data, b"FCREVDLT\x01\x00\x00\x01" + data[16:]):
        with pytest.raises(TableRejected):
            RevocationDelta.verify(candidate, signer)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=DELTA_HEADER_SIZE, max_size=DELTA_HEADER_SIZE))
def test_header_parser_only_raises_table_rejected(data: bytes) -> None:
    for candidate in (data, b"FCREVDLT\x01\x00\x00\x01" + data[16:]):
        try:
            header, signature = parse_delta_header_unverified(candidate)
        except TableRejected:
            continue
        assert len(signature) == 64 and header.signed_bytes() == candidate[:DELTA_SIGNED_SIZE]
        assert header.n_add + header.n_remove <= MAX_DELTA_ENTRIES


@settings(max_examples=100, deadline=None)
@given(draw=st.data())
def test_mutated_files_open_only_when_unchanged(
    draw: st.DataObject, signer: PublicKeyFile, keys: dict[str, SigningKey]
) -> None:
    # Several random edits, truncations and extensions of a genuine delta, through the file
    # reader: refused, or exactly the genuine bytes.
    with tempfile.TemporaryDirectory() as tmp:
        base = base_table(Path(tmp) / "b.frt", BASE, keys["signer"])
        build_delta(base, *columns(CURRENT), keys["signer"], 9, 1, Path(tmp) / "d.frd")
        genuine = (Path(tmp) / "d.frd").read_bytes()
        data = bytearray(genuine)
        for _ in range(draw.draw(st.integers(1, 4))):
            kind = draw.draw(st.sampled_from(["set", "cut", "grow"]))
            if kind == "set":
                data[draw.draw(st.integers(0, len(data) - 1))] = draw.draw(st.integers(0, 255))
            elif kind == "cut":
                del data[draw.draw(st.integers(0, len(data))) :]
            else:
                data += draw.draw(st.binary(min_size=1, max_size=40))
            if not data:
                break
        path = Path(tmp) / "m.frd"
        path.write_bytes(bytes(data))
        try:
            RevocationDelta.open(path, signer)
        except TableRejected:
            return
        assert bytes(data) == genuine


def test_the_delta_arrays_are_read_only(
    pair: tuple[RevocationTable, Path], signer: PublicKeyFile
) -> None:
    delta = RevocationDelta.open(pair[1], signer)
    for column in (delta.add_ids, delta.add_revoked_at, delta.add_reasons, delta.remove_ids):
        assert not column.flags.writeable


def test_the_lookup_with_an_overlay_agrees_on_edge_ids(
    tmp_path: Path, writer: Callable[..., Any], signer: PublicKeyFile, keys: dict[str, SigningKey]
) -> None:
    writer(tmp_path / "b.frt", [0, 1, 2**63, U64], 3)
    base = RevocationTable.open(tmp_path / "b.frt", signer)
    cur = {0: (1, 1), 2**63 - 1: (2, 2), U64: (5, 3)}
    build_delta(base, *columns(cur), keys["signer"], 4, 1, tmp_path / "d.frd")
    view = RevocationView.over(base, RevocationDelta.open(tmp_path / "d.frd", signer))
    probes = [0, 1, 2, 2**63 - 1, 2**63, 2**63 + 1, U64 - 1, U64]
    assert as_dict(view, probes) == cur
    assert view.lookup(-1) is None and view.lookup(2**64) is None
    os.chmod(tmp_path / "d.frd", 0o444)  # nothing reads it again: the view holds its bytes
    (tmp_path / "d.frd").unlink()
    assert as_dict(view, probes) == cur
