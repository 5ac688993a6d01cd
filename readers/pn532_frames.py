"""The PN532 HSU frame codec, sans-I/O: bytes in, frame events out; frames to bytes.

Both ends of a serial PN532 link use it: the pyserial reader (host side, TFI ``D4``) and
the emulated chip in ``sim/`` (TFI ``D5``). It follows h11's shape: feed whatever the
line delivered to :meth:`FrameDecoder.receive_data`, then call
:meth:`FrameDecoder.next_event` until it returns :data:`NEED_DATA`.

Frames on the wire (all checksums are two's-complement sums to zero, modulo 256):

| kind      | bytes                                                  |
|-----------|--------------------------------------------------------|
| normal    | ``00 00 FF LEN LCS TFI PD0..PDn DCS 00`` (LEN = n + 2)  |
| extended  | ``00 00 FF FF FF LENm LENl LCS TFI PD0..PDn DCS 00``    |
| ACK       | ``00 00 FF 00 FF 00``                                  |
| NACK      | ``00 00 FF FF 00 00``                                  |
| error     | ``00 00 FF 01 FF 7F 81 00`` (the chip's "syntax error") |

The decoder resynchronises by itself: bytes before a ``00 00 FF`` preamble are dropped
(and counted), and a header or body whose checksum fails is reported as
:class:`BadFrame` and skipped, the search resuming just after its preamble. It never
raises on input, and it never invents a frame whose bytes were not on the line.

This module must never touch a serial port, a thread or a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "ACK",
    "ERROR_FRAME",
    "NACK",
    "NEED_DATA",
    "PREAMBLE",
    "TFI_FROM_CHIP",
    "TFI_TO_CHIP",
    "Ack",
    "BadFrame",
    "ErrorFrame",
    "Event",
    "Frame",
    "FrameDecoder",
    "Nack",
    "NeedData",
    "encode_frame",
]

PREAMBLE: Final = b"\x00\x00\xff"
ACK: Final = b"\x00\x00\xff\x00\xff\x00"
NACK: Final = b"\x00\x00\xff\xff\x00\x00"
ERROR_FRAME: Final = b"\x00\x00\xff\x01\xff\x7f\x81\x00"
TFI_TO_CHIP: Final = 0xD4
TFI_FROM_CHIP: Final = 0xD5
_TFI_ERROR: Final = 0x7F
_VALID_TFI: Final = frozenset({TFI_TO_CHIP, TFI_FROM_CHIP})
# A normal frame's LEN byte counts TFI + data, so it carries at most 254 data bytes
# (LEN = FF with LCS = 01 stays distinct from the FF FF extended and FF 00 NACK markers).
_NORMAL_MAX_DATA: Final = 254
_EXTENDED_MAX_DATA: Final = 0xFFFF - 1


@dataclass(frozen=True, slots=True)
class Frame:
    """An information frame: its TFI (D4 to the chip, D5 from it) and its data.

    ``data[0]`` is the command code (host → chip) or the response code (chip → host).
    """

    tfi: int
    data: bytes

    def __post_init__(self) -> None:
        if self.tfi not in _VALID_TFI:
            raise ValueError(f"TFI must be D4 or D5, not {self.tfi:#04x}")
        if not isinstance(self.data, bytes):
            raise TypeError("frame data must be bytes")
        if not 1 <= len(self.data) <= _EXTENDED_MAX_DATA:
            raise ValueError(f"frame data must be 1..{_EXTENDED_MAX_DATA} bytes")

    @property
    def code(self) -> int:
        return self.data[0]

    @property
    def params(self) -> bytes:
        return self.data[1:]


@dataclass(frozen=True, slots=True)
class Ack:
    """``00 00 FF 00 FF 00``: the chip took the command (or, from the host: abort it)."""


@dataclass(frozen=True, slots=True)
class Nack:
    """``00 00 FF FF 00 00``: the host asks the chip to send its last response again."""


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """The chip's syntax-error frame: it could not make sense of the last command."""


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A preamble was followed by a frame whose checksum (or TFI) is wrong; it was skipped."""

    reason: str


@dataclass(frozen=True, slots=True)
class NeedData:
    """No complete event is buffered: feed more bytes."""


NEED_DATA: Final = NeedData()
Event = Frame | Ack | Nack | ErrorFrame | BadFrame | NeedData


def _checksum(data: bytes | bytearray | memoryview) -> int:
    return -sum(data) & 0xFF


def encode_frame(tfi: int, data: bytes, *, extended: bool | None = None) -> bytes:
    """The wire bytes of an information frame carrying ``data`` (code ‖ parameters).

    The normal form is used when ``data`` fits (≤ 254 bytes), the extended one otherwise;
    pass ``extended=True`` to force it.
    """
    frame = Frame(tfi, bytes(data))  # validates
    body = bytes([frame.tfi]) + frame.data
    dcs = _checksum(body)
    if extended is None:
        extended = len(frame.data) > _NORMAL_MAX_DATA
    if not extended:
        length = len(body)
        if len(frame.data) > _NORMAL_MAX_DATA:
            raise ValueError("data too long for a normal frame")
        return PREAMBLE + bytes([length, _checksum(bytes([length]))]) + body + bytes([dcs, 0])
    hi, lo = divmod(len(body), 256)
    lcs = _checksum(bytes([hi, lo]))
    return PREAMBLE + bytes([0xFF, 0xFF, hi, lo, lcs]) + body + bytes([dcs, 0])


class FrameDecoder:
    """An incremental PN532 frame parser; one per direction of a link.

    ``discarded`` counts the non-zero bytes dropped while hunting for a preamble (zero
    bytes are the wake-up, preamble and postamble padding every link carries).
    """

    __slots__ = ("_buffer", "discarded")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.discarded = 0

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def reset(self) -> None:
        """Forget any partial frame (after a timeout, a reconnect, or a resend)."""
        self.discarded += sum(1 for b in self._buffer if b)
        self._buffer.clear()

    @property
    def pending(self) -> int:
        """How many bytes are buffered but not yet decoded."""
        return len(self._buffer)

    def _drop(self, count: int) -> None:
        self.discarded += sum(1 for b in self._buffer[:count] if b)
        del self._buffer[:count]

    def next_event(self) -> Event:
        buf = self._buffer
        start = buf.find(PREAMBLE)
        if start < 0:
            # Keep a tail that may be the start of a preamble split across reads.
            keep = 2 if buf.endswith(b"\x00\x00") else 1 if buf.endswith(b"\x00") else 0
            self._drop(len(buf) - keep)
            return NEED_DATA
        if start:
            self._drop(start)
        if len(buf) < 5:
            return NEED_DATA
        length, lcs = buf[3], buf[4]
        if length == 0x00 and lcs == 0xFF:
            return self._consume(5, Ack())
        if length == 0xFF and lcs == 0x00:
            return self._consume(5, Nack())
        if length == 0xFF and lcs == 0xFF:
            if len(buf) < 8:
                return NEED_DATA
            hi, lo, lcs = buf[5], buf[6], buf[7]
            if (hi + lo + lcs) & 0xFF:
                return self._reject("extended length checksum")
            length, head = hi << 8 | lo, 8
        else:
            if (length + lcs) & 0xFF:
                return self._reject("length checksum")
            head = 5
        if length == 0:
            return self._reject("empty extended frame")
        end = head + length + 1  # the DCS
        if len(buf) < end:
            return NEED_DATA
        body = buf[head : end - 1]
        if (sum(body) + buf[end - 1]) & 0xFF:
            return self._reject("data checksum")
        tfi = body[0]
        if tfi == _TFI_ERROR and length == 1:
            return self._consume(end, ErrorFrame())
        if tfi not in _VALID_TFI:
            return self._reject(f"unknown TFI {tfi:#04x}")
        if length < 2:
            return self._reject("frame without a command code")
        return self._consume(end, Frame(tfi, bytes(body[1:])))

    def _consume(self, count: int, event: Event) -> Event:
        del self._buffer[:count]
        # The postamble is optional on the wire; swallow it when it is already here. Only
        # three bytes tell it from the start of a next frame's preamble: until then the
        # zeros stay, and the preamble search skips them.
        if len(self._buffer) >= 3 and self._buffer[0] == 0 and self._buffer[:3] != PREAMBLE:
            del self._buffer[:1]
        return event

    def _reject(self, reason: str) -> BadFrame:
        # Skip only the preamble: the real next frame may start inside what we rejected.
        del self._buffer[:3]
        return BadFrame(reason)
