"""A serial PN532 reader (HSU/UART, e.g. a USB-serial breakout): ``pn532:/dev/ttyUSB0``.

| capability        | support                                                          |
|-------------------|------------------------------------------------------------------|
| transport         | pyserial, 115200 baud 8N1 (any path pyserial opens, ptys too)    |
| line speed        | starts at 115200; ``?speed=921600`` → SetSerialBaudRate          |
| cards             | ISO 14443-4 type A at 106 kbps, activated by the chip (auto RATS) |
| APDUs             | InDataExchange; MI chaining both ways                            |
| card presence     | polling InListPassiveTarget (``poll_interval`` s)                |
| removal detection | Diagnose card-presence test, or a failed exchange                |
| line faults       | garbage skipped, bad checksum → NACK, missing ACK → resend       |
| port loss         | ReaderIOError, then reopened on the next call                    |
| errors            | ReaderIOError (reader/line), CardIOError (card gone or mute)     |

The frame codec is :mod:`readers.pn532_frames` (sans-I/O); this module owns the serial
port and the command/ACK/response exchange around it. It must never import ``sim`` and
never raise anything but ReaderIOError or CardIOError out of the Reader methods.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import serial

from farecore.card.apdu import complete_t0
from farecore.errors import CardIOError, ReaderIOError
from readers.pn532_frames import (
    ACK,
    NACK,
    TFI_FROM_CHIP,
    TFI_TO_CHIP,
    Ack,
    BadFrame,
    ErrorFrame,
    Frame,
    FrameDecoder,
    Nack,
    NeedData,
    encode_frame,
)

__all__ = ["BAUD_RATES", "Pn532Channel", "Pn532Reader", "Pn532ReaderFactory"]

log = logging.getLogger(__name__)

# SetSerialBaudRate codes 0..8, in the chip's order.
BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1288000)

WAKE_UP = b"\x55\x55" + bytes(14)
_MAX_CHUNK = 252  # command data per InDataExchange frame before MI chaining
_MAX_ANSWER = 258  # a short R-APDU: at most 256 data bytes and the status word
_CARD_GONE = {
    0x01: "timeout",
    0x02: "CRC error",
    0x0B: "protocol error",
    0x29: "released",
    0x2B: "card gone",
    0x27: "no target",
}


class _Timeout(Exception):
    """Internal: nothing (valid) arrived in time."""


class _Rejected(Exception):
    """Internal: the chip answered with an error frame (it could not parse our frame)."""


class Pn532Channel:
    """The channel to the card listed by one InListPassiveTarget; dead once it fails."""

    __slots__ = ("_generation", "_reader", "_tg", "uid")

    def __init__(self, reader: Pn532Reader, tg: int, uid: bytes, generation: int) -> None:
        self._reader = reader
        self._tg = tg
        self.uid = uid
        self._generation = generation

    def transmit(self, apdu: bytes) -> bytes:
        if self._generation != self._reader._generation:
            raise CardIOError("card is no longer the reader's target")
        reader, tg = self._reader, self._tg
        response = reader._exchange(tg, apdu)
        return complete_t0(apdu, response, lambda followup: reader._exchange(tg, followup))


class Pn532Reader:
    """A PN532 on a serial line. Not thread-safe: one gate loop drives it."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        speed: int | None = None,
        ack_timeout: float = 0.1,
        response_timeout: float = 1.0,
        retries: int = 3,
        poll_interval: float = 0.02,
    ) -> None:
        if not port:
            raise ReaderIOError("pn532 reader needs a serial device path, e.g. pn532:/dev/ttyUSB0")
        self.name = f"pn532:{port}"
        self.port = port
        if speed is not None and speed not in BAUD_RATES:
            raise ReaderIOError(f"pn532 speed must be one of {BAUD_RATES}, not {speed}")
        self.baudrate = baudrate
        self.speed = speed
        self.ack_timeout = ack_timeout
        self.response_timeout = response_timeout
        self.retries = retries
        self.poll_interval = poll_interval
        self._serial: serial.Serial | None = None
        self._decoder = FrameDecoder()
        self._wanted_open = False
        self._generation = 0  # bumps on every new target and every reconnect
        self._card_present = False
        self.reconnects = 0
        self.resends = 0
        self.nacks_sent = 0
        self._stale = False

    # -- lifecycle --------------------------------------------------------------

    def open(self) -> None:
        self._wanted_open = True
        self._connect()

    def close(self) -> None:
        self._wanted_open = False
        self._disconnect()

    def __enter__(self) -> Pn532Reader:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> None:
        if self._serial is not None:
            return
        try:
            self._serial = serial.Serial(self.port, self.baudrate, timeout=0, write_timeout=1)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ReaderIOError(f"{self.name}: cannot open serial port: {exc}") from None
        self._decoder.reset()
        self._generation += 1
        self._card_present = False
        try:
            self._write(WAKE_UP)
            self._command(0x14, b"\x01\x00\x01")  # SAM normal mode, no timeout, use IRQ
            fw = self._command(0x02, b"")
            if len(fw) < 2 or fw[0] != 0x32:
                raise ReaderIOError(f"{self.name}: not a PN532 (firmware {fw.hex()})")
            if self.speed is not None and self.speed != self.baudrate:
                self._set_speed(self.speed)
            self._command(0x12, b"\x14")  # automatic RATS and ATR_RES
            self._command(0x32, b"\x05\x00\x01\x00")  # one activation try per poll
        except ReaderIOError:
            self._disconnect()
            raise

    def _set_speed(self, speed: int) -> None:
        # The chip answers at the old rate and switches after the host's ACK.
        self._command(0x10, bytes([BAUD_RATES.index(speed)]))
        self._write(ACK)
        port = self._port()
        try:
            port.flush()
            time.sleep(0.001)
            port.baudrate = speed
        except (serial.SerialException, OSError, ValueError) as exc:
            raise self._lost(exc) from None

    def _disconnect(self) -> None:
        port, self._serial = self._serial, None
        self._generation += 1
        self._card_present = False
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass

    def _port(self) -> serial.Serial:
        if self._serial is None:
            if not self._wanted_open:
                raise ReaderIOError(f"{self.name}: reader is not open")
            self._connect()
            self.reconnects += 1
            log.info("pn532: %s reopened", self.name)
        assert self._serial is not None
        return self._serial

    # -- line I/O -------------------------------------------------------------------

    def _lost(self, exc: BaseException) -> ReaderIOError:
        self._disconnect()
        return ReaderIOError(f"{self.name}: serial line failed: {exc}")

    def _write(self, data: bytes) -> None:
        port = self._port()
        try:
            port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise self._lost(exc) from None

    def _next_event(self, deadline: float) -> Ack | Nack | ErrorFrame | Frame | BadFrame:
        port = self._port()
        while True:
            event = self._decoder.next_event()
            if not isinstance(event, NeedData):
                return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout
            try:
                port.timeout = left
                chunk = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError, TypeError) as exc:
                raise self._lost(exc) from None
            self._decoder.receive_data(chunk)

    def _command(self, code: int, params: bytes, timeout: float | None = None) -> bytes:
        """Send one command; return the response packet data after the response code."""
        frame = encode_frame(TFI_TO_CHIP, bytes([code]) + params)
        want = code + 1
        if self._stale:
            self._drain()
        rejected = False
        for attempt in range(self.retries + 1):
            self._decoder.reset()
            self._write(frame)
            try:
                reply = self._await_reply(want, timeout)
            except _Timeout:
                self.resends += 1
                log.debug("pn532: no answer to command %#04x; sending it again", code)
                self._write(ACK)  # abort whatever the chip may still be doing
                continue
            except _Rejected:
                # The chip dropped a frame it could not parse (line noise on the way
                # in); the command was not run, so sending it again is safe.
                self.resends += 1
                rejected = True
                log.debug("pn532: command %#04x rejected by the chip; sending it again", code)
                continue
            if reply is not None:
                # After a resend the chip may answer the first copy late; that stale
                # reply must not pass for the answer to the next command.
                self._stale = attempt > 0
                return reply
        self._disconnect()  # the chip is lost; next call starts afresh
        log.debug(
            "pn532: %s closed after %d attempts at command %#04x", self.name, self.retries + 1, code
        )
        if rejected:
            raise ReaderIOError(f"{self.name}: chip reports a syntax error in command {code:#04x}")
        raise ReaderIOError(f"{self.name}: no answer to command {code:#04x}")

    def _drain(self) -> None:
        """Swallow late replies to a command that was sent twice."""
        self._stale = False
        deadline = time.monotonic() + self.ack_timeout
        try:
            while True:
                self._next_event(deadline)
        except _Timeout:
            pass
        self._decoder.reset()

    def _await_reply(self, want: int, timeout: float | None) -> bytes | None:
        acked = False
        deadline = time.monotonic() + self.ack_timeout
        nacks = 0
        while True:
            event = self._next_event(deadline)
            if isinstance(event, Ack) and not acked:
                acked = True
                deadline = time.monotonic() + (timeout or self.response_timeout)
            elif isinstance(event, Frame) and event.tfi == TFI_FROM_CHIP and event.code == want:
                return event.data[1:]  # a lost ACK does not matter once the reply is here
            elif isinstance(event, ErrorFrame):
                raise _Rejected
            elif isinstance(event, BadFrame) and acked and nacks < self.retries:
                # A damaged reply: the chip sends it again on a NACK.
                nacks += 1
                self.nacks_sent += 1
                log.debug("pn532: damaged reply to command %#04x; NACK", want - 1)
                self._write(NACK)
                deadline = time.monotonic() + (timeout or self.response_timeout)
            # anything else (stray frames, our own echo) is ignored

    # -- the Reader protocol ---------------------------------------------------------

    def wait_for_card(self, timeout: float) -> Pn532Channel | None:
        deadline = time.monotonic() + timeout
        while True:
            data = self._command(0x4A, b"\x01\x00")
            if data and data[0] >= 1 and len(data) >= 6:
                tg, uid_len = data[1], data[5]
                uid = bytes(data[6 : 6 + uid_len])
                self._generation += 1
                self._card_present = True
                return Pn532Channel(self, tg, uid, self._generation)
            if time.monotonic() + self.poll_interval > deadline:
                return None
            time.sleep(self.poll_interval)

    def wait_for_removal(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if not self._card_present:
                return True
            data = self._command(0x00, b"\x06")  # Diagnose: card presence
            if not data or data[0] != 0x00:
                self._card_present = False
                self._generation += 1
                return True
            if time.monotonic() + self.poll_interval > deadline:
                return False
            time.sleep(self.poll_interval)

    def _exchange(self, tg: int, apdu: bytes) -> bytes:
        chunks = [apdu[i : i + _MAX_CHUNK] for i in range(0, len(apdu), _MAX_CHUNK)] or [b""]
        for more in chunks[:-1]:  # host-side MI chaining for long commands
            self._check(self._command(0x40, bytes([tg | 0x40]) + more))
        data = self._command(0x40, bytes([tg]) + chunks[-1])
        status = self._check(data)
        answer = bytearray(data[1:])
        rounds = 0
        while status & 0x40:  # MI: the card has more to say
            # ...but never more than a short answer, nor in more frames than it has bytes.
            rounds += 1
            if len(answer) >= _MAX_ANSWER or rounds >= _MAX_ANSWER:
                raise CardIOError(f"card chains (MI) past {_MAX_ANSWER} bytes or frames")
            data = self._command(0x40, bytes([tg]))
            status = self._check(data)
            answer += data[1:]
        return bytes(answer)

    def _check(self, data: bytes) -> int:
        if not data:
            raise ReaderIOError(f"{self.name}: empty InDataExchange reply")
        err = data[0] & 0x3F
        if err:
            self._card_present = False
            self._generation += 1
            what = _CARD_GONE.get(err, "error")
            raise CardIOError(f"card did not answer: PN532 status {err:#04x} ({what})")
        return data[0]


def Pn532ReaderFactory(target: str, **options: Any) -> Pn532Reader:
    """Entry point for ``pn532:DEVICE[?speed=BAUD]``; options go to :class:`Pn532Reader`.

    ``?speed=921600`` asks the chip for a faster line after the 115200-baud start.
    """
    path, sep, query = target.partition("?")
    if sep:
        key, _, value = query.partition("=")
        if key != "speed" or not value.isdigit():
            raise ReaderIOError(f"pn532: unknown option {query!r} (only speed=BAUD)")
        options.setdefault("speed", int(value))
    return Pn532Reader(path, **options)
