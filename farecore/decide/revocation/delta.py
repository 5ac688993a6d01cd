"""A revocation delta file (``.frd``): the changes from one base table to a newer generation.

A fixed 256-byte little-endian header, then four columns: the ids added (uint64, strictly
increasing), their revoked-at times (int64) and, after the removed ids (uint64, strictly
increasing), their reason codes (uint8). The header names the base by its generation and
by the SHA-256 of its signed header, carries the SHA-256 of the body, and is signed by
the revocation signer over its first 128 bytes, which start with the magic ``FCREVDLT``:
a table's signature (over bytes that start ``FCREVTBL``) can never pass for a delta's.
See docs/revocation-format.md, *Deltas*.

A delta is cumulative: it holds every change from its base to its generation, so one
delta and its base make the whole list. :meth:`RevocationDelta.verify` checks a delta on
its own; ``farecore.decide.revocation.view`` checks it against its base.

This module must never trust bytes it has not verified, read more than a delta can
hold, or allocate for a count before the count is known to be sane.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from farecore.card.keys import PublicKeyFile
from farecore.decide.revocation.filecheck import open_regular
from farecore.decide.revocation.format import RevocationReason
from farecore.errors import BadSignature, TableChanged, TableRejected

__all__ = [
    "DELTA_HEADER_SIZE",
    "DELTA_MAGIC",
    "DELTA_SIGNED_SIZE",
    "DELTA_VERSION",
    "MAX_DELTA_ENTRIES",
    "DeltaHeader",
    "RevocationDelta",
    "delta_size",
    "parse_delta_header_unverified",
    "read_delta_file",
]

DELTA_MAGIC = b"FCREVDLT"
DELTA_VERSION = 1
DELTA_HEADER_SIZE = 256
DELTA_SIGNED_SIZE = 128
# Added plus removed ids. A delta this big is long overdue for a new base (the gate holds
# the changes in a dict), and the bound keeps a hostile header from sizing a huge read.
MAX_DELTA_ENTRIES = 1 << 20
_U64 = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1
# magic, version, header size, signer algorithm, 3 reserved, signer key id, 4 reserved,
# generation, created-at, base generation, base header SHA-256, added count, removed
# count, body size, body SHA-256.
_SIGNED = struct.Struct("<8sHHB3sII3Q32sIIQ32s")
assert _SIGNED.size == DELTA_SIGNED_SIZE
_SIGNATURE_END = DELTA_SIGNED_SIZE + 64
_KNOWN_REASONS = np.zeros(256, dtype=bool)
_KNOWN_REASONS[[int(r) for r in RevocationReason]] = True


def delta_size(n_add: int, n_remove: int) -> int:
    """The size of a whole delta file with these counts (every section is 8-byte aligned:
    the two 8-byte columns of the additions, the removed ids, then the reason bytes)."""
    return DELTA_HEADER_SIZE + 17 * n_add + 8 * n_remove


@dataclass(frozen=True, slots=True)
class DeltaHeader:
    """The signed header fields. Parsed is not verified: see :meth:`RevocationDelta.verify`."""

    signer_algorithm: int
    signer_key_id: int
    generation: int
    created_at: int
    base_generation: int
    base_header_sha256: bytes
    n_add: int
    n_remove: int
    body_size: int
    body_sha256: bytes

    def __post_init__(self) -> None:
        for name in ("generation", "base_generation", "body_size"):
            value = getattr(self, name)
            if not 0 <= value <= _U64:
                raise ValueError(f"{name} must be a uint64, got {value}")
        if not 0 <= self.created_at <= _I64_MAX:
            raise ValueError(f"created_at must be a non-negative int64, got {self.created_at}")
        if not 0 <= self.signer_key_id <= 0xFFFFFFFF or not 0 <= self.signer_algorithm <= 255:
            raise ValueError("signer key id must be a uint32 and its algorithm a uint8")
        if self.generation <= self.base_generation:
            raise ValueError(
                f"generation {self.generation} is not above its base generation "
                f"{self.base_generation}"
            )
        if len(self.base_header_sha256) != 32 or len(self.body_sha256) != 32:
            raise ValueError("a SHA-256 is 32 bytes")
        if min(self.n_add, self.n_remove) < 0 or self.n_add + self.n_remove > MAX_DELTA_ENTRIES:
            raise ValueError(
                f"{self.n_add} added and {self.n_remove} removed ids: more than the "
                f"{MAX_DELTA_ENTRIES} a delta may hold"
            )
        if self.body_size != delta_size(self.n_add, self.n_remove) - DELTA_HEADER_SIZE:
            raise ValueError("body size does not match the counts")

    @property
    def file_size(self) -> int:
        return DELTA_HEADER_SIZE + self.body_size

    def signed_bytes(self) -> bytes:
        return _SIGNED.pack(
            DELTA_MAGIC,
            DELTA_VERSION,
            DELTA_HEADER_SIZE,
            self.signer_algorithm,
            bytes(3),
            self.signer_key_id,
            0,
            self.generation,
            self.created_at,
            self.base_generation,
            self.base_header_sha256,
            self.n_add,
            self.n_remove,
            self.body_size,
            self.body_sha256,
        )

    def pack(self, signature: bytes) -> bytes:
        if len(signature) != 64:
            raise ValueError("a delta signature is 64 bytes")
        return self.signed_bytes() + signature + bytes(DELTA_HEADER_SIZE - _SIGNATURE_END)


def parse_delta_header_unverified(data: bytes) -> tuple[DeltaHeader, bytes]:
    """Split the first 256 bytes into header fields and the signature; check only shape."""
    if len(data) < DELTA_HEADER_SIZE:
        raise TableRejected(
            f"truncated: {len(data)} bytes, a delta header alone is {DELTA_HEADER_SIZE}"
        )
    fields = _SIGNED.unpack_from(data, 0)
    magic, version, header_size, algorithm, pad3, key_id, pad4 = fields[:7]
    if magic != DELTA_MAGIC:
        raise TableRejected(f"not a farecore revocation delta (magic {magic!r})")
    if version != DELTA_VERSION:
        raise TableRejected(
            f"unsupported delta format version {version} (this reads {DELTA_VERSION})"
        )
    if header_size != DELTA_HEADER_SIZE:
        raise TableRejected(f"delta header size {header_size}, expected {DELTA_HEADER_SIZE}")
    if any(pad3) or pad4 or any(data[_SIGNATURE_END:DELTA_HEADER_SIZE]):
        raise TableRejected("corrupt delta header: reserved bytes are not zero")
    try:
        header = DeltaHeader(algorithm, key_id, *fields[7:])
    except ValueError as exc:
        raise TableRejected(f"corrupt delta header: {exc}") from None
    return header, bytes(data[DELTA_SIGNED_SIZE:_SIGNATURE_END])


def read_delta_file(path: Path) -> bytes:
    """The bytes of the delta at ``path``, refused before reading if it is larger than any
    delta can be; TableRejected (or TableChanged if it shrinks while read) otherwise."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise TableRejected(f"{path}: empty file (zero length)")
        top = delta_size(MAX_DELTA_ENTRIES, 0)
        if size > top:
            raise TableRejected(f"{path}: {size} bytes, larger than any delta ({top})")
        chunks: list[bytes] = []
        got = 0
        while got < size:
            chunk = os.pread(fd, size - got, got)
            if not chunk:
                raise TableChanged(f"{path}: truncated while it was being read")
            chunks.append(chunk)
            got += len(chunk)
        if os.pread(fd, 1, size):
            raise TableChanged(f"{path}: grew while it was being read")
    except OSError as exc:
        raise TableRejected(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


class RevocationDelta:
    """One verified delta: its header and its four columns (read-only views of its bytes).

    Make one with :meth:`verify` (bytes) or :meth:`open` (a file). It is verified on its
    own: signature, sizes, body hash, sorted ids, known reasons, no id both added and
    removed. Whether it fits a base is checked by ``RevocationView``.
    """

    __slots__ = (
        "add_ids",
        "add_reasons",
        "add_revoked_at",
        "data",
        "header",
        "path",
        "remove_ids",
    )

    header: DeltaHeader
    data: bytes
    path: Path | None
    add_ids: npt.NDArray[np.uint64]
    add_revoked_at: npt.NDArray[np.int64]
    add_reasons: npt.NDArray[np.uint8]
    remove_ids: npt.NDArray[np.uint64]

    def __init__(self) -> None:
        raise TypeError("use RevocationDelta.verify(data, signer) or RevocationDelta.open")

    @classmethod
    def open(cls, path: str | os.PathLike[str], signer: PublicKeyFile) -> RevocationDelta:
        """Read (bounded) and verify the delta at ``path``; TableRejected naming the check."""
        p = Path(path)
        delta = cls.verify(read_delta_file(p), signer, str(p))
        delta.path = p
        return delta

    @classmethod
    def verify(cls, data: bytes, signer: PublicKeyFile, name: str = "delta") -> RevocationDelta:
        """Verify ``data`` as a delta signed by ``signer``; TableRejected naming the first
        check that fails, prefixed with ``name``."""
        if signer.role != "revocation":
            raise TableRejected(f"signer key has role {signer.role!r}; 'revocation' is needed")
        try:
            header, signature = parse_delta_header_unverified(data)
        except TableRejected as exc:
            raise TableRejected(f"{name}: {exc}") from None
        if header.signer_key_id != signer.key_id:
            raise TableRejected(
                f"{name}: signed by key id {header.signer_key_id}, but the trusted signer "
                f"is key id {signer.key_id}"
            )
        if header.signer_algorithm != signer.algorithm:
            raise TableRejected(f"{name}: signer algorithm differs from the trusted key's")
        try:
            signer.key().verify(signature, header.signed_bytes())
        except BadSignature as exc:
            raise TableRejected(f"{name}: delta signature does not verify ({exc})") from None
        if len(data) < header.file_size:
            raise TableRejected(
                f"{name}: truncated: {len(data)} bytes, the header says {header.file_size}"
            )
        if len(data) > header.file_size:
            raise TableRejected(
                f"{name}: {len(data) - header.file_size} unexpected bytes after the body"
            )
        body = memoryview(data)[DELTA_HEADER_SIZE:]
        if hashlib.sha256(body).digest() != header.body_sha256:
            raise TableRejected(f"{name}: body SHA-256 does not match the signed header")
        delta = object.__new__(cls)
        delta.header = header
        delta.data = bytes(data)
        delta.path = None
        delta._bind()
        delta._check_structure(name)
        return delta

    def _bind(self) -> None:
        n, m = self.header.n_add, self.header.n_remove
        at = DELTA_HEADER_SIZE
        self.add_ids = np.frombuffer(self.data, dtype="<u8", count=n, offset=at)
        self.add_revoked_at = np.frombuffer(self.data, dtype="<i8", count=n, offset=at + 8 * n)
        self.remove_ids = np.frombuffer(self.data, dtype="<u8", count=m, offset=at + 16 * n)
        self.add_reasons = np.frombuffer(
            self.data, dtype=np.uint8, count=n, offset=at + 16 * n + 8 * m
        )

    def _check_structure(self, name: str) -> None:
        for what, ids in (("added", self.add_ids), ("removed", self.remove_ids)):
            if ids.size > 1:
                bad = np.flatnonzero(ids[1:] <= ids[:-1])
                if bad.size:
                    raise TableRejected(
                        f"{name}: corrupt body: {what} ids are not sorted and unique "
                        f"(position {int(bad[0]) + 1})"
                    )
        bad = np.flatnonzero(self.add_revoked_at < 0)
        if bad.size:
            raise TableRejected(f"{name}: corrupt body: negative revoked-at at position {bad[0]}")
        bad = np.flatnonzero(~_KNOWN_REASONS[self.add_reasons])
        if bad.size:
            raise TableRejected(
                f"{name}: corrupt body: unknown reason code at position {int(bad[0])}"
            )
        if self.add_ids.size and self.remove_ids.size:
            pos = np.searchsorted(self.add_ids, self.remove_ids)
            both = self.add_ids[np.minimum(pos, self.add_ids.size - 1)] == self.remove_ids
            if both.any():
                card = int(self.remove_ids[int(np.flatnonzero(both)[0])])
                raise TableRejected(f"{name}: card id {card} is both added and removed")

    # --- facts ------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self.header.generation

    @property
    def created_at(self) -> int:
        return self.header.created_at

    @property
    def base_generation(self) -> int:
        return self.header.base_generation

    @property
    def signer_key_id(self) -> int:
        return self.header.signer_key_id

    def header_bytes(self) -> bytes:
        """The verified header, signature included (256 bytes)."""
        return self.data[:DELTA_HEADER_SIZE]

    def describe(self) -> dict[str, object]:
        """The facts ``farecore revocation info --json`` prints for a delta on its own."""
        h = self.header
        return {
            "path": None if self.path is None else str(self.path),
            "kind": "delta",
            "generation": h.generation,
            "created_at": h.created_at,
            "signer_key_id": h.signer_key_id,
            "base_generation": h.base_generation,
            "base_header_sha256": h.base_header_sha256.hex(),
            "added": h.n_add,
            "removed": h.n_remove,
            "body_sha256": h.body_sha256.hex(),
            "file_size": h.file_size,
        }

    def __repr__(self) -> str:
        return (
            f"RevocationDelta(generation={self.generation}, base={self.base_generation}, "
            f"added={self.header.n_add}, removed={self.header.n_remove})"
        )
