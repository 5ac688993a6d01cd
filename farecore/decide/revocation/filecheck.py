"""The checks a revocation table file passes before its body is trusted.

A regular file (never a FIFO or a device put at the path), a header whose signature
verifies against the trusted signer and whose sizes agree with the file, and a body
whose SHA-256 is the one the header signed. ``file_identity`` lets the opener see that
the file was not replaced or rewritten while it was read. The structural checks of the
body run on the mapped columns (``farecore.decide.revocation.table``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from farecore.card.keys import PublicKeyFile
from farecore.decide.revocation.format import (
    HEADER_SIZE,
    Header,
    Layout,
    layout_for,
    parse_header_unverified,
    slot_shift,
)
from farecore.errors import BadSignature, TableChanged, TableRejected

__all__ = ["check_body_hash", "file_identity", "open_regular", "signed_header"]

_CHUNK = 8 << 20


def open_regular(path: Path) -> int:
    """A read-only descriptor of the regular file at ``path``; TableRejected otherwise."""
    # O_NONBLOCK: a FIFO put at the path must not block the opening thread forever.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise TableRejected(f"{path}: cannot open: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TableRejected(f"{path}: not a regular file")
    return fd


def signed_header(p: Path, head: bytes, size: int, signer: PublicKeyFile) -> tuple[Header, Layout]:
    """The header of a table file of ``size`` bytes that starts with ``head``, once its
    signature verifies and its sizes agree with the file; TableRejected otherwise."""
    try:
        header, signature = parse_header_unverified(head)
    except TableRejected as exc:
        raise TableRejected(f"{p}: {exc}") from None
    if header.signer_key_id != signer.key_id:
        raise TableRejected(
            f"{p}: signed by key id {header.signer_key_id}, but the trusted signer "
            f"is key id {signer.key_id}"
        )
    if header.signer_algorithm != signer.algorithm:
        raise TableRejected(f"{p}: signer algorithm differs from the trusted key's")
    try:
        signer.key().verify(signature, header.signed_bytes())
    except BadSignature as exc:
        raise TableRejected(f"{p}: header signature does not verify ({exc})") from None
    layout = layout_for(header.count, header.index_bits, header.filter_bits)
    if header.body_size != layout.body_size:
        raise TableRejected(f"{p}: corrupt header: body size does not match the entry count")
    if size < layout.end:
        raise TableRejected(f"{p}: truncated: {size} bytes, the header says {layout.end}")
    if size > layout.end:
        raise TableRejected(f"{p}: {size - layout.end} unexpected bytes after the body")
    if header.shift != slot_shift(header.min_id, header.max_id, header.index_bits):
        raise TableRejected(f"{p}: corrupt header: index shift does not fit the id range")
    return header, layout


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells a file apart from its replacement or a rewrite of it."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def check_body_hash(p: Path, fd: int, header: Header) -> None:
    """TableRejected unless the body's SHA-256 is the one the signed header names;
    TableChanged if the file shrinks while it is read."""
    # pread, not the mapping: a file truncated under us gives a short read here,
    # where a mapped page would kill the process with SIGBUS.
    digest = hashlib.sha256()
    buf = bytearray(min(_CHUNK, max(header.body_size, 1)))
    view = memoryview(buf)
    offset, left = HEADER_SIZE, header.body_size
    while left:
        got = os.preadv(fd, [view[: min(left, len(buf))]], offset)
        if got == 0:
            raise TableChanged(f"{p}: truncated while it was being read")
        digest.update(view[:got])
        offset += got
        left -= got
    if digest.digest() != header.body_sha256:
        raise TableRejected(f"{p}: body SHA-256 does not match the signed header")
