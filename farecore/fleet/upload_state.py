"""The courier's durable state: which batches the collection point has acknowledged.

One small JSON file per terminal, written atomically (``farecore.atomicfile``) after
every acknowledgement and never before it: what it lists is exactly what a collection
point holds a verified copy of. It names the terminal, the service days' time zone,
the first day the courier hands in (``since``), and the batches acknowledged (the
newest 400; the last one is where the next batch must continue the chain). It is read
strictly: a damaged file is a ConfigError naming it, never a silent fresh start, which
would hand every day in again.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farecore.atomicfile import write_atomic
from farecore.boundedinput import check_json_nesting, read_limited
from farecore.errors import ConfigError, MalformedInput
from farecore.fleet.collect_protocol import Ack, parse_batch_name
from farecore.journal.layout import MAX_SEQ

__all__ = ["STATE_FORMAT", "CourierState", "Handed"]

STATE_FORMAT = "farecore-courier/1"
_MAX_BYTES = 1 << 20
_KEEP = 400
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_I63 = (1 << 63) - 1
_U64 = (1 << 64) - 1
_TOP_KEYS = {"format", "terminal", "utc_offset_min", "since", "handed"}
_ENTRY_KEYS = {"name", "sha256", "count", "first_seq", "last_seq", "tail_hash", "acked_ms"}


@dataclass(frozen=True, slots=True)
class Handed:
    """One batch the collection point acknowledged."""

    name: str
    day: dt.date
    sha256: bytes
    count: int
    first_seq: int
    last_seq: int
    tail_hash: bytes
    acked_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256.hex(),
            "count": self.count,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "tail_hash": self.tail_hash.hex(),
            "acked_ms": self.acked_ms,
        }


@dataclass(slots=True)
class CourierState:
    path: Path
    terminal: int
    utc_offset_min: int
    since: dt.date
    handed: list[Handed] = field(default_factory=list)

    @property
    def last(self) -> Handed | None:
        return self.handed[-1] if self.handed else None

    def acknowledged(self, day: dt.date) -> bool:
        """Whether a batch of ``day`` is listed (for anything that would ever drop a
        day from a journal: only an acknowledged day may go)."""
        return any(h.day == day for h in self.handed)

    def record(self, ack: Ack, acked_ms: int) -> None:
        """Add an acknowledgement and write the file (durable when this returns)."""
        self.handed.append(
            Handed(
                ack.name,
                ack.day,
                ack.sha256,
                ack.count,
                ack.first_seq,
                ack.last_seq,
                ack.tail_hash,
                acked_ms,
            )
        )
        del self.handed[:-_KEEP]
        self.save()

    def save(self) -> None:
        doc = {
            "format": STATE_FORMAT,
            "terminal": self.terminal,
            "utc_offset_min": self.utc_offset_min,
            "since": self.since.isoformat(),
            "handed": [h.to_json() for h in self.handed],
        }
        write_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")

    @classmethod
    def load(cls, path: Path, terminal: int, utc_offset_min: int) -> CourierState | None:
        """The state at ``path`` (None if there is no file yet); ConfigError if it is
        damaged, another terminal's, or cuts days in another time zone."""
        try:
            raw = read_limited(path, _MAX_BYTES, f"courier state {path}", ConfigError)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"courier state {path}: {exc.strerror or exc}") from None
        try:
            state = _parse(path, raw)
        except (MalformedInput, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"courier state {path} is damaged: {exc}") from None
        if state.terminal != terminal:
            raise ConfigError(
                f"courier state {path} is terminal {state.terminal}'s, not {terminal}'s"
            )
        if state.utc_offset_min != utc_offset_min:
            raise ConfigError(
                f"courier state {path} cuts days at UTC{state.utc_offset_min:+d} min, the "
                f"configuration at UTC{utc_offset_min:+d} min: days would not tile"
            )
        return state


def _int(doc: dict[str, Any], key: str, low: int, top: int) -> int:
    value = doc[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= top:
        raise ValueError(f"{key} is not an integer from {low} to {top}")
    return value


def _hex(doc: dict[str, Any], key: str) -> bytes:
    value = doc[key]
    if not isinstance(value, str) or not _HEX64.match(value):
        raise ValueError(f"{key} is not 64 lowercase hex digits")
    return bytes.fromhex(value)


def _parse(path: Path, raw: bytes) -> CourierState:
    check_json_nesting(raw, 3, "state", ValueError, 20)
    doc = json.loads(raw)
    if not isinstance(doc, dict) or set(doc) != _TOP_KEYS:
        raise ValueError(f"fields must be exactly {sorted(_TOP_KEYS)}")
    if doc["format"] != STATE_FORMAT:
        raise ValueError(f"format is not {STATE_FORMAT}")
    since = doc["since"]
    if not isinstance(since, str):
        raise ValueError("since is not a day")
    handed = []
    entries = doc["handed"]
    if not isinstance(entries, list) or len(entries) > _KEEP:
        raise ValueError(f"handed is not a list of at most {_KEEP}")
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            raise ValueError(f"an entry's fields must be exactly {sorted(_ENTRY_KEYS)}")
        name = entry["name"]
        if not isinstance(name, str):
            raise ValueError("an entry's name is not text")
        parsed = parse_batch_name(name)
        handed.append(
            Handed(
                name,
                parsed.day,
                _hex(entry, "sha256"),
                _int(entry, "count", 0, MAX_SEQ),
                _int(entry, "first_seq", 1, MAX_SEQ),
                _int(entry, "last_seq", 0, MAX_SEQ),
                _hex(entry, "tail_hash"),
                _int(entry, "acked_ms", 0, _I63),
            )
        )
    return CourierState(
        path,
        _int(doc, "terminal", 0, _U64),
        _int(doc, "utc_offset_min", -14 * 60, 14 * 60),
        dt.date.fromisoformat(since),
        handed,
    )
