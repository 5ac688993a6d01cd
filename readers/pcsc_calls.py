"""PC/SC call plumbing for ``readers.pcsc``: result codes and a thread for blocking calls.

pyscard's calls block inside pcscd, and pcscd may never answer (a stuck driver, a card
that does not reply). ``CallThread`` runs them on one thread of its own so the caller
can give up after a timeout. The result-code sets say what a failure means for the
reader: the context is gone, the reader is gone, or the handle is stale.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

# pyscard ships neither inline types nor stubs.
from smartcard import scard  # type: ignore[import-untyped]

__all__ = [
    "CONTEXT_LOST",
    "MAX_STUCK",
    "PROTOCOLS",
    "READER_LOST",
    "SHARE",
    "STALE_HANDLE",
    "SUCCESS",
    "TIMEOUT",
    "CallThread",
    "code_of",
    "describe",
]

SUCCESS = 0
TIMEOUT = 0x8010000A
# The daemon or our context is gone: drop the context and establish a new one.
CONTEXT_LOST = frozenset(
    {
        0x80100001,  # SCARD_F_INTERNAL_ERROR
        0x80100003,  # SCARD_E_INVALID_HANDLE
        0x8010001D,  # SCARD_E_NO_SERVICE
        0x8010001E,  # SCARD_E_SERVICE_STOPPED
    }
)
# The reader went away (unplugged): find it again.
READER_LOST = frozenset(
    {
        0x80100009,  # SCARD_E_UNKNOWN_READER
        0x80100017,  # SCARD_E_READER_UNAVAILABLE
        0x8010002E,  # SCARD_E_NO_READERS_AVAILABLE
    }
)
# The handle points at a card that pcscd saw leave, or that someone reset.
STALE_HANDLE = frozenset({0x80100069, 0x80100068})  # SCARD_W_REMOVED_CARD, SCARD_W_RESET_CARD
PROTOCOLS = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
SHARE = {"shared": scard.SCARD_SHARE_SHARED, "exclusive": scard.SCARD_SHARE_EXCLUSIVE}
MAX_STUCK = 4  # abandoned calls still inside pcscd before we stop trying


def code_of(value: int) -> int:
    """A PC/SC result as the unsigned 32-bit code the specification lists."""
    return value & 0xFFFFFFFF


def describe(hresult: int) -> str:
    """pcscd's words for a result, with its code."""
    try:
        text = str(scard.SCardGetErrorMessage(hresult)).strip().rstrip(".")
    except Exception:  # a message is a nicety; it must never raise
        text = "PC/SC error"
    return f"{text} (0x{code_of(hresult):08X})"


class CallThread:
    """One thread that runs blocking PC/SC calls so the caller can stop waiting."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], threading.Event, list[Any]] | None]
        self._jobs = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="pcsc-transmit", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, done, box = job
            try:
                box.append((True, call()))
            except BaseException as exc:  # handed back to the caller, who re-raises it
                box.append((False, exc))
            done.set()

    def call(self, call: Callable[[], Any], timeout: float) -> Any:
        """Run ``call``; raise TimeoutError if it takes longer than ``timeout``."""
        done = threading.Event()
        box: list[Any] = []
        self._jobs.put((call, done, box))
        if not done.wait(timeout):
            raise TimeoutError
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def stop(self, join: float = 0.5) -> None:
        self._jobs.put(None)
        if join and self.thread is not threading.current_thread():
            self.thread.join(join)
