"""PC/SC readers through pcscd, with pyscard: ``pcsc:`` and ``pcsc:NAME``.

| capability        | support                                                          |
|-------------------|------------------------------------------------------------------|
| reader selection  | "" = first reader; exact name; glob/regex = every match watched  |
| card presence     | ``SCardGetStatusChange`` (pcscd polls; vpcd ~400 ms)             |
| transmit          | short APDUs, T=0/T=1; 61xx and 6Cxx completed once (complete_t0) |
| timeouts          | ``transmit_timeout`` on transmit and connect (one worker thread) |
| removal detection | state EMPTY/MUTE, or pcscd's event counter moved (a new card)    |
| errors            | ReaderIOError (pcscd/reader trouble), CardIOError (the card)     |
| recovery          | by itself, on the next call: see below                           |

Recovery, with no restart of the caller (every case in docs/readers-pcsc.md):
- card removed mid-transaction (empty response, ``0x80100016``): CardIOError, the handle
  is dropped, the next ``wait_for_card`` connects afresh;
- stale handle (``0x80100069`` removed / ``0x80100068`` reset) on a channel's first
  APDU: ``SCardReconnect`` and send again; later in a transaction it is a CardIOError;
- reader gone: ``wait_for_card`` keeps looking for a matching reader until it is back;
- pcscd stopped or restarted (``0x8010001D``/``0x8010001E``): the context is dropped and
  re-established on the next call, with exponential backoff between attempts.

This module must never import ``sim`` and never start a thread that outlives
:meth:`PcscReader.close` (the one exception: a call pcscd never answers is abandoned,
as a daemon thread, so the gate can go on). Only ReaderIOError and CardIOError leave it.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

# pyscard ships neither inline types nor stubs.
from smartcard import scard  # type: ignore[import-untyped]

from farecore.card.apdu import complete_t0
from farecore.errors import CardIOError, ConfigError, ReaderIOError
from readers.pcsc_calls import (
    CONTEXT_LOST,
    MAX_STUCK,
    PROTOCOLS,
    READER_LOST,
    SHARE,
    STALE_HANDLE,
    SUCCESS,
    CallThread,
    code_of,
    describe,
)
from readers.pcsc_slots import NOW as _NOW
from readers.pcsc_slots import Retry as _Retry
from readers.pcsc_slots import SlotWatch

__all__ = ["PcscChannel", "PcscReader", "PcscReaderFactory"]

log = logging.getLogger(__name__)


class PcscChannel:
    """The channel ``wait_for_card`` returned: valid until its card leaves or fails."""

    __slots__ = ("_generation", "_reader", "_used")

    def __init__(self, reader: PcscReader, generation: int) -> None:
        self._reader = reader
        self._generation = generation
        self._used = False

    def transmit(self, apdu: bytes) -> bytes:
        """Send a C-APDU and return data ‖ SW; CardIOError or ReaderIOError on failure."""
        response = self._reader._transmit(self, bytes(apdu))
        self._used = True
        return response


class PcscReader(SlotWatch):
    """One PC/SC reader slot. Not thread-safe, except :meth:`close` from another thread."""

    def __init__(
        self,
        target: str = "",
        *,
        transmit_timeout: float | None = 2.0,
        share: str = "shared",
        backoff_initial: float = 0.05,
        backoff_max: float = 1.0,
        poll_interval: float = 0.25,
    ) -> None:
        if share not in SHARE:
            raise ConfigError(f"share must be 'shared' or 'exclusive', not {share!r}")
        if transmit_timeout is not None and transmit_timeout <= 0:
            raise ConfigError("transmit_timeout must be positive (or None for no timeout)")
        if not 0 < backoff_initial <= backoff_max:
            raise ConfigError("need 0 < backoff_initial <= backoff_max")
        self.target = target
        self.name = target or "pcsc"
        self.transmit_timeout = transmit_timeout
        self._share = SHARE[share]
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._poll = poll_interval
        try:
            self._regex: re.Pattern[str] | None = re.compile(target) if target else None
        except re.error:
            self._regex = None
        self._open = False
        self._ctx: int | None = None
        self._reader: str | None = None  # the slot of the connected card
        self._slots: list[str] | None = None  # the slots we watch
        self._handle: int | None = None
        self._protocol = 0
        self._events = -1  # pcscd's card event counter when we connected
        self._generation = 0
        self._backoff = backoff_initial
        self._retry_at = 0.0
        self._worker: CallThread | None = None
        self._stuck: list[threading.Thread] = []  # workers abandoned inside pcscd calls
        self._lock = threading.Lock()  # only guards close() against a concurrent wait

    # -- Reader ------------------------------------------------------------------------

    def open(self) -> None:
        """Mark the reader usable and try to reach pcscd (failure is retried later)."""
        self._open = True
        try:
            self._context()
        except _Retry as exc:
            log.warning("pcsc: %s; will retry", exc)

    def close(self) -> None:
        """Release the card, the context and the worker thread. Idempotent."""
        self._open = False
        ctx = self._ctx
        if ctx is not None:
            # Wake a wait_for_card/wait_for_removal blocked in another thread.
            scard.SCardCancel(ctx)
        with self._lock:
            self._drop_context(release=True)
            if self._worker is not None:
                self._worker.stop()
                self._worker = None

    def __enter__(self) -> PcscReader:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_for_card(self, timeout: float) -> PcscChannel | None:
        """A channel to the card in the field, or None after ``timeout`` seconds.

        Raises ReaderIOError if pcscd or the reader stayed unavailable the whole time.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            while True:
                self._check_open()
                trouble: _Retry | None = None
                try:
                    channel = self._try_card(deadline)
                    if channel is not None:
                        return channel
                except _Retry as exc:
                    trouble = exc
                except (ReaderIOError, CardIOError):
                    raise
                except Exception as exc:  # pyscard misbehaving: start over, never leak it
                    self._drop_context(release=False)
                    trouble = _Retry(f"unexpected {type(exc).__name__}: {exc}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if trouble is not None:
                        raise ReaderIOError(f"reader {self.name!r}: {trouble}")
                    return None
                if trouble is not None:
                    time.sleep(min(remaining, max(self._retry_at - time.monotonic(), self._poll)))

    def wait_for_removal(self, timeout: float) -> bool:
        """True once the card we connected to has left (or pcscd/the reader went away)."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            self._check_open()
            ctx, reader = self._ctx, self._reader
            if ctx is None or reader is None:
                return True
            while True:
                try:
                    state = self._state(ctx, reader, _NOW)
                    if self._card_gone(state) and not self._still_ours(state):
                        self._disconnect()
                        return True
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._state(ctx, reader, remaining, known=state)
                except _Retry:
                    return True
                except Exception:  # pyscard misbehaving: whatever was there is lost to us
                    self._drop_context(release=False)
                    return True

    # -- finding and connecting --------------------------------------------------------

    def _check_open(self) -> None:
        if not self._open:
            raise ReaderIOError(f"reader {self.name!r} is not open")

    def _context(self) -> int:
        if self._ctx is not None:
            return self._ctx
        now = time.monotonic()
        if now < self._retry_at:
            raise _Retry("pcscd unavailable; next attempt in %.2f s" % (self._retry_at - now))
        hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if code_of(hr) != SUCCESS:
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, self._backoff_max)
            raise _Retry(f"cannot reach pcscd: {describe(hr)}")
        if self._backoff != self._backoff_initial:
            log.info("pcsc: context re-established")
        self._ctx = int(ctx)
        self._backoff = self._backoff_initial
        self._retry_at = 0.0
        return self._ctx

    def _drop_context(self, *, release: bool) -> None:
        self._disconnect()
        ctx, self._ctx, self._reader, self._slots = self._ctx, None, None, None
        self._events = -1  # a new daemon counts card events from scratch
        if ctx is not None and release:
            try:
                scard.SCardReleaseContext(ctx)
            except Exception:  # the daemon may already be gone
                pass

    def _fail(self, hresult: int, what: str) -> _Retry:
        """Forget what ``hresult`` says is dead; the error to retry with."""
        code = code_of(hresult)
        if code in CONTEXT_LOST:
            self._drop_context(release=True)
        elif code in READER_LOST:
            self._forget_reader()
        return _Retry(f"{what}: {describe(hresult)}")

    def _try_card(self, deadline: float) -> PcscChannel | None:
        ctx = self._context()
        slots = self._find_slots(ctx)
        states = self._states(ctx, slots, _NOW)

        def present(name: str) -> bool:
            state = states[name]
            return bool(state & scard.SCARD_STATE_PRESENT and not state & scard.SCARD_STATE_MUTE)

        current = self._reader
        if (
            self._handle is not None
            and current in states
            and present(current)
            and (states[current] >> 16) == self._events
        ):
            return PcscChannel(self, self._generation)  # same card, same handle: fast path
        self._disconnect()
        for reader in slots:
            if not present(reader):
                continue
            try:
                hr, handle, protocol = self._blocking(
                    functools.partial(scard.SCardConnect, ctx, reader, self._share, PROTOCOLS)
                )
            except TimeoutError:
                raise _Retry(f"pcscd did not answer a connect to {reader!r}") from None
            code = code_of(hr)
            if code in CONTEXT_LOST or code in READER_LOST:
                raise self._fail(hr, "cannot connect")
            if code != SUCCESS:
                continue  # the card left (or is mute) between the state and the connect
            self._reader = self.name = reader
            self._handle, self._protocol, self._events = handle, protocol, states[reader] >> 16
            self._generation += 1
            return PcscChannel(self, self._generation)
        remaining = deadline - time.monotonic()
        if remaining > 0:
            self._states(ctx, slots, min(remaining, 5.0), known=states)
        return None

    def _disconnect(self) -> None:
        # ``_events`` survives: wait_for_removal still compares pcscd's counter with the
        # one of the card we last connected to, even after its handle is gone.
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
            except Exception:  # the handle may be dead already
                pass

    # -- transmit ----------------------------------------------------------------------

    def _transmit(self, channel: PcscChannel, apdu: bytes) -> bytes:
        try:
            return self._transmit_checked(channel, apdu)
        except (ReaderIOError, CardIOError):
            raise
        except Exception as exc:  # pyscard misbehaving: a card error, never a traceback
            self._disconnect()
            raise CardIOError(f"transmit failed: {type(exc).__name__}: {exc}") from None

    def _transmit_checked(self, channel: PcscChannel, apdu: bytes) -> bytes:
        if not self._open:
            raise ReaderIOError(f"reader {self.name!r} is closed")
        if channel._generation != self._generation or self._handle is None:
            raise CardIOError("the card of this channel is no longer connected")
        response = self._exchange(apdu, first=not channel._used)
        return complete_t0(apdu, response, lambda followup: self._exchange(followup, first=False))

    def _exchange(self, apdu: bytes, *, first: bool) -> bytes:
        handle = self._handle
        if handle is None:
            raise CardIOError("card is no longer connected")
        hr, response = self._raw_transmit(handle, apdu)
        code = code_of(hr)
        if code in STALE_HANDLE and first:
            # pcscd saw a removal/reset since we connected, and nothing of this
            # transaction went to the old card: reconnect and talk to the card now there.
            rhr, protocol = scard.SCardReconnect(
                handle, self._share, PROTOCOLS, scard.SCARD_LEAVE_CARD
            )
            if code_of(rhr) == SUCCESS:
                log.info("pcsc: stale handle on %s, reconnected", self.name)
                self._protocol = protocol
                self._refresh_events()
                hr, response = self._raw_transmit(handle, apdu)
                code = code_of(hr)
        if code == SUCCESS and len(response) >= 2:
            return bytes(response)
        if code in CONTEXT_LOST:
            self._drop_context(release=True)
            raise ReaderIOError(f"pcscd lost during transmit: {describe(hr)}")
        if code in READER_LOST:
            self._forget_reader()
            raise ReaderIOError(f"reader lost during transmit: {describe(hr)}")
        self._disconnect()
        if code == SUCCESS:
            raise CardIOError("card returned no valid response (removed mid-APDU?)")
        raise CardIOError(f"transmit failed: {describe(hr)}")

    def _raw_transmit(self, handle: int, apdu: bytes) -> tuple[int, list[int]]:
        protocol = self._protocol
        try:
            hr, response = self._blocking(lambda: scard.SCardTransmit(handle, protocol, list(apdu)))
        except TimeoutError:
            raise CardIOError(f"card did not answer within {self.transmit_timeout} s") from None
        return hr, response

    def _blocking(self, call: Callable[[], Any]) -> Any:
        """Run a PC/SC call that pcscd may never answer (a hung driver) under the timeout."""
        if self.transmit_timeout is None:
            return call()
        self._stuck = [t for t in self._stuck if t.is_alive()]
        if len(self._stuck) >= MAX_STUCK:
            # pcscd has not answered several abandoned calls: do not pile up more threads.
            raise TimeoutError
        if self._worker is None:
            self._worker = CallThread()
        try:
            return self._worker.call(call, self.transmit_timeout)
        except TimeoutError:
            # The stuck call holds the context's lock inside libpcsclite: abandon both
            # the thread and the context (never release it under the stuck call).
            self._stuck.append(self._worker.thread)
            self._worker.stop(join=0)
            self._worker = None
            self._handle = None
            self._drop_context(release=False)
            raise


def PcscReaderFactory(target: str, **options: Any) -> PcscReader:
    """Entry point for ``pcsc:`` (first reader) and ``pcsc:NAME`` (name, glob or regex)."""
    known = {"transmit_timeout", "share", "backoff_initial", "backoff_max", "poll_interval"}
    unknown = set(options) - known
    if unknown:
        raise ConfigError(f"unknown pcsc reader option(s): {', '.join(sorted(unknown))}")
    return PcscReader(target, **options)
