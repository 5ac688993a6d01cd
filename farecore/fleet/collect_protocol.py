"""The collection point's wire protocol: names, paths, headers and JSON bodies.

Both ends use these: ``farecore collect`` (``farecore.fleet.collect_http``) parses what a
client sends with them, and the gate's courier (``farecore.fleet.upload``) parses the
point's replies with them. Every parser here is strict and bounded: a value that is not
in exactly the one spelling it has (no leading zeros, no sign, no spaces, lowercase hex)
is refused with ``UploadRefused`` naming the problem and the HTTP status to answer with.
Nothing here touches a file, a socket or a clock.

A batch's canonical name is ``<terminal>-<YYYY-MM-DD>.fcb`` (the day's batch, as
``journal export`` would write it) or ``<terminal>-<YYYY-MM-DD>+<first_seq>.fcb`` (a
continuation: records stamped in that day that reached the journal after the day's batch
was handed in).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from farecore.boundedinput import check_json_nesting
from farecore.errors import MalformedInput
from farecore.journal.batch import parse_day
from farecore.journal.layout import MAX_SEQ
from farecore.settlement.partial import MAX_BATCH_BYTES

__all__ = [
    "ACK_FORMAT",
    "MAX_BATCH_BYTES",
    "MAX_PUT_BYTES",
    "MAX_REPLY_BYTES",
    "SHA256_HEADER",
    "STATUS_FORMAT",
    "TIME_HEADER",
    "Ack",
    "BatchName",
    "Partial",
    "UploadRefused",
    "UploadStatus",
    "batch_url_path",
    "head_url_path",
    "parse_ack",
    "parse_batch_name",
    "parse_content_length",
    "parse_content_range",
    "parse_path",
    "parse_reply",
    "parse_sha256",
    "parse_status",
    "parse_terminal",
    "parse_time_header",
]

ACK_FORMAT = "farecore-ack/1"
STATUS_FORMAT = "farecore-upload/1"
TIME_HEADER = "X-Farecore-Time-Ms"
SHA256_HEADER = "X-Farecore-Sha256"
# One PUT carries at most this much; a batch is sent in chunks (the courier's default is
# 1 MiB), so a body is streamed to disk and never held whole in memory.
MAX_PUT_BYTES = 64 << 20
MAX_REPLY_BYTES = 64 << 10  # a reply is a small JSON object
_U64 = (1 << 64) - 1
_I63 = (1 << 63) - 1

_TERMINAL = r"(?:0|[1-9][0-9]{0,19})"
_NAME = re.compile(
    rf"^({_TERMINAL})-([0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}})(?:\+([1-9][0-9]{{0,18}}))?\.fcb$"
)
_PATH = re.compile(rf"^/v1/(batches|heads)/({_TERMINAL})(?:/([^/]{{1,80}}))?$")
_RANGE = re.compile(r"^bytes (0|[1-9][0-9]{0,18})-(0|[1-9][0-9]{0,18})/([1-9][0-9]{0,18})$")
_DIGITS = re.compile(r"^(?:0|[1-9][0-9]{0,18})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class UploadRefused(MalformedInput):
    """A request (or a reply) the protocol refuses; ``status`` is the HTTP status to
    answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class BatchName:
    """A parsed canonical batch name."""

    terminal: int
    day: dt.date
    first_seq: int | None  # a continuation's first seq; None for the day's batch

    @property
    def text(self) -> str:
        more = "" if self.first_seq is None else f"+{self.first_seq}"
        return f"{self.terminal}-{self.day.isoformat()}{more}.fcb"


def parse_terminal(text: str) -> int:
    """A terminal id as a path spells it: decimal, no leading zero, at most uint64."""
    if not re.fullmatch(_TERMINAL, text) or int(text) > _U64:
        raise UploadRefused(f"terminal {text[:40]!r} is not a uint64 in decimal")
    return int(text)


def parse_batch_name(text: str) -> BatchName:
    """``<terminal>-<YYYY-MM-DD>[+<seq>].fcb``, exactly; UploadRefused otherwise."""
    m = _NAME.match(text)
    if m is None:
        raise UploadRefused(f"batch name {text[:100]!r} is not <terminal>-<YYYY-MM-DD>[+<seq>].fcb")
    terminal = parse_terminal(m.group(1))
    try:
        day = parse_day(m.group(2))
    except MalformedInput:
        raise UploadRefused(f"batch name {text!r}: {m.group(2)} is not a day") from None
    if day.isoformat() != m.group(2):
        raise UploadRefused(f"batch name {text!r}: the day is not in its one spelling")
    seq = None if m.group(3) is None else int(m.group(3))
    if seq is not None and seq > MAX_SEQ:
        raise UploadRefused(f"batch name {text!r}: seq beyond {MAX_SEQ}")
    return BatchName(terminal, day, seq)


def parse_path(path: str) -> tuple[str, int, BatchName | None]:
    """A request path: ``("batches", terminal, name)`` or ``("heads", terminal, None)``.

    Exactly ``/v1/batches/<terminal>/<name>`` or ``/v1/heads/<terminal>``: no query, no
    escapes, no dot segments, no doubled slash, and the name's terminal is the path's.
    """
    if len(path) > 200:
        raise UploadRefused("request path is too long", 414)
    m = _PATH.match(path)
    if m is None:
        raise UploadRefused(f"no such resource: {path[:100]!r}", 404)
    kind, terminal = m.group(1), parse_terminal(m.group(2))
    if kind == "heads":
        if m.group(3) is not None:
            raise UploadRefused(f"no such resource: {path[:100]!r}", 404)
        return kind, terminal, None
    if m.group(3) is None:
        raise UploadRefused(f"no such resource: {path[:100]!r}", 404)
    name = parse_batch_name(m.group(3))
    if name.terminal != terminal:
        raise UploadRefused(f"batch {name.text} is not terminal {terminal}'s")
    return kind, terminal, name


def batch_url_path(name: BatchName) -> str:
    return f"v1/batches/{name.terminal}/{name.text}"


def head_url_path(terminal: int) -> str:
    return f"v1/heads/{terminal}"


def parse_content_length(text: str | None, limit: int) -> int:
    """A Content-Length header: required, decimal digits only, at most ``limit``."""
    if text is None:
        raise UploadRefused("Content-Length is required", 411)
    if not _DIGITS.match(text):
        raise UploadRefused(f"Content-Length {text[:40]!r} is not a length")
    value = int(text)
    if value > limit:
        raise UploadRefused(f"body of {value} bytes is larger than {limit}", 413)
    return value


def parse_content_range(text: str | None, max_total: int = MAX_BATCH_BYTES) -> tuple[int, int, int]:
    """``bytes FIRST-LAST/TOTAL`` (inclusive, TOTAL known): ``(first, last, total)``.

    ``first <= last < total <= max_total``; any other spelling is refused.
    """
    if text is None:
        raise UploadRefused("Content-Range is required")
    m = _RANGE.match(text)
    if m is None:
        raise UploadRefused(f"Content-Range {text[:80]!r} is not 'bytes FIRST-LAST/TOTAL'")
    first, last, total = (int(g) for g in m.groups())
    if total > max_total:
        raise UploadRefused(f"a batch of {total} bytes is larger than {max_total}", 413)
    if not first <= last < total:
        raise UploadRefused(f"Content-Range {text!r} is not a range inside the file", 416)
    return first, last, total


def parse_sha256(text: str | None, what: str = SHA256_HEADER) -> bytes:
    if text is None or not _HEX64.match(text):
        raise UploadRefused(f"{what} must be 64 lowercase hex digits")
    return bytes.fromhex(text)


def parse_time_header(text: str | None) -> int | None:
    """The point's clock in a reply (Unix ms), None when absent or not a plain number."""
    if text is None or not _DIGITS.match(text):
        return None
    value = int(text)
    return value if value <= _I63 else None


@dataclass(frozen=True, slots=True)
class Ack:
    """The collection point's word that it holds a verified copy of a batch."""

    terminal: int
    name: str
    day: dt.date
    sha256: bytes
    size: int
    count: int
    first_seq: int
    last_seq: int
    prev_hash: bytes
    tail_hash: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ACK_FORMAT,
            "terminal": self.terminal,
            "name": self.name,
            "day": self.day.isoformat(),
            "sha256": self.sha256.hex(),
            "size": self.size,
            "count": self.count,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "prev_hash": self.prev_hash.hex(),
            "tail_hash": self.tail_hash.hex(),
        }

    def same_records(self, other: Ack) -> bool:
        """Whether both name the same stretch of the same chain (the bytes may differ:
        a P-256 signature is made afresh each time a batch is signed)."""
        return (
            self.terminal,
            self.name,
            self.day,
            self.count,
            self.first_seq,
            self.last_seq,
            self.prev_hash,
            self.tail_hash,
        ) == (
            other.terminal,
            other.name,
            other.day,
            other.count,
            other.first_seq,
            other.last_seq,
            other.prev_hash,
            other.tail_hash,
        )


@dataclass(frozen=True, slots=True)
class Partial:
    """What the point holds of an upload in progress: ``offset`` bytes of ``total``."""

    offset: int
    total: int
    sha256: bytes

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "total": self.total, "sha256": self.sha256.hex()}


@dataclass(frozen=True, slots=True)
class UploadStatus:
    """The body of every reply about one batch."""

    terminal: int
    name: str
    verified: Ack | None
    partial: Partial | None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATUS_FORMAT,
            "terminal": self.terminal,
            "name": self.name,
            "verified": None if self.verified is None else self.verified.to_json(),
            "partial": None if self.partial is None else self.partial.to_json(),
            "error": self.error,
        }


def parse_reply(data: bytes) -> dict[str, Any]:
    """A reply body: one JSON object, at most ``MAX_REPLY_BYTES``, nested at most 3 deep."""
    if len(data) > MAX_REPLY_BYTES:
        raise UploadRefused(f"reply larger than {MAX_REPLY_BYTES} bytes")
    check_json_nesting(data, 3, "reply", UploadRefused, 20)
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UploadRefused("reply is not JSON") from None
    if not isinstance(doc, dict):
        raise UploadRefused("reply is not a JSON object")
    return doc


def _exact(doc: object, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or set(doc) != keys:
        raise UploadRefused(f"{what} does not have exactly the fields {sorted(keys)}")
    return doc


def _int(doc: dict[str, Any], key: str, top: int, what: str) -> int:
    value = doc[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise UploadRefused(f"{what}: {key} is not an integer from 0 to {top}")
    return value


def _hex(doc: dict[str, Any], key: str, what: str) -> bytes:
    value = doc[key]
    if not isinstance(value, str) or not _HEX64.match(value):
        raise UploadRefused(f"{what}: {key} is not 64 lowercase hex digits")
    return bytes.fromhex(value)


_ACK_KEYS = {
    "format",
    "terminal",
    "name",
    "day",
    "sha256",
    "size",
    "count",
    "first_seq",
    "last_seq",
    "prev_hash",
    "tail_hash",
}


def parse_ack(doc: object) -> Ack:
    d = _exact(doc, _ACK_KEYS, "acknowledgement")
    if d["format"] != ACK_FORMAT:
        raise UploadRefused(f"acknowledgement is not {ACK_FORMAT}")
    name = d["name"]
    if not isinstance(name, str):
        raise UploadRefused("acknowledgement: name is not text")
    parsed = parse_batch_name(name)
    day = d["day"]
    if day != parsed.day.isoformat():
        raise UploadRefused("acknowledgement: day is not the name's")
    return Ack(
        terminal=_int(d, "terminal", _U64, "acknowledgement"),
        name=name,
        day=parsed.day,
        sha256=_hex(d, "sha256", "acknowledgement"),
        size=_int(d, "size", MAX_BATCH_BYTES, "acknowledgement"),
        count=_int(d, "count", MAX_SEQ, "acknowledgement"),
        first_seq=_int(d, "first_seq", MAX_SEQ, "acknowledgement"),
        last_seq=_int(d, "last_seq", MAX_SEQ, "acknowledgement"),
        prev_hash=_hex(d, "prev_hash", "acknowledgement"),
        tail_hash=_hex(d, "tail_hash", "acknowledgement"),
    )


def _partial(doc: object) -> Partial:
    d = _exact(doc, {"offset", "total", "sha256"}, "partial upload")
    offset = _int(d, "offset", MAX_BATCH_BYTES, "partial upload")
    total = _int(d, "total", MAX_BATCH_BYTES, "partial upload")
    if offset > total:
        raise UploadRefused("partial upload: offset beyond total")
    return Partial(offset, total, _hex(d, "sha256", "partial upload"))


def parse_status(doc: dict[str, Any]) -> UploadStatus:
    d = _exact(doc, {"format", "terminal", "name", "verified", "partial", "error"}, "status")
    if d["format"] != STATUS_FORMAT:
        raise UploadRefused(f"status is not {STATUS_FORMAT}")
    name = d["name"]
    if not isinstance(name, str):
        raise UploadRefused("status: name is not text")
    parse_batch_name(name)
    error = d["error"]
    if error is not None and not isinstance(error, str):
        raise UploadRefused("status: error is not text")
    return UploadStatus(
        terminal=_int(d, "terminal", _U64, "status"),
        name=name,
        verified=None if d["verified"] is None else parse_ack(d["verified"]),
        partial=None if d["partial"] is None else _partial(d["partial"]),
        error=error,
    )
