"""The settlement's unit of work: one batch file in, one picklable partial result out.

``settle_unit`` reads a batch, verifies the terminal's signature and hash chain, then
redoes, for every ride the terminal labelled ACCEPT, every check that the batch alone
can answer: the proof of tap (the credential against the issuer keyring once per
distinct credential, unless the issuer's signed list of its credentials vouches for it;
the card's signature over the challenge every ride), the context against the register,
the credential's validity at ride time, its region and category against the operator's
policy, and the ride time against the batch's service day. It depends only on its
arguments, so the same call gives the same partial whether it runs in-process, in a
process pool or on a Dask worker. It must never raise on a batch's content, read a
clock, touch shared state or write files. The one input it raises on is an issued list
that is no longer the file the night checked: the night stops rather than judge some
batches by another list.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np

from farecore.boundedinput import read_regular
from farecore.card.credential import parse_unverified
from farecore.card.crypto import PublicKey, load_public_key
from farecore.card.keys import Keyring
from farecore.card.proof import challenge_head, verify_card_signature, verify_credential
from farecore.decide.issued import IssuedList
from farecore.errors import BadSignature, IssuedListError, MalformedInput, SettlementError
from farecore.journal.batch import (
    BatchRows,
    day_bounds_ms,
    peek_terminal_id,
    verify_batch,
    verify_batch_rows,
)
from farecore.journal.records import Direction
from farecore.settlement.anomalies import Anomaly
from farecore.settlement.fares import OperatorPolicy
from farecore.settlement.partial import (
    I64_MAX,
    MAX_BATCH_BYTES,
    NO_RIDES,
    NO_TIME,
    Partial,
    RideColumns,
    UnitConfig,
)
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

_KEYRINGS: dict[bytes, Keyring] = {}
# (card id, card key, valid from, valid until, region, category), or why it failed.
_CardEntry = tuple[int, PublicKey, int, int, int, int] | str
# The trust a credential is judged by: the keyring's bytes and the night's issued lists.
_Trust = tuple[bytes, tuple[tuple[str, str, int], ...]]
# trust -> credential SHA-256 -> _CardEntry. A pure function of the trust and the
# credential, so caching it per process changes no result, only the cost: each process
# verifies each card's credential once, however many batches it settles. One trust at a
# time: the lists change from night to night.
_CARD_KEYS: dict[_Trust, dict[bytes, _CardEntry]] = {}
_CARD_KEYS_MAX = 1_000_000
# trust -> issuer key id -> the list, verified in this process.
_ISSUED: dict[_Trust, dict[int, IssuedList]] = {}
# (seq, time, card, counter, record hash, generation, latest earlier time) of a paid ride
_Kept = tuple[int, int, int, int, bytes, int, int]
# (the ride's index among the paid ones, its flags, its revocation generation)
_Flagged = tuple[int, tuple[str, ...], int | None]


def _keyring(data: bytes) -> Keyring:
    # Parsed once per process: a worker settles many batches with the same keyring.
    ring = _KEYRINGS.get(data)
    if ring is None:
        ring = _KEYRINGS[data] = Keyring.from_bytes(data)
    return ring


def _card_keys(cfg: UnitConfig) -> dict[bytes, _CardEntry]:
    trust = (cfg.keyring, cfg.issued)
    keys = _CARD_KEYS.get(trust)
    if keys is None or len(keys) > _CARD_KEYS_MAX:
        _CARD_KEYS.clear()
        keys = _CARD_KEYS[trust] = {}
    return keys


def _issued(cfg: UnitConfig) -> dict[int, IssuedList]:
    """The night's issued lists, read and verified once per process. Every unit must judge
    by the lists the night checked (the manifest names them): one that is no longer the
    same file, or cannot be read here, stops the night (SettlementError), before anything
    is paid or written."""
    if not cfg.issued:
        return {}
    key = (cfg.keyring, cfg.issued)
    lists = _ISSUED.get(key)
    if lists is None:
        keyring = _keyring(cfg.keyring)
        loaded = {}
        for path, digest, size in cfg.issued:
            listed = _reread(path, digest, size, keyring)
            loaded[listed.key_id] = listed
        _ISSUED.clear()
        lists = _ISSUED[key] = loaded  # whole before it is seen: units may run in threads
    return lists


def _reread(path: str, digest: str, size: int, keyring: Keyring) -> IssuedList:
    problem = "changed since"
    try:
        data = read_regular(Path(path), size, path, IssuedListError)
        if hashlib.sha256(data).hexdigest() == digest:
            return IssuedList.from_bytes(data, keyring, path)
    except (OSError, IssuedListError) as exc:
        problem = f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
    raise SettlementError(
        f"issued list {path} is not the file the night checked ({problem}); every unit "
        "must judge by the same list: settle the night again"
    )


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
    opened = _open_batch(data, sha, cfg, file)
    if isinstance(opened, Partial):
        return opened
    info, batch = opened
    denied, latest, kept, flagged, anomalies = _check_rides(batch, info, cfg, sha)
    return Partial(
        batch_sha256=sha,
        ok=True,
        terminal_id=batch.terminal_id,
        day=batch.day.isoformat(),
        first_seq=batch.first_seq,
        last_seq=batch.last_seq,
        prev_hash=batch.prev_hash,
        tail_hash=batch.tail_hash,
        taps=len(batch.rows),
        denied=denied,
        rides=_columns(info, kept, flagged),
        anomalies=tuple(anomalies),
        file=file,
        max_time_ms=latest,
        head_hashes=_head_hashes(batch, cfg.head_seqs.get(batch.terminal_id)),
    )


def _head_hashes(batch: BatchRows, seqs: frozenset[int] | None) -> tuple[tuple[int, bytes], ...]:
    """The chain hash after each of ``seqs`` that this batch covers (its prev hash at
    the seq before its first): what the terminal's signed heads are checked against."""
    if not seqs:
        return ()
    first, last, rows = batch.first_seq, batch.last_seq, batch.rows
    return tuple(
        (s, batch.prev_hash if s == first - 1 else rows[s - first].hash)
        for s in sorted(seqs)
        if first - 1 <= s <= last
    )


def _open_batch(
    data: bytes, sha: bytes, cfg: UnitConfig, file: str
) -> Partial | tuple[TerminalInfo, BatchRows]:
    """The batch's registered terminal and its verified rows, or the rejected partial."""
    claimed = peek_terminal_id(data)
    info = cfg.terminal(claimed)
    if info is None:
        kind = "batch_rejected" if claimed is None else "unknown_terminal"
        detail = _why_unparsed(data) if claimed is None else "terminal not registered"
        tid = claimed if claimed is not None else -1
        found = Anomaly(kind, terminal_id=tid, batch=sha.hex(), detail=detail, file=file)
        return Partial(sha, False, anomalies=(found,), file=file, retry=claimed is not None)
    try:
        batch = verify_batch_rows(data, info.key())
    except MalformedInput as exc:
        return _rejected_batch(sha, info.terminal_id, file, str(exc))
    except BadSignature as exc:
        return replace(_rejected_batch(sha, info.terminal_id, file, str(exc)), retry=True)
    if batch.last_seq > I64_MAX or batch.first_seq > I64_MAX:
        return _rejected_batch(sha, info.terminal_id, file, "seq beyond 2^63 - 1")
    if batch.utc_offset_min != cfg.utc_offset_min:
        return _rejected_batch(
            sha,
            info.terminal_id,
            file,
            f"service day in UTC{batch.utc_offset_min:+d} min, not the settlement's "
            f"{cfg.utc_offset_min:+d}",
        )
    return info, batch


def _check_rides(
    batch: BatchRows, info: TerminalInfo, cfg: UnitConfig, sha: bytes
) -> tuple[int, int, list[_Kept], list[_Flagged], list[Anomaly]]:
    """Every ride's checks, in the gate's order (the night's hot loop: one call a batch):
    denied taps, latest time on the batch's day, rides paid, their flags, anomalies."""
    policy = cfg.policy(info.operator)
    low, high = _day_window(batch, cfg)
    keyring, keys, credentials = _keyring(cfg.keyring), _card_keys(cfg), batch.credentials
    issued = _issued(cfg)
    want = (info.operator, info.line, info.place, int(info.direction))
    # A merchant's till journals discount claims: proofs of a card, never a ride to pay.
    till = info.direction == Direction.CLAIM
    kept: list[_Kept] = []
    flagged: list[_Flagged] = []
    anomalies: list[Anomaly] = []
    latest, denied = NO_TIME, 0
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
    ) in batch.rows:
        before = latest
        # Only a time on the batch's own day raises the mark: a record stamped far off
        # (a clock glitch, or a lie) is not paid, and must not hold back every later one.
        if time_ms > latest and low <= time_ms < high:
            latest = time_ms
        if label != "ACCEPT":
            denied += 1
            continue  # a denied tap is never paid, whatever else it says
        assert card_id is not None and counter is not None and cred_sha is not None
        refused: tuple[str, str] | None
        if till:
            refused = ("not_a_ride", "a merchant's discount claim; the settlement pays rides")
        elif (operator, line, place, direction) == want:
            entry = keys.get(cred_sha)
            if entry is None:
                entry = keys[cred_sha] = _card_key(credentials[cred_sha], keyring, issued)
            refused = _refusal(entry, tid, time_ms, card_id, counter, challenge, signature, policy)
            if refused is None and not low <= time_ms < high:
                refused = ("outside_day", f"time {time_ms} is not on {batch.day}")
        else:
            refused = ("context_mismatch", f"{operator}/{line}/{place}/{Direction(direction).name}")
        if refused is not None:
            anomalies.append(_flag(refused[0], tid, seq, card_id, sha, refused[1]))
            continue
        if flags:
            flagged.append((len(kept), flags, generation))
        gen = -1 if generation is None else min(generation, I64_MAX)
        kept.append((seq, time_ms, card_id, counter, record_hash, gen, before))
    return denied, latest, kept, flagged, anomalies


def _day_window(batch: BatchRows, cfg: UnitConfig) -> tuple[int, int]:
    """[low, high) of the ride times a batch's day pays: the day, widened by the clock
    tolerance on both sides."""
    start_ms, end_ms = day_bounds_ms(batch.day, batch.utc_offset_min)
    tol = cfg.clock_tolerance_ms
    return start_ms - tol, end_ms + tol


def _refusal(
    entry: _CardEntry,
    tid: int,
    time_ms: int,
    card_id: int,
    counter: int,
    challenge: bytes,
    signature: bytes | None,
    policy: OperatorPolicy | None,
) -> tuple[str, str] | None:
    """(anomaly, detail) of the first check an accepted ride fails, in the gate's order:
    the proof of tap, then the gate's own checks redone from the credential the batch
    holds; None when it passes them all."""
    if isinstance(entry, str):
        return "bad_proof", entry
    cred_card, key, valid_from, valid_until, region, category = entry
    if cred_card != card_id:
        return "bad_proof", f"credential is for card {cred_card}"
    ch_tid, ch_ms = challenge_head(challenge)
    if ch_tid != tid or ch_ms != time_ms:
        return "bad_proof", "challenge does not name this terminal and time"
    assert signature is not None
    try:
        verify_card_signature(key, card_id, counter, challenge, signature)
    except BadSignature as exc:
        return "bad_proof", f"card signature: {exc}"
    if time_ms < valid_from * 1000:
        return "not_yet_valid", f"valid from {valid_from}"
    if time_ms >= valid_until * 1000:
        return "expired", f"valid until {valid_until}"
    if policy is None or region not in policy.regions:
        return "wrong_region", f"region {region}"
    if category not in policy.categories:
        return "category_not_accepted", f"category {category}"
    return None


def _columns(info: TerminalInfo, kept: list[_Kept], flagged: list[_Flagged]) -> RideColumns:
    """The kept rides as the partial's columns."""
    columns = list(zip(*kept, strict=True)) or [()] * 7
    seqs, times, cards, counters, hashes, generations, befores = columns
    return RideColumns(
        info.operator,
        info.line,
        info.place,
        int(info.direction),
        np.array(seqs, dtype=np.uint64),
        np.array(times, dtype=np.int64),
        np.array(cards, dtype=np.uint64),
        np.array(counters, dtype=np.int64),
        b"".join(hashes),
        tuple(flagged),
        np.array(generations, dtype=np.int64),
        np.array(befores, dtype=np.int64),
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


def _card_key(credential: bytes, keyring: Keyring, issued: dict[int, IssuedList]) -> _CardEntry:
    """The card's id, key and validity terms from a credential the issuer signed, or why not.

    A credential on the issuer's signed list that names the list's key was signed by it
    (the list's own signature says so), as a gate trusts it; any other is verified."""
    try:
        cred = parse_unverified(credential)
        f = cred.fields
        listed = issued.get(f.issuer_key_id)
        issuer = None
        if listed is not None:
            issuer = keyring.resolve(f.issuer_key_id, f.issuer_algorithm, f.valid_from)
        if listed is not None and issuer is not None and listed.vouches(cred, issuer):
            key = load_public_key(f.card_key_algorithm, f.card_public_key)
        else:
            key = verify_credential(cred, keyring)
    except (MalformedInput, BadSignature) as exc:
        return f"credential: {exc}"
    f = cred.fields
    return (f.card_id, key, f.valid_from, f.valid_until, f.region, f.category)
