"""A batch's framing constants and its header: the canonical JSON a batch is signed
with, the claims read back from it unverified, and the service day it names.

The header is one flat JSON object with sorted keys and no spaces; a batch whose header
is not byte-for-byte in that form is refused (``farecore.journal.batch_verify``). This
module must never read a clock.
"""

from __future__ import annotations

import datetime as dt
import json
import struct

from farecore.boundedinput import check_json_nesting
from farecore.errors import BatchRejected, ConfigError, MalformedFile

_DAY_MS = 86_400_000

__all__ = [
    "BATCH_FORMAT",
    "BATCH_MAGIC",
    "BATCH_SIGNING_TAG",
    "MAX_HEADER",
    "QINGDAO_UTC_OFFSET_MIN",
    "day_bounds_ms",
    "header_bytes",
    "load_header",
    "parse_day",
    "parse_utc_offset",
    "peek_header",
    "peek_terminal_id",
    "service_day",
]

BATCH_MAGIC = b"FCBATCH1"
BATCH_FORMAT = "farecore-batch/1"
BATCH_SIGNING_TAG = b"farecore/batch/v1"
QINGDAO_UTC_OFFSET_MIN = 480
_U32 = struct.Struct(">I")
MAX_HEADER = 1 << 16


def parse_day(text: str) -> dt.date:
    """``YYYY-MM-DD`` to a date; ConfigError-free ValueError with a clear message."""
    try:
        day = dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise MalformedFile(f"day {text!r} is not YYYY-MM-DD") from None
    if not dt.date(1970, 1, 2) <= day < dt.date.max:
        raise MalformedFile(f"day {text!r} is out of range (1970-01-02 to 9999-12-30)")
    return day


def parse_utc_offset(text: str) -> int:
    """``+08:00`` / ``-05:30`` / ``Z`` to minutes east of UTC (ConfigError otherwise)."""
    t = text.strip()
    if t in ("Z", "UTC", "+00:00"):
        return 0
    try:
        sign = {"+": 1, "-": -1}[t[0]]
        hours, minutes = t[1:].split(":")
        if not (hours.isdigit() and minutes.isdigit() and int(minutes) < 60):
            raise ValueError
        value = sign * (int(hours) * 60 + int(minutes))
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"time zone {text!r} must look like +08:00") from None
    if not -14 * 60 <= value <= 14 * 60:
        raise ConfigError(f"time zone {text!r} is out of range")
    return value


def service_day(time_ms: int, utc_offset_min: int) -> dt.date:
    """The local calendar day (the service day) that ``time_ms`` falls in."""
    return dt.date(1970, 1, 1) + dt.timedelta(days=(time_ms + utc_offset_min * 60_000) // _DAY_MS)


def day_bounds_ms(day: dt.date, utc_offset_min: int) -> tuple[int, int]:
    """[start, end) of a local service day in UTC Unix ms."""
    tz = dt.timezone(dt.timedelta(minutes=utc_offset_min))
    start = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
    return int(start.timestamp()) * 1000, int((start + dt.timedelta(days=1)).timestamp()) * 1000


def header_bytes(header: dict[str, object]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


# A canonical header is one flat object of short fields: anything deeper or longer is
# refused before the JSON parser sees it (deep nesting would exhaust its recursion, and
# a long digit run its integer conversion).
_MAX_HEADER_DEPTH = 2


_MAX_DIGITS = 20


def load_header(raw: bytes) -> dict[str, object]:
    """The header object, parsed only once its size, depth and numbers are bounded."""
    check_json_nesting(raw, _MAX_HEADER_DEPTH, "batch header", BatchRejected, _MAX_DIGITS)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BatchRejected("batch header is not JSON") from None
    if not isinstance(header, dict):
        raise BatchRejected(f"batch header does not declare format {BATCH_FORMAT}")
    return header


def _peek(data: bytes) -> dict[str, object] | None:
    """A batch's header as it *claims* to be, unverified; None if it does not parse."""
    if not data.startswith(BATCH_MAGIC) or len(data) < len(BATCH_MAGIC) + 4:
        return None
    (n,) = _U32.unpack_from(data, len(BATCH_MAGIC))
    start = len(BATCH_MAGIC) + 4
    if n > MAX_HEADER:
        return None
    try:
        return load_header(data[start : start + n])
    except BatchRejected:
        return None


def _claimed_id(header: dict[str, object]) -> int | None:
    value = header.get("terminal_id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def peek_header(data: bytes) -> tuple[int, dt.date] | None:
    """The (terminal id, day) a batch *claims*, unverified; None if they do not parse.

    Lets the settlement leave a file for a later night without verifying it.
    """
    header = _peek(data)
    tid = None if header is None else _claimed_id(header)
    day = None if header is None else header.get("day")
    if tid is None or not isinstance(day, str):
        return None
    try:
        return tid, parse_day(day)
    except MalformedFile:
        return None


def peek_terminal_id(data: bytes) -> int | None:
    """The terminal id a batch *claims*, unverified (None if the header does not parse).

    Used only to pick the key to verify with and to name a rejected file's terminal.
    """
    header = _peek(data)
    return None if header is None else _claimed_id(header)
