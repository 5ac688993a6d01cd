"""Build a signed revocation delta: the difference between a base table and the whole
current list.

:func:`build_delta` takes the verified base and the complete current list (the same
columns ``build_table`` takes, checked the same way: no duplicate id, known reasons,
revoked-at >= 0), and writes every change from the base to the current list: ids added
or whose revoked-at or reason changed (an *upsert*), and ids no longer revoked. Because
the delta is computed from the whole list, it is cumulative: it replaces every earlier
delta over the same base. The file is signed and written atomically.

This module must never read the clock (the caller passes ``created_at``) and never leave
a partial file under the output name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from farecore.atomicfile import atomic_writer
from farecore.card.keys import SigningKey
from farecore.decide.revocation.builder import _checked_columns, _row
from farecore.decide.revocation.delta import (
    DELTA_HEADER_SIZE,
    MAX_DELTA_ENTRIES,
    DeltaHeader,
    delta_size,
)
from farecore.decide.revocation.table import RevocationTable
from farecore.errors import BuildError, KeyFileError

__all__ = ["DeltaSummary", "build_delta", "diff_against"]


@dataclass(frozen=True, slots=True)
class DeltaSummary:
    """What :func:`build_delta` wrote."""

    path: Path
    generation: int
    base_generation: int
    created_at: int
    added: int  # ids the base does not hold
    changed: int  # ids the base holds with another revoked-at or reason
    removed: int
    body_sha256: str
    file_size: int

    def __post_init__(self) -> None:
        if min(self.added, self.changed, self.removed) < 0 or self.file_size < DELTA_HEADER_SIZE:
            raise ValueError("a delta summary needs counts >= 0 and a whole header")


@dataclass(frozen=True, slots=True)
class _Diff:
    add_ids: npt.NDArray[np.uint64]
    add_revoked_at: npt.NDArray[np.int64]
    add_reasons: npt.NDArray[np.uint8]
    remove_ids: npt.NDArray[np.uint64]
    changed: int


def diff_against(
    base: RevocationTable,
    ids: npt.NDArray[np.uint64],
    revoked_at: npt.NDArray[np.int64],
    reasons: npt.NDArray[np.uint8],
) -> _Diff:
    """The changes from ``base`` to the sorted, unique current columns."""
    pos = base.find_many(ids)
    held = pos >= 0
    same = np.zeros(ids.size, dtype=bool)
    where = pos[held]
    same[held] = (base.revoked_at[where] == revoked_at[held]) & (
        base.reasons[where] == reasons[held]
    )
    kept = np.ones(base.count, dtype=bool)
    kept[where] = False  # the base's ids still in the list; the rest are removed
    upsert = ~same
    return _Diff(
        np.ascontiguousarray(ids[upsert], dtype="<u8"),
        np.ascontiguousarray(revoked_at[upsert], dtype="<i8"),
        np.ascontiguousarray(reasons[upsert], dtype=np.uint8),
        np.ascontiguousarray(base.ids[kept], dtype="<u8"),
        int(np.count_nonzero(held & upsert)),
    )


def build_delta(
    base: RevocationTable,
    card_ids: npt.ArrayLike,
    revoked_at: npt.ArrayLike,
    reasons: npt.ArrayLike,
    key: SigningKey,
    generation: int,
    created_at: int,
    out: str | os.PathLike[str],
    *,
    row_name: Callable[[int], str] = _row,
) -> DeltaSummary:
    """Write to ``out``, atomically, the signed delta from ``base`` to the current list.

    The columns are the whole current list of revoked ids, as for ``build_table``.
    ``key`` must be the base's signer, and ``generation`` must be above the base's (and
    above every generation in force at the gates). Raises :class:`BuildError` for bad
    rows, duplicate ids, or more changes than a delta may hold (then issue a new base);
    nothing is written then.
    """
    ids, times, codes = _checked_columns(
        card_ids, revoked_at, reasons, key, generation, created_at, row_name
    )
    if key.key_id != base.signer_key_id:
        raise KeyFileError(
            f"the base is signed by key id {base.signer_key_id}; the delta must be too, "
            f"not by key id {key.key_id}"
        )
    if generation <= base.generation:
        raise BuildError(
            f"generation {generation} is not above the base's generation {base.generation}"
        )
    diff = diff_against(base, ids, times, codes)
    n_add, n_remove = int(diff.add_ids.size), int(diff.remove_ids.size)
    if n_add + n_remove > MAX_DELTA_ENTRIES:
        raise BuildError(
            f"{n_add} ids to add or change and {n_remove} to remove: more than the "
            f"{MAX_DELTA_ENTRIES} changes a delta may hold; build a new base table instead"
        )
    parts = [
        diff.add_ids.data.cast("B"),
        diff.add_revoked_at.data.cast("B"),
        diff.remove_ids.data.cast("B"),
        diff.add_reasons.data.cast("B"),
    ]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    header = DeltaHeader(
        signer_algorithm=int(key.algorithm),
        signer_key_id=key.key_id,
        generation=generation,
        created_at=created_at,
        base_generation=base.generation,
        base_header_sha256=hashlib.sha256(base.header_bytes()).digest(),
        n_add=n_add,
        n_remove=n_remove,
        body_size=delta_size(n_add, n_remove) - DELTA_HEADER_SIZE,
        body_sha256=digest.digest(),
    )
    with atomic_writer(out) as fh:
        fh.write(header.pack(key.sign(header.signed_bytes())))
        for part in parts:
            fh.write(part)
    return DeltaSummary(
        Path(out),
        generation,
        base.generation,
        created_at,
        n_add - diff.changed,
        diff.changed,
        n_remove,
        digest.hexdigest(),
        header.file_size,
    )
