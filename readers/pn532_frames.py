"""Sans-I/O codec for the PN532 high-speed-UART (HSU) frame.

Pure bytes in, events out, in the style of h11: feed whatever arrived with
:meth:`FrameDecoder.receive_data` and pull :meth:`FrameDecoder.next_event` until it
returns :data:`NEED_DATA`. Encoding is :func:`encode_frame`, :data:`ACK`, :data:`NACK`.

Frame shapes (host → chip TFI ``D4``, chip → host ``D5``):

| frame    | bytes                                                    |
|----------|----------------------------------------------------------|
| normal   | ``00 00 FF LEN LCS TFI PD… DCS 00``, LEN = 1 + len(PD) ≤ 255 |
| extended | ``00 00 FF FF FF LENm LENl LCS TFI PD… DCS 00``           |
| ACK      | ``00 00 FF 00 FF 00``                                     |
| NACK     | ``00 00 FF FF 00 00``                                     |
| error    | ``00 00 FF 01 FF 7F 81 00``                               |

LCS makes the length bytes sum to 0 mod 256; DCS makes TFI + PD sum to 0 mod 256.

Resynchronisation: bytes before a ``00 00 FF`` start code are skipped; a candidate frame
whose length checksum, data checksum or TFI is wrong produces one :class:`BadFrame` and
the search restarts one byte after its start, so a good frame that follows is still
found. A candidate longer than :data:`MAX_FRAME_DATA` is rejected at once, so garbage can
never make the decoder wait for more than that many bytes.

This module must never do I/O, sleep, read a clock or start a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "ACK",
    "ERROR_FRAME",
    "MAX_FRAME_DATA",
    "NACK",
    "NEED_DATA",
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

TFI_TO_CHIP: Final = 0xD4
TFI_FROM_CHIP: Final = 0xD5
_TFI_ERROR: Final = 0x7F
# The chip's own limit is 264 bytes of TFI + PD; we allow more so the codec can be
# tested on every extended length, but not so much that garbage stalls a reader.
MAX_FRAME_DATA: Final = 1024

START: Final = b"\x00\x00\xff"
ACK: Final = b"\x00\x00\xff\x00\xff\x00"
NACK: Final = b"\x00\x00\xff\xff\x00\x00"
ERROR_FRAME: Final = b"\x00\x00\xff\x01\xff\x7f\x81\x00"


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing complete in the buffer yet."""


NEED_DATA: Final = NeedData()


@dataclass(frozen=True, slots=True)
class Ack:
    """The chip accepted a command (or, from the host, aborts the running one)."""


@dataclass(frozen=True, slots=True)
class Nack:
    """The other side asks for the last frame again."""


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """The chip's application-level error frame (syntax error in the command)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """An information frame: ``tfi`` (D4 or D5) and its packet data (command code first)."""

    tfi: int
    data: bytes

    def __post_init__(self) -> None:
        if self.tfi not in (TFI_TO_CHIP, TFI_FROM_CHIP):
            raise ValueError(f"TFI must be D4 or D5, not {self.tfi:#04x}")
        if not 1 <= len(self.data) + 1 <= MAX_FRAME_DATA:
            raise ValueError(f"frame data of {len(self.data)} bytes is out of range")

    @property
    def code(self) -> int:
        """The command or response code (first packet-data byte), or -1 if none."""
        return self.data[0] if self.data else -1


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A start code was followed by something that is not a valid frame."""

    reason: str


Event = NeedData | Ack | Nack | ErrorFrame | Frame | BadFrame


def _checksum(data: bytes | bytearray) -> int:
    return -sum(data) & 0xFF


def encode_frame(tfi: int, data: bytes) -> bytes:
    """Encode one information frame; extended form only when TFI + data exceed 255 bytes."""
    frame = Frame(tfi, bytes(data))  # validates
    body = bytes([frame.tfi]) + frame.data
    n = len(body)
    if n <= 255:
        head = START + bytes([n, _checksum(bytes([n]))])
    else:
        lengths = bytes([n >> 8, n & 0xFF])
        head = START + b"\xff\xff" + lengths + bytes([_checksum(lengths)])
    return head + body + bytes([_checksum(body), 0])


class FrameDecoder:
    """Incremental decoder: ``receive_data(bytes)`` then ``next_event()`` until NEED_DATA."""

    __slots__ = ("_buf", "bad_frames", "skipped_bytes")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.skipped_bytes = 0  # bytes dropped while hunting for a start code
        self.bad_frames = 0

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def reset(self) -> None:
        """Forget everything buffered (after a timeout or a reconnect)."""
        self._buf.clear()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _bad(self, start: int, reason: str) -> BadFrame:
        # Restart one byte past this start code so an overlapping good frame is found.
        del self._buf[: start + 1]
        self.bad_frames += 1
        return BadFrame(reason)

    def next_event(self) -> Event:
        buf = self._buf
        start = buf.find(START)
        if start < 0:
            # Keep a possible partial start code at the tail.
            keep = 2 if buf.endswith(b"\x00\x00") else 1 if buf.endswith(b"\x00") else 0
            drop = len(buf) - keep
            self.skipped_bytes += drop
            del buf[:drop]
            return NEED_DATA
        if start:
            self.skipped_bytes += start
            del buf[:start]
        if len(buf) < 5:
            return NEED_DATA
        b3, b4 = buf[3], buf[4]
        if b3 == 0x00 and b4 == 0xFF:
            del buf[:5]
            return Ack()
        if b3 == 0xFF and b4 == 0x00:
            del buf[:5]
            return Nack()
        if b3 == 0xFF and b4 == 0xFF:
            if len(buf) < 8:
                return NEED_DATA
            n = buf[5] << 8 | buf[6]
            if (buf[5] + buf[6] + buf[7]) & 0xFF:
                return self._bad(0, "extended length checksum (LCS) mismatch")
            body_at = 8
        else:
            n = b3
            if (b3 + b4) & 0xFF:
                return self._bad(0, "length checksum (LCS) mismatch")
            body_at = 5
        if n == 0 or n > MAX_FRAME_DATA:
            return self._bad(0, f"frame length {n} out of range")
        end = body_at + n + 1  # body plus DCS; the 00 postamble is skipped later
        if len(buf) < end:
            return NEED_DATA
        body = bytes(buf[body_at : end - 1])
        if (sum(body) + buf[end - 1]) & 0xFF:
            return self._bad(0, "data checksum (DCS) mismatch")
        tfi = body[0]
        if tfi == _TFI_ERROR and n == 1:
            del buf[:end]
            return ErrorFrame()
        if tfi not in (TFI_TO_CHIP, TFI_FROM_CHIP):
            return self._bad(0, f"unknown TFI {tfi:#04x}")
        del buf[:end]
        return Frame(tfi, body[1:])
