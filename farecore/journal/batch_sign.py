"""Writing a signed daily batch: from records, or from a journal's own stored bytes.

``export_batch`` takes a service day's records from a terminal's journal (or one
terminal's chain in a station journal) after checking their chain, and signs them with
that terminal's key; ``encode_batch`` does the same from JournalRecord objects. Both
write the framing of ``farecore.journal.batch_header``. This module must never read a
clock.
"""

from __future__ import annotations

import datetime as dt
import os
import struct

from farecore.card.keys import SigningKey
from farecore.errors import JournalError
from farecore.journal.batch_header import (
    BATCH_FORMAT,
    BATCH_MAGIC,
    BATCH_SIGNING_TAG,
    QINGDAO_UTC_OFFSET_MIN,
    day_bounds_ms,
    header_bytes,
)
from farecore.journal.reader import JournalReader
from farecore.journal.records import JournalRecord, encode_record

__all__ = ["encode_batch", "export_batch"]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


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
    raw_header = header_bytes(header)
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
        credentials = reader.credentials(
            row.credential_sha256 for row, _ in chain if row.credential_sha256 is not None
        )
        return _sign_batch(
            [body for _, body in chain],
            chain[-1][0].hash if chain else prev,
            credentials,
            terminal_id=reader.terminal_id,
            day=day,
            utc_offset_min=utc_offset_min,
            first_seq=first,
            prev_hash=prev,
            key=key,
        )
