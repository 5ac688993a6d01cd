"""The signed parameter package: one manifest naming every file a gate follows.

A package is a directory (served as it is by any static web server)::

    package.json          the signed manifest (the only file that ever changes)
    files/<sha256>        each file, named by the SHA-256 of its bytes (never changes)

``package.json`` is one JSON object, ``{"format": "farecore-package/1", "signed": S,
"key_id": K, "algorithm": A, "signature": HEX}``. ``S`` is the manifest itself, a JSON
text kept as a string so that the bytes signed are the bytes read: the signature is by
publishing key ``K`` of the keyring over ``b"farecore/package/v1\\x00"`` followed by
``S`` in UTF-8. The manifest is ``{"version": N, "created_at": T, "files": [...]}``, and
each file entry is ``{"role", "name", "sha256", "size", "generation"}``.

The roles: ``keyring`` (exactly one), ``revocation_base`` (exactly one),
``revocation_delta`` (at most one, for that base), ``issued`` (any number, one per
issuer key), ``fares`` and ``register`` (at most one each; the settlement's, carried so
every party reads the same bytes). ``version`` only ever goes up: a gate refuses a
package not newer than the one in force.

Parsing is strict and bounded: the manifest is small (at most 1 MiB, 4,096 files), its
keys are exactly these, and every value is checked for type and range. Verification
(``verify_package``) needs the keyring the reader already trusts: the package's own
keyring never vouches for the package that carries it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farecore.boundedinput import check_json_nesting
from farecore.card.crypto import Algorithm
from farecore.card.keys import Keyring, SigningKey
from farecore.errors import BadSignature, ConfigError, MalformedFile
from farecore.strictkeys import check_keys

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "MAX_FILE_BYTES",
    "MAX_PACKAGE_BYTES",
    "ROLES",
    "Manifest",
    "PackageFile",
    "PackageRefused",
    "SignedPackage",
    "file_sha256",
    "parse_package",
    "sign_package",
    "verify_package",
]

FORMAT = "farecore-package/1"
MANIFEST_NAME = "package.json"
TAG = b"farecore/package/v1\x00"
MAX_PACKAGE_BYTES = 1 << 20
MAX_FILES = 4096
MAX_FILE_BYTES = 4 << 30  # a 10 M-id revocation table is about 260 MB
_U63 = (1 << 63) - 1
_SHA = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_OUTER_KEYS = ("format", "signed", "key_id", "algorithm", "signature")
_MANIFEST_KEYS = ("version", "created_at", "files")
_FILE_KEYS = ("role", "name", "sha256", "size", "generation")
# role: (fewest, most) files of it in one package
ROLES: dict[str, tuple[int, int]] = {
    "keyring": (1, 1),
    "revocation_base": (1, 1),
    "revocation_delta": (0, 1),
    "issued": (0, MAX_FILES),
    "fares": (0, 1),
    "register": (0, 1),
}
_WITH_GENERATION = ("revocation_base", "revocation_delta", "issued")


def file_sha256(path: Path) -> tuple[str, int]:
    """The SHA-256 (hex) and size of the file at ``path``, read in 1 MiB pieces."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class PackageRefused(MalformedFile):
    """A package that is not to be put in force: malformed, not signed by a publishing
    key the reader trusts, or not newer than the one in force."""


@dataclass(frozen=True, slots=True)
class PackageFile:
    """One file of a package, as the manifest names it."""

    role: str
    name: str
    sha256: str
    size: int
    generation: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "name": self.name,
            "sha256": self.sha256,
            "size": self.size,
            "generation": self.generation,
        }

    @property
    def path(self) -> str:
        """Where the file lies in the package, relative to its root."""
        return f"files/{self.sha256}"


@dataclass(frozen=True, slots=True)
class Manifest:
    """A package's manifest: its version, when it was made, and its files."""

    version: int
    created_at: int
    files: tuple[PackageFile, ...]

    def of(self, role: str) -> list[PackageFile]:
        return [f for f in self.files if f.role == role]

    def one(self, role: str) -> PackageFile | None:
        found = self.of(role)
        return found[0] if found else None

    @property
    def revocation_generation(self) -> int:
        """The generation a gate holds once this package is in force."""
        f = self.one("revocation_delta") or self.one("revocation_base")
        assert f is not None and f.generation is not None  # the parser requires them
        return f.generation

    def to_text(self) -> str:
        doc = {
            "version": self.version,
            "created_at": self.created_at,
            "files": [f.to_json() for f in self.files],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class SignedPackage:
    """``package.json`` parsed but not yet verified."""

    manifest: Manifest
    key_id: int
    algorithm: Algorithm
    signature: bytes
    signed: bytes
    raw: bytes

    @property
    def sha256(self) -> str:
        """The SHA-256 of ``package.json``'s bytes: what a gate marks as in force."""
        return hashlib.sha256(self.raw).hexdigest()


def sign_package(manifest: Manifest, key: SigningKey) -> bytes:
    """The bytes of ``package.json`` for ``manifest``, signed with publishing ``key``."""
    if key.role != "publishing":
        raise ConfigError(f"a package is signed with a publishing key, not a {key.role} key")
    text = manifest.to_text()
    _check_manifest(json.loads(text), "manifest")  # never sign what a gate would refuse
    doc = {
        "format": FORMAT,
        "signed": text,
        "key_id": key.key_id,
        "algorithm": key.algorithm.label,
        "signature": key.sign(TAG + text.encode()).hex(),
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


def _json(data: bytes, source: str, depth: int) -> Any:
    check_json_nesting(data, depth, source, PackageRefused, max_digits=20)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PackageRefused(f"{source}: not JSON: {exc}") from None


def _int(value: object, field: str, low: int = 0, high: int = _U63) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field} must be an integer from {low} to {high}, not {value!r}")
    return value


def parse_package(data: bytes, source: str = MANIFEST_NAME) -> SignedPackage:
    """Parse ``package.json`` strictly; raise PackageRefused naming what is wrong."""
    if len(data) > MAX_PACKAGE_BYTES:
        raise PackageRefused(f"{source}: larger than {MAX_PACKAGE_BYTES} bytes")
    doc = _json(data, source, 2)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PackageRefused(f"{source}: not a parameter package (format must be {FORMAT!r})")
    try:
        check_keys(doc, source, _OUTER_KEYS)
        missing = [k for k in _OUTER_KEYS if k not in doc]
        if missing:
            raise ValueError(f"{missing[0]} is missing")
        if not isinstance(doc["signed"], str):
            raise ValueError("signed must be a string")
        key_id = _int(doc["key_id"], "key_id", 0, 0xFFFFFFFF)
        algorithm = Algorithm.from_label(str(doc["algorithm"]))
        sig = doc["signature"]
        if not isinstance(sig, str) or not re.fullmatch(r"[0-9a-f]{2,512}", sig) or len(sig) % 2:
            raise ValueError("signature must be lowercase hex")
        signed = doc["signed"].encode()
        manifest = _check_manifest(_json(signed, f"{source}: signed", 4), f"{source}: signed")
    except ConfigError as exc:
        raise PackageRefused(str(exc)) from None
    except ValueError as exc:
        raise PackageRefused(f"{source}: {exc}") from None
    return SignedPackage(manifest, key_id, algorithm, bytes.fromhex(sig), signed, data)


def _check_manifest(doc: object, source: str) -> Manifest:
    if not isinstance(doc, dict):
        raise PackageRefused(f"{source}: the manifest must be an object")
    try:
        check_keys(doc, source, _MANIFEST_KEYS)
        for k in _MANIFEST_KEYS:
            if k not in doc:
                raise ValueError(f"{k} is missing")
        version = _int(doc["version"], "version", 1)
        created_at = _int(doc["created_at"], "created_at")
        items = doc["files"]
        if not isinstance(items, list) or len(items) > MAX_FILES:
            raise ValueError(f"files must be a list of at most {MAX_FILES} entries")
        files = tuple(_check_file(item, i) for i, item in enumerate(items))
    except ConfigError as exc:
        raise PackageRefused(str(exc)) from None
    except ValueError as exc:
        raise PackageRefused(f"{source}: {exc}") from None
    _check_roles(files, source)
    return Manifest(version, created_at, files)


def _check_file(item: object, i: int) -> PackageFile:
    if not isinstance(item, dict):
        raise ValueError(f"file {i} must be an object")
    check_keys(item, f"file {i}", _FILE_KEYS)
    for k in _FILE_KEYS:
        if k not in item:
            raise ValueError(f"file {i}: {k} is missing")
    role, name, sha = item["role"], item["name"], item["sha256"]
    if role not in ROLES:
        raise ValueError(f"file {i}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"file {i}: name {name!r} is not a plain file name")
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise ValueError(f"file {i}: sha256 must be 64 lowercase hex digits")
    size = _int(item["size"], f"file {i}: size", 0, MAX_FILE_BYTES)
    generation = item["generation"]
    if role in _WITH_GENERATION:
        generation = _int(generation, f"file {i}: generation")
    elif generation is not None:
        raise ValueError(f"file {i}: a {role} file has no generation (null)")
    return PackageFile(role, name, sha, size, generation)


def _check_roles(files: tuple[PackageFile, ...], source: str) -> None:
    for role, (fewest, most) in ROLES.items():
        n = sum(1 for f in files if f.role == role)
        if not fewest <= n <= most:
            need = f"exactly {fewest}" if fewest == most else f"at most {most}"
            raise PackageRefused(f"{source}: {n} {role} files; a package has {need}")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise PackageRefused(f"{source}: two files share a name")
    base = next(f for f in files if f.role == "revocation_base")
    delta = next((f for f in files if f.role == "revocation_delta"), None)
    if delta is not None and (delta.generation or 0) <= (base.generation or 0):
        raise PackageRefused(
            f"{source}: the revocation delta's generation {delta.generation} is not above "
            f"its base's {base.generation}"
        )


def verify_package(signed: SignedPackage, keyring: Keyring, source: str = MANIFEST_NAME) -> None:
    """Check the signature with a publishing key of ``keyring`` (the one the reader holds)."""
    key = keyring.publisher(signed.key_id, signed.algorithm)
    if key is None:
        raise PackageRefused(
            f"{source}: signed by publishing key {signed.key_id} ({signed.algorithm.label}), "
            "which the keyring in force does not hold as a usable publishing key"
        )
    try:
        key.verify(signed.signature, TAG + signed.signed)
    except BadSignature:
        raise PackageRefused(f"{source}: the signature does not verify") from None
