"""Key files and the issuer keyring.

Key files are small JSON documents. ``PREFIX.key`` holds a private key and is created
with mode 0600; ``PREFIX.pub`` holds the matching public key and is what every other
command reads. Each names its role (issuer, terminal, revocation, publishing, card) and
key id, so a terminal key handed where an issuer key is expected is refused with a clear
error.

The keyring lists issuer public keys with their status: active, retired at a time (still
good for credentials that became valid before it), or revoked. It may also list the
publishing keys that sign parameter packages (``farecore.fleet.package``), with the same
statuses: the keyring a gate holds decides which package it will take next, so a new
publishing key is rolled out in a package signed by the old one.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from farecore.atomicfile import write_atomic
from farecore.boundedinput import check_json_nesting, read_limited
from farecore.card.crypto import Algorithm, PrivateKey, PublicKey, load_public_key
from farecore.errors import ConfigError, KeyFileError, KeyringError, MalformedFile, MalformedInput
from farecore.strictkeys import check_keys

__all__ = [
    "ROLES",
    "IssuerKey",
    "Keyring",
    "PublicKeyFile",
    "SigningKey",
    "load_private_key",
    "load_public_key_file",
    "new_key_pair",
    "save_signing_key",
]

ROLES = ("issuer", "terminal", "revocation", "publishing", "card")
_KEY_FORMAT = "farecore-key/1"
_KEYRING_FORMAT = "farecore-keyring/1"
_U32_MAX = 0xFFFFFFFF
_MAX_KEY_FILE_BYTES = 1 << 16  # a key file is a few hundred bytes
_MAX_JSON_DEPTH = 8  # a keyring is an object of a list of objects


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown key role {role!r}: expected one of {', '.join(ROLES)}")


def _check_key_id(key_id: int) -> None:
    if not isinstance(key_id, int) or isinstance(key_id, bool) or not 0 <= key_id <= _U32_MAX:
        raise ValueError(f"key id must be an integer from 0 to {_U32_MAX}, got {key_id!r}")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key together with its role and key id."""

    role: str
    key_id: int
    private: PrivateKey

    def __post_init__(self) -> None:
        _check_role(self.role)
        _check_key_id(self.key_id)

    @property
    def algorithm(self) -> Algorithm:
        return self.private.algorithm

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def public(self) -> PublicKeyFile:
        return PublicKeyFile(self.role, self.key_id, self.algorithm, self.private.public_bytes)


@dataclass(frozen=True, slots=True)
class PublicKeyFile:
    """A public key together with its role and key id, as stored in ``PREFIX.pub``."""

    role: str
    key_id: int
    algorithm: Algorithm
    public_key: bytes

    def __post_init__(self) -> None:
        _check_role(self.role)
        _check_key_id(self.key_id)
        load_public_key(self.algorithm, self.public_key)  # raises on a bad point

    def key(self) -> PublicKey:
        return load_public_key(self.algorithm, self.public_key)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _KEY_FORMAT,
            "kind": "public",
            "role": self.role,
            "key_id": self.key_id,
            "algorithm": self.algorithm.label,
            "public_key": self.public_key.hex(),
        }


def new_key_pair(
    role: str, key_id: int, out_prefix: str | os.PathLike[str], algorithm: Algorithm
) -> tuple[Path, Path]:
    """Generate a key pair; write ``PREFIX.key`` (mode 0600) and ``PREFIX.pub``.

    Refuses to overwrite an existing private key file.
    """
    _check_role(role)
    _check_key_id(key_id)
    key_path = Path(f"{os.fspath(out_prefix)}.key")
    if key_path.exists():
        raise KeyFileError(f"{key_path} already exists; refusing to overwrite a private key")
    return save_signing_key(SigningKey(role, key_id, PrivateKey.generate(algorithm)), out_prefix)


def save_signing_key(key: SigningKey, out_prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write an existing key pair to ``PREFIX.key`` (0600) and ``PREFIX.pub``."""
    key_path = Path(f"{os.fspath(out_prefix)}.key")
    pub_path = Path(f"{os.fspath(out_prefix)}.pub")
    private_doc = {
        "format": _KEY_FORMAT,
        "kind": "private",
        "role": key.role,
        "key_id": key.key_id,
        "algorithm": key.algorithm.label,
        "secret": key.private.secret.hex(),
    }
    write_atomic(key_path, (json.dumps(private_doc, indent=2) + "\n").encode(), mode=0o600)
    write_atomic(pub_path, (json.dumps(key.public().to_json(), indent=2) + "\n").encode())
    return key_path, pub_path


def _read_key_doc(path: Path, kind: str) -> dict[str, Any]:
    try:
        data = read_limited(path, _MAX_KEY_FILE_BYTES, str(path), KeyFileError)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror or exc}") from None
    check_json_nesting(data, _MAX_JSON_DEPTH, str(path), KeyFileError)
    try:
        doc = json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"{path}: not a farecore key file (bad JSON: {exc.msg})") from None
    except ValueError as exc:  # not UTF-8, or a number too long to convert
        raise KeyFileError(f"{path}: not a farecore key file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != _KEY_FORMAT:
        raise KeyFileError(f"{path}: not a farecore key file (format must be {_KEY_FORMAT!r})")
    if doc.get("kind") != kind:
        want = "private (.key)" if kind == "private" else "public (.pub)"
        raise KeyFileError(f"{path}: holds a {doc.get('kind')} key, but a {want} key is needed")
    return doc


def _fields(path: Path, doc: dict[str, Any], role: str | None) -> tuple[str, int, Algorithm]:
    try:
        got_role = str(doc["role"])
        key_id = doc["key_id"]
        algorithm = Algorithm.from_label(str(doc["algorithm"]))
        _check_role(got_role)
        _check_key_id(key_id)
    except (KeyError, ValueError) as exc:
        raise KeyFileError(f"{path}: bad key file: {exc}") from None
    if role is not None and got_role != role:
        raise KeyFileError(f"{path}: this key has role {got_role!r}, but role {role!r} is needed")
    return got_role, key_id, algorithm


def load_private_key(path: str | os.PathLike[str], role: str | None = None) -> SigningKey:
    """Read ``PREFIX.key``; check its role when ``role`` is given."""
    p = Path(path)
    doc = _read_key_doc(p, "private")
    got_role, key_id, algorithm = _fields(p, doc, role)
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{p}: private key is readable by others (mode {mode:04o}); chmod 600 it"
        )
    try:
        secret = bytes.fromhex(str(doc["secret"]))
        return SigningKey(got_role, key_id, PrivateKey(algorithm, secret))
    except (KeyError, ValueError) as exc:
        raise KeyFileError(f"{p}: bad private key: {exc}") from None


def load_public_key_file(path: str | os.PathLike[str], role: str | None = None) -> PublicKeyFile:
    """Read ``PREFIX.pub``; check its role when ``role`` is given."""
    p = Path(path)
    doc = _read_key_doc(p, "public")
    got_role, key_id, algorithm = _fields(p, doc, role)
    try:
        return PublicKeyFile(got_role, key_id, algorithm, bytes.fromhex(str(doc["public_key"])))
    except (KeyError, ValueError) as exc:
        raise KeyFileError(f"{p}: bad public key: {exc}") from None


@dataclass(frozen=True, slots=True)
class IssuerKey:
    """One keyring entry. ``retired_at`` is UTC Unix seconds, or None."""

    key_id: int
    algorithm: Algorithm
    public_key: bytes
    status: str = "active"
    retired_at: int | None = None
    label: str = ""

    def __post_init__(self) -> None:
        _check_key_id(self.key_id)
        if self.status not in ("active", "retired", "revoked"):
            raise ValueError(f"key status must be active, retired or revoked, not {self.status!r}")
        if (self.status == "retired") != (self.retired_at is not None):
            raise ValueError("a retired key needs retired_at, and only a retired key has one")
        at = self.retired_at
        if at is not None and (
            isinstance(at, bool) or not isinstance(at, int) or not 0 <= at <= _U32_MAX
        ):
            raise ValueError(
                f"retired_at must be UTC Unix seconds from 0 to {_U32_MAX}, not {at!r}"
            )
        if not isinstance(self.label, str):
            raise ValueError("label must be a string")
        load_public_key(self.algorithm, self.public_key)

    def accepts(self, algorithm: int, valid_from: int) -> bool:
        """Whether this key may vouch for a credential of that algorithm and valid-from.

        CARD-SPEC §7.3: a revoked key vouches for nothing; a key retired at T still vouches
        for credentials whose valid-from is at or before T.
        """
        if algorithm != self.algorithm or self.status == "revoked":
            return False
        return self.retired_at is None or self.retired_at >= valid_from

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "algorithm": self.algorithm.label,
            "public_key": self.public_key.hex(),
            "status": self.status,
            "retired_at": self.retired_at,
            "label": self.label,
        }


_MAX_KEYRING_BYTES = 1 << 20  # thousands of issuer keys; a city has a handful
_ENTRY_KEYS = ("key_id", "algorithm", "public_key", "status", "retired_at", "label")


class Keyring:
    """The issuer public keys a terminal or the settlement trusts, by key id, and the
    publishing keys whose parameter packages it takes (their own key ids)."""

    __slots__ = ("_keys", "_publishers")

    def __init__(
        self,
        keys: list[IssuerKey] | tuple[IssuerKey, ...] = (),
        publishers: list[IssuerKey] | tuple[IssuerKey, ...] = (),
    ) -> None:
        self._keys: dict[int, IssuerKey] = {}
        for key in keys:
            if key.key_id in self._keys:
                raise KeyringError(f"key id {key.key_id} appears twice in the keyring")
            self._keys[key.key_id] = key
        self._publishers: dict[int, IssuerKey] = {}
        for key in publishers:
            if key.key_id in self._publishers:
                raise KeyringError(f"publishing key id {key.key_id} appears twice in the keyring")
            self._publishers[key.key_id] = key

    @property
    def publishers(self) -> list[IssuerKey]:
        """The publishing keys, by key id."""
        return sorted(self._publishers.values(), key=lambda k: k.key_id)

    def publisher(self, key_id: int, algorithm: int) -> PublicKey | None:
        """The active publishing key ``key_id``, or None.

        Only an active key verifies a package. Unlike an issuer key, a retired
        publishing key vouches for nothing more: a package's creation time is written by
        its signer, so "made before the retirement" could be claimed by whoever holds
        the old key."""
        entry = self._publishers.get(key_id)
        if entry is None or entry.status != "active" or entry.algorithm != algorithm:
            return None
        return load_public_key(entry.algorithm, entry.public_key)

    def add_publisher(self, key: IssuerKey) -> Keyring:
        if key.key_id in self._publishers:
            raise KeyringError(f"publishing key id {key.key_id} is already in the keyring")
        return Keyring(list(self._keys.values()), [*self._publishers.values(), key])

    def retire_publisher(self, key_id: int, at: int) -> Keyring:
        entry = self._require_publisher(key_id)
        if entry.status == "revoked":
            raise KeyringError(f"publishing key id {key_id} is revoked; it cannot be retired")
        return self._with_publisher(replace(entry, status="retired", retired_at=at))

    def revoke_publisher(self, key_id: int) -> Keyring:
        entry = self._require_publisher(key_id)
        return self._with_publisher(replace(entry, status="revoked", retired_at=None))

    def _require_publisher(self, key_id: int) -> IssuerKey:
        entry = self._publishers.get(key_id)
        if entry is None:
            raise KeyringError(f"publishing key id {key_id} is not in the keyring")
        return entry

    def _with_publisher(self, key: IssuerKey) -> Keyring:
        publishers = dict(self._publishers)
        publishers[key.key_id] = key
        return Keyring(list(self._keys.values()), list(publishers.values()))

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._keys.values(), key=lambda k: k.key_id))

    def get(self, key_id: int) -> IssuerKey | None:
        return self._keys.get(key_id)

    def resolve(self, key_id: int, algorithm: int, valid_from: int) -> PublicKey | None:
        """The public key that may verify this credential, or None (UNKNOWN_ISSUER_KEY)."""
        entry = self._keys.get(key_id)
        if entry is None or not entry.accepts(algorithm, valid_from):
            return None
        return load_public_key(entry.algorithm, entry.public_key)

    def add(self, key: IssuerKey) -> Keyring:
        if key.key_id in self._keys:
            raise KeyringError(f"key id {key.key_id} is already in the keyring")
        return Keyring([*self._keys.values(), key], list(self._publishers.values()))

    def retire(self, key_id: int, at: int) -> Keyring:
        entry = self._require(key_id)
        if entry.status == "revoked":
            raise KeyringError(f"key id {key_id} is revoked; it cannot be retired")
        return self._with(replace(entry, status="retired", retired_at=at))

    def revoke(self, key_id: int) -> Keyring:
        entry = self._require(key_id)
        return self._with(replace(entry, status="revoked", retired_at=None))

    def _require(self, key_id: int) -> IssuerKey:
        entry = self._keys.get(key_id)
        if entry is None:
            raise KeyringError(f"key id {key_id} is not in the keyring")
        return entry

    def _with(self, key: IssuerKey) -> Keyring:
        keys = dict(self._keys)
        keys[key.key_id] = key
        return Keyring(list(keys.values()), list(self._publishers.values()))

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"format": _KEYRING_FORMAT, "keys": [k.to_json() for k in self]}
        if self._publishers:  # a keyring without them keeps the bytes it always had
            doc["publishers"] = [k.to_json() for k in self.publishers]
        return (json.dumps(doc, indent=2) + "\n").encode()

    def save(self, path: str | os.PathLike[str]) -> None:
        write_atomic(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "keyring") -> Keyring:
        if len(data) > _MAX_KEYRING_BYTES:
            raise MalformedFile(f"{source}: larger than {_MAX_KEYRING_BYTES} bytes")
        check_json_nesting(data, _MAX_JSON_DEPTH, source, MalformedFile)
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise MalformedFile(f"{source}: not a keyring (bad JSON: {exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != _KEYRING_FORMAT:
            raise MalformedFile(f"{source}: not a keyring (format must be {_KEYRING_FORMAT!r})")
        items = doc.get("keys", [])
        published = doc.get("publishers", [])
        try:
            check_keys(doc, source, ("format", "keys", "publishers"))
            if not isinstance(items, list):
                raise ConfigError(f"{source}: keys must be a list of key entries")
            if not isinstance(published, list):
                raise ConfigError(f"{source}: publishers must be a list of key entries")
        except ConfigError as exc:
            raise MalformedFile(str(exc)) from None
        keys = _entries(items, source, "key entry")
        publishers = _entries(published, source, "publishing key entry")
        try:
            return cls(keys, publishers)
        except KeyringError as exc:
            raise MalformedFile(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        p = Path(path)
        try:
            data = read_limited(p, _MAX_KEYRING_BYTES, str(p), MalformedFile)
        except OSError as exc:
            raise MalformedFile(f"{p}: cannot read keyring: {exc.strerror or exc}") from None
        return cls.from_bytes(data, str(p))


def _entries(items: list[Any], source: str, what: str) -> list[IssuerKey]:
    """The entries of one of the keyring's lists, each checked strictly."""
    keys = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ValueError("a key entry must be an object")
            check_keys(item, f"{what} {i}", _ENTRY_KEYS)
            keys.append(
                IssuerKey(
                    key_id=item["key_id"],
                    algorithm=Algorithm.from_label(str(item["algorithm"])),
                    public_key=bytes.fromhex(str(item["public_key"])),
                    status=str(item.get("status", "active")),
                    retired_at=item.get("retired_at"),
                    label=item.get("label", ""),
                )
            )
        except KeyError as exc:
            raise MalformedFile(f"{source}: {what} {i}: {exc} is missing") from None
        except ConfigError as exc:
            raise MalformedFile(f"{source}: {exc}") from None
        except (TypeError, ValueError, MalformedInput) as exc:
            raise MalformedFile(f"{source}: {what} {i}: {exc}") from None
    return keys
