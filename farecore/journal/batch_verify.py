"""Reading a signed daily batch: every check before a record is believed.

``verify_batch`` checks the framing, the header (canonical, and agreeing with the
content), the terminal's signature, every record's canonical bytes, the sequence range,
the terminal id, the credentials and the hash chain from ``prev_hash`` to
``tail_hash``, and raises BatchRejected or BadSignature naming the fault; it never
returns a batch it has not fully checked. ``verify_batch_rows`` is the same for the
settlement, with the records as plain rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from farecore.card.crypto import PublicKey
from farecore.card.keys import PublicKeyFile
from farecore.errors import BadSignature, BatchRejected, MalformedFile
from farecore.journal.batch_header import (
    BATCH_FORMAT,
    BATCH_MAGIC,
    BATCH_SIGNING_TAG,
    MAX_HEADER,
    QINGDAO_UTC_OFFSET_MIN,
    header_bytes,
    load_header,
    parse_day,
)
from farecore.journal.records import (
    JournalRecord,
    RecordRow,
    credential_hash,
    decode_record,
    decode_record_row,
    record_row,
)

__all__ = ["Batch", "BatchRows", "verify_batch", "verify_batch_rows"]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


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
    if header_len > MAX_HEADER:
        raise BatchRejected("batch header is implausibly long")
    raw_header = cur.take(header_len, "header")
    header = load_header(raw_header)
    if header.get("format") != BATCH_FORMAT:
        raise BatchRejected(f"batch header does not declare format {BATCH_FORMAT}")
    if header_bytes(header) != raw_header:
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
    return _checked_header(header, n_creds, credentials, bodies)


def _checked_header(
    header: dict[str, object], n_creds: int, credentials: dict[bytes, bytes], bodies: list[bytes]
) -> _Opened:
    """The batch its header describes, once the header agrees with the content."""
    n_records = len(bodies)
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
            or row.seq != seq
            or row.terminal_id != tid
            or (row.credential_sha256 is not None and row.credential_sha256 not in creds)
        ):
            break
        append(row)
        prev = row.hash
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
