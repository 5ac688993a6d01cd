"""Fuzz signed daily batches and the journal records inside them.

A batch file is hostile input (anyone can drop a file in the batch directory), so
``verify_batch`` and ``verify_batch_rows`` promise BatchRejected (a MalformedFile) or
BadSignature, the same answer from both, and nothing the terminal did not sign;
``peek_header`` and ``peek_terminal_id`` promise None for what they cannot read. A
second target signs what it generates with the terminal's key (a terminal that lies or
has a bug), so the checks after the signature, and the settlement unit that prices the
rides, meet arbitrary headers and records.

``decode_record`` promises MalformedFile; ``decode_record_row`` promises None or exactly
``decode_record``'s values.
"""

from __future__ import annotations

import datetime as dt
import struct

import pytest
from fuzz_support import attempt, fuzz_settings, mutated
from hypothesis import event, given
from hypothesis import strategies as st

from farecore.card.keys import SigningKey
from farecore.errors import BadSignature, MalformedFile
from farecore.gate.tap import run_tap
from farecore.journal import record_bytes
from farecore.journal.batch import (
    BATCH_SIGNING_TAG,
    encode_batch,
    peek_header,
    peek_terminal_id,
    verify_batch,
    verify_batch_rows,
)
from farecore.journal.batch_sign import _sign_batch
from farecore.journal.record_bytes import RecordRow, chain_hash, parse_record
from farecore.journal.records import (
    GENESIS_HASH,
    Direction,
    JournalRecord,
    TapContext,
    credential_hash,
    decode_record,
    decode_record_row,
    encode_tap,
    record_row,
)
from farecore.settlement.fares import parse_fares
from farecore.settlement.terminals import TerminalInfo
from farecore.settlement.unit import Partial, UnitConfig, settle_bytes
from readers.virtual import VirtualReader
from sim.deck import Deck
from sim.issuer import derive_key

pytestmark = pytest.mark.fuzz

TERMINAL = 0xC1C1
DAY = dt.date(2026, 12, 1)  # the deck's clock is 2026-12-01 08:00 in Qingdao
KEY = SigningKey("terminal", TERMINAL, derive_key("fuzz-batch", "terminal"))
CTX = TapContext("qd-metro", "M3", "wusi-square", Direction.ENTRY)
DECK = Deck.from_seed("fuzz-batch")


def _day_of_taps() -> tuple[list[JournalRecord], dict[bytes, bytes]]:
    """Genuine records of a few taps, accepted and denied, chained from genesis."""
    validator = DECK.validator()
    records: list[JournalRecord] = []
    credentials: dict[bytes, bytes] = {}
    prev = GENESIS_HASH
    kinds = ["good", "forged", "good_p256", "expired", "removed_read", "revoked", "good"]
    for seq, kind in enumerate(kinds, 1):
        card = DECK.card(kind, 100 + seq % 3)
        decision = run_tap(
            VirtualReader().tap(card), validator, DECK.now_ms + seq * 60_000, bytes([seq]) * 16
        )
        cred_hash = None
        if decision.credential is not None:
            cred_hash = credential_hash(decision.credential)
            credentials[cred_hash] = decision.credential
        record = decode_record(encode_tap(TERMINAL, seq, decision, CTX, cred_hash), prev)
        records.append(record)
        prev = record.hash
    return records, credentials


RECORDS, CREDENTIALS = _day_of_taps()
GENUINE = encode_batch(
    RECORDS,
    CREDENTIALS,
    terminal_id=TERMINAL,
    day=DAY,
    utc_offset_min=480,
    first_seq=1,
    prev_hash=GENESIS_HASH,
    key=KEY,
)
UNIT = UnitConfig(
    DAY,
    (
        TerminalInfo(
            TERMINAL,
            CTX.operator,
            CTX.line,
            CTX.place,
            CTX.direction,
            KEY.algorithm,
            KEY.private.public_bytes,
            0,
            0,
        ),
    ),
    DECK.issuer.keyring().to_bytes(),
    parse_fares('[[operator]]\nid = "qd-metro"\nregions = [370200]\n').operators,
)


def _outcome(call: object) -> object:
    """What a verifier made of the bytes: the error's type and words, or the result."""
    try:
        return call()  # type: ignore[operator]
    except (MalformedFile, BadSignature) as exc:
        return (type(exc).__name__, str(exc))


def _check(data: bytes, genuine: bool) -> None:
    # Unverified peeks answer None or what the header claims, never an exception.
    peek_header(data)
    peek_terminal_id(data)
    unkeyed = _outcome(lambda: verify_batch(data, None))
    keyed = _outcome(lambda: verify_batch(data, KEY.public()))
    rows = _outcome(lambda: verify_batch_rows(data, KEY.public()))
    if isinstance(keyed, tuple):
        assert isinstance(rows, tuple) and rows == keyed, (rows, keyed)
        event(f"rejected: {keyed[0]}")
        return
    assert not isinstance(rows, tuple), rows
    if genuine:  # the terminal's signature pins every byte
        assert data == GENUINE
    assert unkeyed == keyed
    assert rows.rows == [record_row(r) for r in keyed.records]  # type: ignore[attr-defined]
    event("verified")


@fuzz_settings(2.0)
@given(mutated(GENUINE))
def test_mutated_batch(data: bytes) -> None:
    _check(data, genuine=True)
    assert isinstance(settle_bytes(data, UNIT, "fuzz.fcb"), Partial)


def _resign(content: bytes) -> bytes:
    signature = KEY.sign(BATCH_SIGNING_TAG + content)
    return content + struct.pack(">H", len(signature)) + signature


@fuzz_settings(2.0)
@given(mutated(GENUINE[: -2 - 64]))
def test_mutated_batch_signed_again(content: bytes) -> None:
    data = _resign(content)
    _check(data, genuine=False)
    assert isinstance(settle_bytes(data, UNIT, "fuzz.fcb"), Partial)


@st.composite
def signed_batches(draw: st.DrawFn) -> bytes:
    """Batches the terminal signed, with any header values and damaged record bodies."""
    bodies = [r.body for r in RECORDS]
    for _ in range(draw(st.integers(0, 3))):
        if bodies:
            i = draw(st.integers(0, len(bodies) - 1))
            bodies[i] = draw(mutated(bodies[i]))
    if draw(st.booleans()):
        bodies = draw(st.permutations(bodies))
    credentials = dict(CREDENTIALS)
    if draw(st.booleans()):
        credentials = {k: draw(mutated(v)) for k, v in credentials.items()}
    ints = st.integers(-(2**63), 2**64 + 1) | st.sampled_from([0, 1, 2**63 - 1, 2**64 - 1])
    return _sign_batch(
        bodies,
        draw(st.sampled_from([RECORDS[-1].hash, GENESIS_HASH])),
        credentials,
        terminal_id=draw(st.sampled_from([TERMINAL]) | ints),
        day=draw(st.sampled_from([DAY, dt.date(1970, 1, 2), dt.date(9999, 12, 30)]) | st.dates()),
        utc_offset_min=draw(st.sampled_from([480]) | st.integers(-2000, 2000)),
        first_seq=draw(st.sampled_from([1]) | ints),
        prev_hash=draw(st.sampled_from([GENESIS_HASH]) | st.binary(min_size=32, max_size=32)),
        key=KEY,
    )


@fuzz_settings(2.0)
@given(signed_batches())
def test_signed_batches_of_any_content(data: bytes) -> None:
    _check(data, genuine=False)
    assert isinstance(settle_bytes(data, UNIT, "fuzz.fcb"), Partial)


def test_the_genuine_batch_verifies_and_settles() -> None:
    batch = verify_batch(GENUINE, KEY.public())
    assert len(batch.records) == len(RECORDS)
    partial = settle_bytes(GENUINE, UNIT, "genuine.fcb")
    assert partial.ok and len(partial.rides) == sum(r.accepted for r in RECORDS) > 0


# --- journal records ----------------------------------------------------------------


def _check_record(body: bytes) -> None:
    prev = RECORDS[0].hash
    row = decode_record_row(body, prev)
    record = attempt(lambda: decode_record(body, prev), MalformedFile)
    if isinstance(record, MalformedFile):
        assert row is None, (record, row)
        return
    assert record.body == body  # one record, one byte form
    if row is None:  # allowed (the caller then asks decode_record), but worth counting
        event("row decoder unsure of a valid record")
    else:
        assert row == record_row(record)


@fuzz_settings(2.0)
@given(st.sampled_from([r.body for r in RECORDS]).flatmap(mutated))
def test_mutated_records(body: bytes) -> None:
    _check_record(body)


@fuzz_settings()
@given(st.binary(max_size=300))
def test_random_records(body: bytes) -> None:
    _check_record(body)


@fuzz_settings()
@given(
    fixed=st.binary(min_size=174, max_size=174),
    texts=st.lists(st.text(max_size=12), min_size=6, max_size=6),
)
def test_records_of_any_fields(fixed: bytes, texts: list[str]) -> None:
    # Valid framing around arbitrary fixed fields and texts: the checks past the framing.
    body = fixed + b"".join(struct.pack(">H", len(t.encode())) + t.encode() for t in texts)
    _check_record(body)


def _parse_record_oracle(body: bytes, prev_hash: bytes) -> RecordRow:
    """``parse_record`` as it was before it kept texts: every field read from the bytes
    on every call (the oracle of the cached one)."""
    fixed = struct.Struct(">QQqBBQIQ32s32s64s")
    try:
        (tid, seq, time_ms, direction, presence, card_id, counter, gen, cred, chal, sig) = (
            fixed.unpack_from(body)
        )
        pos = fixed.size
        end = len(body)
        texts: list[str] = []
        for _ in range(6):
            stop = pos + 2 + ((body[pos] << 8) | body[pos + 1])
            if stop > end:
                raise MalformedFile("journal record: a text field runs past the end")
            texts.append(body[pos + 2 : stop].decode())
            pos = stop
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise MalformedFile(f"journal record does not parse: {exc}") from None
    if pos != end:
        raise MalformedFile(f"journal record: {end - pos} trailing bytes")
    if presence & ~0x1F:
        raise MalformedFile(f"journal record: unknown presence bits {presence:#x}")
    operator, line, place, label, flags, detail = texts
    flag_tuple: tuple[str, ...] = tuple(flags.split(",")) if flags else ()
    if (
        (not presence & 1 and card_id)
        or (not presence & 2 and cred != b"\x00" * 32)
        or (not presence & 4 and counter)
        or (not presence & 8 and sig != b"\x00" * 64)
        or (not presence & 16 and gen)
        or (flag_tuple and list(flag_tuple) != sorted(set(flag_tuple)))
    ):
        raise MalformedFile("journal record is not in canonical form")
    return RecordRow(
        tid,
        seq,
        time_ms,
        operator,
        line,
        place,
        direction,
        label,
        card_id if presence & 1 else None,
        cred if presence & 2 else None,
        chal,
        counter if presence & 4 else None,
        sig if presence & 8 else None,
        gen if presence & 16 else None,
        flag_tuple,
        detail,
        chain_hash(prev_hash, body),
    )


_TEXT = st.sampled_from(["", "ACCEPT", "a", "a,b", "b,a", "a,a", ",", "é", "x" * 300])


@fuzz_settings()
@given(
    fixed=st.lists(
        st.one_of(
            st.sampled_from([r.body[:174] for r in RECORDS]),  # fixed parts that pass
            st.binary(min_size=174, max_size=174),
            st.binary(max_size=180),  # short of the fixed part, or a few bytes past it
        ),
        min_size=1,
        max_size=3,
    ),
    tails=st.lists(
        st.one_of(
            st.lists(_TEXT, min_size=6, max_size=6).map(
                lambda t: b"".join(struct.pack(">H", len(s.encode())) + s.encode() for s in t)
            ),
            st.binary(max_size=40),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_records_read_as_before_their_texts_were_kept(
    fixed: list[bytes], tails: list[bytes]
) -> None:
    # Every fixed part met with every tail, twice (the second time from what the first
    # kept), from an empty cache: the same row, or the same error, as the plain parser.
    record_bytes._TEXTS.clear()
    prev = RECORDS[0].hash
    for _ in range(2):
        for tail in tails:
            for head in fixed:
                body = head + tail
                want = attempt(lambda body=body: _parse_record_oracle(body, prev), MalformedFile)
                got = attempt(lambda body=body: parse_record(body, prev), MalformedFile)
                if isinstance(want, MalformedFile):
                    assert isinstance(got, MalformedFile) and str(got) == str(want), (got, want)
                else:
                    assert got == want


@pytest.mark.parametrize("detail", ["detail {}", "{}" + "x" * 300])
def test_the_record_text_cache_stays_bounded(detail: str) -> None:
    # A batch of hostile records, each with its own detail text, fills the cache up to
    # its bound and no further; a record with a long detail is read but never kept.
    head = RECORDS[0].body[:174]
    record_bytes._TEXTS.clear()
    for i in range(record_bytes._TEXTS_MAX + 50):
        texts = ("op", "L", "P", "DENY", "", detail.format(i))
        body = head + b"".join(struct.pack(">H", len(t)) + t.encode() for t in texts)
        try:
            parse_record(body, RECORDS[0].hash)
        except MalformedFile:
            pass  # the head's presence bits may refuse it: its texts were read first
        assert len(record_bytes._TEXTS) <= record_bytes._TEXTS_MAX
    kept = sum(len(tail) for tail in record_bytes._TEXTS)
    assert kept <= record_bytes._TEXTS_MAX * record_bytes._TEXT_TAIL_MAX
    assert (kept > 0) == (len(detail) < 100)
