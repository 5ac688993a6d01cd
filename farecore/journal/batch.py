"""Signed daily batches: one terminal's service day of journal records, self-contained.

A batch carries the terminal id, the day, the sequence range, the hash chain's link in
(``prev_hash``) and out (``tail_hash``), every record, each distinct credential once, and
the terminal's signature over all of it. ``verify_batch`` checks every one of those and
raises with a specific message; it never returns a batch it has not fully checked.

Days are service days in a stated local time: ``utc_offset_min`` defaults to +08:00
(Qingdao). Records are assigned to days by contiguous sequence ranges (see
docs/journal-and-batches.md), so the batches of one terminal tile its chain with no
overlap and no hole even when the terminal clock stepped backwards. This module must
never read a clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from farecore.boundedinput import check_json_nesting
from farecore.card.crypto import PublicKey
from farecore.card.keys import PublicKeyFile, SigningKey
from farecore.errors import BadSignature, BatchRejected, JournalError, MalformedFile
from farecore.journal.terminal import (
    JournalReader,
    JournalRecord,
    RecordRow,
    credential_hash,
    decode_record,
    decode_record_row,
    encode_record,
    record_row,
)

__all__ = [
    "BATCH_FORMAT",
    "BATCH_MAGIC",
    "QINGDAO_UTC_OFFSET_MIN",
    "Batch",
    "BatchRejected",
    "BatchRows",
    "day_bounds_ms",
    "encode_batch",
    "export_batch",
    "parse_day",
    "peek_header",
    "peek_terminal_id",
    "verify_batch",
    "verify_batch_rows",
]

BATCH_MAGIC = b"FCBATCH1"
BATCH_FORMAT = "farecore-batch/1"
BATCH_SIGNING_TAG = b"farecore/journal/batch/v1"
QINGDAO_UTC_OFFSET_MIN = 480
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_MAX_HEADER = 1 << 16


@dataclass(frozen=True, slots=True)
class Batch:
    """A verified batch. ``records`` are in seq order and chain from ``prev_hash``."""

    terminal_id: int
    day: dt.date
    utc_offset_min: int
    first_seq: int
    last_seq: int
    prev_hash: bytes
    tail_hash: bytes
    key_id: int
    records: tuple[JournalRecord, ...]
    credentials: dict[bytes, bytes]
    sha256: bytes

    def __post_init__(self) -> None:
        if self.last_seq - self.first_seq + 1 != len(self.records):
            raise ValueError("seq range and record count disagree")


def parse_day(text: str) -> dt.date:
    """``YYYY-MM-DD`` to a date; ConfigError-free ValueError with a clear message."""
    try:
        day = dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise MalformedFile(f"day {text!r} is not YYYY-MM-DD") from None
    if not dt.date(1970, 1, 2) <= day < dt.date.max:
        raise MalformedFile(f"day {text!r} is out of range (1970-01-02 to 9999-12-30)")
    return day


def day_bounds_ms(day: dt.date, utc_offset_min: int) -> tuple[int, int]:
    """[start, end) of a local service day in UTC Unix ms."""
    tz = dt.timezone(dt.timedelta(minutes=utc_offset_min))
    start = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
    return int(start.timestamp()) * 1000, int((start + dt.timedelta(days=1)).timestamp()) * 1000


def _header_bytes(header: dict[str, object]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def encode_batch(
    records: list[JournalRecord],
    credentials: dict[bytes, bytes],
    *,
    terminal_id: int,
    day: dt.date,
    utc_offset_min: int,
    first_seq: int,
    prev_hash: bytes,
    key: SigningKey,
) -> bytes:
    """Serialise and sign. ``records`` must be ``first_seq…`` in order, chaining."""
    tail = records[-1].hash if records else prev_hash
    return _sign_batch(
        [encode_record(r) for r in records],
        tail,
        credentials,
        terminal_id=terminal_id,
        day=day,
        utc_offset_min=utc_offset_min,
        first_seq=first_seq,
        prev_hash=prev_hash,
        key=key,
    )


def _sign_batch(
    bodies: list[bytes],
    tail: bytes,
    credentials: dict[bytes, bytes],
    *,
    terminal_id: int,
    day: dt.date,
    utc_offset_min: int,
    first_seq: int,
    prev_hash: bytes,
    key: SigningKey,
) -> bytes:
    # The batch from the records' own bytes (as the journal stores them).
    header = {
        "format": BATCH_FORMAT,
        "terminal_id": terminal_id,
        "day": day.isoformat(),
        "utc_offset_min": utc_offset_min,
        "first_seq": first_seq,
        "last_seq": first_seq + len(bodies) - 1,
        "count": len(bodies),
        "prev_hash": prev_hash.hex(),
        "tail_hash": tail.hex(),
        "key_id": key.key_id,
        "algorithm": key.algorithm.label,
        "credentials": len(credentials),
    }
    raw_header = _header_bytes(header)
    parts = [BATCH_MAGIC, _U32.pack(len(raw_header)), raw_header, _U32.pack(len(credentials))]
    for sha in sorted(credentials):
        data = credentials[sha]
        parts += [_U16.pack(len(data)), data]
    parts.append(_U32.pack(len(bodies)))
    for body in bodies:
        parts += [_U32.pack(len(body)), body]
    content = b"".join(parts)
    signature = key.sign(BATCH_SIGNING_TAG + content)
    return content + _U16.pack(len(signature)) + signature


def export_batch(
    journal_path: str | os.PathLike[str],
    day: dt.date,
    key: SigningKey,
    utc_offset_min: int = QINGDAO_UTC_OFFSET_MIN,
    terminal_id: int | None = None,
) -> bytes:
    """The signed batch of ``day`` from a journal, after checking its chain.

    ``terminal_id`` names the terminal to export from a station journal (which holds
    several); for a terminal's own journal it may be left out.

    The day's records are seq ``cut(day) … cut(day+1)-1``, where ``cut(d)`` is the first
    seq timed at or after ``d`` starts: contiguous and gap-free by design, and a record
    whose clock stepped back stays with the records around it.
    """
    if key.role != "terminal":
        raise JournalError(f"batches are signed with a terminal key, not a {key.role} key")
    start, end = day_bounds_ms(day, utc_offset_min)
    with JournalReader(journal_path, terminal_id) as reader:
        if key.key_id != reader.terminal_id:
            raise JournalError(
                f"the key is terminal {key.key_id}'s, not terminal {reader.terminal_id}'s: "
                "a terminal's batch is signed with its own key"
            )
        first, last = reader.day_range(start, end)
        prev = reader.hash_of(first - 1)
        chain = list(reader.rows(first, last)) if last >= first else []
        credentials = reader.credentials(row[9] for row, _ in chain if row[9] is not None)
        return _sign_batch(
            [body for _, body in chain],
            chain[-1][0][-1] if chain else prev,
            credentials,
            terminal_id=reader.terminal_id,
            day=day,
            utc_offset_min=utc_offset_min,
            first_seq=first,
            prev_hash=prev,
            key=key,
        )


# A canonical header is one flat object of short fields: anything deeper or longer is
# refused before the JSON parser sees it (deep nesting would exhaust its recursion, and
# a long digit run its integer conversion).
_MAX_HEADER_DEPTH = 2
_MAX_DIGITS = 20


def _load_header(raw: bytes) -> dict[str, object]:
    """The header object, parsed only once its size, depth and numbers are bounded."""
    check_json_nesting(raw, _MAX_HEADER_DEPTH, "batch header", BatchRejected, _MAX_DIGITS)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BatchRejected("batch header is not JSON") from None
    if not isinstance(header, dict):
        raise BatchRejected(f"batch header does not declare format {BATCH_FORMAT}")
    return header


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise BatchRejected(f"batch is truncated in {what}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise BatchRejected(f"batch is truncated in {what}")
        self.pos += n

    def u16(self, what: str) -> int:
        return int(_U16.unpack(self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(_U32.unpack(self.take(4, what))[0])


def _header_field(header: dict[str, object], name: str, kind: type) -> object:
    value = header.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BatchRejected(f"batch header field {name!r} is missing or not a {kind.__name__}")
    return value


def _parse_hash(header: dict[str, object], name: str) -> bytes:
    text = str(_header_field(header, name, str))
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise BatchRejected(f"batch header field {name!r} is not a 32-byte hex hash")
    return raw


def _peek(data: bytes) -> dict[str, object] | None:
    """A batch's header as it *claims* to be, unverified; None if it does not parse."""
    if not data.startswith(BATCH_MAGIC) or len(data) < len(BATCH_MAGIC) + 4:
        return None
    (n,) = _U32.unpack_from(data, len(BATCH_MAGIC))
    start = len(BATCH_MAGIC) + 4
    if n > _MAX_HEADER:
        return None
    try:
        return _load_header(data[start : start + n])
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


@dataclass(frozen=True, slots=True)
class _Opened:
    """A batch whose framing, header and signature checked; records not yet decoded."""

    terminal_id: int
    day: dt.date
    utc_offset_min: int
    first_seq: int
    last_seq: int
    prev_hash: bytes
    tail_hash: bytes
    key_id: int
    credentials: dict[bytes, bytes]
    bodies: list[bytes]


def _open_batch(data: bytes, terminal_key: PublicKeyFile | PublicKey | None) -> _Opened:
    cur = _Cursor(data)
    if cur.take(len(BATCH_MAGIC), "magic") != BATCH_MAGIC:
        raise BatchRejected("not a farecore batch (bad magic)")
    header_len = cur.u32("header length")
    if header_len > _MAX_HEADER:
        raise BatchRejected("batch header is implausibly long")
    raw_header = cur.take(header_len, "header")
    header = _load_header(raw_header)
    if header.get("format") != BATCH_FORMAT:
        raise BatchRejected(f"batch header does not declare format {BATCH_FORMAT}")
    if _header_bytes(header) != raw_header:
        raise BatchRejected("batch header is not in canonical form")
    # First walk the framing holding nothing, and check the signature: an unsigned file,
    # however many records it claims, costs no memory before it is refused.
    body_start = cur.pos
    n_creds = cur.u32("credential count")
    for _ in range(n_creds):
        cur.skip(cur.u16("credential length"), "credential")
    n_records = cur.u32("record count")
    _skip_bodies(cur, n_records)
    content_end = cur.pos
    sig = cur.take(cur.u16("signature length"), "signature")
    if cur.pos != len(data):
        raise BatchRejected(f"batch has {len(data) - cur.pos} bytes after the signature")
    if terminal_key is not None:
        key = terminal_key.key() if isinstance(terminal_key, PublicKeyFile) else terminal_key
        try:
            key.verify(sig, BATCH_SIGNING_TAG + data[:content_end])
        except BadSignature:
            raise BadSignature("batch signature does not verify with the terminal key") from None
    cur.pos = body_start
    cur.u32("credential count")
    credentials: dict[bytes, bytes] = {}
    for _ in range(n_creds):
        cred = cur.take(cur.u16("credential length"), "credential")
        credentials[credential_hash(cred)] = cred
    cur.u32("record count")
    bodies = _bodies(cur, n_records)
    terminal_id = int(_header_field(header, "terminal_id", int))  # type: ignore[call-overload]
    first_seq = int(_header_field(header, "first_seq", int))  # type: ignore[call-overload]
    last_seq = int(_header_field(header, "last_seq", int))  # type: ignore[call-overload]
    offset = int(_header_field(header, "utc_offset_min", int))  # type: ignore[call-overload]
    key_id = int(_header_field(header, "key_id", int))  # type: ignore[call-overload]
    day = parse_day(str(_header_field(header, "day", str)))
    prev_hash = _parse_hash(header, "prev_hash")
    tail_hash = _parse_hash(header, "tail_hash")
    if header.get("count") != n_records or header.get("credentials") != n_creds:
        raise BatchRejected("batch header counts disagree with its content")
    if len(credentials) != n_creds:
        raise BatchRejected("batch lists a credential twice")
    if first_seq < 1 or last_seq - first_seq + 1 != n_records:
        raise BatchRejected(
            f"batch seq range {first_seq}..{last_seq} does not match {n_records} records"
        )
    if not -14 * 60 <= offset <= 14 * 60:
        raise BatchRejected(f"batch utc_offset_min {offset} is out of range")
    return _Opened(
        terminal_id,
        day,
        offset,
        first_seq,
        last_seq,
        prev_hash,
        tail_hash,
        key_id,
        credentials,
        bodies,
    )


def _skip_bodies(cur: _Cursor, n_records: int) -> None:
    """Step over the record bodies, checking only that each fits in the file."""
    data, pos, end = cur.data, cur.pos, len(cur.data)
    for _ in range(n_records):
        if pos + 4 > end:
            cur.pos = pos
            cur.take(4, "record length")  # raises, with the cursor's message
        pos += 4 + int.from_bytes(data[pos : pos + 4], "big")
        if pos > end:
            raise BatchRejected("batch is truncated in record")
    cur.pos = pos


def _bodies(cur: _Cursor, n_records: int) -> list[bytes]:
    """The record bodies; the same checks and messages as ``_Cursor``, without a call each."""
    data, pos, end = cur.data, cur.pos, len(cur.data)
    out: list[bytes] = []
    for _ in range(n_records):
        if pos + 4 > end:
            cur.pos = pos
            cur.take(4, "record length")  # raises, with the cursor's message
        n = int.from_bytes(data[pos : pos + 4], "big")
        pos += 4
        if pos + n > end:
            raise BatchRejected("batch is truncated in record")
        out.append(data[pos : pos + n])
        pos += n
    cur.pos = pos
    return out


def _source_bytes(source: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise BatchRejected(f"cannot read batch {source}: {exc.strerror}") from None


def verify_batch(
    source: str | os.PathLike[str] | bytes, terminal_key: PublicKeyFile | PublicKey | None
) -> Batch:
    """Parse and fully check a batch; raise BatchRejected or BadSignature naming the fault.

    ``terminal_key`` None skips only the signature check (for inspecting a file whose
    key is not at hand); the settlement always passes the key.
    """
    data = _source_bytes(source)
    b = _open_batch(data, terminal_key)
    records: list[JournalRecord] = []
    prev = b.prev_hash
    for i, body in enumerate(b.bodies):
        expected_seq = b.first_seq + i
        try:
            record = decode_record(body, prev)
        except MalformedFile as exc:
            raise BatchRejected(f"record {expected_seq}: {exc}") from None
        if record.seq != expected_seq:
            raise BatchRejected(
                f"record order broken: seq {record.seq} where {expected_seq} belongs"
            )
        if record.terminal_id != b.terminal_id:
            raise BatchRejected(f"record {record.seq} names terminal {record.terminal_id}")
        if record.credential_sha256 is not None and record.credential_sha256 not in b.credentials:
            raise BatchRejected(f"record {record.seq} refers to a credential not in the batch")
        records.append(record)
        prev = record.hash
    if prev != b.tail_hash:
        raise BatchRejected("hash chain does not reach the declared tail hash")
    return Batch(
        terminal_id=b.terminal_id,
        day=b.day,
        utc_offset_min=b.utc_offset_min,
        first_seq=b.first_seq,
        last_seq=b.last_seq,
        prev_hash=b.prev_hash,
        tail_hash=b.tail_hash,
        key_id=b.key_id,
        records=tuple(records),
        credentials=b.credentials,
        sha256=hashlib.sha256(data).digest(),
    )


@dataclass(frozen=True, slots=True)
class BatchRows:
    """A verified batch with its records as RecordRow tuples (see ``verify_batch_rows``)."""

    terminal_id: int
    day: dt.date
    first_seq: int
    last_seq: int
    prev_hash: bytes
    tail_hash: bytes
    rows: list[RecordRow]
    credentials: dict[bytes, bytes]
    utc_offset_min: int = QINGDAO_UTC_OFFSET_MIN

    def __post_init__(self) -> None:
        if self.last_seq - self.first_seq + 1 != len(self.rows):
            raise ValueError("seq range and record count disagree")


def verify_batch_rows(data: bytes, terminal_key: PublicKeyFile | PublicKey) -> BatchRows:
    """``verify_batch`` for the settlement: the same checks, the same errors, plain rows.

    Records are decoded straight into tuples. Any record the fast decoder is unsure of
    sends the whole batch through ``verify_batch``, so a rejected batch is rejected with
    exactly the message ``verify_batch`` gives, and an odd but valid one still verifies.
    """
    b = _open_batch(data, terminal_key)
    rows: list[RecordRow] = []
    append = rows.append
    prev, seq, tid, creds = b.prev_hash, b.first_seq, b.terminal_id, b.credentials
    for body in b.bodies:
        row = decode_record_row(body, prev)
        if (
            row is None
            or row[1] != seq
            or row[0] != tid
            or (row[9] is not None and row[9] not in creds)
        ):
            break
        append(row)
        prev = row[16]
        seq += 1
    else:
        if prev == b.tail_hash:
            return BatchRows(
                tid,
                b.day,
                b.first_seq,
                b.last_seq,
                b.prev_hash,
                b.tail_hash,
                rows,
                creds,
                b.utc_offset_min,
            )
    # The slow path raises the precise error (or, for a valid oddity, verifies it).
    full = verify_batch(data, terminal_key)
    return BatchRows(
        full.terminal_id,
        full.day,
        full.first_seq,
        full.last_seq,
        full.prev_hash,
        full.tail_hash,
        [record_row(r) for r in full.records],
        full.credentials,
        full.utc_offset_min,
    )
