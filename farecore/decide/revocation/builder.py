"""Build a signed revocation table file from columns of ids, times and reasons.

:func:`build_table` is the one public way to write a table; the CLI and the simulator
both call it. It sorts, refuses duplicate ids, builds the radix index and the filter,
hashes the body, signs the header and writes the file atomically (temp file, fsync,
rename, fsync of the directory), so a gate polling the path never sees half a table.

Duplicate-id policy: a card id may appear once. A second row for the same id stops the
build and names both rows, because two rows for one card (perhaps with different
reasons or times) mean the export is inconsistent, and silently keeping one would hide
that.

This module must never read the clock (the caller passes ``created_at``) and never
leave a partial file under the output name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from farecore.atomicfile import atomic_writer
from farecore.card.keys import SigningKey
from farecore.decide.revocation import _kernels
from farecore.decide.revocation.format import (
    HEADER_SIZE,
    Header,
    Layout,
    RevocationReason,
    filter_bits_for,
    index_bits_for,
    layout_for,
    slot_shift,
)
from farecore.errors import BuildError, KeyFileError

__all__ = ["BuildError", "TableSummary", "build_table"]

_U64 = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1
_KNOWN = np.array(sorted(int(r) for r in RevocationReason), dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class TableSummary:
    """What :func:`build_table` wrote."""

    path: Path
    generation: int
    count: int
    created_at: int
    signer_key_id: int
    body_sha256: str
    file_size: int

    def __post_init__(self) -> None:
        if self.count < 0 or self.file_size < HEADER_SIZE:
            raise ValueError("a table summary needs a count >= 0 and a whole header")


def _row(i: int) -> str:
    return f"row {i}"


def _integer_array(values: Any, name: str, dtype: type[np.generic]) -> npt.NDArray[Any]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise BuildError(f"{name} must be one-dimensional")
    if arr.size == 0:
        return np.zeros(0, dtype=dtype)
    if arr.dtype.kind not in "iu":
        # Floats would have rounded ids above 2^53 already; refuse rather than guess.
        raise TypeError(f"{name} must be an integer array, not {arr.dtype}")
    return arr


def _check_ids(arr: npt.NDArray[Any], row: Callable[[int], str]) -> npt.NDArray[np.uint64]:
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        bad = int(np.flatnonzero(arr < 0)[0])
        raise BuildError(f"{row(bad)}: card id {int(arr[bad])} is negative")
    return np.ascontiguousarray(arr, dtype="<u8")


def _check_times(arr: npt.NDArray[Any], row: Callable[[int], str]) -> npt.NDArray[np.int64]:
    if arr.dtype == np.uint64 and arr.size and arr.max() > _I64_MAX:
        bad = int(np.flatnonzero(arr > _I64_MAX)[0])
        raise BuildError(f"{row(bad)}: revoked_at {int(arr[bad])} is out of range")
    out = np.ascontiguousarray(arr, dtype="<i8")
    if out.size and out.min() < 0:
        bad = int(np.flatnonzero(out < 0)[0])
        raise BuildError(f"{row(bad)}: revoked_at {int(out[bad])} is negative")
    return out


def _check_reasons(arr: npt.NDArray[Any], row: Callable[[int], str]) -> npt.NDArray[np.uint8]:
    ok = np.isin(arr, _KNOWN)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise BuildError(
            f"{row(bad)}: unknown reason code {int(arr[bad])} "
            f"(known: {', '.join(f'{r.value}={r.name.lower()}' for r in RevocationReason)})"
        )
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _sorted_unique(
    ids: npt.NDArray[np.uint64],
    revoked_at: npt.NDArray[np.int64],
    reasons: npt.NDArray[np.uint8],
    row: Callable[[int], str],
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return ids, revoked_at, reasons  # already sorted: skip the argsort of a sorted export
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if dup.size:
        i = int(dup[0])
        first, second = sorted((int(order[i]), int(order[i + 1])))
        raise BuildError(
            f"{row(second)}: card id {int(ids[i])} already appears at {row(first)}; "
            "duplicate ids are refused"
        )
    return ids, revoked_at[order], reasons[order]


def _sections(
    layout: Layout,
    ids: npt.NDArray[np.uint64],
    revoked_at: npt.NDArray[np.int64],
    index: npt.NDArray[np.uint64],
    filt: npt.NDArray[np.uint8],
    reasons: npt.NDArray[np.uint8],
) -> Iterable[memoryview | bytes]:
    """The body, in file order, padding included."""
    parts: list[tuple[int, npt.NDArray[Any]]] = [
        (layout.ids, ids),
        (layout.revoked_at, revoked_at),
        (layout.index, index),
        (layout.filter, filt),
        (layout.reasons, reasons),
    ]
    at = HEADER_SIZE
    for offset, arr in parts:
        if offset > at:
            yield bytes(offset - at)
        yield arr.data.cast("B")
        at = offset + arr.nbytes
    assert at == layout.end


def _checked_columns(
    card_ids: npt.ArrayLike,
    revoked_at: npt.ArrayLike,
    reasons: npt.ArrayLike,
    key: SigningKey,
    generation: int,
    created_at: int,
    row_name: Callable[[int], str],
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    """The arguments checked, and the columns sorted by id with no id twice."""
    if key.role != "revocation":
        raise KeyFileError(f"the table must be signed by a revocation key, not a {key.role} key")
    if not isinstance(generation, int) or not 0 <= generation <= _U64:
        raise ValueError(f"generation must be a uint64, got {generation!r}")
    if not isinstance(created_at, int) or not 0 <= created_at <= _I64_MAX:
        raise ValueError(f"created_at must be non-negative UTC Unix seconds, got {created_at!r}")
    raw_ids = _integer_array(card_ids, "card_ids", np.uint64)
    raw_times = _integer_array(revoked_at, "revoked_at", np.int64)
    raw_reasons = _integer_array(reasons, "reasons", np.uint8)
    if not raw_ids.shape == raw_times.shape == raw_reasons.shape:
        raise BuildError(
            f"columns differ in length: {raw_ids.size} ids, {raw_times.size} times, "
            f"{raw_reasons.size} reasons"
        )
    return _sorted_unique(
        _check_ids(raw_ids, row_name),
        _check_times(raw_times, row_name),
        _check_reasons(raw_reasons, row_name),
        row_name,
    )


def build_table(
    card_ids: npt.ArrayLike,
    revoked_at: npt.ArrayLike,
    reasons: npt.ArrayLike,
    key: SigningKey,
    generation: int,
    created_at: int,
    out: str | os.PathLike[str],
    *,
    row_name: Callable[[int], str] = _row,
) -> TableSummary:
    """Write a signed table of ``card_ids`` (uint64) to ``out``, atomically.

    ``revoked_at`` are UTC Unix seconds (>= 0) and ``reasons`` are :class:`RevocationReason`
    codes, one per id, in any order. ``key`` is the revocation signer (role
    "revocation"). ``generation`` must exceed the generation in force at the gates, or
    they refuse the table as a rollback. ``row_name`` turns a row number into the words
    an error message uses (the CSV reader passes line numbers). Raises
    :class:`BuildError` for bad rows and duplicate ids; then nothing is written.
    """
    ids, times, codes = _checked_columns(
        card_ids, revoked_at, reasons, key, generation, created_at, row_name
    )
    n = int(ids.size)
    index_bits = index_bits_for(n)
    filter_bits = filter_bits_for(n)
    layout = layout_for(n, index_bits, filter_bits)
    min_id = int(ids[0]) if n else 0
    max_id = int(ids[-1]) if n else 0
    shift = slot_shift(min_id, max_id, index_bits)
    index = _kernels.build_index(ids, np.uint64(min_id), shift, layout.buckets)
    filt = np.zeros(layout.filter_bytes, dtype=np.uint8)
    _kernels.build_filter(ids, np.uint64(min_id), slot_shift(min_id, max_id, filter_bits), filt)
    digest = hashlib.sha256()
    for part in _sections(layout, ids, times, index, filt, codes):
        digest.update(part)
    header = Header(
        signer_algorithm=int(key.algorithm),
        index_bits=index_bits,
        filter_bits=filter_bits,
        shift=shift,
        signer_key_id=key.key_id,
        generation=generation,
        created_at=created_at,
        count=n,
        min_id=min_id,
        max_id=max_id,
        body_size=layout.body_size,
        body_sha256=digest.digest(),
    )
    head = header.pack(key.sign(header.signed_bytes()))
    with atomic_writer(out) as fh:
        fh.write(head)
        for part in _sections(layout, ids, times, index, filt, codes):
            fh.write(part)
    return TableSummary(
        Path(out), generation, n, created_at, key.key_id, digest.hexdigest(), layout.end
    )
