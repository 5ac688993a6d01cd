"""``publish``: make the next version of a signed parameter package in a directory.

Every file is verified exactly as a gate (or the settlement) will verify it before the
package names it: the keyring parses, the revocation table and its delta verify under
the revocation signer and belong together, each issued list verifies under the keyring,
the fares and the register parse. A package a gate would refuse is never published.

The directory is changed in an order a reader can never catch half-done: first the new
files under ``files/`` (named by their SHA-256, so an existing name already has the
right bytes and is never rewritten), then ``package.json`` by atomic rename. A reader
that fetched the old manifest still finds every file it names: the files of the
previous version are kept until the next publish after it. Each manifest is also kept
as ``history/<version>.json``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from farecore.atomicfile import write_atomic
from farecore.card.keys import Keyring, PublicKeyFile, SigningKey
from farecore.errors import ConfigError, FarecoreError
from farecore.fleet.package import (
    MANIFEST_NAME,
    Manifest,
    PackageFile,
    PackageRefused,
    SignedPackage,
    file_sha256,
    parse_package,
    sign_package,
    verify_package,
)

__all__ = ["PublishInputs", "publish", "published"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublishInputs:
    """What goes into a package: local paths, each verified before it is published."""

    keyring: Path
    revocation_base: Path
    revocation_signer: PublicKeyFile
    revocation_delta: Path | None = None
    issued: Sequence[Path] = ()
    fares: Path | None = None
    register: Path | None = None


def published(directory: Path) -> SignedPackage | None:
    """The package now published in ``directory`` (parsed, not verified), or None."""
    path = directory / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_package(data, str(path))


def _entry(role: str, path: Path, generation: int | None) -> PackageFile:
    sha, size = file_sha256(path)
    return PackageFile(role, path.name, sha, size, generation)


def _check_inputs(inputs: PublishInputs) -> tuple[Keyring, list[PackageFile], dict[int, int]]:
    """Verify every input as its reader will; return the keyring, the file entries and
    each issued list's generation by issuer key."""
    from farecore.decide.issued import IssuedList
    from farecore.decide.revocation import RevocationTable
    from farecore.settlement.fares import parse_fares
    from farecore.settlement.terminals import parse_terminals

    keyring = Keyring.load(inputs.keyring)
    files = [_entry("keyring", inputs.keyring, None)]
    table = RevocationTable.open(inputs.revocation_base, inputs.revocation_signer)
    files.append(_entry("revocation_base", inputs.revocation_base, table.generation))
    if inputs.revocation_delta is not None:
        from farecore.decide.revocation.delta import RevocationDelta
        from farecore.decide.revocation.view import RevocationView

        delta = RevocationDelta.open(inputs.revocation_delta, inputs.revocation_signer)
        view = RevocationView.over(table, delta)  # it must fit this very base
        files.append(_entry("revocation_delta", inputs.revocation_delta, view.generation))
    issuers: dict[int, Path] = {}
    generations: dict[int, int] = {}
    for path in inputs.issued:
        listed = IssuedList.open(path, keyring)
        if listed.key_id in issuers:
            raise ConfigError(
                f"{path} and {issuers[listed.key_id]} are both lists of issuer key "
                f"{listed.key_id}; a package carries the newest one only"
            )
        issuers[listed.key_id] = path
        generations[listed.key_id] = listed.generation
        files.append(_entry("issued", path, listed.generation))
    for role, given in (("fares", inputs.fares), ("register", inputs.register)):
        if given is None:
            continue
        try:
            text = given.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{given}: cannot read: {exc}") from None
        if role == "fares":
            parse_fares(text, str(given))
        else:
            parse_terminals(text, str(given))
        files.append(_entry(role, given, None))
    return keyring, files, generations


def publish(
    directory: Path,
    inputs: PublishInputs,
    key: SigningKey,
    *,
    version: int | None = None,
    now: int | None = None,
) -> SignedPackage:
    """Publish the next package in ``directory``; return it.

    The version is the published one plus one unless given (then it must be higher).
    The publishing key must be one the gates will accept: a publishing key of the
    keyring they hold now (the published package's), or of the new keyring for the
    first package."""
    keyring, files, issued = _check_inputs(inputs)
    previous = published(directory)
    old_keyring = keyring
    # The highest version ever published here, not only the one in package.json: a
    # package.json put back by hand must not make the next version repeat a number.
    highest = max([_history_versions(directory), previous.manifest.version if previous else 0])
    if previous is not None:
        old_keyring = _keyring_of(directory, previous)
    if version is not None and version <= highest:
        raise ConfigError(
            f"version {version} is not above version {highest}, which {directory} already "
            "published: gates never go back"
        )
    number = version if version is not None else highest + 1
    made = int(time.time()) if now is None else now
    if previous is not None:
        _check_not_older(directory, previous, old_keyring, files, issued)
        # Gates refuse a package made before the one they hold: a clock set back here
        # must not make every later package unusable.
        made = max(made, previous.manifest.created_at)
    manifest = Manifest(number, made, tuple(files))
    data = sign_package(manifest, key)
    signed = parse_package(data, "the new package")
    try:
        verify_package(signed, old_keyring, "the new package")
    except PackageRefused:
        which = "the published package's keyring" if previous else "its keyring"
        raise ConfigError(
            f"publishing key {key.key_id} is not an active publishing key in {which}: no gate "
            "would take the package (add it with farecore keyring add-publisher, and publish "
            "that keyring with the old key first)"
        ) from None
    if previous is not None:
        # The new keyring must accept this key too, or the gates could take this package
        # and then none after it.
        try:
            verify_package(signed, keyring, "the new package")
        except PackageRefused:
            raise ConfigError(
                f"publishing key {key.key_id} is not in the new keyring {inputs.keyring}: the "
                "gates would take this package and no later one"
            ) from None
    sources = _sources(inputs)
    _write(directory, manifest, sources, data, previous)
    _log.debug("published package version %d in %s", number, directory)
    return signed


def _check_not_older(
    directory: Path,
    previous: SignedPackage,
    old_keyring: Keyring,
    files: list[PackageFile],
    issued: dict[int, int],
) -> None:
    """A gate refuses a revocation generation below the one it holds, or an issued list
    older than one it used: never publish what the gates holding ``previous`` refuse."""
    from farecore.decide.issued import IssuedList

    old = previous.manifest
    new = Manifest(old.version + 1, old.created_at, tuple(files))
    was, now = old.revocation_generation, new.revocation_generation
    if now < was:
        raise ConfigError(
            f"revocation generation {now} is below generation {was}, which the published "
            "package holds: every gate would refuse it (build a newer base or delta)"
        )

    def revocation(m: Manifest) -> set[tuple[str, str]]:
        return {(f.role, f.sha256) for f in m.files if f.role.startswith("revocation_")}

    if now == was and revocation(old) != revocation(new):
        raise ConfigError(
            f"revocation generation {now} with other contents than the published package's: "
            "gates would refuse it (give the new table or delta a higher generation)"
        )
    held: dict[int, int] = {}
    for f in old.of("issued"):
        try:
            listed = IssuedList.open(directory / f.path, old_keyring)
        except (FarecoreError, OSError):
            continue  # a list no gate could have used
        held[listed.key_id] = listed.generation
    for key_id, generation in issued.items():
        if held.get(key_id, -1) > generation:
            raise ConfigError(
                f"issued list of issuer key {key_id}: generation {generation} is below "
                f"generation {held[key_id]}, which the published package holds"
            )


def _history_versions(directory: Path) -> int:
    """The highest version in ``history/`` (0 when there is none)."""
    try:
        names = [p.stem for p in (directory / "history").iterdir() if p.suffix == ".json"]
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise ConfigError(f"{directory / 'history'}: {exc.strerror or exc}") from None
    return max((int(n) for n in names if n.isascii() and n.isdigit() and len(n) <= 18), default=0)


def _sources(inputs: PublishInputs) -> list[Path]:
    paths = [inputs.keyring, inputs.revocation_base]
    if inputs.revocation_delta is not None:
        paths.append(inputs.revocation_delta)
    paths.extend(inputs.issued)
    paths.extend(p for p in (inputs.fares, inputs.register) if p is not None)
    return paths


def _keyring_of(directory: Path, package: SignedPackage) -> Keyring:
    entry = package.manifest.one("keyring")
    assert entry is not None
    path = directory / entry.path
    try:
        return Keyring.load(path)
    except FarecoreError as exc:
        raise ConfigError(f"the published package's keyring: {exc}") from None


def _write(
    directory: Path,
    manifest: Manifest,
    sources: list[Path],
    data: bytes,
    previous: SignedPackage | None,
) -> None:
    files_dir = directory / "files"
    history = directory / "history"
    for d in (directory, files_dir, history):
        d.mkdir(parents=True, exist_ok=True)
    for entry, source in zip(manifest.files, sources, strict=True):
        target = files_dir / entry.sha256
        if target.exists() and file_sha256(target) == (entry.sha256, entry.size):
            continue
        tmp = files_dir / f".{entry.sha256}.tmp"
        shutil.copyfile(source, tmp)
        if file_sha256(tmp) != (entry.sha256, entry.size):
            tmp.unlink()
            raise ConfigError(f"{source} changed while it was being published; publish again")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)
    _fsync_dir(files_dir)
    write_atomic(history / f"{manifest.version}.json", data)
    write_atomic(directory / MANIFEST_NAME, data)
    _prune(files_dir, manifest, previous)


def _prune(files_dir: Path, manifest: Manifest, previous: SignedPackage | None) -> None:
    """Remove files neither this nor the previous version names (a gate may be fetching
    the previous one's), except keyrings: every version's keyring stays, for a gate that
    was away to walk the history to a new publishing key (``follow.MAX_BRIDGE``)."""
    keep = {f.sha256 for f in manifest.files}
    if previous is not None:
        keep |= {f.sha256 for f in previous.manifest.files}
    for kept in (files_dir.parent / "history").glob("*.json"):
        try:
            entry = parse_package(kept.read_bytes(), str(kept)).manifest.one("keyring")
        except (FarecoreError, OSError):
            continue
        if entry is not None:
            keep.add(entry.sha256)
    for path in files_dir.iterdir():
        if path.name not in keep:
            try:
                path.unlink()
            except OSError as exc:
                _log.warning("%s not removed: %s", path, exc)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
