"""Follow a package source: poll, verify everything, then put the new package in force.

A gate (or a station controller) follows one source: a local directory (the default)
or an ``http://`` / ``https://`` URL served by any static web server. Every
``poll_s`` seconds (with a little jitter, so a fleet does not poll in step) the follower
asks for ``package.json`` conditionally (``If-None-Match`` / ``If-Modified-Since``; a
directory: its identity), so an unchanged package costs one small request. A new one is:

1. parsed strictly and verified with a publishing key of the keyring **in force**;
2. refused unless its version is above the one in force (never a rollback; the same
   version with other bytes is refused too);
3. fetched: each file it names that the cache lacks, bounded by its stated size and
   checked against its SHA-256 before it gets its name in the cache;
4. verified as the gate will use it (``Prepared``): the new keyring parses, each issued
   list verifies under it, the fares and register parse;
5. handed to ``apply``, which verifies the revocation table and delta and swaps the new
   parameters in between two taps; only then is it marked in force, durably
   (``adopted.json`` in the cache), so a restarted gate never takes an older one.

All of this runs on the follower's thread; a tap never waits on the network. While the
source is unreachable, the gate keeps deciding on what it has, under the staleness
rules of its configuration; the follower says so once, and once when it is back.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import random
import re
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from farecore.atomicfile import write_atomic
from farecore.card.keys import Keyring
from farecore.closing import Closing
from farecore.errors import ConfigError, FarecoreError, TableChanged
from farecore.fleet.package import (
    MANIFEST_NAME,
    MAX_PACKAGE_BYTES,
    PackageFile,
    PackageRefused,
    SignedPackage,
    file_sha256,
    parse_package,
    verify_package,
)

if TYPE_CHECKING:
    from farecore.decide.issued import IssuedList

__all__ = [
    "DirectorySource",
    "HttpSource",
    "PackageCache",
    "PackageFollower",
    "Prepared",
    "Source",
    "SourceUnavailable",
    "open_source",
]

_log = logging.getLogger(__name__)
_CHUNK = 1 << 20
MAX_BRIDGE = 1000  # versions of history a gate walks to reach a new publishing key
_VERSION = re.compile(r"[1-9][0-9]{0,18}")
_LEFTOVER_S = 600  # a fetch that old belongs to a process that died


class SourceUnavailable(FarecoreError):
    """The package source could not be reached or did not answer as a package source."""


class Source(Protocol):
    """Where packages are published."""

    label: str

    def manifest(self, since: str | None) -> tuple[bytes, str | None] | None:
        """``package.json``'s bytes and a validator for the next conditional request,
        or None when it has not changed since ``since``."""
        ...

    def fetch(self, entry: PackageFile, out: Path) -> None:
        """Write the bytes of ``entry`` to ``out`` (not yet checked)."""
        ...

    def history(self, version: int) -> bytes | None:
        """``history/<version>.json`` (unverified), or None when the source has none."""
        ...


_MIN_RATE = 64 << 10  # bytes per second below which a transfer counts as a dead source


def _deadline(timeout_s: float, size: int) -> float:
    """When a request of ``size`` bytes must be over: a per-read timeout alone lets a
    server that drips a byte at a time hold a poll (and the gate's start and stop)."""
    return time.monotonic() + timeout_s + size / _MIN_RATE


def _copy_bounded(
    read: Callable[[int], bytes], out: Path, limit: int, what: str, deadline: float | None = None
) -> None:
    size = 0
    with open(out, "wb") as f:
        while chunk := read(_CHUNK):
            size += len(chunk)
            if size > limit:
                # The publisher signed the size: a longer answer is the server's fault.
                raise SourceUnavailable(f"{what}: longer than the {limit} bytes the package states")
            if deadline is not None and time.monotonic() > deadline:
                raise SourceUnavailable(f"{what}: too slow (less than {_MIN_RATE} bytes/s)")
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def _read_bounded(read: Callable[[int], bytes], limit: int, what: str, deadline: float) -> bytes:
    parts: list[bytes] = []
    size = 0
    while chunk := read(_CHUNK):
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            break  # the parser names what is too long
        if time.monotonic() > deadline:
            raise SourceUnavailable(f"{what}: too slow (less than {_MIN_RATE} bytes/s)")
    return b"".join(parts)


class DirectorySource:
    """A package directory on a local or mounted file system."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)

    def manifest(self, since: str | None) -> tuple[bytes, str | None] | None:
        p = self.path / MANIFEST_NAME
        try:
            with open(p, "rb") as f:
                st = os.fstat(f.fileno())
                tag = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
                if tag == since:
                    return None
                data = f.read(MAX_PACKAGE_BYTES + 1)
        except OSError as exc:
            raise SourceUnavailable(f"{p}: {exc.strerror or exc}") from None
        return data, tag

    def fetch(self, entry: PackageFile, out: Path) -> None:
        p = self.path / entry.path
        try:
            with open(p, "rb") as f:
                _copy_bounded(f.read, out, entry.size, str(p))
        except OSError as exc:
            raise SourceUnavailable(f"{p}: {exc.strerror or exc}") from None

    def history(self, version: int) -> bytes | None:
        p = self.path / "history" / f"{version}.json"
        try:
            with open(p, "rb") as f:
                return f.read(MAX_PACKAGE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SourceUnavailable(f"{p}: {exc.strerror or exc}") from None


class HttpSource:
    """A package directory served over HTTP(S) by a static web server."""

    def __init__(self, url: str, *, ca_file: Path | None = None, timeout_s: float = 10.0) -> None:
        self.base = url if url.endswith("/") else url + "/"
        self.label = self.base
        self.timeout_s = timeout_s
        self._context: ssl.SSLContext | None = None
        if self.base.startswith("https:"):
            self._context = ssl.create_default_context(
                cafile=str(ca_file) if ca_file is not None else None
            )

    def _open(self, path: str, headers: dict[str, str]) -> object:
        request = urllib.request.Request(self.base + path, headers=headers)
        return urllib.request.urlopen(request, timeout=self.timeout_s, context=self._context)

    def manifest(self, since: str | None) -> tuple[bytes, str | None] | None:
        headers = {"Cache-Control": "no-cache"}
        etag, _, modified = (since or "").partition("\n")
        if etag:
            headers["If-None-Match"] = etag
        if modified:
            headers["If-Modified-Since"] = modified
        try:
            with self._open(MANIFEST_NAME, headers) as response:  # type: ignore[attr-defined]
                deadline = time.monotonic() + 2 * self.timeout_s  # a manifest is small
                what = f"{self.base}{MANIFEST_NAME}"
                data = _read_bounded(response.read1, MAX_PACKAGE_BYTES + 1, what, deadline)
                stated = response.headers.get("Content-Length", "")
                if stated.isdigit() and len(data) < int(stated):
                    raise SourceUnavailable(f"{what}: the answer was cut short")
                tag = f"{response.headers.get('ETag', '')}\n{response.headers.get('Last-Modified', '')}"
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return None
            raise SourceUnavailable(f"{self.base}{MANIFEST_NAME}: HTTP {exc.code}") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise SourceUnavailable(f"{self.base}{MANIFEST_NAME}: {_reason(exc)}") from None
        return data, tag if tag.strip() else None

    def fetch(self, entry: PackageFile, out: Path) -> None:
        url = self.base + entry.path
        try:
            with self._open(entry.path, {}) as response:  # type: ignore[attr-defined]
                deadline = _deadline(self.timeout_s, entry.size)
                _copy_bounded(response.read1, out, entry.size, url, deadline)
        except urllib.error.HTTPError as exc:
            raise SourceUnavailable(f"{url}: HTTP {exc.code}") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise SourceUnavailable(f"{url}: {_reason(exc)}") from None

    def history(self, version: int) -> bytes | None:
        url = f"{self.base}history/{version}.json"
        try:
            with self._open(f"history/{version}.json", {}) as response:  # type: ignore[attr-defined]
                deadline = time.monotonic() + 2 * self.timeout_s
                return _read_bounded(response.read1, MAX_PACKAGE_BYTES + 1, url, deadline)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise SourceUnavailable(f"{url}: HTTP {exc.code}") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise SourceUnavailable(f"{url}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc)


def open_source(spec: str, *, ca_file: Path | None = None, timeout_s: float = 10.0) -> Source:
    """A source from its configuration: an http(s) URL, or a directory path."""
    scheme = urllib.parse.urlsplit(spec).scheme.lower()
    if scheme in ("http", "https"):
        return HttpSource(spec, ca_file=ca_file, timeout_s=timeout_s)
    if scheme == "file":
        return DirectorySource(Path(urllib.parse.urlsplit(spec).path))
    if scheme and len(scheme) > 1:
        raise ConfigError(f"package source {spec!r}: expected a directory or an http(s) URL")
    return DirectorySource(Path(spec))


class PackageCache:
    """The gate's own copies of package files (``files/<sha256>``, read-only) and the
    packages it has put in force (``adopted-<owner>/<version>.json``). Like the table
    store, nothing here is trusted: a copy is checked against its name before it is
    used, and the packages in force are verified again at each start, one after the
    other from the configured keyring, each under the keyring of the one before
    (:meth:`adopted`). ``owner`` keeps the gates that share a cache apart."""

    def __init__(self, directory: Path, owner: str = "gate") -> None:
        self.dir = directory
        self.files = directory / "files"
        self.chain = directory / f"adopted-{owner}"
        # Copies this process has hashed, by name: (inode, size, mtime). A 10 M-id table
        # is hashed once, not at every package that names it again.
        self._checked: dict[str, tuple[int, int, int]] = {}
        try:
            self.files.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"package cache {directory}: {exc.strerror or exc}") from None

    def path(self, entry: PackageFile) -> Path:
        return self.files / entry.sha256

    def holds(self, entry: PackageFile) -> bool:
        p = self.path(entry)
        try:
            st = p.stat()
        except OSError:
            return False
        if st.st_size != entry.size:
            return False
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._checked.get(entry.sha256) == identity:
            return True
        if file_sha256(p) != (entry.sha256, entry.size):
            return False
        self._checked[entry.sha256] = identity
        return True

    def add(self, source: Source, entry: PackageFile) -> Path:
        """Fetch ``entry`` unless held; return its checked copy."""
        target = self.path(entry)
        if self.holds(entry):
            return target
        # A name of its own per process and thread: followers sharing a cache (the gates
        # of one host) may fetch the same file at once.
        tmp = self.files / f".{entry.sha256}.{os.getpid()}-{threading.get_ident()}.part"
        try:
            source.fetch(entry, tmp)
            got = file_sha256(tmp)
            if got != (entry.sha256, entry.size):
                # The publisher signed the hash: other bytes are the server's (or the
                # network's) fault, so the package is fetched again, not refused.
                raise SourceUnavailable(
                    f"{source.label}{entry.path} ({entry.name}): its SHA-256 or size is not "
                    "the one the package names"
                )
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return target

    def _chain(self) -> list[tuple[int, Path]]:
        try:
            names = [p for p in self.chain.iterdir() if p.suffix == ".json"]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(f"{self.chain}: cannot read: {exc.strerror or exc}") from None
        found = [(int(p.stem), p) for p in names if _VERSION.fullmatch(p.stem)]
        return sorted(found)

    def adopted(self, keyring: Keyring) -> tuple[SignedPackage, Keyring] | None:
        """The newest package put in force that verifies in a chain from ``keyring`` (the
        configured one): each under the keyring of the one before. With its keyring; None
        when none was ever put in force. A package kept here that no chain reaches (its
        keyring file lost, or a file written by someone else) is not used."""
        chain = self._chain()
        ring, held = keyring, None
        for version, path in chain:
            try:
                package = parse_package(path.read_bytes(), str(path))
                verify_package(package, ring, str(path))
                entry = package.manifest.one("keyring")
                if entry is None or not self.holds(entry):
                    raise PackageRefused(f"{path}: its keyring is not in the cache")
                next_ring = Keyring.load(self.path(entry))
            except (FarecoreError, OSError) as exc:
                _log.debug("package %s not used: %s", path, exc)
                continue
            if held is None or version > held.manifest.version:
                held, ring = package, next_ring
        if chain and held is None:
            raise ConfigError(
                f"{self.chain}: no package kept there verifies under the configured keyring "
                "(restore the keyring the packages were taken under, or remove the directory "
                "knowingly: the gate could then be handed an older package)"
            )
        return (held, ring) if held is not None else None

    def adopt(self, package: SignedPackage) -> None:
        """Keep ``package`` as put in force (durably, before it is said to be)."""
        self.chain.mkdir(mode=0o700, exist_ok=True)
        write_atomic(self.chain / f"{package.manifest.version}.json", package.raw)

    def prune(self, keep: set[str]) -> None:
        # Every adopted package's keyring stays: the next start verifies the chain.
        for _, path in self._chain():
            with contextlib.suppress(FarecoreError, OSError):
                entry = parse_package(path.read_bytes(), str(path)).manifest.one("keyring")
                if entry is not None:
                    keep = keep | {entry.sha256}
        for p in self.files.iterdir():
            if p.name in keep:
                continue
            with contextlib.suppress(OSError):
                # A ".part" file may be another follower's fetch in progress; one this
                # old was left by a process that died fetching it.
                if p.name.startswith(".") and time.time() - p.stat().st_mtime < _LEFTOVER_S:
                    continue
                p.unlink()


@dataclass(frozen=True, slots=True)
class Prepared:
    """A verified package with its files in the cache, ready to be put in force."""

    package: SignedPackage
    keyring: Keyring
    issued: list[IssuedList]
    revocation_base: Path
    revocation_delta: Path | None
    files: dict[str, Path] = field(default_factory=dict)  # role: path (fares, register)

    @property
    def version(self) -> int:
        return self.package.manifest.version


def prepare(cache: PackageCache, source: Source, package: SignedPackage) -> Prepared:
    """Fetch what the cache lacks and verify every file but the revocation table and
    delta (those are verified by the gate's table store as they go in force)."""
    from farecore.decide.issued import IssuedList
    from farecore.settlement.fares import parse_fares
    from farecore.settlement.terminals import parse_terminals

    manifest = package.manifest
    paths = {f.sha256: cache.add(source, f) for f in manifest.files}
    keyring_entry = manifest.one("keyring")
    base = manifest.one("revocation_base")
    assert keyring_entry is not None and base is not None  # the parser requires them
    keyring = Keyring.load(paths[keyring_entry.sha256])
    issued = []
    for entry in manifest.of("issued"):
        listed = IssuedList.open(paths[entry.sha256], keyring)
        if listed.generation != entry.generation:
            raise PackageRefused(
                f"{entry.name}: generation {listed.generation}, but the package says "
                f"{entry.generation}"
            )
        issued.append(listed)
    others: dict[str, Path] = {}
    for role in ("fares", "register"):
        found = manifest.one(role)
        if found is None:
            continue
        try:
            text = paths[found.sha256].read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise PackageRefused(f"{found.name}: not UTF-8 text: {exc}") from None
        if role == "fares":
            parse_fares(text, found.name)
        else:
            parse_terminals(text, found.name)
        others[role] = paths[found.sha256]
    delta = manifest.one("revocation_delta")
    return Prepared(
        package,
        keyring,
        issued,
        paths[base.sha256],
        paths[delta.sha256] if delta is not None else None,
        others,
    )


class PackageFollower(Closing):
    """Keeps a gate on the newest package its source publishes.

    ``keyring``: the keyring in force (the adopted package's, or the gate's configured
    one before any package). ``apply`` puts a prepared package in force for the gate(s)
    and raises (FarecoreError or OSError) to refuse it. ``poll_s`` 0 starts no thread
    (call :meth:`poll`). ``on_change`` is called after each new package is in force.
    """

    def __init__(
        self,
        source: Source,
        cache: PackageCache,
        keyring: Keyring,
        apply: Callable[[Prepared], None],
        *,
        in_force: SignedPackage | None = None,
        poll_s: float = 30.0,
        on_change: Callable[[SignedPackage], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.cache = cache
        self.keyring = keyring
        self.in_force = in_force
        self._apply = apply
        self._on_change = on_change
        self._clock = clock
        self._since: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._refused: str | None = None  # the sha256 of a package.json already refused
        self._down = False
        self.polls = 0
        self.applied = 0
        self.refusals = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_contact: float | None = None
        self._poll_s = poll_s
        self._thread: threading.Thread | None = None

    @property
    def version(self) -> int | None:
        return self.in_force.manifest.version if self.in_force is not None else None

    def start(self) -> None:
        if self._poll_s and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="package-follower", daemon=True)
            self._thread.start()

    def poll(self) -> bool:
        """Ask the source once; return True when a new package was put in force."""
        with self._lock:
            self.polls += 1
            try:
                got = self.source.manifest(self._since)
            except SourceUnavailable as exc:
                self._unreachable(str(exc))
                return False
            self._reachable()
            if got is None:
                return False
            data, tag = got
            try:
                changed = self._consider(data)
            except SourceUnavailable as exc:
                self._unreachable(str(exc))  # a file could not be fetched: ask again
                return False
            except (TableChanged, OSError, ConfigError) as exc:
                # Not the package's fault (a file changed under the table store, a full
                # disk, marks that could not be written): nothing is marked refused and
                # the next poll tries it again.
                self._unreachable(f"package not put in force now: {exc}")
                return False
            except FarecoreError as exc:
                self._refuse(hashlib.sha256(data).hexdigest(), str(exc))
                changed = False
            self._since = tag
            return changed

    def _consider(self, data: bytes) -> bool:
        digest = hashlib.sha256(data).hexdigest()
        if self.in_force is not None and digest == self.in_force.sha256:
            return False
        if digest == self._refused:
            return False  # already refused and said so
        package = parse_package(data, f"{self.source.label} {MANIFEST_NAME}")
        where = f"{self.source.label} {MANIFEST_NAME}"
        try:
            verify_package(package, self.keyring, where)
        except PackageRefused:
            # Signed by a key the gate's keyring lacks: a gate away while a new publishing
            # key was handed over (a bus at the far end of its route) follows the
            # published history, each version verified under the keyring before it.
            verify_package(package, self._bridge(package), where)
        current = self.version
        if self.in_force is not None and (
            package.manifest.created_at < self.in_force.manifest.created_at
        ):
            raise PackageRefused(
                f"version {package.manifest.version} was made before version {current} in "
                "force; refused"
            )
        if current is not None and package.manifest.version <= current:
            what = (
                "the same version with other contents"
                if (package.manifest.version == current)
                else "a rollback"
            )
            raise PackageRefused(
                f"version {package.manifest.version} is not above version {current} in force "
                f"({what}); refused"
            )
        prepared = prepare(self.cache, self.source, package)
        self._apply(prepared)
        self.cache.adopt(package)
        previous = self.in_force
        self.in_force = package
        self.keyring = prepared.keyring
        self.applied += 1
        keep = {f.sha256 for f in package.manifest.files}
        if previous is not None:
            keep |= {f.sha256 for f in previous.manifest.files}
        self.cache.prune(keep)
        _log.info(
            "package version %d in force (revocation generation %d) from %s",
            package.manifest.version,
            package.manifest.revocation_generation,
            self.source.label,
        )
        if self._on_change is not None:
            self._on_change(package)
        return True

    def _bridge(self, package: SignedPackage) -> Keyring:
        """The keyring reached from the one in force through ``history/<v>.json`` of
        the versions between, each verified under the keyring before it (at most
        ``MAX_BRIDGE`` versions); the keyring in force when there is no such path."""
        ring = self.keyring
        low = self.version or 0
        made = self.in_force.manifest.created_at if self.in_force is not None else 0
        top = package.manifest.version
        for version in range(low + 1, min(top, low + 1 + MAX_BRIDGE)):
            data = self.source.history(version)
            if data is None:
                continue
            try:
                step = parse_package(data, f"{self.source.label} history/{version}.json")
                verify_package(step, ring)
                if step.manifest.version != version or step.manifest.created_at < made:
                    continue
                entry = step.manifest.one("keyring")
                assert entry is not None
                ring = Keyring.load(self.cache.add(self.source, entry))
                made = step.manifest.created_at
            except PackageRefused:
                continue
        return ring

    def _refuse(self, digest: str, why: str) -> None:
        self.refusals += 1
        self._refused = digest
        self.last_error = why
        _log.warning(
            "package refused: %s; version %s stays in force",
            why,
            self.version if self.version is not None else "(none)",
        )

    def _unreachable(self, why: str) -> None:
        self.failures += 1
        self.last_error = why
        if not self._down:
            self._down = True
            _log.warning(
                "package source unreachable: %s; deciding on version %s meanwhile",
                why,
                self.version if self.version is not None else "(none)",
            )

    def _reachable(self) -> None:
        if self._down:
            self._down = False
            _log.info("package source %s reachable again", self.source.label)
        self.last_contact = self._clock()

    def _run(self) -> None:
        rng = random.Random()
        while not self._stop.wait(self._poll_s * rng.uniform(0.9, 1.1)):
            try:
                self.poll()
            except Exception:  # the follower must outlive any one bad package
                _log.exception("package poll failed; the package in force is kept")

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            # A poll in flight ends at its deadline; the thread is a daemon, so a gate
            # stopping never waits longer than one request's timeout for it.
            source_timeout = getattr(self.source, "timeout_s", 10.0)
            thread.join(source_timeout + 1)
