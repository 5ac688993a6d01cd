"""The durable ride journal of one terminal: every tap, hash-chained, in SQLite (WAL).

``Journal.append`` returns only after its record is committed with ``synchronous=FULL``,
so a gate that signals "open" after it returns never loses the ride, even to SIGKILL or
power loss. Records carry a gap-free sequence number per terminal and the hash of the
previous record, so a deleted, altered or reordered record breaks the chain.

The byte encoding of a record (``encode_record``) is the one the chain hashes and the
signed daily batch carries; it is documented in docs/journal-and-batches.md. This module
must never read a clock: record times come from the decision.
"""

from __future__ import annotations

import enum
import hashlib
import os
import queue
import sqlite3
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from farecore.decision import Decision
from farecore.errors import JournalError, MalformedFile
from farecore.walfile import reserve_wal

__all__ = [
    "GENESIS_HASH",
    "Direction",
    "Journal",
    "JournalReader",
    "JournalRecord",
    "RecordRow",
    "TapContext",
    "chain_hash",
    "credential_hash",
    "decode_record",
    "decode_record_row",
    "encode_record",
    "record_row",
]

GENESIS_HASH = b"\x00" * 32
_CHAIN_TAG = b"farecore/journal/v1"
_NO_HASH = b"\x00" * 32
_NO_SIG = b"\x00" * 64
# terminal_id, seq, time_ms, direction, presence, card_id, counter, generation,
# credential hash, challenge, card signature
_FIXED = struct.Struct(">QQqBBQIQ32s32s64s")
_U16 = struct.Struct(">H")
_HAS_CARD, _HAS_CRED, _HAS_COUNTER, _HAS_SIG, _HAS_GEN = 1, 2, 4, 8, 16
_U64_MAX = 0xFFFFFFFFFFFFFFFF
_FIXED_UNPACK = _FIXED.unpack_from
_FIXED_SIZE = _FIXED.size
_sha256 = hashlib.sha256


class Direction(enum.IntEnum):
    """Which way the rider went through the gate."""

    BOARD = 1  # bus boarding
    ENTRY = 2  # metro entry
    EXIT = 3  # metro exit

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class TapContext:
    """Where a terminal stands: fixed per gate, recorded with every tap."""

    operator: str
    line: str
    place: str  # station, stop or vehicle id
    direction: Direction

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", Direction(self.direction))
        for name in ("operator", "line", "place"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value.encode()) > 255:
                raise ValueError(f"{name} must be a non-empty string of at most 255 bytes")


def credential_hash(credential: bytes) -> bytes:
    """The key of the per-card credential table (SHA-256 of the credential bytes)."""
    return hashlib.sha256(credential).digest()


def chain_hash(prev_hash: bytes, body: bytes) -> bytes:
    """A record's own hash: it covers the previous hash, so the records form a chain."""
    return hashlib.sha256(_CHAIN_TAG + prev_hash + body).digest()


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One journaled tap, exactly as hashed and exported.

    ``credential`` is kept outside the hashed body (which holds its SHA-256); the journal
    and the batch store each distinct credential once.
    """

    terminal_id: int
    seq: int
    time_ms: int
    operator: str
    line: str
    place: str
    direction: Direction
    decision: str  # "ACCEPT" or the deny reason's name
    card_id: int | None = None
    credential_sha256: bytes | None = None
    challenge: bytes = b"\x00" * 32
    counter: int | None = None
    card_signature: bytes | None = None
    revocation_generation: int | None = None
    flags: tuple[str, ...] = ()
    detail: str = ""
    prev_hash: bytes = GENESIS_HASH
    hash: bytes = GENESIS_HASH

    def __post_init__(self) -> None:
        if not 0 <= self.terminal_id <= _U64_MAX or not 1 <= self.seq <= _U64_MAX:
            raise ValueError("terminal id must be a uint64 and seq a positive uint64")
        object.__setattr__(self, "direction", Direction(self.direction))
        object.__setattr__(self, "flags", tuple(sorted(set(self.flags))))
        if len(self.challenge) != 32 or len(self.prev_hash) != 32 or len(self.hash) != 32:
            raise ValueError("challenge, prev_hash and hash are 32 bytes each")
        if self.credential_sha256 is not None and len(self.credential_sha256) != 32:
            raise ValueError("credential_sha256 is 32 bytes")
        if self.card_signature is not None and len(self.card_signature) != 64:
            raise ValueError("card signature is 64 bytes")
        if self.accepted and (
            self.card_id is None
            or self.credential_sha256 is None
            or self.counter is None
            or self.card_signature is None
        ):
            raise ValueError("an accepted ride must carry its full proof of tap")

    @property
    def accepted(self) -> bool:
        return self.decision == "ACCEPT"

    @property
    def body(self) -> bytes:
        return encode_record(self)


def _put_str(parts: list[bytes], text: str) -> None:
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise ValueError("a journal text field is longer than 65535 bytes")
    parts.append(_U16.pack(len(raw)))
    parts.append(raw)


def encode_record(r: JournalRecord) -> bytes:
    """The record's canonical bytes (everything but its own hash and prev hash)."""
    presence = (
        (_HAS_CARD if r.card_id is not None else 0)
        | (_HAS_CRED if r.credential_sha256 is not None else 0)
        | (_HAS_COUNTER if r.counter is not None else 0)
        | (_HAS_SIG if r.card_signature is not None else 0)
        | (_HAS_GEN if r.revocation_generation is not None else 0)
    )
    parts = [
        _FIXED.pack(
            r.terminal_id,
            r.seq,
            r.time_ms,
            int(r.direction),
            presence,
            r.card_id or 0,
            r.counter or 0,
            r.revocation_generation or 0,
            r.credential_sha256 or _NO_HASH,
            r.challenge,
            r.card_signature or _NO_SIG,
        )
    ]
    for text in (r.operator, r.line, r.place, r.decision, ",".join(r.flags), r.detail):
        _put_str(parts, text)
    return b"".join(parts)


def decode_record(body: bytes, prev_hash: bytes = GENESIS_HASH) -> JournalRecord:
    """Parse canonical record bytes; raise MalformedFile on any deviation.

    The result's ``hash`` is computed from ``prev_hash`` and the body, so a decoded record
    always carries the hash it would have in a chain that starts from ``prev_hash``.
    """
    try:
        (tid, seq, time_ms, direction, presence, card_id, counter, gen, cred, chal, sig) = (
            _FIXED.unpack_from(body)
        )
        pos = _FIXED.size
        texts: list[str] = []
        for _ in range(6):
            (n,) = _U16.unpack_from(body, pos)
            pos += 2
            if pos + n > len(body):
                raise MalformedFile("journal record: a text field runs past the end")
            texts.append(body[pos : pos + n].decode())
            pos += n
        if pos != len(body):
            raise MalformedFile(f"journal record: {len(body) - pos} trailing bytes")
        if presence & ~0x1F:
            raise MalformedFile(f"journal record: unknown presence bits {presence:#x}")
        operator, line, place, label, flags, detail = texts
        record = JournalRecord(
            terminal_id=tid,
            seq=seq,
            time_ms=time_ms,
            operator=operator,
            line=line,
            place=place,
            direction=Direction(direction),
            decision=label,
            card_id=card_id if presence & _HAS_CARD else None,
            credential_sha256=cred if presence & _HAS_CRED else None,
            challenge=chal,
            counter=counter if presence & _HAS_COUNTER else None,
            card_signature=sig if presence & _HAS_SIG else None,
            revocation_generation=gen if presence & _HAS_GEN else None,
            flags=tuple(flags.split(",")) if flags else (),
            detail=detail,
            prev_hash=prev_hash,
            hash=chain_hash(prev_hash, body),
        )
    except MalformedFile:
        raise
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise MalformedFile(f"journal record does not parse: {exc}") from None
    # Canonical form without re-encoding (the settlement decodes millions of records):
    # absent fields are zero and flags are sorted, unique and non-empty.
    if (
        (not presence & _HAS_CARD and card_id)
        or (not presence & _HAS_CRED and cred != _NO_HASH)
        or (not presence & _HAS_COUNTER and counter)
        or (not presence & _HAS_SIG and sig != _NO_SIG)
        or (not presence & _HAS_GEN and gen)
        or ",".join(record.flags) != flags
    ):
        raise MalformedFile("journal record is not in canonical form")
    return record


# A decoded record as a plain tuple, in JournalRecord's field order without prev_hash:
# (terminal_id, seq, time_ms, operator, line, place, direction, decision, card_id,
#  credential_sha256, challenge, counter, card_signature, revocation_generation, flags,
#  detail, hash). The settlement reads millions of records it has already authenticated
# (the batch signature covers them), so it skips building and validating a dataclass each.
RecordRow = tuple[
    int,
    int,
    int,
    str,
    str,
    str,
    int,
    str,
    int | None,
    bytes | None,
    bytes,
    int | None,
    bytes | None,
    int | None,
    tuple[str, ...],
    str,
    bytes,
]
_FULL_PROOF = _HAS_CARD | _HAS_CRED | _HAS_COUNTER | _HAS_SIG


def decode_record_row(body: bytes, prev_hash: bytes) -> RecordRow | None:
    """``decode_record`` as a tuple, or None where ``decode_record`` might object.

    It accepts exactly what ``decode_record`` accepts in canonical form and returns the
    same values; on anything else (malformed, non-canonical, unknown direction, an
    accepted record without its proof) it returns None, so the caller can run
    ``decode_record`` for the precise error. It never raises on bad bytes.
    """
    try:
        (tid, seq, time_ms, direction, presence, card_id, counter, gen, cred, chal, sig) = (
            _FIXED_UNPACK(body)
        )
        pos = _FIXED_SIZE
        end = len(body)
        texts: list[str] = []
        for _ in range(6):
            stop = pos + 2 + ((body[pos] << 8) | body[pos + 1])
            if stop > end:
                return None
            texts.append(body[pos + 2 : stop].decode())
            pos = stop
    except (struct.error, IndexError, UnicodeDecodeError):
        return None
    if pos != end or presence & ~0x1F or seq < 1 or not 1 <= direction <= 3:
        return None
    operator, line, place, label, flags, detail = texts
    if label == "ACCEPT" and presence & _FULL_PROOF != _FULL_PROOF:
        return None
    if (
        (not presence & _HAS_CARD and card_id)
        or (not presence & _HAS_CRED and cred != _NO_HASH)
        or (not presence & _HAS_COUNTER and counter)
        or (not presence & _HAS_SIG and sig != _NO_SIG)
        or (not presence & _HAS_GEN and gen)
    ):
        return None
    flag_tuple: tuple[str, ...] = ()
    if flags:
        parts = flags.split(",")
        # Canonical flags are sorted and unique (what JournalRecord would make of them).
        if parts != sorted(set(parts)):
            return None
        flag_tuple = tuple(parts)
    return (
        tid,
        seq,
        time_ms,
        operator,
        line,
        place,
        direction,
        label,
        card_id if presence & _HAS_CARD else None,
        cred if presence & _HAS_CRED else None,
        chal,
        counter if presence & _HAS_COUNTER else None,
        sig if presence & _HAS_SIG else None,
        gen if presence & _HAS_GEN else None,
        flag_tuple,
        detail,
        _sha256(_CHAIN_TAG + prev_hash + body).digest(),
    )


def record_row(r: JournalRecord) -> RecordRow:
    """A JournalRecord as a RecordRow (the slow path's result in the fast path's shape)."""
    return (
        r.terminal_id,
        r.seq,
        r.time_ms,
        r.operator,
        r.line,
        r.place,
        int(r.direction),
        r.decision,
        r.card_id,
        r.credential_sha256,
        r.challenge,
        r.counter,
        r.card_signature,
        r.revocation_generation,
        r.flags,
        r.detail,
        r.hash,
    )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS credentials (sha256 BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    card_id INTEGER,
    body BLOB NOT NULL,
    hash BLOB NOT NULL
);
"""


@dataclass(slots=True)
class _Pending:
    decision: Decision
    ctx: TapContext
    done: threading.Event
    record: JournalRecord | None = None
    error: BaseException | None = None


class Journal:
    """One terminal's journal file. Thread-safe; see ``open`` for group commit."""

    def __init__(self, path: Path, terminal_id: int, group_commit_ms: float | None) -> None:
        self.path = path
        self.terminal_id = terminal_id
        self.group_commit_ms = group_commit_ms
        self._lock = threading.Lock()
        self._db = _connect(path)
        self._closed = False
        # Credentials already in the file: a repeat rider costs no extra statement.
        self._known: dict[bytes, None] = {}
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._committer: threading.Thread | None = None
        try:
            self._init_meta()
            reserve_wal(self._db, path)
            row = self._db.execute(
                "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise JournalError(f"{path}: cannot read the journal: {exc}") from None
        self._seq: int = row[0] if row else 0
        self._head: bytes = bytes(row[1]) if row else GENESIS_HASH
        if group_commit_ms is not None:
            self._committer = threading.Thread(
                target=self._commit_loop, name="journal-committer", daemon=True
            )
            self._committer.start()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        terminal_id: int,
        *,
        group_commit_ms: float | None = None,
    ) -> Journal:
        """Open or create the journal of ``terminal_id``; a reopen continues the chain.

        With ``group_commit_ms``, a committer thread collects appends for at most that
        long and commits them in one transaction; each ``append`` still returns only once
        its own record is durable.
        """
        if group_commit_ms is not None and not 0 < group_commit_ms <= 1000:
            raise ValueError("group_commit_ms must be in (0, 1000]")
        return cls(Path(path), terminal_id, group_commit_ms)

    def _init_meta(self) -> None:
        with self._db:
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='terminal_id'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO meta VALUES ('terminal_id', ?), ('format', 'farecore-journal/1')",
                    (str(self.terminal_id),),
                )
            elif int(row[0]) != self.terminal_id:
                raise JournalError(
                    f"{self.path} is the journal of terminal {row[0]}, not {self.terminal_id}"
                )

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def head_hash(self) -> bytes:
        return self._head

    def append(self, decision: Decision, ctx: TapContext) -> JournalRecord:
        """Journal one tap; return once it is durable. Raises JournalError otherwise."""
        if self._closed:
            raise JournalError("the journal is closed")
        if decision.terminal_id != self.terminal_id:
            raise JournalError(
                f"decision of terminal {decision.terminal_id} in the journal of {self.terminal_id}"
            )
        if self._committer is None:
            with self._lock:
                return self._write([(decision, ctx)])[0]
        pending = _Pending(decision, ctx, threading.Event())
        self._queue.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise JournalError(f"journal commit failed: {pending.error}") from pending.error
        assert pending.record is not None
        return pending.record

    def _commit_loop(self) -> None:
        wait_s = (self.group_commit_ms or 0) / 1000
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            # Bounded wait: gather whatever arrives within the window, then commit.
            try:
                while len(batch) < 1000:
                    item = self._queue.get(timeout=wait_s)
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
            except queue.Empty:
                pass
            try:
                with self._lock:
                    records = self._write([(p.decision, p.ctx) for p in batch])
                for p, rec in zip(batch, records, strict=True):
                    p.record = rec
            except BaseException as exc:
                for p in batch:
                    p.error = exc
            for p in batch:
                p.done.set()

    def _write(self, taps: list[tuple[Decision, TapContext]]) -> list[JournalRecord]:
        seq, head = self._seq, self._head
        out: list[JournalRecord] = []
        rows = []
        creds = []
        for decision, ctx in taps:
            seq += 1
            cred_hash = None
            if decision.credential is not None:
                cred_hash = credential_hash(decision.credential)
                if cred_hash not in self._known:
                    creds.append((cred_hash, decision.credential))
            draft = JournalRecord(
                terminal_id=self.terminal_id,
                seq=seq,
                time_ms=decision.time_ms,
                operator=ctx.operator,
                line=ctx.line,
                place=ctx.place,
                direction=ctx.direction,
                decision=decision.label,
                card_id=decision.card_id,
                credential_sha256=cred_hash,
                challenge=decision.challenge,
                counter=decision.counter,
                card_signature=decision.card_signature,
                revocation_generation=decision.revocation_generation,
                flags=tuple(decision.flags),
                detail=decision.detail[:1000],
                prev_hash=head,
            )
            body = encode_record(draft)
            own = chain_hash(head, body)
            object.__setattr__(draft, "hash", own)
            rows.append((seq, decision.time_ms, _sql_int(decision.card_id), body, own))
            out.append(draft)
            head = own
        db = self._db
        try:
            # One transaction whose commit is the sync that makes it durable. A lone
            # record of a known card is one autocommit statement: no separate BEGIN.
            if len(rows) == 1 and not creds:
                db.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?)", rows[0])
            else:
                db.execute("BEGIN")
                try:
                    if creds:
                        db.executemany("INSERT OR IGNORE INTO credentials VALUES (?, ?)", creds)
                    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?)", rows)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot write the journal: {exc}") from None
        self._seq, self._head = seq, head
        if len(self._known) > 100_000:
            self._known.clear()
        self._known.update(dict.fromkeys(c for c, _ in creds))
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._committer is not None:
            self._queue.put(None)
            self._committer.join()
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _sql_int(value: int | None) -> int | None:
    # SQLite integers are signed 64-bit; card ids use the full uint64 range.
    return value - (1 << 64) if value is not None and value >= 1 << 63 else value


def _connect(path: Path) -> sqlite3.Connection:
    try:
        # Autocommit: ``_write`` opens and commits its own transactions.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Small pages and no secondary index: a commit writes fewer WAL bytes before its
        # fsync, which is most of what an append costs. The nightly export scans instead.
        db.execute("PRAGMA page_size=1024")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open the journal: {exc}") from None
    return db


class JournalReader:
    """Read-only access to a journal file: records by seq, credentials, chain check."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise JournalError(f"{self.path}: no such journal")
        try:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            row = self._db.execute("SELECT value FROM meta WHERE key='terminal_id'").fetchone()
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: not a farecore journal: {exc}") from None
        if row is None:
            raise JournalError(f"{self.path}: not a farecore journal (no terminal id)")
        self.terminal_id = int(row[0])

    def close(self) -> None:
        self._db.close()

    def first_seq_from(self, time_ms: int) -> int:
        """The lowest seq timed at or after ``time_ms``; one past the last if none is."""
        row = self._db.execute("SELECT MIN(seq) FROM records WHERE time_ms >= ?", (time_ms,))
        value = row.fetchone()[0]
        if value is not None:
            return int(value)
        last = self._db.execute("SELECT MAX(seq) FROM records").fetchone()[0]
        return int(last or 0) + 1

    def hash_of(self, seq: int) -> bytes:
        if seq == 0:
            return GENESIS_HASH
        row = self._db.execute("SELECT hash FROM records WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise JournalError(f"{self.path}: record {seq} is missing")
        return bytes(row[0])

    def records(self, first: int = 1, last: int | None = None) -> Iterator[JournalRecord]:
        """Records ``first..last`` in seq order, each checked against the chain.

        Raises JournalError on a gap, a broken link or a record that does not parse.
        """
        prev = self.hash_of(first - 1)
        expected = first
        cur = self._db.execute(
            "SELECT seq, body, hash FROM records WHERE seq >= ? AND seq <= ? ORDER BY seq",
            (first, last if last is not None else _U64_MAX >> 1),
        )
        for seq, body, own in cur:
            if seq != expected:
                raise JournalError(f"{self.path}: sequence gap: {expected} missing")
            try:
                record = decode_record(bytes(body), prev)
            except MalformedFile as exc:
                raise JournalError(f"{self.path}: record {seq}: {exc}") from None
            if record.hash != bytes(own) or record.seq != seq:
                raise JournalError(f"{self.path}: record {seq} breaks the hash chain")
            if record.terminal_id != self.terminal_id:
                raise JournalError(f"{self.path}: record {seq} names another terminal")
            yield record
            prev = record.hash
            expected += 1
        if last is not None and expected != last + 1:
            raise JournalError(f"{self.path}: sequence gap: {expected} missing")

    def credential(self, sha256: bytes) -> bytes:
        row = self._db.execute("SELECT data FROM credentials WHERE sha256 = ?", (sha256,))
        found = row.fetchone()
        if found is None:
            raise JournalError(f"{self.path}: credential {sha256.hex()[:16]}… is missing")
        data = bytes(found[0])
        if credential_hash(data) != sha256:
            raise JournalError(f"{self.path}: credential {sha256.hex()[:16]}… is corrupt")
        return data

    def verify_chain(self) -> int:
        """Walk the whole chain; return the number of records or raise JournalError."""
        count = 0
        for _ in self.records(1):
            count += 1
        return count

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
