"""The issuer's signed list of the credentials it issued (``.fil``).

A terminal must know that the issuer signed a card's credential before it trusts the
card key inside it (CARD-SPEC §7, check 4). Checking that signature costs as much as the
card's own signature on every tap, and a gate pays it for every card it has not met
since it started: at the morning peak after a restart, that is most of them. The issuer
can vouch for all its credentials at once instead. It hashes each credential it issued
(SHA-256 of the exact bytes), sorts the hashes, and signs one header that pins them with
the same issuer key that signed the credentials. A gate verifies that one signature when
it loads the list. A credential whose hash is in the list, and that names the list's
key, then needs no signature check of its own. Anything else (a card issued after the
list, another issuer's card, a forgery) is verified in full, so a list that is old or
missing costs time and never changes a decision.

Layout, little-endian (docs/issued-list.md has the table)::

    0   magic "FCISSUED"      8   version u16        10  header size u16 (256)
    12  signer algorithm u8   13  reserved (3)       16  signer key id u32
    20  reserved (4)          24  generation u64     32  created at u64 (Unix s)
    40  count u64             48  body SHA-256 (32)  80  reserved (48) to byte 128
    128 signature (64) over LIST_SIGNING_TAG ‖ bytes 0-127, then zeros to byte 256
    256 body: count SHA-256 hashes of 32 bytes, strictly ascending

The signing tag keeps a list signature from ever being read as a credential signature
(those start with ``RJCARD/credential/v1``), although the same key makes both.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import os
import struct
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farecore.atomicfile import atomic_writer
from farecore.card.credential import Credential, parse_unverified
from farecore.card.crypto import Algorithm, PublicKey, load_public_key
from farecore.card.keys import Keyring, SigningKey
from farecore.errors import BadSignature, IssuedListError, MalformedInput

__all__ = [
    "HEADER_SIZE",
    "LIST_SIGNING_TAG",
    "MAGIC",
    "MAX_LIST_BYTES",
    "IssuedList",
    "IssuedListError",
    "build_issued_list",
    "encode_list",
    "peek_generation",
    "read_credential_lines",
]

MAGIC = b"FCISSUED"
VERSION = 1
HEADER_SIZE = 256
LIST_SIGNING_TAG = b"FARECORE/issued-list/v1"
_SIGNED_SIZE = 128
_DIGEST = 32
# magic, version, header size, algorithm, key id, generation, created at, count, body hash
_SIGNED = struct.Struct("<8sHHB3xI4xQQQ32s48x")
assert _SIGNED.size == _SIGNED_SIZE
_U64 = (1 << 64) - 1
# The most a reader that bounds its input takes: 33 million credentials, a hundred times
# the programme's cards.
MAX_LIST_BYTES = HEADER_SIZE + (1 << 30)


@dataclass(frozen=True, slots=True)
class _Header:
    algorithm: int
    key_id: int
    generation: int
    created_at: int
    count: int
    body_sha256: bytes

    def signed_bytes(self) -> bytes:
        return _SIGNED.pack(
            MAGIC,
            VERSION,
            HEADER_SIZE,
            self.algorithm,
            self.key_id,
            self.generation,
            self.created_at,
            self.count,
            self.body_sha256,
        )


def peek_generation(data: bytes) -> int | None:
    """The generation a list file's header *claims*, unverified; None if it is not one."""
    if len(data) < _SIGNED_SIZE or not data.startswith(MAGIC):
        return None
    return int(_SIGNED.unpack_from(data)[5])


def _digests_sorted(body: bytes, count: int) -> bool:
    """True when the body's ``count`` hashes are strictly ascending (as byte strings)."""
    if count < 2:
        return True
    words = np.frombuffer(body, dtype=">u8").reshape(count, 4)
    a, b = words[:-1], words[1:]
    differ = a != b
    first = np.argmax(differ, axis=1)  # the first word in which two neighbours differ
    rows = np.arange(count - 1)
    return bool(np.all(differ.any(axis=1) & (a[rows, first] < b[rows, first])))


# The header of the list verified last in this process, and the list while anything
# holds it (see from_bytes): the bytes are compared, never kept.
_LAST_VERIFIED: list[tuple[bytes, weakref.ref[IssuedList]]] = []


class IssuedList:
    """A verified issued-credentials list, held in memory (40 bytes a credential).

    Open it with :meth:`open`; every check has passed by the time you hold one.
    """

    __slots__ = (
        "__weakref__",
        "_body",
        "_prefixes",
        "_signer",
        "generation",
        "header",
        "key_id",
        "path",
    )

    def __init__(self, source: str, header: _Header, signer: bytes, body: bytes) -> None:
        """Not for callers: :meth:`open` and :meth:`from_bytes` verify, then build."""
        self.path = source
        self.header = header
        self.key_id = header.key_id
        self.generation = header.generation
        self._signer = signer
        self._body = body
        # The first 8 bytes of each hash as native integers, searched with bisect (a
        # memoryview of them indexes to plain ints: no numpy call per lookup).
        prefixes = np.frombuffer(body, dtype=">u8")[::4].astype(np.uint64)
        self._prefixes = memoryview(prefixes.tobytes()).cast("Q")

    @classmethod
    def open(cls, path: str | os.PathLike[str], keyring: Keyring) -> IssuedList:
        """Read and verify the list at ``path`` against the issuer key it names.

        The key must be in ``keyring`` and not revoked. Raises :class:`IssuedListError`
        naming the first check that failed.
        """
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise IssuedListError(f"{p}: cannot read: {exc.strerror or exc}") from None
        return cls.from_bytes(data, keyring, str(p))

    @classmethod
    def from_bytes(cls, data: bytes, keyring: Keyring, source: str = "list") -> IssuedList:
        """Verify a list held in memory (see :meth:`open`)."""
        if len(data) < HEADER_SIZE:
            raise IssuedListError(f"{source}: {len(data)} bytes, too short for a list header")
        magic, version, header_size, alg, key_id, generation, created, count, body_hash = (
            _SIGNED.unpack_from(data)
        )
        if magic != MAGIC:
            raise IssuedListError(f"{source}: not an issued-credentials list (bad magic)")
        if version != VERSION or header_size != HEADER_SIZE:
            raise IssuedListError(f"{source}: list version {version} is not supported (1 is)")
        entry = keyring.get(key_id)
        if entry is None:
            raise IssuedListError(f"{source}: signed by issuer key id {key_id}, not in the keyring")
        if entry.status == "revoked":
            raise IssuedListError(f"{source}: issuer key id {key_id} is revoked in the keyring")
        if alg != entry.algorithm:
            raise IssuedListError(
                f"{source}: signer algorithm {alg} is not that of issuer key id {key_id}"
            )
        header = _Header(alg, key_id, generation, created, count, body_hash)
        signature = data[_SIGNED_SIZE : _SIGNED_SIZE + 64]
        signer = keyring.resolve(key_id, alg, 0)  # active, or retired: still its key
        assert signer is not None  # not revoked and of this algorithm, checked above
        if _LAST_VERIFIED:
            # The same bytes under the same signer pass the same checks: the gates of a
            # station load one list, and need not hash and scan it once each.
            head, ref = _LAST_VERIFIED[0]
            last = ref()
            if (
                last is not None
                and last._signer == signer.raw
                and data[:HEADER_SIZE] == head
                and len(data) == HEADER_SIZE + len(last._body)
                # startswith at an offset is one memcmp; comparing memoryviews goes
                # element by element (about 100 ms for 300,000 credentials).
                and data.startswith(last._body, HEADER_SIZE)
            ):
                return last._named(source)
        try:
            signer.verify(signature, LIST_SIGNING_TAG + data[:_SIGNED_SIZE])
        except BadSignature as exc:
            raise IssuedListError(f"{source}: header signature does not verify ({exc})") from None
        if any(data[_SIGNED_SIZE + 64 : HEADER_SIZE]):
            raise IssuedListError(f"{source}: corrupt header: padding is not zero")
        expected = HEADER_SIZE + count * _DIGEST
        if len(data) != expected:
            what = "truncated" if len(data) < expected else "unexpected bytes after the body"
            raise IssuedListError(
                f"{source}: {what}: {len(data)} bytes, the header says {expected}"
            )
        body = data[HEADER_SIZE:]
        if hashlib.sha256(body).digest() != body_hash:
            raise IssuedListError(f"{source}: body does not match the signed SHA-256")
        if not _digests_sorted(body, count):
            raise IssuedListError(f"{source}: corrupt body: hashes are not strictly ascending")
        listed = cls(source, header, signer.raw, body)
        _LAST_VERIFIED[:] = [(bytes(data[:HEADER_SIZE]), weakref.ref(listed))]
        return listed

    def _named(self, source: str) -> IssuedList:
        """This verified list, as read from ``source``."""
        listed = IssuedList.__new__(IssuedList)
        listed.path, listed.header, listed.key_id = source, self.header, self.key_id
        listed.generation, listed._signer, listed._body = self.generation, self._signer, self._body
        listed._prefixes = self._prefixes
        return listed

    @property
    def count(self) -> int:
        return int(self.header.count)

    @property
    def created_at(self) -> int:
        return self.header.created_at

    def __len__(self) -> int:
        return self.header.count

    def __contains__(self, digest: object) -> bool:
        """Whether a credential's SHA-256 is in the list."""
        if not isinstance(digest, bytes) or len(digest) != _DIGEST:
            return False
        prefixes = self._prefixes
        first = int.from_bytes(digest[:8], "big")
        i = bisect.bisect_left(prefixes, first)
        body = self._body
        while i < len(prefixes) and prefixes[i] == first:
            if body[i * _DIGEST : (i + 1) * _DIGEST] == digest:
                return True
            i += 1
        return False

    def vouches(self, credential: Credential, issuer: PublicKey) -> bool:
        """True when the list's signer issued ``credential``: its hash is listed and it
        names the list's key, which is ``issuer``, the key the keyring resolved for it.
        A True answer stands for a verified issuer signature; False means "check it"."""
        if credential.fields.issuer_key_id != self.key_id or issuer.raw != self._signer:
            return False
        return hashlib.sha256(credential.raw).digest() in self

    def digests(self) -> Iterator[bytes]:
        """Every listed hash, ascending."""
        body = self._body
        for i in range(self.header.count):
            yield body[i * _DIGEST : (i + 1) * _DIGEST]

    def describe(self) -> dict[str, object]:
        return {
            "path": self.path,
            "issuer_key_id": self.key_id,
            "algorithm": Algorithm(self.header.algorithm).label,
            "generation": self.generation,
            "created_at": self.header.created_at,
            "count": self.header.count,
            "body_sha256": self.header.body_sha256.hex(),
        }

    def __repr__(self) -> str:
        return (
            f"IssuedList({self.path!r}, key {self.key_id}, generation {self.generation}, "
            f"{self.count} credentials)"
        )


def build_issued_list(
    credentials: Iterable[tuple[str, bytes]],
    key: SigningKey,
    generation: int,
    created_at: int,
    out: str | os.PathLike[str] | None = None,
    *,
    jobs: int = 1,
) -> bytes:
    """Sign a list of ``credentials`` (pairs of where each came from, for errors, and its
    bytes) with the issuer ``key``; return the file's bytes, and write them atomically to
    ``out`` when given.

    Every credential must parse, name ``key``'s id and algorithm, and carry a signature
    that verifies under ``key``: the list vouches for exactly those. The first one that
    does not stops the build with a MalformedInput naming it, and nothing is written.
    The same credential given twice is listed once. ``jobs`` > 1 verifies in that many
    processes, in chunks taken in order, so the first bad credential is still the one
    named.
    """
    if key.role != "issuer":
        raise MalformedInput(
            f"an issued-credentials list is signed by an issuer key, not {key.role!r}"
        )
    if not 0 <= generation <= _U64 or not 0 <= created_at <= _U64:
        raise MalformedInput("generation and created-at must be uint64")
    if jobs < 1:
        raise MalformedInput("jobs must be at least 1")
    check = functools.partial(
        _checked_digests, key_id=key.key_id, algorithm=key.algorithm, public=key.public().public_key
    )
    digests: set[bytes] = set()
    chunks = _chunks(credentials, _CHUNK)
    if jobs == 1:
        for chunk in chunks:
            digests.update(check(chunk))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for found in pool.map(check, chunks):
                digests.update(found)
    data = encode_list(digests, key, generation, created_at)
    if out is not None:
        with atomic_writer(out) as fh:
            fh.write(data)
    return data


_CHUNK = 4096  # credentials a verification task takes at once


def _chunks(items: Iterable[tuple[str, bytes]], size: int) -> Iterator[list[tuple[str, bytes]]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _checked_digests(
    chunk: list[tuple[str, bytes]], *, key_id: int, algorithm: Algorithm, public: bytes
) -> list[bytes]:
    """The SHA-256 of each credential of ``chunk``, once each is checked (see
    :func:`build_issued_list`); MalformedInput names the first that fails."""
    verifier = load_public_key(algorithm, public)
    out = []
    for where, raw in chunk:
        try:
            cred = parse_unverified(raw)
        except MalformedInput as exc:
            raise MalformedInput(f"{where}: {exc}") from None
        f = cred.fields
        if f.issuer_key_id != key_id or f.issuer_algorithm != algorithm:
            raise MalformedInput(
                f"{where}: credential of card {f.card_id} names issuer key id "
                f"{f.issuer_key_id}, not this key ({key_id})"
            )
        try:
            verifier.verify(cred.issuer_signature, cred.signed_message)
        except BadSignature:
            raise MalformedInput(
                f"{where}: credential of card {f.card_id} is not signed by issuer key id {key_id}"
            ) from None
        out.append(hashlib.sha256(cred.raw).digest())
    return out


def encode_list(
    digests: Iterable[bytes], key: SigningKey, generation: int, created_at: int
) -> bytes:
    """The signed file for a set of 32-byte hashes, as given: no credential is checked.
    :func:`build_issued_list` is the way to make a list; this is its last step."""
    unique = sorted(set(digests))
    if any(len(d) != _DIGEST for d in unique):
        raise MalformedInput("a listed hash is 32 bytes (SHA-256)")
    body = b"".join(unique)
    header = _Header(
        int(key.algorithm),
        key.key_id,
        generation,
        created_at,
        len(unique),
        hashlib.sha256(body).digest(),
    )
    signed = header.signed_bytes()
    signature = key.sign(LIST_SIGNING_TAG + signed)
    return signed + signature + bytes(HEADER_SIZE - _SIGNED_SIZE - 64) + body


def read_credential_lines(path: str | os.PathLike[str]) -> Iterator[tuple[str, bytes]]:
    """The credentials of a text file, one in hex a line (blank lines and ``#`` comments
    skipped), each with its ``FILE:LINE`` for error messages."""
    p = Path(path)
    try:
        fh = p.open(encoding="ascii")
    except OSError as exc:
        raise MalformedInput(f"{p}: cannot read: {exc.strerror or exc}") from None
    with fh:
        try:
            for number, line in enumerate(fh, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                try:
                    yield f"{p}:{number}", bytes.fromhex(text)
                except ValueError:
                    raise MalformedInput(f"{p}:{number}: not a credential in hex") from None
        except UnicodeDecodeError:
            raise MalformedInput(f"{p}: not a text file of hex credentials") from None
