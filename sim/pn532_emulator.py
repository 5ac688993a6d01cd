"""An emulated PN532 on a pseudo-terminal, holding virtual cards in its field.

It speaks the HSU frame protocol (via :mod:`readers.pn532_frames`) well enough for
farecore's own ``pn532:`` reader, libnfc's ``nfc-list`` and nfcpy: firmware version,
SAM configuration, parameters, registers, InListPassiveTarget (ISO 14443-4 type A, with
or without automatic RATS), InDataExchange with MI chaining of long answers,
InCommunicateThru carrying RATS and ISO-DEP blocks, deselect, release and power-down.
Other card types are answered "no target" so probing clients see exactly one card.

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
from collections.abc import Callable
from types import TracebackType
from typing import ClassVar, Protocol

from farecore.errors import CardIOError
from readers.pn532 import BAUD_RATES
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

__all__ = ["EmulatedCard", "Pn532Emulator"]

FIRMWARE = bytes.fromhex("32010607")  # IC = PN532, v1.6, supports ISO 14443 A/B
# TL T0 TA TB TC: FSCI 8 (256 bytes), 106 kbps only, FWI 7, CID supported.
ATS = bytes.fromhex("0578807002")
_CIU_FIFO_DATA = 0x6339
_STATUS_TIMEOUT = 0x01  # what the chip reports when the card no longer answers
_STATUS_NO_TARGET = 0x27  # command not acceptable: no target activated


class EmulatedCard(Protocol):
    def process_apdu(self, apdu: bytes) -> bytes: ...


def _simple(code: int, extra: bytes = b"") -> Callable[[Pn532Emulator, bytes], bytes]:
    """A command handler whose answer is always the same: ``code`` then ``extra``."""

    def handler(self: Pn532Emulator, p: bytes) -> bytes:
        return bytes([code]) + extra

    return handler


class Pn532Emulator:
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
        if not 1 <= max_data <= 262:
            raise ValueError("max_data must be 1..262")
        if line_baud is not None and line_baud <= 0:
            raise ValueError("line_baud must be positive")
        self.line_baud = line_baud
        self._initial_baud = line_baud
        self.link = link
        self.max_data = max_data
        self._lock = threading.RLock()
        self._card: EmulatedCard | None = None
        self._active = False  # the card is the listed target
        self._iso_dep = False  # RATS done through InCommunicateThru
        self._auto_rats = True
        self._registers: dict[int, int] = {_CIU_FIFO_DATA: 0x26}
        self._pending_in = b""  # host-chained command data
        self._pending_out = b""  # card answer not yet fetched (MI)
        self._thru_chain = b""
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

    # -- the field and the fault knobs -------------------------------------------

    def insert(self, card: EmulatedCard) -> None:
        """Put ``card`` in the field (replacing any other); it is found by the next poll."""
        with self._lock:
            self._card = card
            self._active = self._iso_dep = False

    def remove(self) -> None:
        with self._lock:
            self._card = None
            self._active = self._iso_dep = False
            self._pending_out = self._pending_in = b""

    @property
    def card(self) -> EmulatedCard | None:
        return self._card

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
        code = data[0]
        self.commands.append(code)
        with self._lock:
            handler = self._HANDLERS.get(code)
            reply = None if handler is None else handler(self, data[1:])
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

    # -- command handlers: params in, reply packet data (code + 1 first) out ------------

    def _firmware(self, p: bytes) -> bytes:
        return b"\x03" + FIRMWARE

    def _diagnose(self, p: bytes) -> bytes:
        if p[:1] == b"\x06":  # card presence test
            present = self._card is not None and self._active
            return b"\x01" + (b"\x00" if present else b"\x01")
        return b"\x01" + p  # communication line test: an exact echo

    def _set_parameters(self, p: bytes) -> bytes:
        if p:
            self._auto_rats = bool(p[0] & 0x10)
        return b"\x13"

    def _read_register(self, p: bytes) -> bytes:
        addrs = [p[i] << 8 | p[i + 1] for i in range(0, len(p) - 1, 2)]
        return b"\x07" + bytes(self._registers.get(a, 0) for a in addrs)

    def _write_register(self, p: bytes) -> bytes:
        for i in range(0, len(p) - 2, 3):
            addr = p[i] << 8 | p[i + 1]
            if addr != _CIU_FIFO_DATA:  # keep the "no SENS_RES" marker nfcpy looks for
                self._registers[addr] = p[i + 2]
        return b"\x09"

    def _in_list(self, p: bytes) -> bytes:
        card = self._card
        if len(p) < 2 or p[1] != 0x00 or card is None:
            return b"\x4b\x00"
        power_on: Callable[[], None] | None = getattr(card, "power_on", None)
        if power_on is not None:
            power_on()
        uid = bytes(getattr(card, "uid", b"") or b"\x08\x01\x02\x03")
        if len(uid) not in (4, 7, 10):
            uid = uid[-4:].rjust(4, b"\x08")
        sens_res = b"\x00\x04" if len(uid) == 4 else b"\x00\x44"
        self._active = True
        self._iso_dep = self._auto_rats
        self._pending_in = self._pending_out = b""
        body = b"\x4b\x01\x01" + sens_res + b"\x20" + bytes([len(uid)]) + uid
        return body + (ATS if self._auto_rats else b"")

    def _card_apdu(self, apdu: bytes) -> bytes | None:
        """The card's answer, or None when it has left the field."""
        card = self._card
        if card is None:
            return None
        try:
            return card.process_apdu(apdu)
        except CardIOError:
            self._card = None
            self._active = self._iso_dep = False
            return None

    def _data_exchange(self, p: bytes) -> bytes:
        if not p:
            return b"\x41\x27"
        tg, data = p[0], p[1:]
        if self._card is None:
            return bytes([0x41, _STATUS_TIMEOUT])
        if not self._active:
            return bytes([0x41, _STATUS_NO_TARGET])
        if tg & 0x40:  # host chaining: more command data follows
            self._pending_in += data
            return b"\x41\x00"
        if not data and self._pending_out:
            answer = self._pending_out
        else:
            full = self._pending_in + data
            self._pending_in = b""
            got = self._card_apdu(full)
            if got is None:
                return bytes([0x41, _STATUS_TIMEOUT])
            answer = got
        chunk, self._pending_out = answer[: self.max_data], answer[self.max_data :]
        status = 0x40 if self._pending_out else 0x00
        return bytes([0x41, status]) + chunk

    def _communicate_thru(self, p: bytes) -> bytes:
        no_answer = bytes([0x43, _STATUS_TIMEOUT])
        if not p or self._card is None or not self._active:
            return no_answer
        if p[0] == 0xE0 and len(p) == 2 and not self._iso_dep:  # RATS
            self._iso_dep = True
            return b"\x43\x00" + ATS
        if p[:2] == b"\x50\x00":  # HLTA: the card goes quiet
            self._active = self._iso_dep = False
            return no_answer
        if not self._iso_dep:
            return no_answer
        pcb = p[0]
        head = 1 + (1 if pcb & 0x08 else 0) + (1 if pcb & 0x04 else 0)
        cid = p[1:2] if pcb & 0x08 else b""
        if pcb & 0xE2 == 0x02:  # I-block
            if pcb & 0x10:  # chained: acknowledge with an R(ACK)
                self._thru_chain += p[head:]
                return b"\x43\x00" + bytes([0xA2 | (pcb & 0x09)]) + cid
            apdu = self._thru_chain + p[head:]
            self._thru_chain = b""
            answer = self._card_apdu(apdu)
            if answer is None:
                return no_answer
            return b"\x43\x00" + bytes([0x02 | (pcb & 0x09)]) + cid + answer
        if pcb & 0xF7 == 0xC2:  # S(DESELECT)
            self._iso_dep = False
            self._active = False
            return b"\x43\x00" + p[:head]
        return no_answer

    def _set_baud_rate(self, p: bytes) -> bytes:
        # A pty has no rate; only the modelled line speed changes.
        if self.line_baud is not None and p and p[0] < len(BAUD_RATES):
            self.line_baud = BAUD_RATES[p[0]]
        return b"\x11"

    def _release(self, p: bytes) -> bytes:
        self._active = self._iso_dep = False
        return b"\x53\x00"

    def _deselect(self, p: bytes) -> bytes:
        self._iso_dep = False
        return b"\x45\x00"

    _HANDLERS: ClassVar[dict[int, Callable[[Pn532Emulator, bytes], bytes]]] = {
        0x00: _diagnose,
        0x02: _firmware,
        0x06: _read_register,
        0x08: _write_register,
        0x10: _set_baud_rate,
        0x12: _set_parameters,
        0x14: _simple(0x15),
        0x16: _simple(0x17, b"\x00"),
        0x32: _simple(0x33),
        0x40: _data_exchange,
        0x42: _communicate_thru,
        0x44: _deselect,
        0x4A: _in_list,
        0x4E: _simple(0x4F, b"\x00"),
        0x52: _release,
    }
