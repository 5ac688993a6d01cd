"""The settlement's unit of work: one batch file in, one picklable partial result out.

``settle_unit`` reads a batch, verifies the terminal's signature and hash chain, then
re-verifies every accepted ride's proof of tap: the credential against the issuer keyring
once per distinct credential, the card's signature over the challenge every ride. It
depends only on its arguments, so the same call gives the same partial whether it runs
in-process, in a process pool or on a Dask worker. It must never read a clock, touch
shared state or write files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farecore.batch import peek_terminal_id, verify_batch_rows
from farecore.credential import parse_unverified
from farecore.crypto import PublicKey
from farecore.errors import BadSignature, MalformedInput, SettlementError
from farecore.journal import Direction
from farecore.keys import Keyring
from farecore.proof import verify_card_signature, verify_credential
from farecore.settlement.anomalies import Anomaly
from farecore.settlement.terminals import TerminalInfo

__all__ = ["NO_RIDES", "Partial", "RideColumns", "UnitConfig", "settle_unit"]


@dataclass(frozen=True, slots=True)
class UnitConfig:
    """What every unit needs: the day, the terminal register and the issuer keyring."""

    day: dt.date
    terminals: tuple[TerminalInfo, ...]
    keyring: bytes  # Keyring.to_bytes(): plain bytes travel to any worker

    def terminal(self, terminal_id: int | None) -> TerminalInfo | None:
        for t in self.terminals:
            if t.terminal_id == terminal_id:
                return t
        return None


@dataclass(frozen=True, slots=True, eq=False)
class RideColumns:
    """A batch's accepted rides whose proof of tap verified, column by column.

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

    def __len__(self) -> int:
        return len(self.seq)


_EMPTY_U64 = np.zeros(0, dtype=np.uint64)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
NO_RIDES = RideColumns("", "", "", 0, _EMPTY_U64, _EMPTY_I64, _EMPTY_U64, _EMPTY_I64, b"")


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


_KEYRINGS: dict[bytes, Keyring] = {}
# keyring bytes -> credential SHA-256 -> (card id, card key) or why it failed. A pure
# function of its keys, so caching it per process changes no result, only the cost: each
# process verifies each card's credential once, however many batches it settles.
_CARD_KEYS: dict[bytes, dict[bytes, tuple[int, PublicKey] | str]] = {}
# The challenge's terminal id and time (farecore.proof's challenge layout, nonce unread).
_CHALLENGE_HEAD = struct.Struct(">QQ")
_CARD_KEYS_MAX = 1_000_000


def _keyring(data: bytes) -> Keyring:
    # Parsed once per process: a worker settles many batches with the same keyring.
    ring = _KEYRINGS.get(data)
    if ring is None:
        ring = _KEYRINGS[data] = Keyring.from_bytes(data)
    return ring


def settle_unit(path: str, cfg: UnitConfig) -> Partial:
    """Verify one batch file and every proof in it. Raises only if the file is unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SettlementError(f"cannot read batch {path}: {exc.strerror or exc}") from None
    return settle_bytes(data, cfg)


def settle_bytes(data: bytes, cfg: UnitConfig) -> Partial:
    """``settle_unit`` on bytes already read."""
    sha = hashlib.sha256(data).digest()
    claimed = peek_terminal_id(data)
    info = cfg.terminal(claimed)
    if info is None:
        kind = "batch_rejected" if claimed is None else "unknown_terminal"
        detail = "header does not parse" if claimed is None else "terminal not registered"
        return Partial(
            sha,
            False,
            anomalies=(
                Anomaly(
                    kind,
                    terminal_id=claimed if claimed is not None else -1,
                    batch=sha.hex(),
                    detail=detail,
                ),
            ),
        )
    try:
        batch = verify_batch_rows(data, info.key())
    except (MalformedInput, BadSignature) as exc:
        return Partial(
            sha,
            False,
            terminal_id=info.terminal_id,
            anomalies=(
                Anomaly(
                    "batch_rejected", terminal_id=info.terminal_id, batch=sha.hex(), detail=str(exc)
                ),
            ),
        )
    rows = batch.rows
    common = dict(
        batch_sha256=sha,
        ok=True,
        terminal_id=batch.terminal_id,
        day=batch.day.isoformat(),
        first_seq=batch.first_seq,
        last_seq=batch.last_seq,
        prev_hash=batch.prev_hash,
        tail_hash=batch.tail_hash,
        taps=len(rows),
        denied=sum(1 for r in rows if r[7] != "ACCEPT"),
    )
    if batch.day != cfg.day:
        return Partial(**common)  # type: ignore[arg-type]  # chain continuity only
    keyring = _keyring(cfg.keyring)
    keys = _CARD_KEYS.get(cfg.keyring)
    if keys is None or len(keys) > _CARD_KEYS_MAX:
        keys = _CARD_KEYS[cfg.keyring] = {}
    seqs: list[int] = []
    times: list[int] = []
    cards: list[int] = []
    counters: list[int] = []
    hashes: list[bytes] = []
    flagged: list[tuple[int, tuple[str, ...], int | None]] = []
    anomalies: list[Anomaly] = []
    credentials = batch.credentials
    want = (info.operator, info.line, info.place, int(info.direction))
    want_op, want_line, want_place, _ = want
    # The batch signature authenticated every byte of these rows; what is left per ride
    # is the proof of tap itself. Rows unpack straight into locals (no per-ride objects).
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
        if label != "ACCEPT":
            continue
        if (operator, line, place, direction) != want:
            anomalies.append(
                _flag(
                    "context_mismatch",
                    tid,
                    seq,
                    card_id,
                    sha,
                    f"{operator}/{line}/{place}/{Direction(direction).name}",
                )
            )
            continue
        assert card_id is not None and counter is not None and cred_sha is not None
        entry = keys.get(cred_sha)
        if entry is None:
            entry = keys[cred_sha] = _card_key(credentials[cred_sha], keyring)
        if isinstance(entry, str):
            problem = entry
        else:
            cred_card, key = entry
            problem = ""
            if cred_card != card_id:
                problem = f"credential is for card {cred_card}, record says {card_id}"
            else:
                ch_tid, ch_ms = _CHALLENGE_HEAD.unpack_from(challenge)
                if ch_tid != tid or ch_ms != time_ms:
                    problem = "challenge does not name this terminal and time"
                else:
                    assert signature is not None
                    try:
                        verify_card_signature(key, card_id, counter, challenge, signature)
                    except BadSignature as exc:
                        problem = f"card signature: {exc}"
        if problem:
            anomalies.append(_flag("bad_proof", tid, seq, card_id, sha, problem))
            continue
        if flags:
            flagged.append((len(seqs), flags, generation))
        seqs.append(seq)
        times.append(time_ms)
        cards.append(card_id)
        counters.append(counter)
        hashes.append(record_hash)
    rides = RideColumns(
        want_op,
        want_line,
        want_place,
        want[3],
        np.array(seqs, dtype=np.uint64),
        np.array(times, dtype=np.int64),
        np.array(cards, dtype=np.uint64),
        np.array(counters, dtype=np.int64),
        b"".join(hashes),
        tuple(flagged),
    )
    return Partial(**common, rides=rides, anomalies=tuple(anomalies))  # type: ignore[arg-type]


def _flag(kind: str, tid: int, seq: int, card_id: int | None, sha: bytes, detail: str) -> Anomaly:
    return Anomaly(
        kind,
        terminal_id=tid,
        seq=seq,
        card_id=card_id if card_id is not None else -1,
        batch=sha.hex(),
        detail=detail,
    )


def _card_key(credential: bytes, keyring: Keyring) -> tuple[int, PublicKey] | str:
    """(card id, card key) from a credential the issuer signed, or why not."""
    try:
        cred = parse_unverified(credential)
        return (cred.card_id, verify_credential(cred, keyring))
    except (MalformedInput, BadSignature) as exc:
        return f"credential: {exc}"
