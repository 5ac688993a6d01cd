"""Fuzz the revocation table file and the revocation CSV export.

``RevocationTable.open`` promises TableRejected for anything it does not serve, and to
serve exactly the bytes the trusted signer signed. Mutating a real table mostly breaks
the signature, so a second target signs what it generates with the trusted key, the way
a builder bug would: then the structure checks (the numba kernel) meet arbitrary
columns, indexes, filters and header fields. These run again with NUMBA_DISABLE_JIT=1
(marker ``kernels``), where an out-of-bounds read shows up as an IndexError.

``read_revocation_csv`` promises BuildError (or MalformedFile) naming a line, and the same
answer whether or not pyarrow reads the file.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fuzz_support import attempt, fuzz_settings, mutated, mutated_text
from hypothesis import event, example, given
from hypothesis import strategies as st

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import PublicKeyFile, SigningKey
from farecore.decide.revocation import RevocationTable, build_table, read_revocation_csv
from farecore.decide.revocation.format import (
    HEADER_SIZE,
    Header,
    RevocationReason,
    layout_for,
    slot_shift,
)
from farecore.errors import MalformedInput, TableRejected

pytestmark = pytest.mark.fuzz

SIGNER = SigningKey(
    "revocation", 21, PrivateKey(Algorithm.ED25519, hashlib.sha256(b"fuzz-revocation").digest())
)
TRUSTED: PublicKeyFile = SIGNER.public()
U64 = 2**64 - 1
IDS = [0, 5, 17, 4242, 2**40, 2**63, U64 - 1, U64]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-revocation-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def genuine(workdir: Path) -> bytes:
    path = workdir / "genuine.frt"
    ids = np.array(IDS, dtype=np.uint64)
    times = np.arange(len(IDS), dtype=np.int64)
    reasons = np.array([int(r) for r in RevocationReason] + [1, 2], dtype=np.uint8)
    build_table(ids, times, reasons, SIGNER, 7, 1_790_000_000, path)
    return path.read_bytes()


def _open(workdir: Path, data: bytes) -> RevocationTable | TableRejected:
    path = workdir / "candidate.frt"
    path.write_bytes(data)
    try:
        return RevocationTable.open(path, TRUSTED)
    except TableRejected as exc:
        return exc


def _check_served(table: RevocationTable) -> None:
    """A table that opened answers every lookup from its own sorted columns."""
    ids = [int(i) for i in table.ids]
    assert ids == sorted(set(ids))
    for position, card_id in enumerate(ids):
        entry = table.lookup(card_id)
        assert entry is not None and entry.card_id == card_id
        assert table.find(card_id) == position
        assert entry.revoked_at >= 0 and entry.reason in set(RevocationReason)
    probes = sorted({0, U64, *(i + 1 for i in ids if i < U64), *(i - 1 for i in ids if i)})
    absent = [p for p in probes if p not in set(ids)]
    assert all(table.lookup(p) is None for p in absent)
    found = table.find_many(np.array(absent + ids, dtype=np.uint64))
    assert found.tolist() == [-1] * len(absent) + list(range(len(ids)))


@fuzz_settings(2.0)
@given(draw=st.data())
def test_mutated_table_is_rejected(workdir: Path, genuine: bytes, draw: st.DataObject) -> None:
    data = draw.draw(mutated(genuine))
    opened = _open(workdir, data)
    if isinstance(opened, RevocationTable):
        assert data == genuine  # one signature and one hash pin every byte
        _check_served(opened)


# --- signed by the trusted key: the structure checks alone stand between ------------

_ids = st.one_of(
    st.sampled_from([0, 1, 5, 2**32, 2**63, U64 - 1, U64]),
    st.integers(0, U64),
    st.integers(0, 300),
)


@st.composite
def signed_tables(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A table signed by the trusted key, and whether every part of it was built right
    (then it must open). Each part is either built as the builder builds it, or drawn."""
    right = True

    def choose(label: str) -> bool:
        nonlocal right
        built = draw(st.integers(0, 3), label=label) > 0  # mostly right, to go deep
        right &= built
        return built

    raw_ids = draw(st.lists(_ids, max_size=8), label="ids")
    ids = sorted(set(raw_ids)) if choose("sorted unique ids") else raw_ids
    n = len(ids)
    index_bits = draw(st.integers(1, 10), label="index bits")
    filter_bits = draw(st.integers(6, 12), label="filter bits")
    lo = min(ids, default=0) if choose("min id") else draw(_ids, label="min")
    hi = max(ids, default=0) if choose("max id") else draw(_ids, label="max")
    if n and lo > hi:
        lo, hi = hi, lo
    shift = slot_shift(lo, hi, index_bits) if choose("shift") else draw(st.integers(0, 63))
    layout = layout_for(n, index_bits, filter_bits)
    id_col = np.array(ids, dtype="<u8")
    if choose("index"):
        index = np.array(_index_for(ids, lo, shift, layout.buckets), dtype="<u8")
    else:
        index = np.array(
            draw(
                st.lists(
                    st.integers(0, 10), min_size=layout.buckets + 1, max_size=layout.buckets + 1
                )
            ),
            dtype="<u8",
        )
    filt = np.zeros(layout.filter_bytes, dtype=np.uint8)
    if choose("filter"):
        fshift = slot_shift(lo, hi, filter_bits)
        for slot in {(i - lo) >> fshift for i in ids if i >= lo}:
            if slot < 8 * len(filt):
                filt[slot >> 3] |= 1 << (slot & 7)
    else:
        filt[:] = draw(st.sampled_from([0, 0xFF]))
    times = draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n))
    reasons = draw(
        st.lists(st.sampled_from([int(r) for r in RevocationReason]), min_size=n, max_size=n)
    )
    if not choose("times and reasons"):
        times = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n))
        reasons = draw(st.lists(st.integers(0, 255), min_size=n, max_size=n))
    body = bytearray(layout.body_size)
    for offset, column in (
        (layout.ids, id_col),
        (layout.revoked_at, np.array(times, dtype="<i8")),
        (layout.index, index.astype("<u8")),
        (layout.filter, filt),
        (layout.reasons, np.array(reasons, dtype=np.uint8)),
    ):
        raw = column.tobytes()
        body[offset - HEADER_SIZE : offset - HEADER_SIZE + len(raw)] = raw
    if not choose("body bytes"):  # damage that keeps the size, then signed all the same
        for _ in range(draw(st.integers(1, 3))):
            if body:
                body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    return sign_table(bytes(body), index_bits, filter_bits, shift, n, lo, hi), right


def _index_for(ids: list[int], lo: int, shift: int, buckets: int) -> list[int]:
    """The radix index as the builder makes it (``index[b]``: ids in buckets below b),
    in plain Python: the build kernel assumes sorted ids within the range, and these
    may be neither."""
    bucket_of = [(i - lo) >> shift if i >= lo else 0 for i in ids]
    return [sum(1 for k in bucket_of if k < b) for b in range(buckets + 1)]


def sign_table(
    body: bytes, index_bits: int, filter_bits: int, shift: int, count: int, lo: int, hi: int
) -> bytes:
    """Header fields as given, body hash and signature as the trusted signer makes them."""
    layout = layout_for(count, index_bits, filter_bits)
    header = Header(
        signer_algorithm=int(SIGNER.algorithm),
        index_bits=index_bits,
        filter_bits=filter_bits,
        shift=shift,
        signer_key_id=SIGNER.key_id,
        generation=9,
        created_at=1_790_000_000,
        count=count,
        min_id=lo,
        max_id=hi,
        body_size=layout.body_size,
        body_sha256=hashlib.sha256(body).digest(),
    )
    return header.pack(SIGNER.sign(header.signed_bytes())) + body


def _out_of_range_id_table() -> bytes:
    """Ids [0, 60000, 5] under min 0, max 5, with 16 index bits but a 64-slot filter: the
    middle id passes the bucket check, and its filter slot lies far past the filter."""
    ids = np.array([0, 60_000, 5], dtype="<u8")
    layout = layout_for(3, 16, 6)
    index = np.full(layout.buckets + 1, 3, dtype="<u8")
    index[0], index[1:60_001] = 0, 1
    body = bytearray(layout.body_size)
    for offset, raw in (
        (layout.ids, ids.tobytes()),
        (layout.index, index.tobytes()),
        (layout.filter, b"\xff" * layout.filter_bytes),
        (layout.reasons, b"\x01\x01\x01"),
    ):
        body[offset - HEADER_SIZE : offset - HEADER_SIZE + len(raw)] = raw
    return sign_table(bytes(body), 16, 6, slot_shift(0, 5, 16), 3, 0, 5)


@pytest.mark.kernels
@fuzz_settings(2.0)
@given(table=signed_tables())
@example(table=(_out_of_range_id_table(), False))
def test_signed_tables_are_served_only_when_sound(workdir: Path, table: tuple[bytes, bool]) -> None:
    data, built_right = table
    opened = _open(workdir, data)
    event("served" if isinstance(opened, RevocationTable) else str(opened).split(": ", 1)[1][:24])
    if isinstance(opened, RevocationTable):
        _check_served(opened)
    elif built_right:
        raise AssertionError(f"a table built right was refused: {opened}")


@pytest.mark.kernels
def test_an_id_beyond_the_header_range_is_refused_before_it_is_used(workdir: Path) -> None:
    # Once a segfault (and an IndexError with NUMBA_DISABLE_JIT=1): the kernel looked the
    # id up in the filter before it knew the id was within the header's range.
    opened = _open(workdir, _out_of_range_id_table())
    assert isinstance(opened, TableRejected)
    assert "min/max id" in str(opened)


# --- the CSV export -----------------------------------------------------------------

GOOD_CSV = (
    "card_id,revoked_at,reason\n"
    f"{U64},1790000000,lost\n42,1790000001,2\n3,1790000002,fraud\n7,1,other\n"
    "9,0,eligibility_ended\r\n"
)
_field = st.one_of(
    st.integers(-5, U64 + 5).map(str),
    st.sampled_from(["lost", "STOLEN", "6", "0", "7", " 1", "1 ", "+1", "1e3", "0x10", ""]),
    st.text(max_size=6),
)
_rows = st.lists(st.lists(_field, min_size=2, max_size=4).map(",".join), max_size=6)


def _read_both(workdir: Path, text: str | bytes) -> None:
    path = workdir / "revoked.csv"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    answers = []
    for fast in (True, False):
        columns = attempt(lambda f=fast: read_revocation_csv(path, use_pyarrow=f), MalformedInput)
        if isinstance(columns, MalformedInput):
            assert re.search(r": line \d+: ", str(columns)), columns
            answers.append(re.findall(r": (line \d+): ", str(columns))[0])
        else:
            ids, times, reasons = columns
            assert ids.dtype == np.uint64 and times.dtype == np.int64 and reasons.dtype == np.uint8
            answers.append((ids.tolist(), times.tolist(), reasons.tolist()))
    fast, careful = answers
    # pyarrow is only a faster way to the same answer: the same columns, or a refusal
    # that names the same line.
    assert fast == careful


@fuzz_settings()
@given(text=mutated_text(GOOD_CSV))
def test_mutated_csv(workdir: Path, text: str) -> None:
    _read_both(workdir, text)


@fuzz_settings()
@given(rows=_rows, ending=st.sampled_from(["\n", "\r\n", ""]))
# Once read by pyarrow alone: a blank around a number, hex, an Arabic-Indic digit one.
@example(rows=["0, 1,1"], ending="\n")
@example(rows=["0x10,5,lost"], ending="\n")
@example(rows=["7,5,\u0661"], ending="\n")
def test_csv_rows_of_odd_fields(workdir: Path, rows: list[str], ending: str) -> None:
    _read_both(workdir, "card_id,revoked_at,reason\n" + "\n".join(rows) + ending)


@fuzz_settings(0.5)
@given(data=st.binary(max_size=300))
def test_csv_of_random_bytes(workdir: Path, data: bytes) -> None:
    _read_both(workdir, data)
