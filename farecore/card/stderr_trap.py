"""A C library's own trace lines kept off the process's stderr, and nothing else lost.

The SM2 backend (GmSSL, ``farecore.card.sm2``) writes a trace line to file descriptor 2
for every signature that fails to verify: on a gate, every clone or forgery would print
C noise into the operator's log. Python cannot catch a C library's writes, so the call
runs with fd 2 routed into a private in-memory file, and what was written meanwhile is
passed on to the real fd 2 without the lines that match the library's trace pattern.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["StderrTrap"]


class StderrTrap:
    """Runs a backend call with file descriptor 2 routed into a private temporary file,
    then passes on to the real fd 2 everything written meanwhile except the backend's
    own C trace lines (GmSSL's ``error_print`` writes ``FILE.c:LINE:FUNC():`` for every
    signature that fails to verify).

    Why fd 2 and not a check before the call: the range, t = 0 and curve checks do run
    first, so the backend never sees those; but a well-formed signature that is simply
    wrong (a clone, a forgery) can only be told by the verification itself, which traces.
    Nothing is lost: a line another thread writes in that window is forwarded, not
    dropped. The lock keeps two redirections from nesting; gmssl-pyx holds the GIL for
    the whole call anyway, so it costs no parallelism.
    """

    def __init__(self, trace: re.Pattern[bytes]) -> None:
        self._trace = trace
        self._lock = threading.Lock()
        self._sink: int | None = None
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # A child shares the parent's sink (and its offset): it opens its own.
        self._lock = threading.Lock()
        if self._sink is not None:
            os.close(self._sink)
            self._sink = None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            try:
                os.fstat(2)
            except OSError:  # no fd 2 at all: nothing to protect (and no sink may take 2)
                return fn(*args)
            if self._sink is None:
                self._sink = _open_sink()
            saved = os.dup(2)
            try:
                os.dup2(self._sink, 2)
                return fn(*args)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                self._forward()

    def _forward(self) -> None:
        assert self._sink is not None
        size = os.lseek(self._sink, 0, os.SEEK_CUR)
        if size == 0:
            return
        os.lseek(self._sink, 0, os.SEEK_SET)
        data = os.read(self._sink, size)
        os.ftruncate(self._sink, 0)
        os.lseek(self._sink, 0, os.SEEK_SET)
        kept = b"".join(
            line for line in data.splitlines(keepends=True) if not self._trace.match(line)
        )
        if kept:
            try:
                os.write(2, kept)
            except OSError:
                pass


def _open_sink() -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("farecore-sm2-stderr", os.MFD_CLOEXEC)
    else:
        import tempfile

        fd, name = tempfile.mkstemp(prefix="farecore-sm2-stderr-")
        try:
            os.unlink(name)
        except OSError:
            pass  # a system that cannot unlink an open file keeps it until exit
    if fd > 2:
        return fd
    # A standard descriptor was free: the sink must never be one of them.
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return high
