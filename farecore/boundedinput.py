"""JSON and TOML from outside, with size and nesting bounded before the parser sees them.

Key files, the keyring, a gate configuration, the fares file and a batch header all come
from outside the process. Python's parsers recurse once per level of nesting, so a few
thousand brackets end in RecursionError, and a huge file costs its whole size in memory
before anything is checked. Here a file is read only up to its limit, and a scanner that
never recurses measures the nesting first. Each caller passes its own error type, so a
bad file is reported as that module's error, in one line. This module never interprets
the values it reads.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["check_json_nesting", "load_toml", "read_limited", "read_regular"]

Error = Callable[[str], Exception]

# Strings (whose brackets and digits do not count), brackets and numbers. A string left
# open runs to the end of its line (of the text, for JSON and multi-line TOML): the
# parser fails right there, so no bracket after it can nest.
_JSON_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)|[\[\]{}]|[0-9]+', re.DOTALL)
_TOML_TOKENS = re.compile(
    r'"""(?:[^"\\]|\\.|"(?!""))*(?:""""{0,2}|\Z)'  # multi-line basic (may end in "" more)
    r"|'''(?:[^']|'(?!''))*(?:''''{0,2}|\Z)"  # multi-line literal
    r'|"(?:[^"\\\n]|\\.)*"?'  # basic
    r"|'[^'\n]*'?"  # literal
    r"|#[^\n]*"  # comment
    r"|[\[\]{}]",
    re.DOTALL,
)


def read_regular(path: Path, limit: int, what: str, error: Error) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes;
    ``error`` otherwise. Opened without blocking, so a FIFO put in a file's place is
    refused at once instead of hanging the reader, and a device is never read. OSError
    passes through, as for :func:`read_limited`."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb", closefd=True) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what}: not a regular file")
        if st.st_size > limit:
            raise error(f"{what}: larger than {limit} bytes")
        data = f.read(limit + 1)  # the file may grow while it is read
    if len(data) > limit:
        raise error(f"{what}: larger than {limit} bytes")
    return data


def read_limited(path: Path, limit: int, what: str, error: Error) -> bytes:
    """The bytes of ``path``, or ``error`` when it holds more than ``limit``.

    At most ``limit + 1`` bytes are read, so a huge file or an endless device costs no
    more. OSError passes through: each caller words a missing or unreadable file itself.
    """
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{what}: larger than {limit} bytes")
    return data


def check_json_nesting(
    data: bytes, max_depth: int, what: str, error: Error, max_digits: int | None = None
) -> None:
    """Raise ``error`` when JSON ``data`` nests arrays and objects deeper than
    ``max_depth``, or (with ``max_digits``) has a number with more digits than that."""
    depth = 0
    for match in _JSON_TOKENS.finditer(data):
        token = match.group()
        first = token[0]
        if first in b"[{":
            depth += 1
            if depth > max_depth:
                raise error(f"{what}: nested deeper than {max_depth}")
        elif first in b"]}":
            depth -= 1
        elif first != 0x22 and max_digits is not None and len(token) > max_digits:
            raise error(f"{what}: has a number longer than {max_digits} digits")


def load_toml(text: str, max_depth: int, what: str, error: Error) -> dict[str, Any]:
    """Parse TOML ``text`` nested at most ``max_depth`` deep; ``error`` otherwise.

    Brackets are counted before parsing (they are what the parser recurses on); dotted
    keys nest without brackets, so the parsed document is measured too.
    """
    depth = 0
    for match in _TOML_TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > max_depth:
                raise error(f"{what}: nested deeper than {max_depth}")
        elif token in ("]", "}"):
            depth -= 1
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what}: not valid TOML: {exc}") from None
    except ValueError as exc:  # int() refusing a number of more than 4300 digits
        raise error(f"{what}: not valid TOML: {exc}") from None
    except RecursionError:  # only if the scan above was fooled; still one clear line
        raise error(f"{what}: nested deeper than {max_depth}") from None
    if _deeper_than(doc, max_depth):
        raise error(f"{what}: nested deeper than {max_depth}")
    if _wide_integer(doc):
        raise error(f"{what}: an integer beyond TOML's 64 bits")
    return doc


def _deeper_than(doc: dict[str, Any], max_depth: int) -> bool:
    """Whether tables and arrays inside ``doc`` nest deeper than ``max_depth``."""
    stack: list[tuple[Any, int]] = [(value, 1) for value in doc.values()]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


_TOML_INTEGERS = range(-(1 << 63), 1 << 63)  # TOML 1.0: wider must be an error


def _wide_integer(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` holds an integer beyond 64 bits, which tomllib takes but TOML does
    not (and which float() and str() can refuse later)."""
    stack: list[Any] = list(doc.values())
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, int) and value not in _TOML_INTEGERS:
            return True
    return False
