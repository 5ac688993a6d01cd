"""Signed daily batches: one terminal's service day of journal records, self-contained.

A batch carries the terminal id, the day, the sequence range, the hash chain's link in
(``prev_hash``) and out (``tail_hash``), every record, each distinct credential once, and
the terminal's signature over all of it. ``verify_batch`` checks every one of those and
raises with a specific message; it never returns a batch it has not fully checked.

Days are service days in a stated local time: ``utc_offset_min`` defaults to +08:00
(Qingdao). Records are assigned to days by contiguous sequence ranges (see
docs/journal-and-batches.md), so the batches of one terminal tile its chain with no
overlap and no hole even when the terminal clock stepped backwards. No part of it reads
a clock.

The pieces: the framing constants, the header and the service day
(``farecore.journal.batch_header``), writing and signing (``batch_sign``), reading and
verifying (``batch_verify``). This module gathers their public names.
"""

from __future__ import annotations

from farecore.errors import BatchRejected
from farecore.journal.batch_header import (
    BATCH_FORMAT,
    BATCH_MAGIC,
    BATCH_SIGNING_TAG,
    QINGDAO_UTC_OFFSET_MIN,
    day_bounds_ms,
    parse_day,
    peek_header,
    peek_terminal_id,
)
from farecore.journal.batch_sign import encode_batch, export_batch
from farecore.journal.batch_verify import Batch, BatchRows, verify_batch, verify_batch_rows

__all__ = [
    "BATCH_FORMAT",
    "BATCH_MAGIC",
    "BATCH_SIGNING_TAG",
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
