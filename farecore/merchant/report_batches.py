"""One file of ``--batches`` opened for the monthly merchant report: a till's verified
batch, a finding naming why it is not one, a duplicate, or a file left alone.

A header is not to be believed until the signature over it verifies, so a file is never
left alone for what its header merely claims. A till's batch is verified in full
(``verify_batch_rows``: framing, signature, every record's bytes, the hash chain). A
batch of a terminal the register says is not a till (a bus, metro or venue gate) is of
no use to the report, and a month's directory may hold thousands: it is left alone once
its registered key's signature over the whole file verifies, without decoding a record
(``_signed_by_gate``). Anything short of that (the terminal a till, another key, a
header not canonical, another UTC offset, any byte changed) goes the full way and is
judged exactly as before. What a gate signed inside its batch, record by record, is the
settlement's to check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Literal

from farecore.card.crypto import SIGNATURE_LENGTH
from farecore.errors import BadSignature, BatchRejected, MalformedInput
from farecore.journal.batch import (
    BATCH_FORMAT,
    BATCH_MAGIC,
    BATCH_SIGNING_TAG,
    BatchRows,
    peek_header,
    verify_batch,
    verify_batch_rows,
)
from farecore.journal.batch_header import header_bytes, load_header
from farecore.journal.records import Direction
from farecore.merchant.findings import Finding
from farecore.merchant.report_inputs import Month, ReportInputs
from farecore.settlement.partial import MAX_BATCH_BYTES
from farecore.settlement.terminals import TerminalInfo

__all__ = ["LeftAlone", "OpenedBatch", "ReadRange", "open_batch"]

# Why a file that is neither a till's batch to read nor a finding is left alone: the same
# bytes as a file already read, a verified batch of a terminal that is not a till, or a
# verified till batch of a day after the read range.
LeftAlone = Literal["duplicate", "not_till", "later"]

_HEADER_AT = len(BATCH_MAGIC) + 4  # the magic, then the header's u32 length
# Every batch ends with the u16 length of its signature and the signature, which every
# scheme makes 64 bytes long.
_SIGNATURE_FIELD = SIGNATURE_LENGTH.to_bytes(2, "big")
_TAIL = len(_SIGNATURE_FIELD) + SIGNATURE_LENGTH


@dataclass(frozen=True, slots=True)
class ReadRange:
    """The service days the report reads: the month and the day either side of it."""

    first: dt.date
    last: dt.date

    @classmethod
    def of(cls, month: Month) -> ReadRange:
        start = dt.date(month.year, month.month, 1)
        nxt = dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)
        return cls(start - dt.timedelta(days=1), nxt)


@dataclass(frozen=True, slots=True)
class OpenedBatch:
    """A till's verified batch of a day up to the read range's last."""

    info: TerminalInfo
    rows: BatchRows
    sha: bytes
    file: str  # the file's name (of the names its bytes have, the one whose path sorts first)
    in_month: bool  # the batch's day is in the month
    read: bool  # its day is in the read range: the month and its two neighbour days


def open_batch(
    path: str, inputs: ReportInputs, days: ReadRange, seen: set[bytes]
) -> OpenedBatch | Finding | LeftAlone:
    """The till batch at ``path``, verified; a finding naming why the file is not one; or
    why it is left alone (``LeftAlone``). ``seen`` holds the SHA-256 of the files opened
    so far, and gains this one's."""
    name = os.path.basename(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return Finding("batch_rejected", detail=f"{name}: not a regular file", file=name)
        if st.st_size > MAX_BATCH_BYTES:
            return Finding("batch_rejected", detail=f"{name}: too large", file=name)
        with open(path, "rb") as f:
            data = f.read(MAX_BATCH_BYTES + 1)
    except OSError as exc:
        return Finding("batch_rejected", detail=f"{name}: {exc.strerror or exc}", file=name)
    sha = hashlib.sha256(data).digest()
    if sha in seen:
        return "duplicate"  # the same bytes under another name: one batch (as survey.py)
    seen.add(sha)
    header = peek_header(data) if len(data) <= MAX_BATCH_BYTES else None
    if header is None:
        return Finding("batch_rejected", batch=sha.hex(), detail=_why_unparsed(data), file=name)
    tid = header[0]
    info = inputs.terminals.get(tid)
    if info is None:
        return Finding(
            "unknown_terminal", tid, batch=sha.hex(), detail="terminal not registered", file=name
        )
    if info.direction != Direction.CLAIM and _signed_by_gate(data, info, inputs.utc_offset_min):
        return "not_till"
    try:
        rows = verify_batch_rows(data, info.key())
        if rows.utc_offset_min != inputs.utc_offset_min:
            raise MalformedInput(
                f"service day in UTC{rows.utc_offset_min:+d} min, not the report's "
                f"{inputs.utc_offset_min:+d}"
            )
    except (MalformedInput, BadSignature) as exc:
        return Finding(
            "batch_rejected", tid, merchant=info.line, batch=sha.hex(), detail=str(exc), file=name
        )
    if info.direction != Direction.CLAIM:
        return "not_till"  # not reached by a batch as a gate signs it (``_signed_by_gate``)
    if rows.day > days.last:
        return "later"
    in_month = inputs.month.of(rows.day) == 0
    return OpenedBatch(info, rows, sha, name, in_month, days.first <= rows.day)


def _signed_by_gate(data: bytes, info: TerminalInfo, utc_offset_min: int) -> bool:
    """Whether ``data`` is a batch as the terminal ``info`` (not a till) signs one: a
    canonical header of the batch format naming that terminal and the report's UTC
    offset, and the signature of its registered key over every byte before the
    signature's length field. The file is then the gate's own, byte for byte, and the
    report has no use for it. False whenever anything differs: the caller then verifies
    the file in full, which names what is wrong.

    Reads only the header and the file's last 66 bytes, and lets the signature scheme
    hash the rest; the records are neither decoded nor chained."""
    if info.direction == Direction.CLAIM:
        return False  # a till's batch is always read in full, whatever it holds
    n = int.from_bytes(data[len(BATCH_MAGIC) : _HEADER_AT], "big")  # peek_header read it
    end = len(data) - _TAIL  # where the gate's signed content ends, if this is its batch
    if _HEADER_AT + n > end or data[end : end + len(_SIGNATURE_FIELD)] != _SIGNATURE_FIELD:
        return False
    raw = data[_HEADER_AT : _HEADER_AT + n]
    try:
        header = load_header(raw)
    except BatchRejected:
        return False
    if (
        header_bytes(header) != raw
        or header.get("format") != BATCH_FORMAT
        or not _is_int(header.get("terminal_id"), info.terminal_id)
        or not _is_int(header.get("utc_offset_min"), utc_offset_min)
    ):
        return False
    signed = b"".join((BATCH_SIGNING_TAG, memoryview(data)[:end]))  # one copy, not two
    try:
        info.key().verify(data[end + len(_SIGNATURE_FIELD) :], signed)
    except BadSignature:
        return False
    return True


def _is_int(value: object, want: int) -> bool:
    """``value`` is the JSON integer ``want`` (not a float or a boolean that equals it)."""
    return type(value) is int and value == want


def _why_unparsed(data: bytes) -> str:
    try:
        verify_batch(data, None)
    except MalformedInput as exc:
        return str(exc)
    return "header names no terminal id"
