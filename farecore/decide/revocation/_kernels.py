"""numba kernels of the revocation table: lookup, batch lookup, build and verify.

Arrays go in, integers come out. Keys are uint64 from end to end, so no id ever passes
through float64, and 0, 2^63 and 2^64-1 are ordinary keys. Each kernel has an explicit
signature (so a wrong dtype fails loudly instead of compiling a new variant) and
``cache=True`` (so a gate process starts without compiling).

The lookup is a radix index over ``(key - min_id) >> shift`` (bucket -> first position),
then a binary search inside the bucket. In front sits a finer occupancy bitmap over the
same id range (bit ``(key - min_id) >> filter_shift`` is set when some id falls in that
slot), which turns away most absent ids after one memory access. Both are monotonic in
the key, so building and verifying them walks memory in order.

These functions must never allocate per lookup, read files, or raise for a key: an
absent id is the answer -1. The tests run them with NUMBA_DISABLE_JIT=1 as well, so
everything here must also be correct as plain Python over numpy scalars.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "build_filter",  # noqa: F822 (compiled on first use, see __getattr__)
    "build_index",  # noqa: F822
    "find_many",  # noqa: F822
    "find_one",  # noqa: F822
    "verify_body",  # noqa: F822
]


def _find_one(ids, index, min_id, max_id, shift, key):  # type: ignore[no-untyped-def]
    """Position of ``key`` in ``ids``, or -1. No filter: call it after one passed."""
    if ids.shape[0] == 0 or key < min_id or key > max_id:
        return -1
    bucket = (key - min_id) >> np.uint64(shift)
    lo = np.int64(index[bucket])
    hi = np.int64(index[bucket + np.uint64(1)])
    while lo < hi:
        mid = (lo + hi) >> 1
        if ids[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    if lo < ids.shape[0] and ids[lo] == key:
        return lo
    return -1


def _find_many(ids, index, filt, min_id, max_id, shift, filter_shift, keys, out):  # type: ignore[no-untyped-def]
    """Fill ``out[i]`` with the position of ``keys[i]`` or -1; return how many were found."""
    n = ids.shape[0]
    found = 0
    ushift = np.uint64(shift)
    fshift = np.uint64(filter_shift)
    for i in range(keys.shape[0]):
        key = keys[i]
        out[i] = -1
        if n == 0 or key < min_id or key > max_id:
            continue
        h = (key - min_id) >> fshift
        if (filt[h >> np.uint64(3)] >> (h & np.uint64(7))) & np.uint64(1) == 0:
            continue
        bucket = (key - min_id) >> ushift
        lo = np.int64(index[bucket])
        hi = np.int64(index[bucket + np.uint64(1)])
        while lo < hi:
            mid = (lo + hi) >> 1
            if ids[mid] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < n and ids[lo] == key:
            out[i] = lo
            found += 1
    return found


def _build_index(ids, min_id, shift, buckets):  # type: ignore[no-untyped-def]
    """``index[b]`` = number of ids whose bucket is below ``b``; ``buckets + 1`` entries."""
    index = np.empty(buckets + 1, dtype=np.uint64)
    ushift = np.uint64(shift)
    b = 0
    for i in range(ids.shape[0]):
        bucket = np.int64((ids[i] - min_id) >> ushift)
        while b <= bucket:
            index[b] = i
            b += 1
    while b <= buckets:
        index[b] = ids.shape[0]
        b += 1
    return index


def _build_filter(ids, min_id, filter_shift, filt):  # type: ignore[no-untyped-def]
    """Set the bit of each id's slot in ``filt`` (zeroed by the caller)."""
    fshift = np.uint64(filter_shift)
    for i in range(ids.shape[0]):
        h = (ids[i] - min_id) >> fshift
        filt[h >> np.uint64(3)] |= np.uint8(np.uint64(1) << (h & np.uint64(7)))


def _verify_body(ids, revoked_at, reasons, index, filt, min_id, max_id, shift, filter_shift, known):  # type: ignore[no-untyped-def]
    """Check every structural promise of a table; return (0, 0) or (problem, position).

    Problems: 1 ids not strictly increasing, 2 min/max id wrong, 3 index wrong,
    4 filter bit missing, 5 negative revoked-at, 6 unknown reason code.
    """
    n = ids.shape[0]
    if n > 0 and (ids[0] != min_id or ids[n - 1] != max_id):
        return 2, 0
    ushift = np.uint64(shift)
    fshift = np.uint64(filter_shift)
    buckets = index.shape[0] - 1
    b = 0
    for i in range(n):
        key = ids[i]
        if i > 0 and ids[i - 1] >= key:
            return 1, i
        if key > max_id:  # before it indexes anything: a signed header may be inconsistent
            return 2, i
        bucket = np.int64((key - min_id) >> ushift)
        if bucket >= buckets:
            return 3, i
        while b <= bucket:
            if np.int64(index[b]) != i:
                return 3, b
            b += 1
        h = (key - min_id) >> fshift
        if (filt[h >> np.uint64(3)] >> (h & np.uint64(7))) & np.uint64(1) == 0:
            return 4, i
        if revoked_at[i] < 0:
            return 5, i
        if known[reasons[i]] == 0:
            return 6, i
    while b <= buckets:
        if np.int64(index[b]) != n:
            return 3, b
        b += 1
    return 0, 0


# Each kernel is compiled (or loaded from numba's cache) on first use, and numba itself is
# imported then: a process that never touches a table (most farecore commands) does not
# pay ~0.5 s for it. A table's open uses ``verify_body`` (and binds its lookup), so a gate
# pays at start, never at its first tap.
_KERNELS: dict[str, Callable[..., Any]] = {
    "find_one": _find_one,
    "find_many": _find_many,
    "build_index": _build_index,
    "build_filter": _build_filter,
    "verify_body": _verify_body,
}


def _signature(name: str) -> Any:
    from numba import uint64
    from numba.types import Array, Tuple, int64, uint8, void  # type: ignore[attr-defined]

    # Tables are memory-mapped read-only; writable arrays convert to these types for free.
    ids_t = Array(uint64, 1, "C", readonly=True)
    u8_t = Array(uint8, 1, "C", readonly=True)
    i64_t = Array(int64, 1, "C", readonly=True)
    return {
        "find_one": int64(ids_t, ids_t, uint64, uint64, int64, uint64),
        "find_many": int64(ids_t, ids_t, u8_t, uint64, uint64, int64, int64, ids_t, int64[::1]),
        "build_index": uint64[::1](ids_t, uint64, int64, int64),
        "build_filter": void(ids_t, uint64, int64, uint8[::1]),
        "verify_body": Tuple((int64, int64))(
            ids_t, i64_t, u8_t, ids_t, u8_t, uint64, uint64, int64, int64, u8_t
        ),
    }[name]


def __getattr__(name: str) -> Any:
    func = _KERNELS.get(name)
    if func is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from numba import njit

    compiled = njit(_signature(name), cache=True, nogil=True)(func)
    globals()[name] = compiled
    return compiled
