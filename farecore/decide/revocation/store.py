"""A gate's private, verified copies of revocation tables, shared by the gates of a host.

A published table file is the publisher's: it may be written in place, truncated or
replaced at any moment, and a mapping of it would see all of that (a truncation kills
the mapping process with SIGBUS). So a gate never maps the published file. ``adopt``
copies its bytes into the store, a directory only this user may write, as a read-only
file named after the generation and the signed header, and then verifies the *copy*
completely. Whatever happens to the published file afterwards changes nothing the gate
decides from.

The name is content-addressed, so gate processes that share a store share one copy of
each table in the page cache. Adopting a table another gate already copied only
verifies it. A file in the store is a cache, never trusted: it is verified on every
open, and one that fails is replaced by a fresh copy.

Deltas (``.frd``) are kept in the same store, named the same way from their signed
header: their bytes are read once, verified and checked against their base, and only
then written to the store (``adopt_delta``). ``open_floor`` puts back what a gate's
marks name, a table or a base with its delta.

This module must never map or verify the published file in place, and never keep a
copy whose bytes it has not verified.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import stat
import threading
import time
from pathlib import Path

from farecore.atomicfile import fsync_directory
from farecore.card.keys import PublicKeyFile
from farecore.decide.revocation.delta import (
    DELTA_HEADER_SIZE,
    RevocationDelta,
    parse_delta_header_unverified,
)
from farecore.decide.revocation.filecheck import open_regular, signed_header
from farecore.decide.revocation.format import HEADER_SIZE
from farecore.decide.revocation.table import RevocationTable, TableChanged
from farecore.decide.revocation.view import RevocationInForce, RevocationView
from farecore.errors import TableRejected

__all__ = ["TableStore"]

_log = logging.getLogger(__name__)

_NAME = re.compile(r"^k([0-9a-f]{12})-g(\d{20})-([0-9a-f]{32})\.frt$")
_DELTA_NAME = re.compile(r"^k([0-9a-f]{12})-g(\d{20})-([0-9a-f]{32})\.frd$")
_COPY_CHUNK = 64 << 20
_LEFTOVER_S = 600  # a half-made copy this old belongs to a process that died making it


def _family(signer: PublicKeyFile) -> str:
    """The signer's mark in a copy's name: gates that trust other signers share a store
    without ever taking, or removing, each other's tables."""
    return hashlib.sha256(bytes([int(signer.algorithm)]) + signer.public_key).hexdigest()[:12]


def _name(signer: PublicKeyFile, generation: int, header_bytes: bytes, suffix: str = "frt") -> str:
    digest = hashlib.sha256(header_bytes).hexdigest()[:32]
    return f"k{_family(signer)}-g{generation:020d}-{digest}.{suffix}"


def _generation_of(name: str) -> int | None:
    match = _NAME.match(name) or _DELTA_NAME.match(name)
    return None if match is None else int(match.group(2))


class TableStore:
    """The directory of verified table copies. It is made (mode 0700) if it is missing.

    Raises :class:`TableRejected` if ``directory`` is not a directory owned by this
    user that nobody else may write: a store others can write is no private copy.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.stat(self.directory)
        except OSError as exc:
            raise TableRejected(
                f"table store {self.directory}: cannot use: {exc.strerror or exc}"
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise TableRejected(f"table store {self.directory}: not a directory")
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise TableRejected(
                f"table store {self.directory}: must be owned by this user and writable by "
                "no one else (chmod 700)"
            )

    def adopt(self, published: str | os.PathLike[str], signer: PublicKeyFile) -> RevocationTable:
        """Copy the table at ``published`` into the store (if it is not there yet) and
        return the verified copy. Raises :class:`TableRejected` naming what is wrong with
        the file, or :class:`TableChanged` (try again later) if it changed while it was
        being copied or the store could not be written."""
        source = Path(published)
        fd = open_regular(source)
        try:
            head = os.pread(fd, HEADER_SIZE, 0)
            # The signature and the sizes are checked before anything is copied or
            # named: an unsigned file must not fill the store.
            header, layout = signed_header(source, head, os.fstat(fd).st_size, signer)
            name = _name(signer, header.generation, head)
            table = self._verified(self.directory / name, signer, name)
            if table is None:
                table = self._copy(fd, source, name, layout.end, signer)
            else:
                _log.debug("%s: verified copy already in the store as %s", source, name)
        except OSError as exc:
            raise TableChanged(
                f"{source}: cannot copy into the table store {self.directory}: "
                f"{exc.strerror or exc}"
            ) from None
        finally:
            os.close(fd)
        table.source = source
        return table

    def open_copy(self, generation: int, name: str, signer: PublicKeyFile) -> RevocationTable:
        """The copy called ``name`` (of ``generation``), or else the newest copy of a later
        generation by the same signer, verified; TableRejected if there is none."""
        family = _family(signer)
        later = sorted(
            (int(m.group(2)), entry)
            for entry in os.listdir(self.directory)
            if (m := _NAME.match(entry)) and m.group(1) == family and int(m.group(2)) > generation
        )
        for candidate in [name] + [entry for _, entry in reversed(later)]:
            match = _NAME.match(candidate)
            if match is None or match.group(1) != family or int(match.group(2)) < generation:
                continue
            table = self._verified(self.directory / candidate, signer, candidate)
            if table is not None:
                return table
        raise TableRejected(
            f"table store {self.directory}: no verified copy of generation {generation} or later"
        )

    def adopt_delta(
        self, delta: RevocationDelta, base: RevocationTable, signer: PublicKeyFile
    ) -> RevocationView:
        """The view of ``delta`` (verified, by ``signer``) over ``base`` (a verified copy in
        this store), with the delta kept in the store (:meth:`keep_delta`). Raises
        :class:`TableRejected` if the delta does not fit the base, before anything is
        stored, or :class:`TableChanged` (try again later) if the store could not be
        written."""
        view = RevocationView.over(base, delta, delta.path)
        self.keep_delta(view, signer)
        return view

    def keep_delta(self, view: RevocationView, signer: PublicKeyFile) -> None:
        """Write the delta of ``view`` (checked against its base) into the store, durably,
        and make the copy the view's path. TableChanged if the store cannot be written.

        A delta is small: :meth:`RevocationDelta.open` reads its bytes once (bounded), and
        those bytes are what is verified, checked against the base, stored and used, so
        nothing that happens to the published file afterwards reaches the view."""
        delta = view.delta
        target = self.directory / _name(signer, delta.generation, delta.header_bytes(), "frd")
        try:
            if not self._holds(target, delta.data):
                self._store_bytes(target, delta.data)
        except OSError as exc:
            raise TableChanged(
                f"{view.source}: cannot copy into the table store {self.directory}: "
                f"{exc.strerror or exc}"
            ) from None
        view.path = delta.path = target

    def open_floor(
        self, floor: tuple[int, str] | tuple[int, str, str], signer: PublicKeyFile
    ) -> RevocationInForce:
        """What a gate's marks name, ``(generation, table copy)`` or ``(generation, base
        copy, delta copy)``, verified again; failing that, the newest verified table or
        view of this signer of a later generation. TableRejected if there is none."""
        generation = floor[0]
        family = _family(signer)
        candidates: list[tuple[str, ...]] = [floor[1:]]
        later: list[tuple[int, tuple[str, ...]]] = []
        for entry in os.listdir(self.directory):
            match = _NAME.match(entry) or _DELTA_NAME.match(entry)
            if match is None or match.group(1) != family or int(match.group(2)) <= generation:
                continue
            found = (entry,) if entry.endswith(".frt") else self._with_base(entry)
            if found is not None:
                later.append((int(match.group(2)), found))
        candidates += [names for _, names in sorted(later, reverse=True)]
        for names in candidates:
            try:
                if len(names) == 2:
                    return self.open_view(generation, names[0], names[1], signer)
                match = _NAME.match(names[0])
                if match is None or match.group(1) != family or int(match.group(2)) < generation:
                    continue
                table = self._verified(self.directory / names[0], signer, names[0])
                if table is not None:
                    return table
            except TableRejected as exc:
                _log.debug("table store copy %s not used: %s", names, exc)
        raise TableRejected(
            f"table store {self.directory}: no verified copy of generation {generation} or later"
        )

    def _with_base(self, delta_name: str) -> tuple[str, str] | None:
        """(base copy name, ``delta_name``): the base its header names, if it parses."""
        try:
            with open(self.directory / delta_name, "rb") as fh:
                header, _ = parse_delta_header_unverified(fh.read(DELTA_HEADER_SIZE))
        except (OSError, TableRejected):
            return None
        match = _DELTA_NAME.match(delta_name)
        assert match is not None
        digest = header.base_header_sha256.hex()[:32]
        return f"k{match.group(1)}-g{header.base_generation:020d}-{digest}.frt", delta_name

    def open_view(
        self, generation: int, base_name: str, delta_name: str, signer: PublicKeyFile
    ) -> RevocationView:
        """The view of the delta copy ``delta_name`` over the base copy ``base_name``, both
        verified again; TableRejected if either is missing or fails, if the view is older
        than ``generation``, or if they are not a base and a delta of this signer."""
        base_match, delta_match = _NAME.match(base_name), _DELTA_NAME.match(delta_name)
        family = _family(signer)
        if (
            base_match is None
            or delta_match is None
            or base_match.group(1) != family
            or delta_match.group(1) != family
            or int(delta_match.group(2)) < generation
        ):
            raise TableRejected(
                f"table store {self.directory}: {base_name} and {delta_name} do not name "
                f"a base and a delta of generation {generation} or later by this signer"
            )
        base = self._verified(self.directory / base_name, signer, base_name)
        if base is None:
            raise TableRejected(
                f"table store {self.directory}: no verified copy of the base {base_name}"
            )
        path = self.directory / delta_name
        delta = RevocationDelta.open(path, signer)
        if _name(signer, delta.generation, delta.header_bytes(), "frd") != delta_name:
            raise TableRejected(
                f"table store {self.directory}: {delta_name} is not what its name says"
            )
        return RevocationView.over(base, delta, path)

    def prune(self, keep: str, signer: PublicKeyFile, keep_delta: str | None = None) -> int:
        """Remove this signer's copies older than what is in force (the table ``keep``, or
        the view of the delta ``keep_delta`` over the base ``keep``), and copies left
        half-made by a crash. A gate still mapping one keeps its mapping."""
        kept = _NAME.match(keep)
        family = kept.group(1) if kept is not None else None
        in_force = _generation_of(keep_delta or keep)
        removed = 0
        for entry in os.scandir(self.directory):
            match = _NAME.match(entry.name) or _DELTA_NAME.match(entry.name)
            old = (
                match is not None
                and in_force is not None
                and match.group(1) == family
                and int(match.group(2)) < in_force
                and entry.name != keep
            )
            if not old and entry.name.startswith(".copy-"):
                with contextlib.suppress(OSError):
                    old = time.time() - entry.stat().st_mtime > _LEFTOVER_S
            if old:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
                    _log.debug("table store %s: removed %s", self.directory, entry.name)
        return removed

    def _verified(self, path: Path, signer: PublicKeyFile, name: str) -> RevocationTable | None:
        """The copy at ``path``, verified and holding what its name says; else None."""
        try:
            table = RevocationTable.open(path, signer)
        except TableRejected as exc:
            if path.exists():
                _log.debug("table store copy %s not used: %s", name, exc)
            return None  # missing or damaged: made again by the caller, never trusted
        if _name(signer, table.generation, table.header_bytes()) != name:
            _log.debug("table store copy %s not used: its header is not what its name says", name)
            return None
        return table

    def _holds(self, target: Path, data: bytes) -> bool:
        """Whether the store's file ``target`` holds exactly ``data`` (a delta is small)."""
        try:
            fd = open_regular(target)
        except TableRejected:
            return False
        try:
            if os.fstat(fd).st_size != len(data):
                return False
            return os.pread(fd, len(data) + 1, 0) == data
        finally:
            os.close(fd)

    def _store_bytes(self, target: Path, data: bytes) -> None:
        """Put ``data`` in the store as ``target``: read-only, durable, never half there."""
        tmp = self.directory / f".copy-{os.getpid()}-{threading.get_ident()}-{target.name}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view) :]
                os.fsync(out)
                os.fchmod(out, 0o444)
            finally:
                os.close(out)
            # Replaces a damaged copy of that name; a gate that read it has its own bytes.
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        fsync_directory(self.directory)
        _log.debug("delta copied into the table store as %s (%d bytes)", target.name, len(data))

    def _copy(
        self, fd: int, source: Path, name: str, size: int, signer: PublicKeyFile
    ) -> RevocationTable:
        tmp = self.directory / f".copy-{os.getpid()}-{threading.get_ident()}-{name}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                offset = 0
                while offset < size:
                    n = _copy_range(fd, out, min(_COPY_CHUNK, size - offset), offset)
                    if n == 0:
                        raise TableChanged(f"{source}: truncated while it was being copied")
                    offset += n
                os.fsync(out)
                os.fchmod(out, 0o444)  # a verified copy is never written again
            finally:
                os.close(out)
            # Verified, and checked against its name, before it takes that name: a file
            # rewritten in place under the copy must not pass for the table it claimed.
            try:
                table = RevocationTable.open(tmp, signer)
            except TableRejected as exc:
                raise TableRejected(str(exc).replace(str(tmp), str(source))) from None
            if _name(signer, table.generation, table.header_bytes()) != name:
                raise TableChanged(f"{source}: rewritten while it was being copied")
            target = self.directory / name
            try:
                os.link(tmp, target)
            except FileExistsError:
                # Another gate made it first: share its copy (one in the page cache), or
                # replace it if it is damaged (a gate mapping it keeps its mapping).
                theirs = self._verified(target, signer, name)
                if theirs is not None:
                    table = theirs
                    _log.debug("%s: another gate copied it first; sharing %s", source, name)
                else:
                    os.replace(tmp, target)
                    _log.debug("%s: replaced the damaged copy %s", source, name)
            else:
                _log.debug("%s: copied into the table store as %s (%d bytes)", source, name, size)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        table.path = target
        fsync_directory(self.directory)
        return table


def _copy_range(src: int, dst: int, count: int, offset: int) -> int:
    """Copy up to ``count`` bytes at ``offset``; in the kernel where the file systems allow."""
    try:
        return os.copy_file_range(src, dst, count, offset, offset)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    data = os.pread(src, min(count, 8 << 20), offset)
    written = 0
    while written < len(data):
        written += os.pwrite(dst, data[written:], offset + written)
    return len(data)
