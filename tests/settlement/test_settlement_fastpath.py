"""The settlement's fast record path agrees with the full decoder on every input.

``decode_record_row`` and ``verify_batch_rows`` exist only to be faster than
``decode_record`` and ``verify_batch``; these tests hold them to giving the same values,
and the same rejections with the same messages, on valid, damaged and arbitrary bytes.
"""

from __future__ import annotations

import dataclasses
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from settle_world import DAY, terminal_key

from farecore.errors import BadSignature, MalformedFile
from farecore.journal.batch import BATCH_SIGNING_TAG, encode_batch, verify_batch, verify_batch_rows
from farecore.journal.terminal import (
    GENESIS_HASH,
    Direction,
    JournalRecord,
    credential_hash,
    decode_record,
    decode_record_row,
    encode_record,
    record_row,
)

TID = 101
_FLAG_WORDS = st.sampled_from(["a", "b", "revocation_stale", "é"])
# Words the encoder writes but no canonical record holds: the decoders must agree on them.
_ODD_FLAG_WORDS = st.sampled_from(["a", "b", "", "z,y", ","])


@st.composite
def records(draw: st.DrawFn, odd: bool = False) -> JournalRecord:
    accepted = draw(st.booleans())
    full = accepted or draw(st.booleans())
    return JournalRecord(
        terminal_id=TID,
        seq=1,
        time_ms=draw(st.integers(-(2**40), 2**40)),
        operator=draw(st.sampled_from(["qd-bus", "qd-metro", "ü"])),
        line=draw(st.sampled_from(["1", "M1"])),
        place=draw(st.sampled_from(["A", "V1"])),
        direction=draw(st.sampled_from(list(Direction))),
        decision="ACCEPT" if accepted else draw(st.sampled_from(["REVOKED", "ACCEPT "])),
        card_id=draw(st.integers(0, 2**64 - 1)) if full else None,
        credential_sha256=draw(st.binary(min_size=32, max_size=32)) if full else None,
        challenge=draw(st.binary(min_size=32, max_size=32)),
        counter=draw(st.integers(0, 2**32 - 1)) if full else None,
        card_signature=draw(st.binary(min_size=64, max_size=64)) if full else None,
        revocation_generation=draw(st.none() | st.integers(0, 2**64 - 1)),
        flags=tuple(draw(st.lists(_ODD_FLAG_WORDS if odd else _FLAG_WORDS, max_size=3))),
        detail=draw(st.text(max_size=20)),
    )


def _same(body: bytes, prev: bytes) -> None:
    row = decode_record_row(body, prev)
    try:
        full = decode_record(body, prev)
    except MalformedFile:
        assert row is None
        return
    # The fast path may decline a valid oddity (the caller then decodes it fully),
    # but what it does return must be exactly the full decoder's result.
    if row is not None:
        assert row == record_row(full)


@settings(max_examples=300, deadline=None)
@given(records(), st.binary(min_size=32, max_size=32))
def test_row_matches_full_decoder_on_valid_records(r: JournalRecord, prev: bytes) -> None:
    body = encode_record(r)
    row = decode_record_row(body, prev)
    assert row is not None and row == record_row(decode_record(body, prev))


@settings(max_examples=400, deadline=None)
@given(records(odd=True), st.integers(0, 10_000), st.integers(1, 255), st.integers(0, 3))
def test_row_matches_full_decoder_on_damaged_records(
    r: JournalRecord, where: int, xor: int, cut: int
) -> None:
    body = bytearray(encode_record(r))
    body[where % len(body)] ^= xor
    _same(bytes(body), GENESIS_HASH)
    _same(bytes(body[: len(body) - cut]), GENESIS_HASH)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_row_never_raises_on_arbitrary_bytes(body: bytes) -> None:
    _same(body, GENESIS_HASH)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=120, max_size=400))
def test_row_on_plausible_fixed_parts(tail: bytes) -> None:
    # Valid-looking fixed part, arbitrary presence bits, texts and flags.
    fixed = struct.pack(">QQqBB", TID, 1, 5, tail[0] % 4, tail[1] % 40)
    _same(fixed + tail[2:], GENESIS_HASH)


def _resign(content: bytes) -> bytes:
    sig = terminal_key(TID).sign(BATCH_SIGNING_TAG + content)
    return content + struct.pack(">H", len(sig)) + sig


def _outcome(fn: object, data: bytes) -> object:
    try:
        got = fn(data, terminal_key(TID).public())  # type: ignore[operator]
    except (MalformedFile, BadSignature) as exc:
        return (type(exc).__name__, str(exc))
    if hasattr(got, "rows"):
        return (got.terminal_id, got.day, got.first_seq, got.last_seq, got.tail_hash, got.rows)
    return (
        got.terminal_id,
        got.day,
        got.first_seq,
        got.last_seq,
        got.tail_hash,
        [record_row(r) for r in got.records],
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(records(), min_size=0, max_size=6),
    st.integers(0, 100_000),
    st.integers(0, 255),
    st.booleans(),
)
def test_batch_rows_match_verify_batch(
    drafts: list[JournalRecord], where: int, xor: int, resign: bool
) -> None:
    chained, prev, creds = [], GENESIS_HASH, {}
    for i, d in enumerate(drafts):
        cred_sha = d.credential_sha256
        if cred_sha is not None:
            cred = b"credential %d" % (i % 2)
            cred_sha = credential_hash(cred)
            creds[cred_sha] = cred
        body = encode_record(dataclasses.replace(d, seq=i + 1, credential_sha256=cred_sha))
        rec = decode_record(body, prev)
        chained.append(rec)
        prev = rec.hash
    data = encode_batch(
        chained,
        creds,
        terminal_id=TID,
        day=DAY,
        utc_offset_min=480,
        first_seq=1,
        prev_hash=GENESIS_HASH,
        key=terminal_key(TID),
    )
    damaged = bytearray(data)
    damaged[where % len(damaged)] ^= xor
    if resign:
        # Damage the signed content and sign it again: only the content checks remain.
        sig_len = struct.unpack(">H", bytes(damaged[-66:-64]))[0]
        damaged = bytearray(_resign(bytes(damaged[: len(damaged) - 2 - sig_len])))
    for candidate in (data, bytes(damaged)):
        assert _outcome(verify_batch_rows, candidate) == _outcome(verify_batch, candidate)


@settings(max_examples=100, deadline=None)
@given(records(), st.integers(0, 255), st.integers(1, 255))
def test_row_matches_full_decoder_on_any_presence_or_direction(
    r: JournalRecord, presence: int, direction: int
) -> None:
    body = bytearray(encode_record(r))
    body[25] = presence  # after terminal id, seq, time and direction (see _FIXED)
    _same(bytes(body), GENESIS_HASH)
    body = bytearray(encode_record(r))
    body[24] = direction
    _same(bytes(body), GENESIS_HASH)
