"""The gates' signed chain heads, read by the night: a journal cut short or rewritten
after its gate vouched for it is found, and its terminal is not paid.

Every few minutes a gate signs its chain head (``farecore.journal.heads``): the seq of
its newest record and the chain hash after it. The collection point keeps, per
terminal, the newest head (``latest.json``), the newest of each UTC day
(``YYYY-MM-DD.json``), and ``conflict-*.json`` when one seq was signed with two hashes.
``read_heads`` reads the files a night needs, verifies each with the register's key
(``head_rejected`` otherwise), and keeps the heads signed before the settled day ended.
``check_heads`` holds them against the chain the settlement has admitted (tonight's
batches and the ledger's): another hash at a head's seq is ``journal_rewritten``; a head
beyond the chain's end, signed on a day whose batch is admitted, is
``journal_shortened``. The terminal's batches of the night are then held, not paid.
This module must never read a clock, and never trusts a head it has not verified.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from farecore.errors import BadSignature, MalformedFile, SettlementError
from farecore.journal.batch import day_bounds_ms, peek_header
from farecore.journal.batch_header import MAX_HEADER
from farecore.journal.heads import MAX_HEAD_BYTES, ChainHead, parse_head, verify_head
from farecore.settlement.admission import HELD, Admission
from farecore.settlement.anomalies import Anomaly
from farecore.settlement.ledger import Head
from farecore.settlement.partial import Partial
from farecore.settlement.terminals import TerminalInfo

__all__ = [
    "HEADS_DIR",
    "ChainKnown",
    "NightHeads",
    "PublishedHead",
    "batch_days",
    "check_heads",
    "heads_directory",
    "read_heads",
    "utc_dates",
]

_log = logging.getLogger(__name__)

HEADS_DIR = "heads"
_DAY_FILE = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})\.json")
_CONFLICT_FILE = re.compile(r"conflict-[A-Za-z0-9._-]{1,200}\.json")
_TERMINAL_DIR = re.compile(r"0|[1-9][0-9]{0,19}")
_U64 = 1 << 64
_DAY_MS = 86_400_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def heads_directory(path: Path) -> Path:
    """The heads directory ``--heads`` names: a collection point's ``heads/``, or the
    directory itself when it holds no ``heads/`` (it is the heads directory)."""
    if not path.is_dir():
        raise SettlementError(f"heads directory {path} does not exist")
    inner = path / HEADS_DIR
    return inner if inner.is_dir() else path


@dataclass(frozen=True, slots=True)
class PublishedHead:
    """A verified head and the file it came from (relative to the heads directory)."""

    file: str
    head: ChainHead


@dataclass(frozen=True, slots=True)
class NightHeads:
    """The heads a night uses: verified, signed before the settled day ended."""

    heads: dict[int, tuple[PublishedHead, ...]]  # by terminal, in file-name order
    anomalies: tuple[Anomaly, ...]  # head_rejected
    files_read: int
    digest: str  # SHA-256 over the files used and refused (names and contents)

    def seqs(self) -> dict[int, frozenset[int]]:
        """The seqs each terminal's heads name: the units' hash look-ups."""
        return {tid: frozenset(p.head.seq for p in ps) for tid, ps in self.heads.items()}

    @property
    def used(self) -> int:
        return sum(len(ps) for ps in self.heads.values())


def utc_dates(days: Iterable[dt.date], utc_offset_min: int, tolerance_ms: int) -> set[dt.date]:
    """The UTC dates whose day files may hold a head of one of the service ``days``
    (each day widened by the clock tolerance)."""
    out: set[dt.date] = set()
    for day in days:
        start, end = day_bounds_ms(day, utc_offset_min)
        first = (start - tolerance_ms) // _DAY_MS
        last = (end + tolerance_ms - 1) // _DAY_MS
        out.update(dt.date(1970, 1, 1) + dt.timedelta(days=d) for d in range(first, last + 1))
    return out


def batch_days(paths: Iterable[str]) -> set[dt.date]:
    """The days the batch files claim (unverified: only to choose head files to read)."""
    out: set[dt.date] = set()
    for path in paths:
        try:
            with open(path, "rb") as f:
                claimed = peek_header(f.read(MAX_HEADER + 16))
        except OSError:
            continue  # its unit names the file; no head file depends on it
        if claimed is not None:
            out.add(claimed[1])
    return out


def _read_file(path: Path) -> bytes:
    """A head file's bytes: a regular file (no link, no device) of bounded size."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MalformedFile("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_HEAD_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_HEAD_BYTES:
        raise MalformedFile(f"larger than {MAX_HEAD_BYTES} bytes")
    return data


def _wanted(name: str, dates: set[dt.date]) -> bool:
    if name == "latest.json" or _CONFLICT_FILE.fullmatch(name):
        return True
    m = _DAY_FILE.fullmatch(name)
    if m is None:
        return False
    try:
        return dt.date.fromisoformat(m.group(1)) in dates
    except ValueError:
        return False


def _rejected(tid: int, file: str, detail: str) -> Anomaly:
    return Anomaly("head_rejected", terminal_id=tid, detail=f"{file}: {detail}", file=file)


def _listing(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise SettlementError(
            f"cannot list heads directory {directory}: {exc.strerror or exc}"
        ) from None


def read_heads(
    directory: Path,
    terminals: Mapping[int, TerminalInfo],
    days: Iterable[dt.date],
    *,
    until_ms: int,
    utc_offset_min: int,
    tolerance_ms: int,
) -> NightHeads:
    """Every terminal's ``latest.json``, ``conflict-*.json`` and the day files of the
    UTC dates around ``days``, each verified with the register's key. Heads signed at
    or after ``until_ms`` (the settled day's end) wait for a later night. A file that
    fails, or a terminal not registered, is ``head_rejected``; never an exception."""
    dates = utc_dates(days, utc_offset_min, tolerance_ms)
    heads: dict[int, tuple[PublishedHead, ...]] = {}
    anomalies: list[Anomaly] = []
    digest = hashlib.sha256()
    read = 0
    for entry in _listing(directory):
        if not _TERMINAL_DIR.fullmatch(entry.name) or int(entry.name) >= _U64:
            _log.debug("heads: %s is not a terminal's directory; skipped", entry.name)
            continue
        tid = int(entry.name)
        info = terminals.get(tid)
        if info is None:
            anomalies.append(_rejected(tid, f"{tid}/", "terminal not registered; not trusted"))
            digest.update(f"{tid}/ unregistered\n".encode())
            continue
        if not entry.is_dir(follow_symlinks=False):
            anomalies.append(_rejected(tid, f"{tid}", "not a directory"))
            digest.update(f"{tid} not-a-directory\n".encode())
            continue
        kept: list[PublishedHead] = []
        for item in _listing(Path(entry.path)):
            if not _wanted(item.name, dates):
                continue
            read += 1
            name = f"{tid}/{item.name}"
            try:
                data = _read_file(Path(item.path))
                signed = parse_head(data, name)
                if signed.head.terminal != tid:
                    raise MalformedFile(f"names terminal {signed.head.terminal}, not {tid}")
                head = verify_head(signed, info)
            except MalformedFile as exc:
                text = str(exc)
                detail = text[len(name) + 2 :] if text.startswith(f"{name}: ") else text
                anomalies.append(_rejected(tid, name, detail))
                digest.update(f"{name} refused\n".encode())
                continue
            except BadSignature as exc:
                anomalies.append(_rejected(tid, name, str(exc)))
                digest.update(f"{name} refused\n".encode())
                continue
            except OSError as exc:
                anomalies.append(_rejected(tid, name, f"cannot read: {exc.strerror or exc}"))
                digest.update(f"{name} unreadable\n".encode())
                continue
            if head.time_ms >= until_ms:
                continue  # signed after the settled day: a later night's evidence
            digest.update(f"{name} {hashlib.sha256(data).hexdigest()}\n".encode())
            kept.append(PublishedHead(name, head))
        if kept:
            heads[tid] = tuple(kept)
    return NightHeads(heads, tuple(anomalies), read, digest.hexdigest())


# -- checking the heads against the admitted chain --------------------------------------


@dataclass(frozen=True, slots=True)
class ChainKnown:
    """What the ledger says of the chains before tonight (the night's view of it)."""

    heads: Mapping[int, Head]
    hashes_at: Callable[[int, int], set[bytes]]  # (terminal, seq) -> hashes after seq
    last_day: Callable[[int], str | None]  # terminal -> its latest settled day


def _when(ms: int) -> str:
    try:
        return (_EPOCH + dt.timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%SZ")
    except OverflowError:
        return f"{ms} ms"


def _service_day(ms: int, utc_offset_min: int) -> str | None:
    try:
        local_days = (ms + utc_offset_min * 60_000) // _DAY_MS
        return (dt.date(1970, 1, 1) + dt.timedelta(days=local_days)).isoformat()
    except OverflowError:
        return None


@dataclass(slots=True)
class _Terminal:
    """One terminal's chain as the night has it: tonight's batches over the ledger's."""

    parts: list[Partial]
    hashes: dict[int, bytes] = field(default_factory=dict)
    end: int | None = None
    through: str | None = None

    def covering(self, seq: int) -> str:
        for p in self.parts:
            if p.first_seq - 1 <= seq <= p.last_seq:
                return p.batch_sha256.hex()
        return ""


def _chain(tid: int, parts: list[Partial], known: ChainKnown) -> _Terminal:
    t = _Terminal(parts)
    for p in parts:
        t.hashes[p.first_seq - 1] = p.prev_hash
        t.hashes[p.last_seq] = p.tail_hash
        t.hashes.update(p.head_hashes)
    settled = known.heads.get(tid)
    ends = [p.last_seq for p in parts] + ([settled.last_seq] if settled is not None else [])
    t.end = max(ends) if ends else None
    days = [p.day for p in parts]
    last = known.last_day(tid) if settled is not None else None
    if last is not None:
        days.append(last)
    t.through = max(days) if days else None
    return t


def _findings(
    tid: int,
    published: tuple[PublishedHead, ...],
    chain: _Terminal,
    known: ChainKnown,
    utc_offset_min: int,
    tolerance_ms: int,
) -> list[Anomaly]:
    out: list[Anomaly] = []
    distinct: dict[ChainHead, str] = {}
    for p in published:
        distinct.setdefault(p.head, p.file)
    by_seq: dict[int, dict[bytes, str]] = {}
    for head, file in distinct.items():
        by_seq.setdefault(head.seq, {}).setdefault(head.hash, file)
    for seq, signed in sorted(by_seq.items()):
        if len(signed) > 1:
            (h1, f1), (h2, f2) = sorted(signed.items(), key=lambda kv: kv[1])[:2]
            out.append(
                Anomaly(
                    "journal_rewritten",
                    terminal_id=tid,
                    seq=seq,
                    batch=chain.covering(seq),
                    file=f1,
                    detail=f"heads {f1} and {f2} sign seq {seq} with two hashes: "
                    f"{h1.hex()[:16]}… and {h2.hex()[:16]}…",
                )
            )
    if chain.end is None:
        return out
    for head, file in distinct.items():
        seq, signed_at = head.seq, _when(head.time_ms)
        if seq <= chain.end:
            have = {chain.hashes[seq]} if seq in chain.hashes else known.hashes_at(tid, seq)
            if have and head.hash not in have:
                out.append(
                    Anomaly(
                        "journal_rewritten",
                        terminal_id=tid,
                        seq=seq,
                        batch=chain.covering(seq),
                        file=file,
                        detail=f"head {file} (signed {signed_at}) has hash "
                        f"{head.hash.hex()[:16]}… after seq {seq}; the chain handed in has "
                        f"{min(have).hex()[:16]}…",
                    )
                )
            continue
        # A record written before the head was stamped at most the clock tolerance
        # after it (a clock that stepped back further is a clock_behind finding), so it
        # belongs to this day's batch or an earlier one.
        day = _service_day(head.time_ms + tolerance_ms, utc_offset_min)
        if day is not None and chain.through is not None and chain.through >= day:
            out.append(
                Anomaly(
                    "journal_shortened",
                    terminal_id=tid,
                    seq=seq,
                    batch=chain.covering(chain.end),
                    file=file,
                    detail=f"head {file} (signed {signed_at}) shows the journal at seq {seq}; "
                    f"its batches through {chain.through} end at seq {chain.end}",
                )
            )
    return out


def check_heads(
    heads: NightHeads,
    admission: Admission,
    known: ChainKnown,
    *,
    utc_offset_min: int,
    tolerance_ms: int,
) -> Admission:
    """The admission with the heads' findings: a terminal whose journal was rewritten
    or shortened has none of tonight's batches paid (they are held, and looked at again
    every night); every finding, and every refused head, is an anomaly."""
    parts: dict[int, list[Partial]] = {}
    for p in [a.partial for a in admission.admitted] + admission.chain_only:
        parts.setdefault(p.terminal_id, []).append(p)
    found: list[Anomaly] = []
    for tid in sorted(heads.heads):
        chain = _chain(tid, parts.get(tid, []), known)
        found += _findings(tid, heads.heads[tid], chain, known, utc_offset_min, tolerance_ms)
    held = {a.terminal_id for a in found}
    if not held:
        return Admission(
            list(admission.admitted),
            list(admission.chain_only),
            dict(admission.outcomes),
            [*admission.anomalies, *heads.anomalies],
        )
    outcomes = dict(admission.outcomes)
    for tid in held:
        for p in parts.get(tid, []):
            outcomes[p.batch_sha256] = HELD
    return Admission(
        [a for a in admission.admitted if a.partial.terminal_id not in held],
        [p for p in admission.chain_only if p.terminal_id not in held],
        outcomes,
        [*admission.anomalies, *heads.anomalies, *found],
    )
