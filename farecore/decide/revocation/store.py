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
from farecore.decide.revocation.filecheck import open_regular, signed_header
from farecore.decide.revocation.format import HEADER_SIZE
from farecore.decide.revocation.table import RevocationTable, TableChanged
from farecore.errors import TableRejected

__all__ = ["TableStore"]

_log = logging.getLogger(__name__)

_NAME = re.compile(r"^k([0-9a-f]{12})-g(\d{20})-([0-9a-f]{32})\.frt$")
_COPY_CHUNK = 64 << 20
_LEFTOVER_S = 600  # a half-made copy this old belongs to a process that died making it


def _family(signer: PublicKeyFile) -> str:
    """The signer's mark in a copy's name: gates that trust other signers share a store
    without ever taking, or removing, each other's tables."""
    return hashlib.sha256(bytes([int(signer.algorithm)]) + signer.public_key).hexdigest()[:12]


def _name(signer: PublicKeyFile, generation: int, header_bytes: bytes) -> str:
    digest = hashlib.sha256(header_bytes).hexdigest()[:32]
    return f"k{_family(signer)}-g{generation:020d}-{digest}.frt"


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

    def prune(self, keep: str, signer: PublicKeyFile) -> int:
        """Remove this signer's copies older than ``keep`` (the one in force), and copies
        left half-made by a crash. A gate still mapping one keeps its mapping."""
        kept = _NAME.match(keep)
        removed = 0
        for entry in os.scandir(self.directory):
            match = _NAME.match(entry.name)
            old = (
                match is not None
                and kept is not None
                and match.group(1) == kept.group(1)
                and int(match.group(2)) < int(kept.group(2))
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
