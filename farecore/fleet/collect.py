"""The collection point: one directory where the gates' batches and chain heads arrive.

``farecore collect`` serves exactly this directory over HTTP (``farecore.fleet.collect_http``),
and a courier whose destination is a directory writes the same layout itself, so the two
forms are one thing on disk::

    batches/<terminal>/<name>.fcb        verified copies, never overwritten
    heads/<terminal>/latest.json         the newest verified signed head (highest seq)
    heads/<terminal>/<YYYY-MM-DD>.json   the newest of that UTC day
    heads/<terminal>/conflict-<seq>-<sha>.json   a head of a seq already held, other hash
    incoming/<terminal>/<name>.part|.json         uploads in progress (bytes, and what is coming)
    rejected/<terminal>/<name>.<sha>.bad|.why     what failed verification, and why

A batch enters ``batches/`` only once it verifies with its terminal's registered key
(``farecore.journal.batch.verify_batch_rows``: signature, framing, chain) and agrees with
its name; it is written beside, synced, linked into place (never over another file) and
read back before it is acknowledged. ``farecore settle --batches POINT/batches`` takes them
as they are. Nothing here ever deletes or replaces a verified batch or a higher head.
What an unauthenticated client can make the point keep is bounded: uploads in progress
(per terminal, in total, and by age) and rejected files (per terminal).

Writers cooperate through one lock file per terminal (``incoming/<terminal>/.lock``,
``flock``), so a server and a directory courier may share a point.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from farecore.atomicfile import fsync_directory, write_atomic
from farecore.card.crypto import PublicKey
from farecore.errors import BadSignature, BatchRejected, ConfigError, MalformedFile
from farecore.fleet.collect_protocol import (
    MAX_BATCH_BYTES,
    Ack,
    BatchName,
    Partial,
    UploadRefused,
    parse_batch_name,
    parse_sha256,
)
from farecore.journal.batch import BATCH_MAGIC, day_bounds_ms, verify_batch_rows
from farecore.journal.batch_header import MAX_HEADER, load_header
from farecore.journal.heads import ChainHead, parse_head, verify_head

__all__ = [
    "DEFAULT_MAX_INCOMING_BYTES",
    "DEFAULT_MAX_PARTIALS",
    "DEFAULT_MAX_REJECTED",
    "DEFAULT_PARTIAL_TTL_S",
    "HEADER_BYTES",
    "CollectionPoint",
    "Conflict",
    "HeadStored",
    "Interrupted",
    "claimed_ack",
]

_log = logging.getLogger(__name__)

DEFAULT_MAX_INCOMING_BYTES = 4 << 30
DEFAULT_MAX_PARTIALS = 16
DEFAULT_MAX_REJECTED = 32
DEFAULT_PARTIAL_TTL_S = 86_400
# A batch of a day whose end is further than this ahead of the point's clock is refused:
# the gate exported it early (its clock runs ahead), and would have to send it again.
_DAY_SLACK_MS = 3_600_000
_PIECE = 64 << 10
_U32 = struct.Struct(">I")
HEADER_BYTES = len(BATCH_MAGIC) + 4 + MAX_HEADER  # a batch's bytes up to its header's end
_META_KEYS = {"sha256", "total"}


class Conflict(UploadRefused):
    """The point already holds a verified batch of this name with other bytes."""

    def __init__(self, message: str, existing: Ack) -> None:
        super().__init__(message, 409)
        self.existing = existing


class Interrupted(Exception):
    """The client stopped sending before its body ended; ``offset`` bytes are held."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"upload interrupted at offset {offset}")
        self.offset = offset


@dataclass(frozen=True, slots=True)
class HeadStored:
    """What a verified head did at the point."""

    head: ChainHead
    latest: bool  # it became latest.json
    of_day: bool  # it became the day's file
    conflict: Path | None  # the file it was kept in, beside a head of its seq and other hash


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class CollectionPoint:
    """The collection point directory ``root`` (which must exist).

    ``utc_offset_min`` is the settlement's service-day time zone: a batch of another is
    refused, since the settlement would refuse it. ``clock_ms`` is the point's clock.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        utc_offset_min: int,
        *,
        clock_ms: Callable[[], int] = _wall_ms,
        max_incoming_bytes: int = DEFAULT_MAX_INCOMING_BYTES,
        max_partials: int = DEFAULT_MAX_PARTIALS,
        max_rejected: int = DEFAULT_MAX_REJECTED,
        partial_ttl_s: int = DEFAULT_PARTIAL_TTL_S,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"collection point {self.root} is not a directory")
        self.utc_offset_min = utc_offset_min
        self.clock_ms = clock_ms
        self.max_incoming_bytes = max_incoming_bytes
        self.max_partials = max_partials
        self.max_rejected = max_rejected
        self.partial_ttl_s = partial_ttl_s
        # path -> (inode, size, mtime, ack): a stored copy is hashed once, not per request
        self._summaries: dict[str, tuple[int, int, int, Ack]] = {}
        self._summaries_lock = threading.Lock()

    # -- layout ------------------------------------------------------------------------

    def _dir(self, kind: str, terminal: int) -> Path:
        return self.root / kind / str(terminal)

    def batch_path(self, name: BatchName) -> Path:
        return self._dir("batches", name.terminal) / name.text

    def head_dir(self, terminal: int) -> Path:
        return self._dir("heads", terminal)

    @contextlib.contextmanager
    def _locked(self, terminal: int) -> Iterator[None]:
        """The terminal's lock, across threads and processes (flock per open file)."""
        where = self._dir("incoming", terminal)
        where.mkdir(parents=True, exist_ok=True)
        fd = os.open(where / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def check_day(self, name: BatchName) -> None:
        """Refuse a batch of a day that has not ended by the point's clock."""
        end = day_bounds_ms(name.day, self.utc_offset_min)[1]
        if end > self.clock_ms() + _DAY_SLACK_MS:
            raise UploadRefused(f"{name.text}: day {name.day} is not over at the point", 425)

    # -- verified copies ---------------------------------------------------------------

    def verified(self, name: BatchName) -> Ack | None:
        """The acknowledgement of the copy held under ``name``, or None."""
        path = self.batch_path(name)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        key = str(path)
        with self._summaries_lock:
            cached = self._summaries.get(key)
        if cached is not None and cached[:3] == (st.st_ino, st.st_size, st.st_mtime_ns):
            return cached[3]
        ack = _summary(path, name)
        with self._summaries_lock:
            if len(self._summaries) > 10_000:
                self._summaries.clear()
            self._summaries[key] = (st.st_ino, st.st_size, st.st_mtime_ns, ack)
        return ack

    def _checked(self, name: BatchName, data: bytes, key: PublicKey) -> Ack:
        """Verify ``data`` as the batch ``name``; BatchRejected or BadSignature if not."""
        if len(data) > MAX_BATCH_BYTES:
            raise BatchRejected(f"batch is larger than {MAX_BATCH_BYTES} bytes")
        batch = verify_batch_rows(data, key)
        if batch.terminal_id != name.terminal:
            raise BatchRejected(f"batch is terminal {batch.terminal_id}'s, not {name.terminal}'s")
        if batch.day != name.day:
            raise BatchRejected(f"batch is of day {batch.day}, its name says {name.day}")
        if batch.utc_offset_min != self.utc_offset_min:
            raise BatchRejected(
                f"batch cuts days at UTC{batch.utc_offset_min:+d} min, the settlement at "
                f"UTC{self.utc_offset_min:+d} min"
            )
        if name.first_seq is not None and batch.first_seq != name.first_seq:
            raise BatchRejected(
                f"batch starts at seq {batch.first_seq}, its name says {name.first_seq}"
            )
        return Ack(
            terminal=name.terminal,
            name=name.text,
            day=name.day,
            sha256=hashlib.sha256(data).digest(),
            size=len(data),
            count=len(batch.rows),
            first_seq=batch.first_seq,
            last_seq=batch.last_seq,
            prev_hash=batch.prev_hash,
            tail_hash=batch.tail_hash,
        )

    def place(
        self, name: BatchName, data: bytes, key: PublicKey, *, reverify: bool = False
    ) -> tuple[Ack, bool]:
        """Verify ``data`` as batch ``name`` and keep it: ``(ack, newly stored)``.

        The same bytes held already are acknowledged again; other bytes under the name
        raise Conflict and change nothing. The copy is read back before the ack (and,
        with ``reverify``, verified again from what was read).
        """
        ack = self._checked(name, data, key)
        with self._locked(name.terminal):
            held = self.verified(name)
            if held is not None:
                if held.sha256 == ack.sha256:
                    return held, False
                raise Conflict(
                    f"{name.text}: the point holds other bytes under this name "
                    f"(sha256 {held.sha256.hex()[:16]}…)",
                    held,
                )
            target = self.batch_path(name)
            self._write_new(target, data)
        copy = _read_bounded(target)
        if hashlib.sha256(copy).digest() != ack.sha256:
            raise UploadRefused(f"{target}: the stored copy does not read back as written", 500)
        if reverify:
            self._checked(name, copy, key)
        return ack, True

    def _write_new(self, target: Path, data: bytes) -> None:
        """Write ``target`` durably without ever replacing a file of that name."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._dir("incoming", int(target.parent.name)) / (
            f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp"
        )
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                    raise
                # A file system without hard links (a FAT stick): the terminal's lock,
                # held by every writer, keeps the name free until the rename.
                if target.exists():
                    raise
                os.rename(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_directory(target.parent)

    # -- uploads in progress -----------------------------------------------------------

    def _partial_paths(self, name: BatchName) -> tuple[Path, Path]:
        where = self._dir("incoming", name.terminal)
        return where / f"{name.text}.part", where / f"{name.text}.json"

    def partial(self, name: BatchName) -> Partial | None:
        part, meta = self._partial_paths(name)
        declared = _read_meta(meta)
        if declared is None:
            return None
        try:
            size = part.stat().st_size
        except FileNotFoundError:
            return None
        sha, total = declared
        if size > total:  # not written by this point: start the upload over
            self.drop_partial(name)
            return None
        return Partial(size, total, sha)

    def drop_partial(self, name: BatchName) -> None:
        for path in self._partial_paths(name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def start_partial(self, name: BatchName, sha256: bytes, total: int) -> Partial:
        """A fresh upload of ``total`` bytes under ``name`` (one in progress is dropped),
        within the bounds on uploads in progress."""
        with self._locked(name.terminal):
            self.drop_partial(name)
            mine = self._dir("incoming", name.terminal)
            count = sum(1 for _ in mine.glob("*.fcb.json"))
            if count >= self.max_partials:
                raise UploadRefused(
                    f"terminal {name.terminal} has {count} uploads in progress already", 507
                )
            held = sum(t for _, t in self._all_partials())
            if held + total > self.max_incoming_bytes:
                raise UploadRefused(
                    f"uploads in progress hold {held} bytes; {total} more would pass "
                    f"{self.max_incoming_bytes}",
                    507,
                )
            part, meta = self._partial_paths(name)
            write_atomic(meta, json.dumps({"sha256": sha256.hex(), "total": total}).encode())
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.fsync(fd)
            os.close(fd)
            fsync_directory(part.parent)
        return Partial(0, total, sha256)

    def _all_partials(self) -> Iterator[tuple[Path, int]]:
        incoming = self.root / "incoming"
        if not incoming.is_dir():
            return
        for meta in incoming.glob("*/*.fcb.json"):
            declared = _read_meta(meta)
            if declared is not None:
                yield meta, declared[1]

    def append(
        self, name: BatchName, held: Partial, first: int, length: int, read: Callable[[int], bytes]
    ) -> int:
        """Append ``length`` bytes from ``read`` at ``first`` (which must be the offset
        held); return the new offset. A body that stops early keeps what came, synced,
        and raises Interrupted with the offset now held."""
        part, _ = self._partial_paths(name)
        if first != held.offset or first + length > held.total:
            raise UploadRefused(f"{name.text}: the point holds {held.offset} bytes", 416)
        offset = first
        with open(part, "r+b") as fh:
            fh.seek(first)
            try:
                left = length
                while left:
                    piece = read(min(left, _PIECE))
                    if not piece:
                        break
                    fh.write(piece)
                    left -= len(piece)
                    offset += len(piece)
            except (OSError, ValueError):  # a reset, a timeout, a closed socket
                pass
            fh.flush()
            os.fsync(fh.fileno())
        if offset != first + length:
            raise Interrupted(offset)
        return offset

    def complete(self, name: BatchName, held: Partial, key: PublicKey) -> tuple[Ack, bool]:
        """The whole upload is in: check it is what was announced, verify and keep it.

        A batch that fails is kept in ``rejected/`` with its reason and refused (422);
        either way the upload in progress is gone.
        """
        part, _ = self._partial_paths(name)
        data = _read_bounded(part)
        try:
            if len(data) != held.total or hashlib.sha256(data).digest() != held.sha256:
                raise BatchRejected(
                    f"{len(data)} bytes arrived with SHA-256 {hashlib.sha256(data).hexdigest()[:16]}…, "
                    f"not the {held.total} bytes with the SHA-256 announced"
                )
            return self.place(name, data, key)
        except (BatchRejected, BadSignature) as exc:
            self.reject(name, data, str(exc))
            raise UploadRefused(f"{name.text}: {exc}", 422) from None
        finally:
            self.drop_partial(name)

    def reject(self, name: BatchName, data: bytes, why: str) -> None:
        """Keep a refused batch and its reason, and at most ``max_rejected`` per terminal."""
        where = self._dir("rejected", name.terminal)
        stem = f"{name.text}.{hashlib.sha256(data).hexdigest()[:16]}"
        write_atomic(where / f"{stem}.bad", data)
        write_atomic(where / f"{stem}.why", (why + "\n").encode())
        kept = sorted(where.glob("*.bad"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        for old in kept[: max(0, len(kept) - self.max_rejected)]:
            for path in (old, old.with_suffix(".why")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def expire(self, busy: Collection[str] = ()) -> int:
        """Drop uploads in progress untouched for ``partial_ttl_s``, except the names in
        ``busy`` (being received now); return how many."""
        limit_ns = (self.clock_ms() - self.partial_ttl_s * 1000) * 1_000_000
        dropped = 0
        for meta, _ in list(self._all_partials()):
            try:
                name = parse_batch_name(meta.name[: -len(".json")])
            except UploadRefused:
                continue  # not a name this point writes: not its file to drop
            if name.text in busy:
                continue
            with self._locked(name.terminal):
                if _touched_ns(self._partial_paths(name)) >= limit_ns:
                    continue
                self.drop_partial(name)
            dropped += 1
            _log.info("dropped the stale upload of %s", name.text)
        return dropped

    # -- heads -------------------------------------------------------------------------

    def accept_head(self, terminal: int, data: bytes, key: PublicKey, source: str) -> HeadStored:
        """Verify a signed head of ``terminal`` and keep it by the rules of the layout.

        MalformedFile or BadSignature when it does not verify; a head of a seq already
        held with another hash is kept beside (``conflict``) and replaces nothing.
        """
        head = verify_head(parse_head(data, source), key)
        if head.terminal != terminal:
            raise BadSignature(f"{source}: a head of terminal {head.terminal}, not {terminal}")
        try:
            day = dt.datetime.fromtimestamp(head.time_ms / 1000, dt.UTC).date()
        except (OverflowError, ValueError, OSError):
            raise MalformedFile(f"{source}: head time {head.time_ms} is beyond any day") from None
        where = self.head_dir(terminal)
        conflict: Path | None = None
        with self._locked(terminal):
            where.mkdir(parents=True, exist_ok=True)
            placed = []
            for path in (where / "latest.json", where / f"{day.isoformat()}.json"):
                held = _read_head(path)
                if held is not None and held.seq == head.seq and held.hash != head.hash:
                    digest = hashlib.sha256(data).hexdigest()[:16]
                    conflict = where / f"conflict-{head.seq}-{digest}.json"
                    if not conflict.exists():
                        write_atomic(conflict, data)
                    placed.append(False)
                    continue
                newer = held is None or head.seq > held.seq
                fresher = held is not None and head.seq == held.seq and head.time_ms > held.time_ms
                if newer or fresher:
                    write_atomic(path, data)
                placed.append(newer or fresher)
        return HeadStored(head, placed[0], placed[1], conflict)


def _touched_ns(paths: Iterable[Path]) -> int:
    """When any of ``paths`` last changed (0 if none is there)."""
    times = [0]
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            times.append(path.stat().st_mtime_ns)
    return max(times)


def _read_bounded(path: Path) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(MAX_BATCH_BYTES + 1)
    if len(data) > MAX_BATCH_BYTES:
        raise UploadRefused(f"{path} is larger than {MAX_BATCH_BYTES} bytes", 500)
    return data


_META = re.compile(rb'^\{"sha256": "[0-9a-f]{64}", "total": [1-9][0-9]{0,18}\}$')


def _read_meta(path: Path) -> tuple[bytes, int] | None:
    """(SHA-256, total) an upload in progress announced; None if absent or not the
    point's own spelling (then the upload simply starts over)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(256)
    except FileNotFoundError:
        return None
    if not _META.match(raw):
        return None
    doc = json.loads(raw)
    return parse_sha256(doc["sha256"], str(path)), int(doc["total"])


def _read_head(path: Path) -> ChainHead | None:
    """A head the point stored (verified when it came); None if there is none. A file
    that no longer parses is reported and counts as none, so a good head replaces it."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(8192)
    except FileNotFoundError:
        return None
    try:
        return parse_head(data, str(path)).head
    except MalformedFile as exc:
        _log.error("%s", exc)
        return None


def _summary(path: Path, name: BatchName) -> Ack:
    """The acknowledgement of a copy the point stored: its header's claims (it was
    verified before it was stored) and the SHA-256 of its bytes."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            if size < HEADER_BYTES:
                head += chunk[:HEADER_BYTES]
            digest.update(chunk)
            size += len(chunk)
            if size > MAX_BATCH_BYTES:
                break
    try:
        if size > MAX_BATCH_BYTES:
            raise BatchRejected("larger than a batch may be")
        return claimed_ack(head, digest.digest(), size, name)
    except BatchRejected as exc:
        raise UploadRefused(f"the point's copy {path} is damaged ({exc})", 500) from None


def claimed_ack(head: bytes, sha256: bytes, size: int, name: BatchName) -> Ack:
    """The acknowledgement a batch's header claims, from its first bytes (``head``),
    unverified: for bytes verified already (a stored copy, a fresh export).
    BatchRejected if the header does not parse or names another batch."""
    if not head.startswith(BATCH_MAGIC) or len(head) < len(BATCH_MAGIC) + 4:
        raise BatchRejected("not a batch")
    (n,) = _U32.unpack_from(head, len(BATCH_MAGIC))
    start = len(BATCH_MAGIC) + 4
    if n > MAX_HEADER or start + n > len(head):
        raise BatchRejected("header is cut short")
    header = load_header(head[start : start + n])
    fields = {}
    for key in ("terminal_id", "count", "first_seq", "last_seq"):
        value = header.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BatchRejected(f"header field {key}")
        fields[key] = value
    hashes = {}
    for key in ("prev_hash", "tail_hash"):
        text = header.get(key)
        if not isinstance(text, str) or not re.fullmatch("[0-9a-f]{64}", text):
            raise BatchRejected(f"header field {key}")
        hashes[key] = bytes.fromhex(text)
    if fields["terminal_id"] != name.terminal or header.get("day") != name.day.isoformat():
        raise BatchRejected("header does not match the name")
    if name.first_seq is not None and fields["first_seq"] != name.first_seq:
        raise BatchRejected("header does not match the name")
    return Ack(
        terminal=name.terminal,
        name=name.text,
        day=name.day,
        sha256=sha256,
        size=size,
        count=fields["count"],
        first_seq=fields["first_seq"],
        last_seq=fields["last_seq"],
        prev_hash=hashes["prev_hash"],
        tail_hash=hashes["tail_hash"],
    )
