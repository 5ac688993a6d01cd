"""The settlement's unit of work: one batch file in, one picklable partial result out.

``settle_unit`` reads a batch, verifies the terminal's signature and hash chain, then
redoes, for every ride the terminal labelled ACCEPT, every check that the batch alone
can answer: the proof of tap (the credential against the issuer keyring once per
distinct credential, the card's signature over the challenge every ride), the context
against the register, the credential's validity at ride time, its region and category
against the operator's policy, and the ride time against the batch's service day. It
depends only on its arguments, so the same call gives the same partial whether it runs
in-process, in a process pool or on a Dask worker. It must never raise on a file's
content, read a clock, touch shared state or write files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from dataclasses import dataclass, replace

import numpy as np

from farecore.card.credential import parse_unverified
from farecore.card.crypto import PublicKey
from farecore.card.keys import Keyring
from farecore.card.proof import challenge_head, verify_card_signature, verify_credential
from farecore.errors import BadSignature, MalformedInput
from farecore.journal.batch import day_bounds_ms, peek_terminal_id, verify_batch, verify_batch_rows
from farecore.journal.records import Direction
from farecore.settlement.anomalies import Anomaly
from farecore.settlement.fares import OperatorPolicy
from farecore.settlement.terminals import TerminalInfo

__all__ = [
    "MAX_BATCH_BYTES",
    "NO_RIDES",
    "NO_TIME",
    "Partial",
    "RideColumns",
    "UnitConfig",
    "settle_bytes",
    "settle_unit",
    "unreadable_key",
]

# A terminal's day is tens of megabytes at most; a larger file is refused unread.
MAX_BATCH_BYTES = 1 << 30
NO_TIME = -(1 << 63)  # "no earlier record" in the time high-water columns
_I64_MAX = (1 << 63) - 1  # the ledger's integers are SQLite's signed 64 bits


@dataclass(frozen=True, slots=True)
class UnitConfig:
    """What every unit needs: the register, the keyring and the operators' policies."""

    day: dt.date
    terminals: tuple[TerminalInfo, ...]
    keyring: bytes  # Keyring.to_bytes(): plain bytes travel to any worker
    policies: tuple[OperatorPolicy, ...] = ()
    clock_tolerance_ms: int = 300_000
    max_batch_bytes: int = MAX_BATCH_BYTES
    utc_offset_min: int = 480

    def terminal(self, terminal_id: int | None) -> TerminalInfo | None:
        # A register has thousands of terminals and a night thousands of batches.
        cached = _REGISTERS.get(id(self.terminals))
        if cached is None or cached[0] is not self.terminals:
            cached = (self.terminals, {t.terminal_id: t for t in self.terminals})
            _REGISTERS.clear()
            _REGISTERS[id(self.terminals)] = cached
        return cached[1].get(terminal_id) if terminal_id is not None else None

    def policy(self, operator: str) -> OperatorPolicy | None:
        for p in self.policies:
            if p.operator == operator:
                return p
        return None


@dataclass(frozen=True, slots=True, eq=False)
class RideColumns:
    """A batch's accepted rides that passed the unit's checks, column by column.

    One row per ride, in seq order. Every ride of a batch has its terminal's context
    (operator, line, place, direction): a record naming another is an anomaly, not a
    ride. Columns rather than a tuple per ride because a night has millions of rides and
    they cross process or network boundaries: a few arrays pickle and load in
    microseconds, where a million tuples take seconds.
    """

    operator: str
    line: str
    place: str
    direction: int
    seq: np.ndarray  # uint64
    time_ms: np.ndarray  # int64
    card_id: np.ndarray  # uint64
    counter: np.ndarray  # int64 (a uint32 on the card)
    record_hash: bytes  # 32 bytes per ride, in row order
    # (row, flags, revocation generation) of the few rides that carry flags
    flagged: tuple[tuple[int, tuple[str, ...], int | None], ...] = ()
    generation: np.ndarray | None = None  # int64, -1 where the record names none
    # int64: the latest time of any earlier record of this batch (NO_TIME for the first)
    time_before: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.seq)


_EMPTY_U64 = np.zeros(0, dtype=np.uint64)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
NO_RIDES = RideColumns(
    "", "", "", 0, _EMPTY_U64, _EMPTY_I64, _EMPTY_U64, _EMPTY_I64, b"", (), _EMPTY_I64, _EMPTY_I64
)


@dataclass(frozen=True, slots=True)
class Partial:
    """One batch's contribution. ``ok`` False: rejected, and ``rides`` is empty."""

    batch_sha256: bytes
    ok: bool
    terminal_id: int = -1
    day: str = ""
    first_seq: int = 0
    last_seq: int = -1
    prev_hash: bytes = b""
    tail_hash: bytes = b""
    taps: int = 0
    denied: int = 0
    rides: RideColumns = NO_RIDES
    anomalies: tuple[Anomaly, ...] = ()
    file: str = ""  # the file's name, for anomalies about the file itself
    max_time_ms: int = NO_TIME  # the latest record time in the batch
    unreadable: bool = False  # the unit could not read the file (an OSError)
    where: str = ""  # where the unit ran, when that matters to an error (never in outputs)
    # Rejected for what the settlement's own inputs say (an unregistered terminal, a key
    # that does not verify): looked at again on later nights, once the register is fixed.
    retry: bool = False


_REGISTERS: dict[int, tuple[tuple[TerminalInfo, ...], dict[int, TerminalInfo]]] = {}
_KEYRINGS: dict[bytes, Keyring] = {}
# (card id, card key, valid from, valid until, region, category), or why it failed.
_CardEntry = tuple[int, PublicKey, int, int, int, int] | str
# keyring bytes -> credential SHA-256 -> _CardEntry. A pure function of its keys, so
# caching it per process changes no result, only the cost: each process verifies each
# card's credential once, however many batches it settles.
_CARD_KEYS: dict[bytes, dict[bytes, _CardEntry]] = {}
_CARD_KEYS_MAX = 1_000_000


def _keyring(data: bytes) -> Keyring:
    # Parsed once per process: a worker settles many batches with the same keyring.
    ring = _KEYRINGS.get(data)
    if ring is None:
        ring = _KEYRINGS[data] = Keyring.from_bytes(data)
    return ring


def _file_problem(path: str, limit: int) -> tuple[str, bool] | None:
    """Why ``path`` cannot be a batch file, judged before reading a byte of it, and
    whether the cause is that it cannot be reached at all."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}", True
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file", False
    if st.st_size > limit:
        return f"{st.st_size} bytes, more than the {limit} a batch may have", False
    return None


def unreadable_key(path: str) -> bytes:
    """The key a batch entry that cannot be read goes by (it has no SHA-256 of its own)."""
    return hashlib.sha256(f"unreadable:{path}".encode()).digest()


def _rejected_file(path: str, detail: str, unreadable: bool = False) -> Partial:
    name = os.path.basename(path)
    return Partial(
        unreadable_key(path),
        False,
        anomalies=(Anomaly("batch_rejected", detail=f"{name}: {detail}", file=name),),
        file=name,
        unreadable=unreadable,
    )


def settle_unit(path: str, cfg: UnitConfig) -> Partial:
    """Verify one batch file and every proof in it. Never raises for what the file holds:
    a file that cannot be a batch (missing, a directory, unreadable, huge) is a rejected
    partial naming it."""
    problem = _file_problem(path, cfg.max_batch_bytes)
    if problem is not None:
        return _rejected_file(path, *problem)
    try:
        with open(path, "rb") as f:
            data = f.read(cfg.max_batch_bytes + 1)
    except OSError as exc:
        return _rejected_file(path, f"cannot read: {exc.strerror or exc}", True)
    if len(data) > cfg.max_batch_bytes:
        return _rejected_file(path, "grew past the size limit while read")
    return settle_bytes(data, cfg, os.path.basename(path))


def settle_bytes(data: bytes, cfg: UnitConfig, file: str = "") -> Partial:
    """``settle_unit`` on bytes already read."""
    sha = hashlib.sha256(data).digest()
    claimed = peek_terminal_id(data)
    info = cfg.terminal(claimed)
    if info is None:
        kind = "batch_rejected" if claimed is None else "unknown_terminal"
        detail = _why_unparsed(data) if claimed is None else "terminal not registered"
        return Partial(
            sha,
            False,
            anomalies=(
                Anomaly(
                    kind,
                    terminal_id=claimed if claimed is not None else -1,
                    batch=sha.hex(),
                    detail=detail,
                    file=file,
                ),
            ),
            file=file,
            retry=claimed is not None,
        )
    try:
        batch = verify_batch_rows(data, info.key())
    except MalformedInput as exc:
        return _rejected_batch(sha, info.terminal_id, file, str(exc))
    except BadSignature as exc:
        return replace(_rejected_batch(sha, info.terminal_id, file, str(exc)), retry=True)
    if batch.last_seq > _I64_MAX or batch.first_seq > _I64_MAX:
        return _rejected_batch(sha, info.terminal_id, file, "seq beyond 2^63 - 1")
    if batch.utc_offset_min != cfg.utc_offset_min:
        return _rejected_batch(
            sha,
            info.terminal_id,
            file,
            f"service day in UTC{batch.utc_offset_min:+d} min, not the settlement's "
            f"{cfg.utc_offset_min:+d}",
        )
    rows = batch.rows
    policy = cfg.policy(info.operator)
    start_ms, end_ms = day_bounds_ms(batch.day, batch.utc_offset_min)
    tol = cfg.clock_tolerance_ms
    keyring = _keyring(cfg.keyring)
    keys = _CARD_KEYS.get(cfg.keyring)
    if keys is None or len(keys) > _CARD_KEYS_MAX:
        keys = _CARD_KEYS[cfg.keyring] = {}
    seqs: list[int] = []
    times: list[int] = []
    cards: list[int] = []
    counters: list[int] = []
    hashes: list[bytes] = []
    generations: list[int] = []
    befores: list[int] = []
    flagged: list[tuple[int, tuple[str, ...], int | None]] = []
    anomalies: list[Anomaly] = []
    credentials = batch.credentials
    want = (info.operator, info.line, info.place, int(info.direction))
    latest = NO_TIME
    denied = 0

    def flag(kind: str, tid: int, seq: int, card_id: int | None, detail: str) -> None:
        anomalies.append(_flag(kind, tid, seq, card_id, sha, detail))

    # The batch signature authenticated every byte of these rows; what is left per ride
    # is the proof of tap and the checks a gate makes. Rows unpack straight into locals.
    for (
        tid,
        seq,
        time_ms,
        operator,
        line,
        place,
        direction,
        label,
        card_id,
        cred_sha,
        challenge,
        counter,
        signature,
        generation,
        flags,
        _detail,
        record_hash,
    ) in rows:
        before = latest
        # Only a time on the batch's own day raises the mark: a record stamped far off
        # (a clock glitch, or a lie) is not paid, and must not hold back every later one.
        if time_ms > latest and start_ms - tol <= time_ms < end_ms + tol:
            latest = time_ms
        if label != "ACCEPT":
            denied += 1
            continue  # a denied tap is never paid, whatever else it says
        if (operator, line, place, direction) != want:
            flag(
                "context_mismatch",
                tid,
                seq,
                card_id,
                f"{operator}/{line}/{place}/{Direction(direction).name}",
            )
            continue
        assert card_id is not None and counter is not None and cred_sha is not None
        entry = keys.get(cred_sha)
        if entry is None:
            entry = keys[cred_sha] = _card_key(credentials[cred_sha], keyring)
        if isinstance(entry, str):
            flag("bad_proof", tid, seq, card_id, entry)
            continue
        cred_card, key, valid_from, valid_until, region, category = entry
        if cred_card != card_id:
            flag("bad_proof", tid, seq, card_id, f"credential is for card {cred_card}")
            continue
        ch_tid, ch_ms = challenge_head(challenge)
        if ch_tid != tid or ch_ms != time_ms:
            flag("bad_proof", tid, seq, card_id, "challenge does not name this terminal and time")
            continue
        assert signature is not None
        try:
            verify_card_signature(key, card_id, counter, challenge, signature)
        except BadSignature as exc:
            flag("bad_proof", tid, seq, card_id, f"card signature: {exc}")
            continue
        # The gate's own checks, in its order, redone from the credential the batch holds.
        if time_ms < valid_from * 1000:
            flag("not_yet_valid", tid, seq, card_id, f"valid from {valid_from}")
            continue
        if time_ms >= valid_until * 1000:
            flag("expired", tid, seq, card_id, f"valid until {valid_until}")
            continue
        if policy is None or region not in policy.regions:
            flag("wrong_region", tid, seq, card_id, f"region {region}")
            continue
        if category not in policy.categories:
            flag("category_not_accepted", tid, seq, card_id, f"category {category}")
            continue
        if not start_ms - tol <= time_ms < end_ms + tol:
            flag("outside_day", tid, seq, card_id, f"time {time_ms} is not on {batch.day}")
            continue
        if flags:
            flagged.append((len(seqs), flags, generation))
        seqs.append(seq)
        times.append(time_ms)
        cards.append(card_id)
        counters.append(counter)
        hashes.append(record_hash)
        generations.append(-1 if generation is None else min(generation, _I64_MAX))
        befores.append(before)
    rides = RideColumns(
        want[0],
        want[1],
        want[2],
        want[3],
        np.array(seqs, dtype=np.uint64),
        np.array(times, dtype=np.int64),
        np.array(cards, dtype=np.uint64),
        np.array(counters, dtype=np.int64),
        b"".join(hashes),
        tuple(flagged),
        np.array(generations, dtype=np.int64),
        np.array(befores, dtype=np.int64),
    )
    return Partial(
        batch_sha256=sha,
        ok=True,
        terminal_id=batch.terminal_id,
        day=batch.day.isoformat(),
        first_seq=batch.first_seq,
        last_seq=batch.last_seq,
        prev_hash=batch.prev_hash,
        tail_hash=batch.tail_hash,
        taps=len(rows),
        denied=denied,
        rides=rides,
        anomalies=tuple(anomalies),
        file=file,
        max_time_ms=latest,
    )


def _rejected_batch(sha: bytes, terminal_id: int, file: str, detail: str) -> Partial:
    return Partial(
        sha,
        False,
        terminal_id=terminal_id,
        anomalies=(
            Anomaly(
                "batch_rejected", terminal_id=terminal_id, batch=sha.hex(), detail=detail, file=file
            ),
        ),
        file=file,
    )


def _why_unparsed(data: bytes) -> str:
    """The parser's own words for a batch whose terminal id could not even be read."""
    try:
        verify_batch(data, None)  # structure only: there is no key to check it with
    except MalformedInput as exc:
        return str(exc)
    return "header names no terminal id"


def _flag(kind: str, tid: int, seq: int, card_id: int | None, sha: bytes, detail: str) -> Anomaly:
    return Anomaly(
        kind,
        terminal_id=tid,
        seq=seq,
        card_id=card_id if card_id is not None else -1,
        batch=sha.hex(),
        detail=detail,
    )


def _card_key(credential: bytes, keyring: Keyring) -> _CardEntry:
    """The card's id, key and validity terms from a credential the issuer signed, or why not."""
    try:
        cred = parse_unverified(credential)
        key = verify_credential(cred, keyring)
    except (MalformedInput, BadSignature) as exc:
        return f"credential: {exc}"
    f = cred.fields
    return (f.card_id, key, f.valid_from, f.valid_until, f.region, f.category)
