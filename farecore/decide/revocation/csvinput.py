"""Read the revocation CSV export (``card_id,revoked_at,reason``) into numpy columns.

The header line must be exactly ``card_id,revoked_at,reason``. Each row holds a card id
(decimal uint64, up to 18446744073709551615), a revoked-at time (decimal UTC Unix
seconds) and a reason, by name (``lost``) or by code (``1``). Fields are plain and
unquoted; empty lines are errors, because a hole in an export is a sign of a cut file.
No card has id 0 (CARD-SPEC §4), and a card appears once: two rows for one card (perhaps
with different times or reasons) mean the export is inconsistent, so either is an error
naming its line. ``farecore revocation build`` and ``farecore settle --revocations`` both
read with this one reader, so a file means the same at the gates and at the settlement.

pyarrow parses 50 million rows in seconds when it is installed. Without it, or when it
finds any fault, a plain-Python reader parses the file and names the first bad line, so
an error message always carries a line number and what is wrong with it.

This module must never pass an id through float64 and never write anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from farecore.decide.revocation.builder import BuildError
from farecore.decide.revocation.format import RevocationReason, reason_code
from farecore.errors import MalformedFile

__all__ = ["HEADER_LINE", "Columns", "line_name", "read_revocation_csv"]

HEADER_LINE = "card_id,revoked_at,reason"
_U64 = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1
Columns = tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64], npt.NDArray[np.uint8]]
# The bytes a row can hold: digits, commas, line ends and the letters of reason names.
# pyarrow reads more than the format allows (blanks around a number, 0x hex, a sign, any
# Unicode digit as a reason code), so a file with any other byte goes to the careful reader.
_ROW_BYTES = bytes(
    set(
        b"0123456789,\r\n"
        + b"".join(r.name.encode() + r.name.lower().encode() for r in RevocationReason)
    )
)
_SCAN_CHUNK = 32 << 20


def line_name(row: int) -> str:
    """Row ``row`` (0-based, after the header) is on this line of the file."""
    return f"line {row + 2}"


def _check_header(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
    except OSError as exc:
        raise MalformedFile(f"{path}: cannot read: {exc.strerror or exc}") from None
    text = first.decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r\n")
    if text != HEADER_LINE:
        raise BuildError(f"{path}: line 1: header must be {HEADER_LINE!r}, found {text[:80]!r}")


def read_revocation_csv(path: str | os.PathLike[str], *, use_pyarrow: bool = True) -> Columns:
    """Parse the whole file, or raise :class:`BuildError` naming the first bad line."""
    p = Path(path)
    _check_header(p)
    if use_pyarrow:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            use_pyarrow = False
    columns = _read_pyarrow(p) if use_pyarrow and _only_row_bytes(p) else None
    if columns is None:
        columns = _read_python(p)
    _check_ids(p, columns[0])
    return columns


def _check_ids(p: Path, ids: npt.NDArray[np.uint64]) -> None:
    """No card id 0 and no card id twice, after every row parsed."""
    zero = np.flatnonzero(ids == 0)
    if zero.size:
        where = line_name(int(zero[0]))
        raise BuildError(f"{p}: {where}: card id 0 is no card's id (card ids start at 1)")
    if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return  # a sorted export: no argsort needed to know it has no duplicate
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if dup.size:
        # The first duplicate in file order: the smallest second row over all pairs.
        pairs = [(int(order[i + 1]), int(order[i])) for i in dup.tolist()]
        second, first = min(pairs)
        raise BuildError(
            f"{p}: {line_name(second)}: card id {int(ids[second])} already appears at "
            f"{line_name(first)}; duplicate ids are refused"
        )


def _only_row_bytes(p: Path) -> bool:
    """Whether every byte after the header line is one a row can hold (``_ROW_BYTES``)."""
    with open(p, "rb") as fh:
        fh.readline()
        while chunk := fh.read(_SCAN_CHUNK):
            if chunk.translate(None, _ROW_BYTES):  # what is left is a byte rows never hold
                return False
    return True


def _read_pyarrow(p: Path) -> Columns | None:
    """The fast path; None when pyarrow objects, so the careful reader finds the line."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        table = pacsv.read_csv(
            p,
            read_options=pacsv.ReadOptions(block_size=32 << 20),
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False, quote_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types={
                    "card_id": pa.uint64(),
                    "revoked_at": pa.int64(),
                    "reason": pa.dictionary(pa.int32(), pa.string()),
                },
                strings_can_be_null=False,
                include_columns=["card_id", "revoked_at", "reason"],
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowKeyError, KeyError):
        return None
    if table.num_columns != 3:
        return None
    if table.column("card_id").null_count or table.column("revoked_at").null_count:
        return None  # an empty field or line: the careful reader says which
    ids = table.column("card_id").to_numpy()
    times = table.column("revoked_at").to_numpy()
    reasons = np.empty(len(ids), dtype=np.uint8)
    at = 0
    for chunk in table.column("reason").chunks:
        words = chunk.dictionary.to_pylist()
        codes = np.zeros(len(words), dtype=np.uint8)
        indices = chunk.indices.to_numpy(zero_copy_only=False)
        for i, word in enumerate(words):
            try:
                codes[i] = reason_code(str(word))
            except ValueError as exc:
                bad = at + int(np.flatnonzero(indices == i)[0])
                raise BuildError(f"{p}: {line_name(bad)}: {exc}") from None
        reasons[at : at + len(indices)] = codes[indices]
        at += len(indices)
    if times.size and times.min() < 0:
        bad = int(np.flatnonzero(times < 0)[0])
        raise BuildError(f"{p}: {line_name(bad)}: revoked_at {int(times[bad])} is negative")
    return np.ascontiguousarray(ids, dtype=np.uint64), np.ascontiguousarray(times), reasons


def _field_int(text: str, name: str, top: int) -> int:
    if not text:
        raise ValueError(f"{name} is empty")
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{name} {text[:40]!r} is not a non-negative decimal integer")
    value = int(text)
    if value > top:
        raise ValueError(f"{name} {text[:40]} is larger than {top}")
    return value


def _read_python(p: Path) -> Columns:
    ids: list[int] = []
    times: list[int] = []
    reasons: list[int] = []
    parse: Callable[[str], Any] = reason_code
    with open(p, "rb") as fh:
        fh.readline()
        for row, raw in enumerate(fh):
            where = f"{p}: {line_name(row)}"
            try:
                line = raw.decode("ascii").rstrip("\r\n")
            except UnicodeDecodeError:
                raise BuildError(f"{where}: not ASCII text") from None
            if not line.strip():
                raise BuildError(f"{where}: empty line")
            fields = line.split(",")
            if len(fields) != 3:
                raise BuildError(f"{where}: expected 3 fields, found {len(fields)}")
            try:
                ids.append(_field_int(fields[0], "card_id", _U64))
                times.append(_field_int(fields[1], "revoked_at", _I64_MAX))
                reasons.append(parse(fields[2]))
            except ValueError as exc:
                raise BuildError(f"{where}: {exc}") from None
    return (
        np.array(ids, dtype=np.uint64),
        np.array(times, dtype=np.int64),
        np.array(reasons, dtype=np.uint8),
    )
