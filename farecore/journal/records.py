"""The journal record: its fields, its canonical bytes, and the hash chain over them.

``encode_record`` gives the bytes the chain hashes and the signed daily batch carries
(docs/journal-and-batches.md); ``decode_record`` parses them back and refuses anything
else. ``decode_record_row`` is the settlement's fast path over the same bytes.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from farecore.errors import MalformedFile

if TYPE_CHECKING:
    from farecore.decide.decision import Decision, Reason

__all__ = [
    "GENESIS_HASH",
    "ROLE_DIRECTION",
    "Direction",
    "JournalRecord",
    "RecordRow",
    "TapContext",
    "chain_hash",
    "credential_hash",
    "decode_record",
    "decode_record_row",
    "encode_record",
    "encode_tap",
    "record_row",
]

GENESIS_HASH = b"\x00" * 32
_CHAIN_TAG = b"farecore/journal/terminal/v1"
_NO_HASH = b"\x00" * 32
_NO_SIG = b"\x00" * 64
# terminal_id, seq, time_ms, direction, presence, card_id, counter, generation,
# credential hash, challenge, card signature
_FIXED = struct.Struct(">QQqBBQIQ32s32s64s")
_U16 = struct.Struct(">H")
_HAS_CARD, _HAS_CRED, _HAS_COUNTER, _HAS_SIG, _HAS_GEN = 1, 2, 4, 8, 16
_U64_MAX = 0xFFFFFFFFFFFFFFFF
_FIXED_UNPACK = _FIXED.unpack_from
_FIXED_SIZE = _FIXED.size
_sha256 = hashlib.sha256


class Direction(enum.IntEnum):
    """Which way the rider went through the gate."""

    BOARD = 1  # bus boarding
    ENTRY = 2  # metro entry
    EXIT = 3  # metro exit

    def __str__(self) -> str:
        return self.name


# A gate's configured role and the direction its records carry.
ROLE_DIRECTION: dict[str, Direction] = {
    "bus": Direction.BOARD,
    "metro_entry": Direction.ENTRY,
    "metro_exit": Direction.EXIT,
}


@dataclass(frozen=True, slots=True)
class TapContext:
    """Where a terminal stands: fixed per gate, recorded with every tap."""

    operator: str
    line: str
    place: str  # station, stop or vehicle id
    direction: Direction

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", Direction(self.direction))
        for name in ("operator", "line", "place"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value.encode()) > 255:
                raise ValueError(f"{name} must be a non-empty string of at most 255 bytes")


def credential_hash(credential: bytes) -> bytes:
    """The key of the per-card credential table (SHA-256 of the credential bytes)."""
    return hashlib.sha256(credential).digest()


def chain_hash(prev_hash: bytes, body: bytes) -> bytes:
    """A record's own hash: it covers the previous hash, so the records form a chain."""
    return hashlib.sha256(_CHAIN_TAG + prev_hash + body).digest()


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One journaled tap, exactly as hashed and exported.

    ``credential`` is kept outside the hashed body (which holds its SHA-256); the journal
    and the batch store each distinct credential once.
    """

    terminal_id: int
    seq: int
    time_ms: int
    operator: str
    line: str
    place: str
    direction: Direction
    decision: str  # "ACCEPT" or the deny reason's name
    card_id: int | None = None
    credential_sha256: bytes | None = None
    challenge: bytes = b"\x00" * 32
    counter: int | None = None
    card_signature: bytes | None = None
    revocation_generation: int | None = None
    flags: tuple[str, ...] = ()
    detail: str = ""
    prev_hash: bytes = GENESIS_HASH
    hash: bytes = GENESIS_HASH

    def __post_init__(self) -> None:
        if not 0 <= self.terminal_id <= _U64_MAX or not 1 <= self.seq <= _U64_MAX:
            raise ValueError("terminal id must be a uint64 and seq a positive uint64")
        object.__setattr__(self, "direction", Direction(self.direction))
        object.__setattr__(self, "flags", tuple(sorted(set(self.flags))))
        if len(self.challenge) != 32 or len(self.prev_hash) != 32 or len(self.hash) != 32:
            raise ValueError("challenge, prev_hash and hash are 32 bytes each")
        if self.credential_sha256 is not None and len(self.credential_sha256) != 32:
            raise ValueError("credential_sha256 is 32 bytes")
        if self.card_signature is not None and len(self.card_signature) != 64:
            raise ValueError("card signature is 64 bytes")
        if self.accepted and (
            self.card_id is None
            or self.credential_sha256 is None
            or self.counter is None
            or self.card_signature is None
        ):
            raise ValueError("an accepted ride must carry its full proof of tap")

    @property
    def accepted(self) -> bool:
        return self.decision == "ACCEPT"

    @property
    def body(self) -> bytes:
        return encode_record(self)


def _put_str(parts: list[bytes], text: str) -> None:
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise ValueError("a journal text field is longer than 65535 bytes")
    parts.append(_U16.pack(len(raw)))
    parts.append(raw)


def encode_record(r: JournalRecord) -> bytes:
    """The record's canonical bytes (everything but its own hash and prev hash)."""
    presence = (
        (_HAS_CARD if r.card_id is not None else 0)
        | (_HAS_CRED if r.credential_sha256 is not None else 0)
        | (_HAS_COUNTER if r.counter is not None else 0)
        | (_HAS_SIG if r.card_signature is not None else 0)
        | (_HAS_GEN if r.revocation_generation is not None else 0)
    )
    parts = [
        _FIXED.pack(
            r.terminal_id,
            r.seq,
            r.time_ms,
            int(r.direction),
            presence,
            r.card_id or 0,
            r.counter or 0,
            r.revocation_generation or 0,
            r.credential_sha256 or _NO_HASH,
            r.challenge,
            r.card_signature or _NO_SIG,
        )
    ]
    for text in (r.operator, r.line, r.place, r.decision, ",".join(r.flags), r.detail):
        _put_str(parts, text)
    return b"".join(parts)


_CONTEXT_TEXT: dict[TapContext, bytes] = {}
# A decision's closing texts when it has no flags and no detail, by reason (None: accepted).
_PLAIN_TAIL: dict[Reason | None, bytes] = {}


def encode_tap(
    terminal_id: int, seq: int, decision: Decision, ctx: TapContext, cred_hash: bytes | None
) -> bytes:
    """``encode_record`` of the record a fresh tap makes, without building the record.

    The station journal's hot path; a property test holds it to ``encode_record``.
    """
    if not 0 <= terminal_id <= _U64_MAX or not 1 <= seq <= _U64_MAX:
        raise ValueError("terminal id must be a uint64 and seq a positive uint64")
    card_id, counter = decision.card_id, decision.counter
    signature, generation = decision.card_signature, decision.revocation_generation
    if len(decision.challenge) != 32 or (signature is not None and len(signature) != 64):
        raise ValueError("challenge is 32 bytes and a card signature 64")
    presence = (
        (_HAS_CARD if card_id is not None else 0)
        | (_HAS_CRED if cred_hash is not None else 0)
        | (_HAS_COUNTER if counter is not None else 0)
        | (_HAS_SIG if signature is not None else 0)
        | (_HAS_GEN if generation is not None else 0)
    )
    place = _CONTEXT_TEXT.get(ctx)
    if place is None:
        parts: list[bytes] = []
        for text in (ctx.operator, ctx.line, ctx.place):
            _put_str(parts, text)
        place = _CONTEXT_TEXT.setdefault(ctx, b"".join(parts))
    parts = [
        _FIXED.pack(
            terminal_id,
            seq,
            decision.time_ms,
            int(ctx.direction),
            presence,
            card_id or 0,
            counter or 0,
            generation or 0,
            cred_hash or _NO_HASH,
            decision.challenge,
            signature or _NO_SIG,
        ),
        place,
    ]
    flags, detail = decision.flags, decision.detail
    if flags or detail:
        for text in (decision.label, ",".join(sorted(flags)) if flags else "", detail[:1000]):
            _put_str(parts, text)
    else:  # most taps: the decision's word, then two empty texts
        tail = _PLAIN_TAIL.get(decision.reason)
        if tail is None:
            texts: list[bytes] = []
            for text in (decision.label, "", ""):
                _put_str(texts, text)
            tail = _PLAIN_TAIL.setdefault(decision.reason, b"".join(texts))
        parts.append(tail)
    return b"".join(parts)


def decode_record(body: bytes, prev_hash: bytes = GENESIS_HASH) -> JournalRecord:
    """Parse canonical record bytes; raise MalformedFile on any deviation.

    The result's ``hash`` is computed from ``prev_hash`` and the body, so a decoded record
    always carries the hash it would have in a chain that starts from ``prev_hash``.
    """
    try:
        (tid, seq, time_ms, direction, presence, card_id, counter, gen, cred, chal, sig) = (
            _FIXED.unpack_from(body)
        )
        pos = _FIXED.size
        texts: list[str] = []
        for _ in range(6):
            (n,) = _U16.unpack_from(body, pos)
            pos += 2
            if pos + n > len(body):
                raise MalformedFile("journal record: a text field runs past the end")
            texts.append(body[pos : pos + n].decode())
            pos += n
        if pos != len(body):
            raise MalformedFile(f"journal record: {len(body) - pos} trailing bytes")
        if presence & ~0x1F:
            raise MalformedFile(f"journal record: unknown presence bits {presence:#x}")
        operator, line, place, label, flags, detail = texts
        record = JournalRecord(
            terminal_id=tid,
            seq=seq,
            time_ms=time_ms,
            operator=operator,
            line=line,
            place=place,
            direction=Direction(direction),
            decision=label,
            card_id=card_id if presence & _HAS_CARD else None,
            credential_sha256=cred if presence & _HAS_CRED else None,
            challenge=chal,
            counter=counter if presence & _HAS_COUNTER else None,
            card_signature=sig if presence & _HAS_SIG else None,
            revocation_generation=gen if presence & _HAS_GEN else None,
            flags=tuple(flags.split(",")) if flags else (),
            detail=detail,
            prev_hash=prev_hash,
            hash=chain_hash(prev_hash, body),
        )
    except MalformedFile:
        raise
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise MalformedFile(f"journal record does not parse: {exc}") from None
    # Canonical form without re-encoding (the settlement decodes millions of records):
    # absent fields are zero and flags are sorted, unique and non-empty.
    if (
        (not presence & _HAS_CARD and card_id)
        or (not presence & _HAS_CRED and cred != _NO_HASH)
        or (not presence & _HAS_COUNTER and counter)
        or (not presence & _HAS_SIG and sig != _NO_SIG)
        or (not presence & _HAS_GEN and gen)
        or ",".join(record.flags) != flags
    ):
        raise MalformedFile("journal record is not in canonical form")
    return record


# A decoded record as a plain tuple, in JournalRecord's field order without prev_hash:
# (terminal_id, seq, time_ms, operator, line, place, direction, decision, card_id,
#  credential_sha256, challenge, counter, card_signature, revocation_generation, flags,
#  detail, hash). The settlement reads millions of records it has already authenticated
# (the batch signature covers them), so it skips building and validating a dataclass each.
RecordRow = tuple[
    int,
    int,
    int,
    str,
    str,
    str,
    int,
    str,
    int | None,
    bytes | None,
    bytes,
    int | None,
    bytes | None,
    int | None,
    tuple[str, ...],
    str,
    bytes,
]
_FULL_PROOF = _HAS_CARD | _HAS_CRED | _HAS_COUNTER | _HAS_SIG


def decode_record_row(body: bytes, prev_hash: bytes) -> RecordRow | None:
    """``decode_record`` as a tuple, or None where ``decode_record`` might object.

    It accepts exactly what ``decode_record`` accepts in canonical form and returns the
    same values; on anything else (malformed, non-canonical, unknown direction, an
    accepted record without its proof) it returns None, so the caller can run
    ``decode_record`` for the precise error. It never raises on bad bytes.
    """
    try:
        (tid, seq, time_ms, direction, presence, card_id, counter, gen, cred, chal, sig) = (
            _FIXED_UNPACK(body)
        )
        pos = _FIXED_SIZE
        end = len(body)
        texts: list[str] = []
        for _ in range(6):
            stop = pos + 2 + ((body[pos] << 8) | body[pos + 1])
            if stop > end:
                return None
            texts.append(body[pos + 2 : stop].decode())
            pos = stop
    except (struct.error, IndexError, UnicodeDecodeError):
        return None
    if pos != end or presence & ~0x1F or seq < 1 or not 1 <= direction <= 3:
        return None
    operator, line, place, label, flags, detail = texts
    if label == "ACCEPT" and presence & _FULL_PROOF != _FULL_PROOF:
        return None
    if (
        (not presence & _HAS_CARD and card_id)
        or (not presence & _HAS_CRED and cred != _NO_HASH)
        or (not presence & _HAS_COUNTER and counter)
        or (not presence & _HAS_SIG and sig != _NO_SIG)
        or (not presence & _HAS_GEN and gen)
    ):
        return None
    flag_tuple: tuple[str, ...] = ()
    if flags:
        parts = flags.split(",")
        # Canonical flags are sorted and unique (what JournalRecord would make of them).
        if parts != sorted(set(parts)):
            return None
        flag_tuple = tuple(parts)
    return (
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
    )


def record_row(r: JournalRecord) -> RecordRow:
    """A JournalRecord as a RecordRow (the slow path's result in the fast path's shape)."""
    return (
        r.terminal_id,
        r.seq,
        r.time_ms,
        r.operator,
        r.line,
        r.place,
        int(r.direction),
        r.decision,
        r.card_id,
        r.credential_sha256,
        r.challenge,
        r.counter,
        r.card_signature,
        r.revocation_generation,
        r.flags,
        r.detail,
        r.hash,
    )
