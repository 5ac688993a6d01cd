"""The journal record's canonical bytes: the layout, packing them, and the one parser.

A record is a fixed big-endian part (ids, time, direction, a presence bitmap, card id,
counter, revocation generation, credential hash, challenge, card signature) followed by
six length-prefixed UTF-8 texts: operator, line, place, the decision's word, its flags,
its detail (docs/journal-and-batches.md). A record's hash chains it to the one before.

``parse_record`` reads the bytes into a RecordRow or raises MalformedFile;
``decode_record_row`` is the settlement's fast path over it, which returns None instead
of raising. The typed record and the conversions to and from it are
``farecore.journal.records``.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

from farecore.errors import MalformedFile

__all__ = [
    "GENESIS_HASH",
    "MAX_DIRECTION",
    "U64_MAX",
    "RecordRow",
    "chain_hash",
    "credential_hash",
    "decode_record_row",
    "encode_texts",
    "pack_record",
    "parse_record",
]

GENESIS_HASH = b"\x00" * 32
_CHAIN_TAG = b"farecore/journal/v1"
_NO_HASH = b"\x00" * 32
_NO_SIG = b"\x00" * 64
# terminal_id, seq, time_ms, direction, presence, card_id, counter, generation,
# credential hash, challenge, card signature
_FIXED = struct.Struct(">QQqBBQIQ32s32s64s")
_U16 = struct.Struct(">H")
_HAS_CARD, _HAS_CRED, _HAS_COUNTER, _HAS_SIG, _HAS_GEN = 1, 2, 4, 8, 16
U64_MAX = 0xFFFFFFFFFFFFFFFF
MAX_DIRECTION = 5  # the highest records.Direction (CLAIM); a test holds them equal
_FIXED_PACK = _FIXED.pack
_FIXED_UNPACK = _FIXED.unpack_from
_FIXED_SIZE = _FIXED.size
_sha256 = hashlib.sha256


def credential_hash(credential: bytes) -> bytes:
    """The key of the per-card credential table (SHA-256 of the credential bytes)."""
    return hashlib.sha256(credential).digest()


def chain_hash(prev_hash: bytes, body: bytes) -> bytes:
    """A record's own hash: it covers the previous hash, so the records form a chain."""
    return hashlib.sha256(_CHAIN_TAG + prev_hash + body).digest()


def encode_texts(*texts: str) -> bytes:
    """Each text as its UTF-8 bytes after a 16-bit length."""
    parts: list[bytes] = []
    for text in texts:
        raw = text.encode()
        if len(raw) > 0xFFFF:
            raise ValueError("a journal text field is longer than 65535 bytes")
        parts.append(_U16.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def pack_record(
    terminal_id: int,
    seq: int,
    time_ms: int,
    direction: int,
    card_id: int | None,
    cred_hash: bytes | None,
    challenge: bytes,
    counter: int | None,
    signature: bytes | None,
    generation: int | None,
    place_texts: bytes,
    decision_texts: bytes,
) -> bytes:
    """The canonical bytes: the fixed part, then the place's three texts (operator, line,
    place) and the decision's three (its word, flags, detail), each already encoded."""
    if not 0 <= terminal_id <= U64_MAX or not 1 <= seq <= U64_MAX:
        raise ValueError("terminal id must be a uint64 and seq a positive uint64")
    if len(challenge) != 32 or (signature is not None and len(signature) != 64):
        raise ValueError("challenge is 32 bytes and a card signature 64")
    presence = (
        (_HAS_CARD if card_id is not None else 0)
        | (_HAS_CRED if cred_hash is not None else 0)
        | (_HAS_COUNTER if counter is not None else 0)
        | (_HAS_SIG if signature is not None else 0)
        | (_HAS_GEN if generation is not None else 0)
    )
    fixed = _FIXED_PACK(
        terminal_id,
        seq,
        time_ms,
        direction,
        presence,
        card_id or 0,
        counter or 0,
        generation or 0,
        cred_hash or _NO_HASH,
        challenge,
        signature or _NO_SIG,
    )
    return b"".join((fixed, place_texts, decision_texts))


class RecordRow(NamedTuple):
    """A decoded record as a tuple, in JournalRecord's field order without prev_hash.

    The settlement reads millions of records it has already authenticated (the batch
    signature covers them), so it skips building and validating a dataclass each.
    """

    terminal_id: int
    seq: int
    time_ms: int
    operator: str
    line: str
    place: str
    direction: int
    decision: str
    card_id: int | None
    credential_sha256: bytes | None
    challenge: bytes
    counter: int | None
    card_signature: bytes | None
    revocation_generation: int | None
    flags: tuple[str, ...]
    detail: str
    hash: bytes


_new_row = tuple.__new__  # a RecordRow without the keyword handling of its constructor


# The six texts of a record, by their exact bytes: a terminal's records repeat the same
# few (its operator, line and place, the decision's word, usually no flags or detail), so
# each distinct tail is parsed once. A pure function of the bytes: caching it changes no
# result and no error (a tail that does not parse, or whose flags are not canonical, is
# never kept). Bounded: at most _TEXTS_MAX tails of at most _TEXT_TAIL_MAX bytes with at
# most _TEXT_FLAGS_MAX flags (under 10 MB with every text at its widest), cleared when
# full, so hostile records with a distinct or a huge text each cost only their parse.
_Texts = tuple[str, str, str, str, tuple[str, ...], str, bool]
_TEXTS: dict[bytes, _Texts] = {}
_TEXTS_MAX = 4096
_TEXT_TAIL_MAX = 256
_TEXT_FLAGS_MAX = 4


def _parse_texts(tail: bytes) -> _Texts:
    """The six texts of ``tail`` (operator, line, place, word, flags split, detail) and
    whether the flags are canonical (sorted, unique, non-empty); MalformedFile when the
    texts do not fill ``tail`` exactly."""
    pos, end = 0, len(tail)
    texts: list[str] = []
    try:
        for _ in range(6):
            stop = pos + 2 + ((tail[pos] << 8) | tail[pos + 1])
            if stop > end:
                raise MalformedFile("journal record: a text field runs past the end")
            texts.append(tail[pos + 2 : stop].decode())
            pos = stop
    except (IndexError, UnicodeDecodeError) as exc:
        raise MalformedFile(f"journal record does not parse: {exc}") from None
    if pos != end:
        raise MalformedFile(f"journal record: {end - pos} trailing bytes")
    operator, line, place, label, flags, detail = texts
    flag_tuple: tuple[str, ...] = tuple(flags.split(",")) if flags else ()
    canonical = not flag_tuple or list(flag_tuple) == sorted(set(flag_tuple))
    return operator, line, place, label, flag_tuple, detail, canonical


def parse_record(body: bytes, prev_hash: bytes) -> RecordRow:
    """The one parser of record bytes: the row they hold, chained onto ``prev_hash``, or
    MalformedFile naming the first deviation from the canonical form (absent fields are
    zero, flags sorted, unique and non-empty, no trailing bytes). Checks what the bytes
    alone decide; the meaning of the values is left to the callers."""
    try:
        (tid, seq, time_ms, direction, presence, card_id, counter, gen, cred, chal, sig) = (
            _FIXED_UNPACK(body)
        )
    except struct.error as exc:
        raise MalformedFile(f"journal record does not parse: {exc}") from None
    tail = body[_FIXED_SIZE:]
    if type(tail) is not bytes or len(tail) > _TEXT_TAIL_MAX:
        texts = _parse_texts(tail)  # never kept: not hashable bytes, or too long
    else:
        cached = _TEXTS.get(tail)
        if cached is None:
            cached = _parse_texts(tail)
            if cached[6] and len(cached[4]) <= _TEXT_FLAGS_MAX:
                if len(_TEXTS) >= _TEXTS_MAX:
                    _TEXTS.clear()
                _TEXTS[tail] = cached
        texts = cached
    operator, line, place, label, flag_tuple, detail, canonical = texts
    if presence & ~0x1F:
        raise MalformedFile(f"journal record: unknown presence bits {presence:#x}")
    if (
        (not presence & _HAS_CARD and card_id)
        or (not presence & _HAS_CRED and cred != _NO_HASH)
        or (not presence & _HAS_COUNTER and counter)
        or (not presence & _HAS_SIG and sig != _NO_SIG)
        or (not presence & _HAS_GEN and gen)
        or not canonical
    ):
        raise MalformedFile("journal record is not in canonical form")
    return _new_row(
        RecordRow,
        (
            tid,
            seq,
            time_ms,
            operator,
            line,
            place,
            direction,
            label,
            card_id if presence & _HAS_CARD else None,
            cred if presence & _HAS_CRED else None,
            chal,
            counter if presence & _HAS_COUNTER else None,
            sig if presence & _HAS_SIG else None,
            gen if presence & _HAS_GEN else None,
            flag_tuple,
            detail,
            _sha256(_CHAIN_TAG + prev_hash + body).digest(),
        ),
    )


def decode_record_row(body: bytes, prev_hash: bytes) -> RecordRow | None:
    """``decode_record`` as a RecordRow, or None where ``decode_record`` might object.

    It accepts exactly what ``decode_record`` accepts and returns the same values; on
    anything else (malformed, non-canonical, unknown direction, an accepted record
    without its proof) it returns None, so the caller can run ``decode_record`` for the
    precise error. It never raises on bad bytes.
    """
    try:
        row = parse_record(body, prev_hash)
    except MalformedFile:
        return None
    # What JournalRecord would refuse in bytes that parse.
    if (
        row.seq < 1
        or not 1 <= row.direction <= MAX_DIRECTION
        or (
            row.decision == "ACCEPT"
            and (
                row.card_id is None
                or row.credential_sha256 is None
                or row.counter is None
                or row.card_signature is None
            )
        )
    ):
        return None
    return row
