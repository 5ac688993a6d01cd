"""Open, verify and query one revocation table file, memory-mapped and never copied.

``RevocationTable.open`` checks everything before it returns: shape, signer key id and
algorithm, the header signature, file size, the body SHA-256, and every structural
promise of the body (sorted unique ids, index, filter, reason codes). A table that fails
any of them raises :class:`TableRejected` with a message that says which.

The verified table is immutable and implements ``farecore.decide.checks.RevocationSnapshot``.
Its columns are read-only numpy views of one shared, read-only mapping, so any number of
gate processes on a host share one copy in the page cache.

This module must never write a table, read the clock, or serve bytes it has not
verified. A mapping sees whatever is later written to its file, and a truncation under
it is a SIGBUS: so a gate opens only its own read-only copy
(``farecore.decide.revocation.store``), never the published file.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from farecore.card.keys import PublicKeyFile
from farecore.decide.checks import RevocationEntry
from farecore.decide.revocation import _kernels
from farecore.decide.revocation.filecheck import (
    check_body_hash,
    file_identity,
    open_regular,
    signed_header,
)
from farecore.decide.revocation.format import (
    HEADER_SIZE,
    Header,
    Layout,
    RevocationReason,
    slot_shift,
)
from farecore.errors import TableChanged, TableRejected

__all__ = ["RevocationTable", "TableChanged", "open_regular", "signed_header"]

_log = logging.getLogger(__name__)

_M64 = (1 << 64) - 1
_PARALLEL_CHECK_FROM = 200_000
_KNOWN_REASONS = np.zeros(256, dtype=np.uint8)
_KNOWN_REASONS[[int(r) for r in RevocationReason]] = 1
_PROBLEMS = {
    1: "card ids are not sorted and unique (position {})",
    2: "min/max id in the header do not match the id column",
    3: "lookup index is inconsistent (entry {})",
    4: "filter misses the id at position {}",
    5: "negative revoked-at at position {}",
    6: "unknown reason code at position {}",
}


class RevocationTable:
    """One verified, memory-mapped revocation table. Build it with :meth:`open`."""

    __slots__ = (
        "_filter",
        "_filter_mv",
        "_fshift",
        "_header",
        "_index",
        "_layout",
        "_max",
        "_min",
        "_mmap",
        "_reasons",
        "_revoked_at",
        "_shift",
        "_u_max",
        "_u_min",
        "identity",
        "ids",
        "lookup",
        "path",
        "source",
    )

    ids: npt.NDArray[np.uint64]
    path: Path
    source: Path
    """The published file this table came from (``path`` itself unless it is a copy)."""
    identity: tuple[int, int, int, int]
    """(device, inode, size, mtime_ns) of the file as it was verified."""
    lookup: Callable[[int], RevocationEntry | None]
    """``lookup(card_id)``: the entry, or None (``RevocationSnapshot.lookup``)."""

    def __init__(self) -> None:
        raise TypeError("use RevocationTable.open(path, signer)")

    @classmethod
    def open(cls, path: str | os.PathLike[str], signer: PublicKeyFile) -> RevocationTable:
        """Map and fully verify the table at ``path`` against ``signer``.

        ``signer`` is the revocation-list signer's public key file (role "revocation").
        Raises :class:`TableRejected` naming the first check that failed.
        """
        p = Path(path)
        if signer.role != "revocation":
            raise TableRejected(f"signer key has role {signer.role!r}; 'revocation' is needed")
        fd = open_regular(p)
        try:
            return cls._open_fd(p, fd, signer)
        finally:
            os.close(fd)

    @classmethod
    def _open_fd(cls, p: Path, fd: int, signer: PublicKeyFile) -> RevocationTable:
        started = time.perf_counter()
        before = os.fstat(fd)
        size = before.st_size
        if size == 0:
            raise TableRejected(f"{p}: empty file (zero length)")
        header, layout = signed_header(p, os.pread(fd, HEADER_SIZE, 0), size, signer)
        try:
            mm = mmap.mmap(
                fd,
                size,
                flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                prot=mmap.PROT_READ,
            )
        except (OSError, ValueError) as exc:
            raise TableRejected(f"{p}: cannot map: {exc}") from None
        table = object.__new__(cls)
        table._bind(p, mm, header, layout)
        if header.count < _PARALLEL_CHECK_FROM:
            check_body_hash(p, fd, header)
            table._check_structure()
        else:
            # Hashing and the structure walk both release the GIL: run them side by side.
            problems: list[TableRejected] = []
            walker = threading.Thread(target=table._check_structure, args=(problems,))
            walker.start()
            try:
                check_body_hash(p, fd, header)
            finally:
                walker.join()
            if problems:
                raise problems[0]
        after = os.fstat(fd)
        try:
            now_at_path = os.stat(p)
        except OSError:
            now_at_path = None
        if file_identity(after) != file_identity(before) or (
            now_at_path is None or file_identity(now_at_path) != file_identity(before)
        ):
            raise TableChanged(f"{p}: replaced or rewritten while it was being read")
        table.identity = file_identity(before)
        _log.debug(
            "%s: generation %d, %d ids, verified and mapped in %.3f s",
            p,
            header.generation,
            header.count,
            time.perf_counter() - started,
        )
        return table

    def _bind(self, p: Path, mm: mmap.mmap, header: Header, layout: Layout) -> None:
        n = header.count
        self.path = self.source = p
        self._mmap = mm
        self._header = header
        self._layout = layout
        self.ids = np.frombuffer(mm, dtype="<u8", count=n, offset=layout.ids)
        self._revoked_at = np.frombuffer(mm, dtype="<i8", count=n, offset=layout.revoked_at)
        self._index = np.frombuffer(mm, dtype="<u8", count=layout.buckets + 1, offset=layout.index)
        filt = np.frombuffer(mm, dtype=np.uint8, count=layout.filter_bytes, offset=layout.filter)
        self._reasons = np.frombuffer(mm, dtype=np.uint8, count=n, offset=layout.reasons)
        self._filter = filt
        self._filter_mv = memoryview(mm)[layout.filter : layout.filter + layout.filter_bytes]
        self._shift = header.shift
        self._fshift = slot_shift(header.min_id, header.max_id, header.filter_bits)
        # An empty table gets an empty id range, so the range check answers every lookup.
        self._min, self._max = (header.min_id, header.max_id) if n else (1, 0)
        self._u_min = np.uint64(header.min_id)
        self._u_max = np.uint64(header.max_id)
        self.lookup = self._make_lookup()

    def _check_structure(self, problems: list[TableRejected] | None = None) -> None:
        problem, where = _kernels.verify_body(
            self.ids,
            self._revoked_at,
            self._reasons,
            self._index,
            self._filter,
            self._u_min,
            self._u_max,
            self._shift,
            self._fshift,
            _KNOWN_REASONS,
        )
        if problem:
            exc = TableRejected(f"{self.path}: corrupt body: {_PROBLEMS[problem].format(where)}")
            if problems is None:
                raise exc
            problems.append(exc)

    # --- RevocationSnapshot ---------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._header.generation

    @property
    def created_at(self) -> int:
        return self._header.created_at

    def _make_lookup(self) -> Callable[[int], RevocationEntry | None]:
        # A closure over locals: the per-tap path pays no attribute lookups on self.
        lo, hi, fshift, filt = self._min, self._max, self._fshift, self._filter_mv
        entry = RevocationEntry
        revoked_at, reasons = self._revoked_at, self._reasons
        if sys.byteorder != "little":  # the memoryviews below read native order
            return self._kernel_lookup()
        # One call into a numba dispatcher costs ~2 µs of argument typing, more than the
        # whole search, so a single lookup walks the same radix index and bucket with
        # C-level bisect over memoryviews of the mapped columns (no copy). The batch
        # kernel and ``find`` keep the numba path; tests check both against a set.
        ids = self.ids.data.cast("B").cast("Q")
        index = self._index.data.cast("B").cast("Q")
        shift = self._shift
        search = bisect.bisect_left

        def lookup(card_id: int) -> RevocationEntry | None:
            """The entry for ``card_id``, or None. Most absent ids cost one bitmap probe."""
            if lo <= card_id <= hi:
                slot = (card_id - lo) >> fshift
                if (filt[slot >> 3] >> (slot & 7)) & 1:
                    bucket = (card_id - lo) >> shift
                    end = index[bucket + 1]
                    pos = search(ids, card_id, index[bucket], end)
                    if pos < end and ids[pos] == card_id:
                        return entry(card_id, int(revoked_at[pos]), int(reasons[pos]))
            return None

        return lookup

    def overlaid_lookup(
        self, overlay: Mapping[int, int]
    ) -> Callable[[int], RevocationEntry | None]:
        """A lookup that answers from ``overlay`` first and from this table for every
        other id. The overlay maps a card id to ``revoked_at << 8 | reason``, or to -1 for
        an id no longer revoked: plain ints, which the garbage collector never scans.

        ``RevocationView`` uses it: one dict probe per tap on top of the table's own steps,
        in the same frame (no second call), so a view looks up about as fast as a table.
        """
        lo, hi, fshift, filt = self._min, self._max, self._fshift, self._filter_mv
        entry = RevocationEntry
        revoked_at, reasons = self._revoked_at, self._reasons
        if sys.byteorder != "little":
            plain = self._kernel_lookup()

            def overlaid(card_id: int) -> RevocationEntry | None:
                if card_id in overlay:
                    hit = overlay[card_id]
                    return None if hit < 0 else entry(card_id, hit >> 8, hit & 0xFF)
                return plain(card_id)

            return overlaid
        ids = self.ids.data.cast("B").cast("Q")
        index = self._index.data.cast("B").cast("Q")
        shift = self._shift
        search = bisect.bisect_left

        def lookup(card_id: int) -> RevocationEntry | None:
            """The entry for ``card_id``, or None: the overlay's word, else the table's."""
            if card_id in overlay:
                hit = overlay[card_id]
                return None if hit < 0 else entry(card_id, hit >> 8, hit & 0xFF)
            if lo <= card_id <= hi:
                slot = (card_id - lo) >> fshift
                if (filt[slot >> 3] >> (slot & 7)) & 1:
                    bucket = (card_id - lo) >> shift
                    end = index[bucket + 1]
                    pos = search(ids, card_id, index[bucket], end)
                    if pos < end and ids[pos] == card_id:
                        return entry(card_id, int(revoked_at[pos]), int(reasons[pos]))
            return None

        return lookup

    def _kernel_lookup(self) -> Callable[[int], RevocationEntry | None]:
        lo, hi, fshift, filt = self._min, self._max, self._fshift, self._filter_mv
        find, entry = _kernels.find_one, RevocationEntry
        ids, index, u_min, u_max, shift = (
            self.ids,
            self._index,
            self._u_min,
            self._u_max,
            self._shift,
        )
        revoked_at, reasons = self._revoked_at, self._reasons

        def lookup(card_id: int) -> RevocationEntry | None:
            if lo <= card_id <= hi:
                slot = (card_id - lo) >> fshift
                if (filt[slot >> 3] >> (slot & 7)) & 1:
                    pos = find(ids, index, u_min, u_max, shift, card_id)
                    if pos >= 0:
                        return entry(card_id, int(revoked_at[pos]), int(reasons[pos]))
            return None

        return lookup

    # --- more than the protocol ---------------------------------------------------------

    def find(self, card_id: int) -> int:
        """Position of ``card_id`` in the id column, or -1 (the kernel, without the filter)."""
        if not 0 <= card_id <= _M64:
            return -1
        return int(
            _kernels.find_one(self.ids, self._index, self._u_min, self._u_max, self._shift, card_id)
        )

    def find_many(self, card_ids: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Positions (or -1) of every id of a uint64 array, through the batch kernel."""
        keys = np.ascontiguousarray(card_ids)
        if keys.dtype != np.uint64:
            raise TypeError(f"card ids must be a uint64 array, not {keys.dtype}")
        out = np.empty(keys.shape[0], dtype=np.int64)
        _kernels.find_many(
            self.ids,
            self._index,
            self._filter,
            self._u_min,
            self._u_max,
            self._shift,
            self._fshift,
            keys,
            out,
        )
        return out

    def revoked_at_many(self, card_ids: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """The revoked-at time of every id of a uint64 array, or -1 where it is absent."""
        found = self.find_many(card_ids)
        out = np.full(found.shape[0], -1, dtype=np.int64)
        hit = found >= 0
        out[hit] = self._revoked_at[found[hit]]
        return out

    def floor_mark(self) -> tuple[int, str]:
        """What a gate's marks record when this table goes in force: (generation, copy name)."""
        return self._header.generation, self.path.name

    @property
    def revoked_at(self) -> npt.NDArray[np.int64]:
        return self._revoked_at

    @property
    def reasons(self) -> npt.NDArray[np.uint8]:
        return self._reasons

    @property
    def count(self) -> int:
        return self._header.count

    def __len__(self) -> int:
        return self._header.count

    @property
    def signer_key_id(self) -> int:
        return self._header.signer_key_id

    @property
    def body_sha256(self) -> str:
        return self._header.body_sha256.hex()

    def header_bytes(self) -> bytes:
        """The verified header, signature included (256 bytes)."""
        return bytes(self._mmap[:HEADER_SIZE])

    @property
    def file_size(self) -> int:
        return self._layout.end

    def describe(self) -> dict[str, object]:
        """The facts ``farecore revocation info --json`` prints."""
        h = self._header
        return {
            "path": str(self.path),
            "generation": h.generation,
            "count": h.count,
            "created_at": h.created_at,
            "signer_key_id": h.signer_key_id,
            "body_sha256": h.body_sha256.hex(),
            "file_size": self._layout.end,
            "min_id": h.min_id if h.count else None,
            "max_id": h.max_id if h.count else None,
            "index_buckets": self._layout.buckets,
            "filter_bytes": self._layout.filter_bytes,
        }

    def __repr__(self) -> str:
        return (
            f"RevocationTable({str(self.path)!r}, generation={self.generation}, count={self.count})"
        )
