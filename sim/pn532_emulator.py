"""An emulated PN532 on a pseudo-terminal, holding virtual cards in its field.

It speaks the HSU frame protocol (via :mod:`readers.pn532_frames`) well enough for
farecore's own ``pn532:`` reader, libnfc's ``nfc-list`` and nfcpy; the commands
themselves are answered by the chip it is (``sim.pn532_chip``).

Fault knobs for tests: garbage bytes on the line, a corrupted checksum, a dropped ACK,
a command swallowed whole, a pty closed and reopened under a stable symlink, and cards
inserted or pulled at any moment (a card whose ``process_apdu`` raises CardIOError has
left the field).

This module must never be imported by ``farecore`` or ``readers``; it reads no real
clock except to pace its own I/O thread.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import tty
from types import TracebackType

from readers.pn532_frames import (
    ACK,
    ERROR_FRAME,
    TFI_FROM_CHIP,
    TFI_TO_CHIP,
    Frame,
    FrameDecoder,
    Nack,
    NeedData,
    encode_frame,
)
from sim.pn532_chip import EmulatedCard, Pn532Chip

__all__ = ["EmulatedCard", "Pn532Emulator"]


class Pn532Emulator(Pn532Chip):
    """A PN532 behind a pty. Use as a context manager; ``path`` is what clients open."""

    def __init__(
        self, link: str | None = None, *, max_data: int = 262, line_baud: int | None = None
    ) -> None:
        """``link``: optional symlink kept pointing at the current pty (survives reopen).

        ``max_data``: most card-answer bytes per InDataExchange reply; smaller values
        force MI chaining. ``line_baud``: if set, each reply is held back for the time
        the command and the reply would take on a real UART at that rate (10 bits a
        byte), so benchmarks can model a 115200-baud line; a pty itself is near-instant.
        """
        super().__init__(max_data=max_data, line_baud=line_baud)
        self._initial_baud = line_baud
        self.link = link
        self._last_reply = b""
        # fault knobs, each consumed by the next reply
        self._garbage = b""
        self._corrupt_next = False
        self._drop_next_ack = False
        self._swallow_next = False
        self._delay_next = 0.0
        self.commands: list[int] = []  # command codes seen, for tests
        self._decoder = FrameDecoder()
        self._master = -1
        self._slave = -1
        self.slave_name = ""
        self._wake_r, self._wake_w = os.pipe()
        self._reopen_done = threading.Event()
        self._reopen_wanted = False
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    @property
    def path(self) -> str:
        return self.link or self.slave_name

    def start(self) -> Pn532Emulator:
        self._open_pty()
        self._thread = threading.Thread(target=self._run, name="pn532-emulator", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
        self._close_pty()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)

    def __enter__(self) -> Pn532Emulator:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        # Raw at once: a cooked line discipline eats 0x03 and echoes bytes back.
        tty.setraw(slave)
        self._master, self._slave = master, slave
        self.slave_name = os.ttyname(slave)
        if self.link:
            tmp = f"{self.link}.new"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(self.slave_name, tmp)
            os.replace(tmp, self.link)

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def reopen(self, timeout: float = 5.0) -> None:
        """Close the pty (clients see EIO) and open a fresh one behind the same link."""
        self._reopen_done.clear()
        self._reopen_wanted = True
        os.write(self._wake_w, b"x")
        if not self._reopen_done.wait(timeout):
            raise TimeoutError("emulator did not reopen its pty")

    # -- the fault knobs ------------------------------------------------------------

    def inject_garbage(self, data: bytes) -> None:
        """Send ``data`` on the line before the next reply."""
        with self._lock:
            self._garbage += data

    def corrupt_next_checksum(self) -> None:
        """Flip the data checksum of the next reply frame (a NACK gets a clean copy)."""
        self._corrupt_next = True

    def drop_next_ack(self) -> None:
        """Omit the ACK before the next reply (the reply itself is still sent)."""
        self._drop_next_ack = True

    def swallow_next_command(self) -> None:
        """Ignore the next command entirely: no ACK, no reply (the host must resend)."""
        self._swallow_next = True

    def delay_next_reply(self, seconds: float) -> None:
        """Hold the ACK and reply to the next command back (a stalled chip or line)."""
        self._delay_next = seconds

    # -- the I/O thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop:
            if self._reopen_wanted:
                self._reopen_wanted = False
                self._close_pty()
                self._decoder.reset()
                with self._lock:
                    self._active = self._iso_dep = False
                self.line_baud = self._initial_baud  # a fresh chip starts at 115200
                self._open_pty()
                self._reopen_done.set()
            try:
                # A half frame that stops arriving is line noise: drop it after 50 ms,
                # as the chip's own receive timeout would, so it cannot deafen us.
                wait = 0.05 if self._decoder.pending else 0.5
                ready, _, _ = select.select([self._master, self._wake_r], [], [], wait)
            except (OSError, ValueError):
                continue
            if not ready:
                self._decoder.reset()
                continue
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            if self._master not in ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                continue
            self._decoder.receive_data(data)
            while not isinstance(event := self._decoder.next_event(), NeedData):
                if isinstance(event, Nack):
                    self._write(self._last_reply)
                elif isinstance(event, Frame) and event.tfi == TFI_TO_CHIP and event.data:
                    self._command(event.data, len(data))
                # A host ACK aborts a command: nothing runs long enough here to abort.
                # Bad frames are dropped silently, as libnfc expects no NACK.

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._master, data)

    def _command(self, data: bytes, wire_in: int) -> None:
        if self._swallow_next:
            self._swallow_next = False
            return
        self.commands.append(data[0])
        reply = self.answer(data)
        frame = ERROR_FRAME if reply is None else encode_frame(TFI_FROM_CHIP, reply)
        self._last_reply = frame
        if self._corrupt_next and reply is not None:
            self._corrupt_next = False
            frame = frame[:-2] + bytes([frame[-2] ^ 0x5A]) + frame[-1:]
        if self._delay_next:
            time.sleep(self._delay_next)
            self._delay_next = 0.0
        ack = b"" if self._drop_next_ack else ACK
        garbage, self._garbage = self._garbage, b""
        self._drop_next_ack = False
        if self.line_baud:
            # The chip ACKs as soon as the command is in, and answers once the reply
            # has crossed the line: model both transfer times.
            time.sleep((wire_in + len(ack)) * 10 / self.line_baud)
            self._write(garbage + ack)
            time.sleep(len(frame) * 10 / self.line_baud)
            self._write(frame)
        else:
            self._write(garbage + ack + frame)
