"""The byte layout of a revocation table file (``.frt``), and nothing else.

A fixed 256-byte little-endian header, then a body of column sections, each starting on a
64-byte boundary so it can be memory-mapped as a numpy array without copying. The header
carries the SHA-256 of the body and a signature over its first 128 bytes, so one
signature check plus one hash pins every byte of the file. See docs/revocation-format.md.

This module only packs and unpacks bytes. It must never read files, verify signatures or
trust a header it has parsed: :func:`parse_header_unverified` says so in its name.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from farecore.errors import TableRejected

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_INDEX_BITS",
    "SIGNED_SIZE",
    "VERSION",
    "Header",
    "Layout",
    "RevocationReason",
    "filter_bits_for",
    "index_bits_for",
    "layout_for",
    "parse_header_unverified",
    "reason_code",
    "slot_shift",
]

MAGIC = b"FCREVTBL"
VERSION = 1
HEADER_SIZE = 256
SIGNED_SIZE = 128
MAX_INDEX_BITS = 22
_ALIGN = 64
_U64 = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1
# magic, version, header size, signer algorithm, index bits, filter bits, shift,
# signer key id, reserved, generation, created-at, count, min id, max id, body size,
# body SHA-256, 24 reserved bytes.
_SIGNED = struct.Struct("<8sHHBBBBII6Q32s24x")
assert _SIGNED.size == SIGNED_SIZE


class RevocationReason(enum.IntEnum):
    """Why a card was revoked; the code is what the file stores."""

    LOST = 1
    STOLEN = 2
    DECEASED = 3
    ELIGIBILITY_ENDED = 4
    FRAUD = 5
    OTHER = 6


def reason_code(text: str) -> int:
    """A reason given by name (``lost``) or by numeric code (``1``); ValueError otherwise."""
    word = text.strip()
    if word.isdigit():
        code = int(word)
        if code in RevocationReason._value2member_map_:
            return code
        raise ValueError(f"unknown reason code {code} (known: {_known()})")
    try:
        return int(RevocationReason[word.upper()])
    except KeyError:
        raise ValueError(f"unknown reason {text!r} (known: {_known()})") from None


def _known() -> str:
    return ", ".join(f"{r.value}={r.name.lower()}" for r in RevocationReason)


@dataclass(frozen=True, slots=True)
class Layout:
    """Byte offsets (from the start of the file) and sizes of the body sections."""

    count: int
    index_bits: int
    filter_bits: int
    ids: int
    revoked_at: int
    index: int
    filter: int
    reasons: int
    end: int

    @property
    def buckets(self) -> int:
        return 1 << self.index_bits

    @property
    def filter_bytes(self) -> int:
        return (1 << self.filter_bits) // 8

    @property
    def body_size(self) -> int:
        return self.end - HEADER_SIZE


def _align(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def layout_for(count: int, index_bits: int, filter_bits: int) -> Layout:
    """Where each section lives for a table of ``count`` ids (a pure function)."""
    if not 0 <= count <= _I64_MAX // 32:
        raise TableRejected(f"entry count {count} is out of range")
    if not 1 <= index_bits <= MAX_INDEX_BITS:
        raise TableRejected(f"index bits {index_bits} out of range 1..{MAX_INDEX_BITS}")
    if not 6 <= filter_bits <= 40:
        raise TableRejected(f"filter bits {filter_bits} out of range 6..40")
    ids = HEADER_SIZE
    revoked_at = _align(ids + 8 * count)
    index = _align(revoked_at + 8 * count)
    filt = _align(index + 8 * ((1 << index_bits) + 1))
    reasons = _align(filt + (1 << filter_bits) // 8)
    end = reasons + count
    return Layout(count, index_bits, filter_bits, ids, revoked_at, index, filt, reasons, end)


def index_bits_for(count: int) -> int:
    """About four to eight ids per bucket, capped so the index stays small."""
    return max(1, min(MAX_INDEX_BITS, count.bit_length() - 3))


def slot_shift(min_id: int, max_id: int, bits: int) -> int:
    """The shift that maps ``key - min_id`` over [min_id, max_id] onto ``2**bits`` slots."""
    return max(0, (max_id - min_id).bit_length() - bits)


def filter_bits_for(count: int) -> int:
    """16 to 32 bitmap slots per id (a power of two): at most one absent id in 16 passes."""
    return max(6, (16 * count - 1).bit_length()) if count else 6


@dataclass(frozen=True, slots=True)
class Header:
    """The signed header fields. Parsed is not verified: see ``RevocationTable.open``."""

    signer_algorithm: int
    index_bits: int
    filter_bits: int
    shift: int
    signer_key_id: int
    generation: int
    created_at: int
    count: int
    min_id: int
    max_id: int
    body_size: int
    body_sha256: bytes

    def __post_init__(self) -> None:
        for name in ("generation", "count", "min_id", "max_id", "body_size"):
            value = getattr(self, name)
            if not 0 <= value <= _U64:
                raise ValueError(f"{name} must be a uint64, got {value}")
        if not 0 <= self.created_at <= _I64_MAX:
            raise ValueError(f"created_at must be a non-negative int64, got {self.created_at}")
        if not 0 <= self.signer_key_id <= 0xFFFFFFFF:
            raise ValueError("signer key id must be a uint32")
        if not 0 <= self.shift <= 63:
            raise ValueError(f"shift must be 0..63, got {self.shift}")
        if len(self.body_sha256) != 32:
            raise ValueError("body_sha256 must be 32 bytes")
        if self.count and self.min_id > self.max_id:
            raise ValueError("min id is above max id")

    def signed_bytes(self) -> bytes:
        return _SIGNED.pack(
            MAGIC,
            VERSION,
            HEADER_SIZE,
            self.signer_algorithm,
            self.index_bits,
            self.filter_bits,
            self.shift,
            self.signer_key_id,
            0,
            self.generation,
            self.created_at,
            self.count,
            self.min_id,
            self.max_id,
            self.body_size,
            self.body_sha256,
        )

    def pack(self, signature: bytes) -> bytes:
        if len(signature) != 64:
            raise ValueError("a table signature is 64 bytes")
        return self.signed_bytes() + signature + bytes(HEADER_SIZE - SIGNED_SIZE - 64)


def parse_header_unverified(data: bytes) -> tuple[Header, bytes]:
    """Split the first 256 bytes into header fields and the signature; check only shape."""
    if len(data) < HEADER_SIZE:
        raise TableRejected(f"truncated: {len(data)} bytes, a header alone is {HEADER_SIZE}")
    fields = _SIGNED.unpack_from(data, 0)
    magic, version, header_size = fields[0], fields[1], fields[2]
    if magic != MAGIC:
        raise TableRejected(f"not a farecore revocation table (magic {magic!r})")
    if version != VERSION:
        raise TableRejected(f"unsupported table format version {version} (this reads {VERSION})")
    if header_size != HEADER_SIZE:
        raise TableRejected(f"header size {header_size}, expected {HEADER_SIZE}")
    if fields[8] != 0 or any(data[104:SIGNED_SIZE]) or any(data[SIGNED_SIZE + 64 : HEADER_SIZE]):
        raise TableRejected("corrupt header: reserved bytes are not zero")
    try:
        header = Header(*fields[3:8], *fields[9:])
    except ValueError as exc:
        raise TableRejected(f"corrupt header: {exc}") from None
    return header, bytes(data[SIGNED_SIZE : SIGNED_SIZE + 64])
