"""The fleet at a glance: which gates are current, stale, silent, or behind on uploads.

Read from a collection point (``farecore.fleet.collect``): each registered terminal's
newest signed head (``heads/<terminal>/latest.json``, verified with the register's key:
a head that fails is shown as refused and never trusted) and the names of the verified
batch copies it holds (``batches/<terminal>/``). One row per registered terminal:

- ``silent``: no trusted head, or the newest is older than ``silent_after_ms``;
- ``behind``: more records waiting for the point than ``max_pending``, or a closed day
  older than yesterday with no batch;
- ``stale``: the package version or revocation generation in force is behind the
  newest published (given, or else the newest any gate reports);
- ``current``: none of these.

The first that applies is the state; every one that applies is a reason. This module
never reads a clock (``now_ms`` is given) and never writes to the point.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from farecore.errors import BadSignature, ConfigError, MalformedFile
from farecore.journal.batch_header import service_day
from farecore.journal.heads import MAX_HEAD_BYTES, ChainHead, parse_head, verify_head
from farecore.settlement.terminals import TerminalInfo

__all__ = [
    "DEFAULT_MAX_PENDING",
    "DEFAULT_SILENT_AFTER_MS",
    "STATES",
    "FleetStatus",
    "TerminalStatus",
    "Thresholds",
    "fleet_status",
    "service_day",
    "utc_text",
]

STATES = ("current", "stale", "silent", "behind")
DEFAULT_SILENT_AFTER_MS = 15 * 60_000
# Records a gate may hold that the point has not acknowledged: its batches go up once a
# day has ended, so a busy gate holds a whole day's taps (some 20,000) as a matter of course.
DEFAULT_MAX_PENDING = 50_000
_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Thresholds:
    silent_after_ms: int = DEFAULT_SILENT_AFTER_MS
    max_pending: int = DEFAULT_MAX_PENDING
    utc_offset_min: int = 480  # the service day's time zone (+08:00, Qingdao)

    def __post_init__(self) -> None:
        if self.silent_after_ms < 0 or self.max_pending < 0:
            raise ConfigError("thresholds must not be negative")
        if not -14 * 60 <= self.utc_offset_min <= 14 * 60:
            raise ConfigError(f"UTC offset {self.utc_offset_min} min is out of range")


@dataclass(frozen=True, slots=True)
class TerminalStatus:
    """One terminal's row."""

    terminal_id: int
    state: str
    reasons: tuple[str, ...]
    head: ChainHead | None  # the newest trusted head, if any
    head_refused: str | None  # why latest.json is not trusted
    last_batch_day: dt.date | None
    conflicts: int  # conflict-*.json beside its heads: one seq signed with two hashes

    def to_json(self, now_ms: int) -> dict[str, object]:
        h = self.head
        return {
            "terminal_id": self.terminal_id,
            "state": self.state,
            "reasons": list(self.reasons),
            "head_time_ms": None if h is None else h.time_ms,
            "head_time": None if h is None else utc_text(h.time_ms),
            "head_age_s": None if h is None else (now_ms - h.time_ms) // 1000,
            "seq": None if h is None else h.seq,
            "package_version": None if h is None else h.package_version,
            "revocation_generation": None if h is None else h.revocation_generation,
            "records_pending": None if h is None else h.records_pending,
            "last_batch_day": None if self.last_batch_day is None else str(self.last_batch_day),
            "head_refused": self.head_refused,
            "conflicts": self.conflicts,
        }


@dataclass(frozen=True, slots=True)
class FleetStatus:
    rows: tuple[TerminalStatus, ...]  # by terminal id
    reference: tuple[int | None, int | None]  # (package version, revocation generation)
    reference_given: bool  # False: the newest seen across the fleet
    unregistered: tuple[int, ...] = field(default=())  # terminals at the point, not registered

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for r in self.rows:
            out[r.state] += 1
        return out

    @property
    def all_current(self) -> bool:
        return all(
            r.state == "current" and r.head_refused is None and not r.conflicts for r in self.rows
        )


def utc_text(ms: int) -> str:
    try:
        stamp = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    except OverflowError:
        return f"{ms} ms"
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def _entries(directory: Path) -> Iterator[os.DirEntry[str]]:
    """A directory's entries; none when it does not exist (nothing handed in yet)."""
    try:
        with os.scandir(directory) as it:
            yield from it
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise ConfigError(f"{directory} is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot list {directory}: {exc.strerror or exc}") from None


def _read_head_file(path: Path) -> bytes | None:
    """A head file's bytes (None when there is none); bounded, regular files only."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MalformedFile(f"cannot read: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MalformedFile("not a regular file")
        data = os.read(fd, MAX_HEAD_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_HEAD_BYTES:
        raise MalformedFile(f"larger than {MAX_HEAD_BYTES} bytes")
    return data


def _latest(heads_dir: Path, info: TerminalInfo) -> tuple[ChainHead | None, str | None, int]:
    """(the trusted latest head, why it is refused, conflict files) of one terminal."""
    tid = info.terminal_id
    where = heads_dir / str(tid)
    conflicts = sum(
        1 for e in _entries(where) if e.name.startswith("conflict-") and e.name.endswith(".json")
    )
    name = f"{tid}/latest.json"
    try:
        data = _read_head_file(where / "latest.json")
        if data is None:
            return None, None, conflicts
        signed = parse_head(data, name)
        if signed.head.terminal != tid:
            raise MalformedFile(f"{name}: names terminal {signed.head.terminal}")
        return verify_head(signed, info), None, conflicts
    except MalformedFile as exc:
        text = str(exc)
        return None, text if text.startswith(name) else f"{name}: {text}", conflicts
    except BadSignature as exc:
        return None, f"{name}: {exc}", conflicts


# A verified copy's name, ``<terminal>-<YYYY-MM-DD>[+<seq>].fcb`` (the collection
# protocol's grammar): a year of them per gate is read for every row, so a regular
# expression and the day's parse, nothing more.
_TERMINAL_DIR = re.compile(r"0|[1-9][0-9]{0,19}")
_BATCH_NAME = re.compile(
    r"(0|[1-9][0-9]{0,19})-([0-9]{4}-[0-9]{2}-[0-9]{2})(?:\+[1-9][0-9]{0,18})?\.fcb"
)


def _batch_days(batches_dir: Path, tid: int) -> set[dt.date]:
    """The days of the batches the point holds for ``tid`` (by their names)."""
    own = str(tid)
    days: set[dt.date] = set()
    for e in _entries(batches_dir / own):
        m = _BATCH_NAME.fullmatch(e.name)
        if m is None or m.group(1) != own:
            continue  # not a verified copy's name (the point writes nothing else here)
        try:
            days.add(dt.date.fromisoformat(m.group(2)))
        except ValueError:
            continue
    return days


def _reference(
    heads: Mapping[int, ChainHead | None], published: tuple[int | None, int | None] | None
) -> tuple[int | None, int | None]:
    if published is not None:
        return published
    packages = [h.package_version for h in heads.values() if h and h.package_version is not None]
    gens = [
        h.revocation_generation for h in heads.values() if h and h.revocation_generation is not None
    ]
    return (max(packages) if packages else None, max(gens) if gens else None)


def _below(value: int | None, reference: int) -> bool:
    return value is None or value < reference


def _judge(
    head: ChainHead | None,
    refused: str | None,
    days: set[dt.date],
    reference: tuple[int | None, int | None],
    now_ms: int,
    limits: Thresholds,
) -> tuple[str, tuple[str, ...]]:
    silent: list[str] = []
    behind: list[str] = []
    stale: list[str] = []
    if refused is not None:
        silent.append("its latest head is refused (not trusted)")
    elif head is None:
        silent.append("no head published")
    elif now_ms - head.time_ms > limits.silent_after_ms:
        silent.append(f"no head for {(now_ms - head.time_ms) // 60_000} min")
    if head is not None and refused is None:
        if head.records_pending > limits.max_pending:
            behind.append(f"{head.records_pending} records not yet uploaded")
        package, generation = reference
        if package is not None and _below(head.package_version, package):
            stale.append(f"package {head.package_version} behind {package}")
        if generation is not None and _below(head.revocation_generation, generation):
            stale.append(f"revocation generation {head.revocation_generation} behind {generation}")
    due = service_day(now_ms, limits.utc_offset_min) - dt.timedelta(days=2)
    if not days:
        behind.append("no batch handed in")
    elif max(days) < due:
        behind.append(f"no batch since {max(days)} (due: {due})")
    else:
        # A hole among the closed days since its first batch: a day it never handed in.
        span = (due - min(days)).days + 1
        missing = next(
            (d for d in (due - dt.timedelta(days=i) for i in range(min(span, 7))) if d not in days),
            None,
        )
        if missing is not None:
            behind.append(f"no batch for {missing}")
    for state, reasons in (("silent", silent), ("behind", behind), ("stale", stale)):
        if reasons:
            return state, (*silent, *behind, *stale)
    return "current", ()


def fleet_status(
    point: Path,
    terminals: Mapping[int, TerminalInfo],
    *,
    now_ms: int,
    published: tuple[int | None, int | None] | None = None,
    thresholds: Thresholds | None = None,
) -> FleetStatus:
    """Every registered terminal's row, from the collection point at ``point``.

    ``published`` is the newest (package version, revocation generation) put out; None
    takes the newest any trusted head reports. ConfigError when ``point`` is not a
    collection point (no ``heads/`` and no ``batches/``) or cannot be read.
    """
    limits = thresholds or Thresholds()
    if not point.is_dir():
        raise ConfigError(f"collection point {point} is not a directory")
    heads_dir, batches_dir = point / "heads", point / "batches"
    if not heads_dir.is_dir() and not batches_dir.is_dir():
        raise ConfigError(f"{point} is not a collection point (no heads/ or batches/)")
    latest: dict[int, tuple[ChainHead | None, str | None, int]] = {
        tid: _latest(heads_dir, terminals[tid]) for tid in sorted(terminals)
    }
    reference = _reference({t: v[0] for t, v in latest.items()}, published)
    rows = []
    for tid, (head, refused, conflicts) in latest.items():
        days = _batch_days(batches_dir, tid)
        state, reasons = _judge(head, refused, days, reference, now_ms, limits)
        if conflicts:
            reasons = (*reasons, f"{conflicts} conflicting heads: a seq signed with two hashes")
        rows.append(
            TerminalStatus(
                tid, state, reasons, head, refused, max(days) if days else None, conflicts
            )
        )
    unregistered = tuple(
        sorted(
            int(e.name)
            for base in (heads_dir, batches_dir)
            for e in _entries(base)
            if _TERMINAL_DIR.fullmatch(e.name) and int(e.name) not in terminals
        )
    )
    return FleetStatus(
        tuple(rows), reference, published is not None, tuple(sorted(set(unregistered)))
    )
