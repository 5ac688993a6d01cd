"""The journal record: its fields, the tap it comes from, and its conversions.

``encode_record`` gives the bytes the chain hashes and the signed daily batch carries
(docs/journal-and-batches.md); ``encode_tap`` gives the same bytes straight from a
decision, for the journals' hot path. One parser reads them back
(``farecore.journal.record_bytes``, with the layout): ``decode_record`` builds the
checked JournalRecord, ``decode_record_row`` the settlement's RecordRow (None instead of
an error, for the caller to ask ``decode_record`` why).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from farecore.errors import MalformedFile
from farecore.journal.record_bytes import (
    GENESIS_HASH,
    U64_MAX,
    RecordRow,
    chain_hash,
    credential_hash,
    decode_record_row,
    encode_texts,
    pack_record,
    parse_record,
)

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
    "sql_int",
]


class Direction(enum.IntEnum):
    """Which way the rider went through the gate."""

    BOARD = 1  # bus boarding
    ENTRY = 2  # metro entry
    EXIT = 3  # metro exit
    VISIT = 4  # entry to a venue's site (park, scenic spot, museum)
    CLAIM = 5  # a discount claimed at a merchant's till (verify-only, never paid)

    def __str__(self) -> str:
        return self.name


# A gate's configured role and the direction its records carry. A merchant's till is
# not a gate (``farecore verify``); its records carry Direction.CLAIM.
ROLE_DIRECTION: dict[str, Direction] = {
    "bus": Direction.BOARD,
    "metro_entry": Direction.ENTRY,
    "metro_exit": Direction.EXIT,
    "venue": Direction.VISIT,
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
        if not 0 <= self.terminal_id <= U64_MAX or not 1 <= self.seq <= U64_MAX:
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


def encode_record(r: JournalRecord) -> bytes:
    """The record's canonical bytes (everything but its own hash and prev hash)."""
    return pack_record(
        r.terminal_id,
        r.seq,
        r.time_ms,
        int(r.direction),
        r.card_id,
        r.credential_sha256,
        r.challenge,
        r.counter,
        r.card_signature,
        r.revocation_generation,
        encode_texts(r.operator, r.line, r.place),
        encode_texts(r.decision, ",".join(r.flags), r.detail),
    )


# A gate's place texts, and a decision's closing texts when it has no flags and no detail
# (by reason; None: accepted): most taps encode no text at all.
_PLACE_TEXTS: dict[TapContext, bytes] = {}
_PLAIN_DECISION_TEXTS: dict[Reason | None, bytes] = {}


def encode_tap(
    terminal_id: int, seq: int, decision: Decision, ctx: TapContext, cred_hash: bytes | None
) -> bytes:
    """``encode_record`` of the record a fresh tap makes, without building the record."""
    place = _PLACE_TEXTS.get(ctx)
    if place is None:
        place = _PLACE_TEXTS.setdefault(ctx, encode_texts(ctx.operator, ctx.line, ctx.place))
    flags, detail = decision.flags, decision.detail
    if flags or detail:
        closing = encode_texts(decision.label, ",".join(sorted(flags)), detail[:1000])
    else:
        plain = _PLAIN_DECISION_TEXTS.get(decision.reason)
        if plain is None:
            plain = _PLAIN_DECISION_TEXTS.setdefault(
                decision.reason, encode_texts(decision.label, "", "")
            )
        closing = plain
    return pack_record(
        terminal_id,
        seq,
        decision.time_ms,
        int(ctx.direction),
        decision.card_id,
        cred_hash,
        decision.challenge,
        decision.counter,
        decision.card_signature,
        decision.revocation_generation,
        place,
        closing,
    )


def decode_record(body: bytes, prev_hash: bytes = GENESIS_HASH) -> JournalRecord:
    """Parse canonical record bytes; raise MalformedFile on any deviation.

    The result's ``hash`` is computed from ``prev_hash`` and the body, so a decoded record
    always carries the hash it would have in a chain that starts from ``prev_hash``.
    """
    row = parse_record(body, prev_hash)
    try:
        return JournalRecord(
            terminal_id=row.terminal_id,
            seq=row.seq,
            time_ms=row.time_ms,
            operator=row.operator,
            line=row.line,
            place=row.place,
            direction=Direction(row.direction),
            decision=row.decision,
            card_id=row.card_id,
            credential_sha256=row.credential_sha256,
            challenge=row.challenge,
            counter=row.counter,
            card_signature=row.card_signature,
            revocation_generation=row.revocation_generation,
            flags=row.flags,
            detail=row.detail,
            prev_hash=prev_hash,
            hash=row.hash,
        )
    except ValueError as exc:
        raise MalformedFile(f"journal record does not parse: {exc}") from None


def record_row(r: JournalRecord) -> RecordRow:
    """A JournalRecord as a RecordRow (the slow path's result in the fast path's shape)."""
    return RecordRow(
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


def sql_int(value: int) -> int:
    """A uint64 (a card id) as SQLite stores it: SQLite integers are signed 64-bit."""
    return value - (1 << 64) if value >= 1 << 63 else value
