"""What the fuzz targets share: their settings, and strategies that damage genuine bytes.

A plain module with a unique name (not ``conftest``), so every fuzz test can import it.
Random bytes mostly die at the first magic number or length check; mutations of a real,
valid input (built here in code, deterministically) reach the deep parts of a parser.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from hypothesis import settings
from hypothesis import strategies as st

__all__ = [
    "PROFILES",
    "PROFILE_ENV",
    "attempt",
    "fuzz_settings",
    "mutated",
    "mutated_text",
]

T = TypeVar("T")
PROFILE_ENV = "FARECORE_FUZZ"
PROFILES = {"ci": "farecore-fuzz-ci", "nightly": "farecore-fuzz-nightly"}


def fuzz_settings(share: float = 1.0) -> settings:
    """The active profile's settings (registered in conftest.py) with ``share`` of its
    examples: more for a target with much to explore, fewer for a costly one."""
    profile = settings.get_profile(PROFILES[os.environ.get(PROFILE_ENV, "ci")])
    return settings(profile, max_examples=max(1, int(profile.max_examples * share)))


# Values that sit on the edges parsers test against: zero, sign bits, all ones.
_INTERESTING = [
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"\xff" * 8,
    b"\x7f" + b"\xff" * 7,
    b"\x00" * 8,
]


@st.composite
def _edit(draw: st.DrawFn, size: int) -> tuple[str, int, bytes | int]:
    kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
    where = draw(st.integers(0, max(size, 1) - 1))
    if kind == "flip":
        return kind, where, draw(st.integers(1, 255))
    if kind == "set":
        return kind, where, draw(st.sampled_from(_INTERESTING) | st.binary(min_size=1, max_size=8))
    if kind == "insert":
        return kind, where, draw(st.sampled_from(_INTERESTING) | st.binary(min_size=1, max_size=16))
    if kind in ("delete", "splice"):
        return kind, where, draw(st.integers(1, 64))
    return kind, where, 0


def _apply(data: bytearray, edit: tuple[str, int, bytes | int]) -> None:
    kind, where, arg = edit
    where = min(where, len(data))
    if kind == "flip" and where < len(data):
        data[where] ^= int(arg)  # type: ignore[call-overload]
    elif kind == "set":
        assert isinstance(arg, bytes)
        data[where : where + len(arg)] = arg
    elif kind == "insert":
        assert isinstance(arg, bytes)
        data[where:where] = arg
    elif kind == "delete":
        del data[where : where + int(arg)]  # type: ignore[call-overload]
    elif kind == "truncate":
        del data[where:]
    elif kind == "splice":  # a copy of a stretch of the input, inserted after itself
        chunk = bytes(data[where : where + int(arg)])  # type: ignore[call-overload]
        data[where:where] = chunk


@st.composite
def mutated(draw: st.DrawFn, base: bytes, max_edits: int = 4) -> bytes:
    """``base`` with 1 to ``max_edits`` edits: bit flips, edge values written over it,
    insertions, deletions, truncation, duplicated stretches."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, max_edits))):
        _apply(data, draw(_edit(len(data))))
    return bytes(data)


def mutated_text(base: str, max_edits: int = 4) -> st.SearchStrategy[str]:
    """``base``'s UTF-8 bytes mutated, read back as text (bad UTF-8 replaced)."""
    return mutated(base.encode(), max_edits).map(lambda b: b.decode("utf-8", "replace"))


def attempt(call: Callable[[], T], *allowed: type[BaseException]) -> T | BaseException:
    """``call()``'s result, or the exception it raised if that is one of ``allowed``.
    Anything else propagates, and hypothesis reports it as the failure."""
    try:
        return call()
    except allowed as exc:
        return exc
