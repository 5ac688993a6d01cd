"""A revocation view: a verified base table with a verified delta on top of it.

The view is what a gate decides from when it holds a base and a delta: its generation
and created-at are the delta's, and a lookup answers from the delta's changes first (a
dict of a few thousand ids at most) and from the memory-mapped base for every other id.
Nothing of the base is copied or rebuilt, so a view over a 10 M-id base is made in the
time it takes to check the delta against the base (a batch lookup of the delta's ids).

:meth:`RevocationView.over` refuses a delta that does not name this exact base (by
generation and by the SHA-256 of the base's signed header), that removes an id the base
does not hold, or whose signer is not the base's.

The view is immutable and implements ``farecore.decide.checks.RevocationSnapshot``. This
module must never serve a view whose delta and base were not both verified.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable
from pathlib import Path
from typing import SupportsIndex

import numpy as np
import numpy.typing as npt

from farecore.decide.checks import RevocationEntry
from farecore.decide.revocation.delta import RevocationDelta
from farecore.decide.revocation.table import RevocationTable
from farecore.errors import TableRejected

__all__ = ["RevocationInForce", "RevocationView"]


class _Column:
    """A column of the view indexed by the positions ``RevocationView.find_many`` gives:
    the base's positions first, then the delta's added entries."""

    __slots__ = ("_base", "_delta")

    def __init__(self, base: npt.NDArray[np.generic], delta: npt.NDArray[np.generic]) -> None:
        self._base = base
        self._delta = delta

    def __len__(self) -> int:
        return int(self._base.shape[0] + self._delta.shape[0])

    def __getitem__(self, position: SupportsIndex) -> int:
        pos = operator.index(position)
        n = self._base.shape[0]
        if 0 <= pos < n:
            return int(self._base[pos])
        if n <= pos < len(self):
            return int(self._delta[pos - n])
        raise IndexError(f"position {pos} is outside the view (0..{len(self) - 1})")


class RevocationView:
    """A base table and a delta over it, both verified. Build it with :meth:`over`."""

    __slots__ = (
        "_added_new",
        "_overlay",
        "base",
        "delta",
        "lookup",
        "path",
        "source",
    )

    _added_new: int
    _overlay: dict[int, int]
    base: RevocationTable
    delta: RevocationDelta
    path: Path
    """The delta's file (the gate's copy in its store, when there is one)."""
    source: Path
    """The published delta file the view came from (``path`` itself unless it is a copy)."""
    lookup: Callable[[int], RevocationEntry | None]
    """``lookup(card_id)``: the entry, or None (``RevocationSnapshot.lookup``)."""

    def __init__(self) -> None:
        raise TypeError("use RevocationView.over(base, delta)")

    @classmethod
    def over(
        cls, base: RevocationTable, delta: RevocationDelta, path: Path | None = None
    ) -> RevocationView:
        """The view of ``delta`` over ``base``; TableRejected if the delta does not fit it.

        ``path`` names the delta's file in messages and in the view (default: the
        delta's own path).
        """
        where = path or delta.path or Path("delta")
        h = delta.header
        if h.signer_key_id != base.signer_key_id:
            raise TableRejected(
                f"{where}: signed by key id {h.signer_key_id}, its base {base.path} by "
                f"key id {base.signer_key_id}"
            )
        if h.base_generation != base.generation:
            raise TableRejected(
                f"{where}: a delta over base generation {h.base_generation}, not over "
                f"generation {base.generation} ({base.path})"
            )
        if hashlib.sha256(base.header_bytes()).digest() != h.base_header_sha256:
            raise TableRejected(
                f"{where}: names another base of generation {h.base_generation} than "
                f"{base.path} (the SHA-256 of its signed header differs)"
            )
        if delta.remove_ids.size:
            missing = np.flatnonzero(base.find_many(delta.remove_ids) < 0)
            if missing.size:
                card = int(delta.remove_ids[int(missing[0])])
                raise TableRejected(
                    f"{where}: removes card id {card}, which its base does not hold"
                )
        upserts = int(np.count_nonzero(base.find_many(delta.add_ids) >= 0))
        view = object.__new__(cls)
        view.base = base
        view.delta = delta
        view.path = view.source = where
        view._added_new = int(delta.add_ids.size) - upserts
        # One dict of every changed id, built by C-level iteration and holding only ints
        # (``revoked_at << 8 | reason``, -1 for a removed id): nothing in it for the
        # garbage collector to track, so putting a view in force sets off no collection.
        packed = (delta.add_revoked_at.astype(object) << 8) | delta.add_reasons.astype(object)
        overlay: dict[int, int] = dict.fromkeys(delta.remove_ids.tolist(), -1)
        overlay.update(zip(delta.add_ids.tolist(), packed.tolist(), strict=True))
        view._overlay = overlay
        view.lookup = base.overlaid_lookup(overlay)
        return view

    # --- RevocationSnapshot ---------------------------------------------------------

    @property
    def generation(self) -> int:
        return self.delta.generation

    @property
    def created_at(self) -> int:
        return self.delta.created_at

    # --- more than the protocol -----------------------------------------------------

    @property
    def count(self) -> int:
        """How many ids the view holds revoked."""
        return self.base.count + self._added_new - int(self.delta.remove_ids.size)

    def __len__(self) -> int:
        return self.count

    @property
    def signer_key_id(self) -> int:
        return self.base.signer_key_id

    def find_many(self, card_ids: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Positions (or -1) of every id of a uint64 array: a base position for an id
        the base holds and the delta leaves alone, ``len(base) + i`` for the delta's
        i-th added id. :attr:`revoked_at` and :attr:`reasons` read these positions."""
        keys = np.ascontiguousarray(card_ids)
        out = self.base.find_many(keys)
        for ids, added in ((self.delta.remove_ids, False), (self.delta.add_ids, True)):
            if not ids.size:
                continue
            pos = np.searchsorted(ids, keys)
            hit = ids[np.minimum(pos, ids.size - 1)] == keys
            out[hit] = pos[hit] + self.base.count if added else -1
        return out

    def revoked_at_many(self, card_ids: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """The revoked-at time of every id of a uint64 array, or -1 where it is absent."""
        found = self.find_many(card_ids)
        out = np.full(found.shape[0], -1, dtype=np.int64)
        n = self.base.count
        in_base = (found >= 0) & (found < n)
        out[in_base] = self.base.revoked_at[found[in_base]]
        added = found >= n
        out[added] = self.delta.add_revoked_at[found[added] - n]
        return out

    @property
    def revoked_at(self) -> _Column:
        """Revoked-at times by the positions :meth:`find_many` gives."""
        return _Column(self.base.revoked_at, self.delta.add_revoked_at)

    @property
    def reasons(self) -> _Column:
        """Reason codes by the positions :meth:`find_many` gives."""
        return _Column(self.base.reasons, self.delta.add_reasons)

    def floor_mark(self) -> tuple[int, str, str]:
        """What a gate's marks record when this view goes in force: (generation, base copy
        name, delta copy name)."""
        return self.generation, self.base.path.name, self.path.name

    def describe(self) -> dict[str, object]:
        """The facts ``farecore revocation info --json`` prints for a delta over its base."""
        facts = self.delta.describe()
        facts.update(
            {
                "path": str(self.path),
                "kind": "view",
                "count": self.count,
                "base_path": str(self.base.path),
                "base_count": self.base.count,
                "base_body_sha256": self.base.body_sha256,
            }
        )
        return facts

    def __repr__(self) -> str:
        return (
            f"RevocationView({str(self.path)!r}, generation={self.generation}, "
            f"base generation={self.base.generation}, count={self.count})"
        )


RevocationInForce = RevocationTable | RevocationView
"""What a gate decides from: a table, or a view of a delta over its base table."""
