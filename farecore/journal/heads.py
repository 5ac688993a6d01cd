"""Signed chain heads: a gate's word, every few minutes, on how far its journal reaches.

A head (format ``farecore-head/1``) is one small JSON document: the terminal, the seq
of its newest record (0 for an empty journal), the chain hash after it (exactly the
tail hash a batch ending there carries; the genesis value for an empty journal), the
gate's clock when it signed, the parameter package and revocation generation in force,
how many records the collection point has not yet acknowledged, and the terminal's
signature. Once a head is published the journal cannot later be shortened or rewritten
below it without the settlement noticing (``farecore.settlement.heads``).

The file is the canonical JSON of all its fields (sorted keys, no whitespace, ASCII)
and one newline; a parser accepts that spelling only, so one head has exactly one byte
form. The signature covers ``HEAD_SIGNING_TAG`` and the canonical JSON of every field
but ``signature``. ``parse_head`` checks form, types and ranges (``MalformedFile``
naming the file and the field); ``verify_head`` checks the signature and that the key
is the terminal's (``BadSignature``). This module must never read a clock.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Protocol

from farecore.boundedinput import check_json_nesting
from farecore.card.crypto import SIGNATURE_LENGTH, Algorithm, PublicKey
from farecore.card.keys import PublicKeyFile, SigningKey
from farecore.errors import BadSignature, MalformedFile
from farecore.journal.layout import MAX_SEQ
from farecore.journal.reader import JournalReader
from farecore.journal.records import GENESIS_HASH

__all__ = [
    "HEAD_FIELDS",
    "HEAD_FORMAT",
    "HEAD_SIGNING_TAG",
    "MAX_HEAD_BYTES",
    "ChainHead",
    "SignedHead",
    "head_of_journal",
    "journal_head",
    "parse_head",
    "sign_head",
    "verify_head",
]

HEAD_FORMAT = "farecore-head/1"
HEAD_SIGNING_TAG = b"farecore/head/v1\x00"
MAX_HEAD_BYTES = 4096
HEAD_FIELDS = (
    "algorithm",
    "format",
    "hash",
    "key_id",
    "package_version",
    "records_pending",
    "revocation_generation",
    "seq",
    "signature",
    "terminal",
    "time_ms",
)
_U64 = (1 << 64) - 1
_I63 = (1 << 63) - 1  # SQLite's and the ledger's integers
_U32 = (1 << 32) - 1
_HEX = frozenset("0123456789abcdef")
# A uint64 has 20 digits; longer runs are refused before the JSON parser converts them.
_MAX_DIGITS = 20


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where a terminal's journal stood when its gate signed: what a head file claims."""

    terminal: int
    seq: int
    hash: bytes
    time_ms: int
    package_version: int | None
    revocation_generation: int | None
    records_pending: int

    def __post_init__(self) -> None:
        _in_range("terminal", self.terminal, _U64)
        _in_range("seq", self.seq, MAX_SEQ)
        if not isinstance(self.hash, bytes) or len(self.hash) != len(GENESIS_HASH):
            raise ValueError("hash must be 32 bytes")
        _in_range("time_ms", self.time_ms, _I63)
        if self.package_version is not None:
            _in_range("package_version", self.package_version, _I63)
        if self.revocation_generation is not None:
            _in_range("revocation_generation", self.revocation_generation, _U64)
        _in_range("records_pending", self.records_pending, _I63)
        if self.seq == 0 and self.hash != GENESIS_HASH:
            raise ValueError("an empty journal's head hash is the genesis value")


def _in_range(name: str, value: object, top: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise ValueError(f"{name} must be an integer from 0 to {top}, not {value!r}")


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A parsed head file whose signature is not yet checked (``verify_head`` does)."""

    head: ChainHead
    key_id: int
    algorithm: Algorithm
    signature: bytes
    message: bytes  # what the signature covers: the tag and the unsigned fields


def _canonical(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _unsigned_doc(head: ChainHead, key_id: int, algorithm: Algorithm) -> dict[str, object]:
    return {
        "format": HEAD_FORMAT,
        "terminal": head.terminal,
        "seq": head.seq,
        "hash": head.hash.hex(),
        "time_ms": head.time_ms,
        "package_version": head.package_version,
        "revocation_generation": head.revocation_generation,
        "records_pending": head.records_pending,
        "key_id": key_id,
        "algorithm": algorithm.label,
    }


def sign_head(head: ChainHead, key: SigningKey) -> bytes:
    """The head file's bytes, signed by the terminal's own key."""
    if key.role != "terminal":
        raise ValueError(f"heads are signed with a terminal key, not a {key.role} key")
    if key.key_id != head.terminal:
        raise ValueError(
            f"the key is terminal {key.key_id}'s, not terminal {head.terminal}'s: "
            "a terminal's head is signed with its own key"
        )
    doc = _unsigned_doc(head, key.key_id, key.algorithm)
    signature = key.sign(HEAD_SIGNING_TAG + _canonical(doc))
    doc["signature"] = signature.hex()
    return _canonical(doc) + b"\n"


def _field_int(doc: dict[str, object], name: str, top: int, source: str, null: bool) -> int | None:
    value = doc[name]
    if value is None and null:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        what = "null or an integer" if null else "an integer"
        raise MalformedFile(f"{source}: field {name!r} must be {what} from 0 to {top}")
    return value


def _field_hex(doc: dict[str, object], name: str, size: int, source: str) -> bytes:
    value = doc[name]
    if not isinstance(value, str) or len(value) != 2 * size or not _HEX.issuperset(value):
        raise MalformedFile(f"{source}: field {name!r} must be {2 * size} lowercase hex digits")
    return bytes.fromhex(value)


def _load(data: bytes, source: str) -> dict[str, object]:
    """The head's one flat object, parsed only once its size and numbers are bounded."""
    if not isinstance(data, bytes):
        raise MalformedFile(f"{source}: a head file is bytes")
    if len(data) > MAX_HEAD_BYTES:
        raise MalformedFile(f"{source}: larger than {MAX_HEAD_BYTES} bytes")
    check_json_nesting(data, 1, source, MalformedFile, _MAX_DIGITS)

    def no_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in pairs:
            if key in out:
                raise MalformedFile(f"{source}: field {key!r} appears twice")
            out[key] = value
        return out

    try:
        doc = json.loads(data, object_pairs_hook=no_repeats)
    except MalformedFile:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedFile(f"{source}: not a chain head (bad JSON)") from None
    if not isinstance(doc, dict):
        raise MalformedFile(f"{source}: not a chain head (not a JSON object)")
    return doc


def parse_head(data: bytes, source: str) -> SignedHead:
    """Parse a head file strictly; MalformedFile naming ``source`` and the field.

    The signature is not checked here: call ``verify_head`` before believing it.
    """
    doc = _load(data, source)
    if doc.get("format") != HEAD_FORMAT:
        raise MalformedFile(f"{source}: not a chain head (format must be {HEAD_FORMAT!r})")
    missing = sorted(set(HEAD_FIELDS) - set(doc))
    if missing:
        raise MalformedFile(f"{source}: field {missing[0]!r} is missing")
    extra = sorted(set(doc) - set(HEAD_FIELDS))
    if extra:
        raise MalformedFile(f"{source}: unknown field {extra[0]!r}")
    terminal = _field_int(doc, "terminal", _U64, source, False)
    seq = _field_int(doc, "seq", MAX_SEQ, source, False)
    chain = _field_hex(doc, "hash", len(GENESIS_HASH), source)
    time_ms = _field_int(doc, "time_ms", _I63, source, False)
    package = _field_int(doc, "package_version", _I63, source, True)
    generation = _field_int(doc, "revocation_generation", _U64, source, True)
    pending = _field_int(doc, "records_pending", _I63, source, False)
    key_id = _field_int(doc, "key_id", _U32, source, False)
    label = doc["algorithm"]
    algorithm = next((a for a in Algorithm if a.label == label), None)
    if algorithm is None:
        known = ", ".join(a.label for a in Algorithm)
        raise MalformedFile(f"{source}: field 'algorithm' must be one of {known}")
    signature = _field_hex(doc, "signature", SIGNATURE_LENGTH, source)
    assert terminal is not None and seq is not None and time_ms is not None
    assert pending is not None and key_id is not None
    if seq == 0 and chain != GENESIS_HASH:
        raise MalformedFile(f"{source}: field 'hash' of an empty journal must be the genesis value")
    if data != _canonical(doc) + b"\n":
        raise MalformedFile(f"{source}: not in canonical form (sorted keys, no spaces, newline)")
    head = ChainHead(terminal, seq, chain, time_ms, package, generation, pending)
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    return SignedHead(head, key_id, algorithm, signature, HEAD_SIGNING_TAG + _canonical(unsigned))


class RegisteredTerminal(Protocol):
    """A register's entry for a terminal (``farecore.settlement.terminals.TerminalInfo``)."""

    @property
    def terminal_id(self) -> int: ...

    def key(self) -> PublicKey: ...


def verify_head(
    signed: SignedHead, key: PublicKeyFile | PublicKey | RegisteredTerminal
) -> ChainHead:
    """The head, once its signature verifies with the terminal's key; BadSignature if it
    does not, or if the key that signed is not the terminal's."""
    head = signed.head
    if signed.key_id != head.terminal:
        raise BadSignature(
            f"head of terminal {head.terminal} is signed with key id {signed.key_id}, "
            "not the terminal's own"
        )
    if isinstance(key, PublicKeyFile):
        if key.role != "terminal" or key.key_id != head.terminal:
            raise BadSignature(
                f"head of terminal {head.terminal} checked with the {key.role} key "
                f"{key.key_id}, not the terminal's"
            )
        public = key.key()
    elif hasattr(key, "terminal_id"):
        registered: RegisteredTerminal = key  # type: ignore[assignment]
        if registered.terminal_id != head.terminal:
            raise BadSignature(
                f"head of terminal {head.terminal} checked with terminal "
                f"{registered.terminal_id}'s key"
            )
        public = registered.key()
    else:
        public = key
    if public.algorithm != signed.algorithm:
        raise BadSignature(
            f"head of terminal {head.terminal} names {signed.algorithm.label}, but the "
            f"terminal's key is {public.algorithm.label}"
        )
    try:
        public.verify(signed.signature, signed.message)
    except BadSignature:
        raise BadSignature(
            f"head of terminal {head.terminal} (seq {head.seq}): signature does not verify "
            "with the terminal's key"
        ) from None
    return head


def journal_head(
    path: str | os.PathLike[str], terminal_id: int | None = None
) -> tuple[int, int, bytes]:
    """(terminal id, last seq, hash after it) of a journal, read-only.

    ``terminal_id`` names one terminal of a station journal. The last record is found
    by seq, and any record past a time cut is followed along the chain, so a record
    stamped at the end of time cannot hide the ones after it.
    """
    with JournalReader(path, terminal_id) as reader:
        after = reader.first_seq_from(_I63)
        seq, own = after - 1, reader.hash_of(after - 1)
        for row, _ in reader.rows(after):
            seq, own = row.seq, row.hash
        return reader.terminal_id, seq, own


def head_of_journal(
    path: str | os.PathLike[str],
    *,
    time_ms: int,
    package_version: int | None,
    revocation_generation: int | None,
    records_pending: int,
    terminal_id: int | None = None,
) -> ChainHead:
    """The head to sign for a journal as it stands now (read-only; the clock is given)."""
    tid, seq, own = journal_head(path, terminal_id)
    return ChainHead(
        tid, seq, own, time_ms, package_version, revocation_generation, records_pending
    )
