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
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from farecore.batch import peek_terminal_id, verify_batch
from farecore.credential import parse_unverified
from farecore.crypto import PublicKey
from farecore.errors import BadSignature, MalformedInput, SettlementError
from farecore.journal import JournalRecord
from farecore.keys import Keyring
from farecore.proof import challenge_fields, verify_card_signature, verify_credential
from farecore.settlement.anomalies import Anomaly
from farecore.settlement.terminals import TerminalInfo

__all__ = ["Partial", "Ride", "UnitConfig", "settle_unit"]


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


class Ride(NamedTuple):
    """An accepted ride whose proof of tap verified.

    A NamedTuple rather than a dataclass on purpose: a night has millions of these,
    and they cross process (or network) boundaries, where a tuple pickles several
    times faster. It is immutable all the same.
    """

    terminal_id: int
    seq: int
    time_ms: int
    card_id: int
    counter: int
    operator: str
    line: str
    place: str
    direction: int
    record_hash: bytes
    flags: tuple[str, ...]
    revocation_generation: int | None


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
    rides: tuple[Ride, ...] = ()
    anomalies: tuple[Anomaly, ...] = ()


_KEYRINGS: dict[bytes, Keyring] = {}
# (keyring bytes, credential SHA-256) -> (card id, card key) or why it failed. A pure
# function of its key, so caching it per process changes no result, only the cost: each
# process verifies each card's credential once, however many batches it settles.
_CARD_KEYS: dict[tuple[bytes, bytes], tuple[int, PublicKey] | str] = {}
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
        batch = verify_batch(data, info.key())
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
    common = dict(
        batch_sha256=sha,
        ok=True,
        terminal_id=batch.terminal_id,
        day=batch.day.isoformat(),
        first_seq=batch.first_seq,
        last_seq=batch.last_seq,
        prev_hash=batch.prev_hash,
        tail_hash=batch.tail_hash,
        taps=len(batch.records),
        denied=sum(1 for r in batch.records if not r.accepted),
    )
    if batch.day != cfg.day:
        return Partial(**common)  # type: ignore[arg-type]  # chain continuity only
    keyring = _keyring(cfg.keyring)
    keys = _CARD_KEYS
    if len(keys) > _CARD_KEYS_MAX:
        keys.clear()
    rides: list[Ride] = []
    anomalies: list[Anomaly] = []
    want = (info.operator, info.line, info.place, info.direction)
    for r in batch.records:
        if not r.accepted:
            continue
        if (r.operator, r.line, r.place, r.direction) != want:
            anomalies.append(
                _flag(
                    "context_mismatch",
                    r,
                    sha,
                    f"{r.operator}/{r.line}/{r.place}/{r.direction.name}",
                )
            )
            continue
        problem = _check_proof(r, batch.credentials, keys, keyring, cfg.keyring)
        if problem:
            anomalies.append(_flag("bad_proof", r, sha, problem))
            continue
        assert r.card_id is not None and r.counter is not None
        rides.append(
            Ride(
                r.terminal_id,
                r.seq,
                r.time_ms,
                r.card_id,
                r.counter,
                r.operator,
                r.line,
                r.place,
                int(r.direction),
                r.hash,
                r.flags,
                r.revocation_generation,
            )
        )
    return Partial(**common, rides=tuple(rides), anomalies=tuple(anomalies))  # type: ignore[arg-type]


def _flag(kind: str, r: JournalRecord, sha: bytes, detail: str) -> Anomaly:
    return Anomaly(
        kind,
        terminal_id=r.terminal_id,
        seq=r.seq,
        card_id=r.card_id if r.card_id is not None else -1,
        batch=sha.hex(),
        detail=detail,
    )


def _check_proof(
    r: JournalRecord,
    credentials: dict[bytes, bytes],
    keys: dict[tuple[bytes, bytes], tuple[int, PublicKey] | str],
    keyring: Keyring,
    keyring_bytes: bytes,
) -> str:
    """'' when the proof verifies, else why not."""
    assert r.credential_sha256 is not None
    cache_key = (keyring_bytes, r.credential_sha256)
    entry = keys.get(cache_key)
    if entry is None:
        try:
            cred = parse_unverified(credentials[r.credential_sha256])
            entry = (cred.card_id, verify_credential(cred, keyring))
        except (MalformedInput, BadSignature) as exc:
            entry = f"credential: {exc}"
        keys[cache_key] = entry
    if isinstance(entry, str):
        return entry
    card_id, key = entry
    if card_id != r.card_id:
        return f"credential is for card {card_id}, record says {r.card_id}"
    tid, t_ms, _ = challenge_fields(r.challenge)
    if tid != r.terminal_id or t_ms != r.time_ms:
        return "challenge does not name this terminal and time"
    assert r.counter is not None and r.card_signature is not None
    try:
        verify_card_signature(key, card_id, r.counter, r.challenge, r.card_signature)
    except BadSignature as exc:
        return f"card signature: {exc}"
    return ""
