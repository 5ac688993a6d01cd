"""Which batch files a night takes: every entry not settled or rejected before, less
later days' batches; on a re-run, exactly the files the first run took.

A file is known by its SHA-256 (two names for the same bytes are one batch); a file
whose size and modification time are those an earlier night recorded is not read again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from farecore.errors import SettlementError
from farecore.journal.batch import peek_header
from farecore.settlement.ledger import Ledger, NightRecord
from farecore.settlement.partial import MAX_BATCH_BYTES
from farecore.settlement.unit import unreadable_key

__all__ = ["Survey", "inputs_digest", "survey"]


@dataclass(frozen=True, slots=True)
class Survey:
    """The batch files a night takes, and what it leaves for other nights."""

    paths: list[str]
    keys: dict[str, bytes]  # path -> SHA-256 (or the key of an unreadable entry)
    later_days: int
    done_before: int
    arrived_after: int
    stats: list[tuple[str, int, int, bytes]]  # (path, size, mtime_ns, SHA-256) hashed


def _file_key(
    path: str, known: dict[str, tuple[int, int, bytes]], hashed: list[tuple[str, int, int, bytes]]
) -> tuple[bytes, bytes | None]:
    """(SHA-256 of the file, its first bytes, or None when it was not read) or a stable
    key for an entry that cannot be read, so a re-run recognises it. A file whose size
    and modification time match an earlier night's reading is not read again."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BATCH_BYTES:
            raise OSError
        was = known.get(path)
        if was is not None and was[:2] == (st.st_size, st.st_mtime_ns):
            return was[2], None
        h = hashlib.sha256()
        head = b""
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                if not head:
                    head = chunk
                h.update(chunk)
        hashed.append((path, st.st_size, st.st_mtime_ns, h.digest()))
        return h.digest(), head
    except OSError:
        return unreadable_key(path), None


def _peek_day(path: str, head: bytes | None) -> dt.date | None:
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 20)
        except OSError:
            return None
    claimed = peek_header(head)
    return None if claimed is None else claimed[1]


def survey(
    paths: Sequence[str], day: dt.date, ledger: Ledger, night: int, rerun: NightRecord | None
) -> Survey:
    chosen: list[str] = []
    keys: dict[str, bytes] = {}
    seen: set[bytes] = set()
    later = done = after = 0
    done_set = set() if rerun is not None else ledger.done_files(night)
    known = ledger.known_paths()
    hashed: list[tuple[str, int, int, bytes]] = []
    for path in paths:
        key, head = _file_key(path, known, hashed)
        if key in seen:
            continue  # the same bytes under another name: one batch
        seen.add(key)
        if rerun is not None:
            if key in rerun.files:
                chosen.append(path)
                keys[path] = key
            else:
                after += 1
            continue
        if key in done_set:
            done += 1
            continue
        claimed = _peek_day(path, head)
        if claimed is not None and claimed > day:
            later += 1
            continue
        chosen.append(path)
        keys[path] = key
    if rerun is not None:
        absent = set(rerun.files) - set(keys.values())
        if absent:
            raise SettlementError(
                f"night {day} was settled from {len(rerun.files)} batch files; "
                f"{len(absent)} of them are no longer in the batch directory "
                f"(first: {sorted(absent)[0].hex()}), so it cannot be re-run"
            )
    return Survey(chosen, keys, later, done, after, hashed)


def inputs_digest(keys: Sequence[bytes], settings: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(keys):
        h.update(k)
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()
