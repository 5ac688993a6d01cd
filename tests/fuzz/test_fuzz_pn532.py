"""Fuzz the PN532 link: the frame decoder, and the reader over a chip that says anything.

The decoder promises never to raise on input, never to invent a frame whose bytes were
not on the line, and to find the same frames however the line cuts the bytes into reads.
The reader promises ReaderIOError or CardIOError out of its methods, and an answer in
bounded time whatever the chip sends back.
"""

from __future__ import annotations

import pytest
from fuzz_support import fuzz_settings, mutated
from hypothesis import example, given
from hypothesis import strategies as st

from farecore.errors import CardIOError, ReaderIOError
from readers.pn532 import Pn532Reader
from readers.pn532_frames import (
    ACK,
    ERROR_FRAME,
    NACK,
    TFI_FROM_CHIP,
    TFI_TO_CHIP,
    BadFrame,
    Event,
    Frame,
    FrameDecoder,
    NeedData,
    encode_frame,
)

pytestmark = pytest.mark.fuzz

_frames = st.builds(
    encode_frame,
    st.sampled_from([TFI_TO_CHIP, TFI_FROM_CHIP]),
    st.binary(min_size=1, max_size=40) | st.binary(min_size=250, max_size=300),
    extended=st.sampled_from([None, True]),
)
# What a serial line carries: frames (with or without their postamble), ACK, NACK, error
# frames, wake-up padding, and noise.
_pieces = st.one_of(
    _frames,
    _frames.map(lambda f: f[:-1]),
    st.sampled_from([ACK, NACK, ERROR_FRAME, b"\x00", b"\x00\x00", b"\x55\x55" + bytes(14)]),
    st.binary(max_size=12),
)
_stream = st.lists(_pieces, max_size=8).map(b"".join)


def _decode(data: bytes, cuts: list[int]) -> list[Event]:
    """Feed ``data`` in pieces cut at ``cuts``, draining the decoder after each read."""
    decoder = FrameDecoder()
    events: list[Event] = []
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        decoder.receive_data(data[start:cut])
        start = max(start, cut)
        for _ in range(len(data) + 2):  # each event consumes input: a bound, not a hang
            event = decoder.next_event()
            if isinstance(event, NeedData):
                break
            events.append(event)
        else:
            raise AssertionError("the decoder keeps producing events without input")
    return events


def _encodings(frame: Frame) -> list[bytes]:
    out = [encode_frame(frame.tfi, frame.data, extended=True)[:-1]]
    if len(frame.data) <= 254:
        out.append(encode_frame(frame.tfi, frame.data)[:-1])
    return out


# Once lost: a frame without its postamble, then an ACK whose first two zeros ended a
# read; the decoder took the first zero for the postamble and never saw the ACK.
_NO_POSTAMBLE = encode_frame(TFI_FROM_CHIP, b"\x41\x00")[:-1]


@fuzz_settings(2.0)
@given(data=_stream | _stream.flatmap(mutated), cuts=st.lists(st.integers(0, 4000), max_size=6))
@example(data=_NO_POSTAMBLE + ACK, cuts=[len(_NO_POSTAMBLE) + 2])
def test_frames_do_not_depend_on_how_the_line_cuts_them(data: bytes, cuts: list[int]) -> None:
    whole = _decode(data, [])
    pieces = _decode(data, cuts)
    for event in whole:
        if isinstance(event, Frame):  # never a frame whose bytes were not on the line
            assert any(e in data for e in _encodings(event))
    # Rejections may land differently (a header may still be incomplete), frames may not.
    assert [e for e in pieces if not isinstance(e, BadFrame)] == [
        e for e in whole if not isinstance(e, BadFrame)
    ]


# --- the reader over a scripted chip ----------------------------------------------------


class _Chip:
    """A serial port whose chip ACKs every command and answers it from a script.

    Answers are drawn per command: a well-formed InDataExchange reply around arbitrary
    card bytes (with the MI "more data" bit as drawn), a mangled reply, or silence.
    """

    def __init__(self, draw: st.DataObject | None, limit: int, always: bytes = b"") -> None:
        self.draw, self.limit, self.always = draw, limit, always
        self.out = bytearray()
        self.commands = 0
        self.timeout: float | None = 0
        self.baudrate = 115200

    @property
    def in_waiting(self) -> int:
        return len(self.out)

    def write(self, data: bytes) -> int:
        if data in (ACK, NACK) or not data.startswith(b"\x00\x00\xff"):
            return len(data)
        self.commands += 1
        assert self.commands <= self.limit, "the reader keeps commanding for one APDU"
        code = data[6] if data[3] != 0xFF else data[9]
        if self.draw is None:  # a fixed answer, every time
            self.out += ACK + encode_frame(TFI_FROM_CHIP, bytes([code + 1]) + self.always)
            return len(data)
        reply = self.draw.draw(
            st.sampled_from(["data", "data", "data", "mangled", "silent", "error"]), label="chip"
        )
        if reply == "silent":
            return len(data)
        if reply == "error":
            self.out += ERROR_FRAME
            return len(data)
        status = self.draw.draw(st.sampled_from([0x00, 0x40]) | st.integers(0, 255), label="st")
        card = self.draw.draw(st.binary(max_size=40), label="card bytes")
        frame = ACK + encode_frame(TFI_FROM_CHIP, bytes([code + 1, status]) + card)
        if reply == "mangled":
            frame = self.draw.draw(mutated(frame), label="mangled reply")
        self.out += frame
        return len(data)

    def read(self, size: int = 1) -> bytes:
        chunk = bytes(self.out[: max(size, 1)])
        del self.out[: len(chunk)]
        return chunk

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _reader(chip: _Chip) -> Pn532Reader:
    reader = Pn532Reader("fuzz", ack_timeout=0.0005, response_timeout=0.0005, retries=1)
    reader._serial = chip  # type: ignore[assignment]  # the port, as _connect leaves it
    reader._wanted_open = True
    reader._generation = 1
    return reader


@fuzz_settings()
@given(apdu=st.binary(min_size=4, max_size=300), draw=st.data())
def test_exchange_with_a_chip_that_says_anything(apdu: bytes, draw: st.DataObject) -> None:
    # The reader's own bound: 258 MI rounds, each command sent at most twice (retries=1).
    chip = _Chip(draw, limit=2 * (258 + 4))
    reader = _reader(chip)
    try:
        answer = reader._exchange(1, apdu)
    except (ReaderIOError, CardIOError):
        return
    assert isinstance(answer, bytes)


@pytest.mark.parametrize("more", [b"", b"\x90"], ids=["empty frames", "one byte each"])
def test_a_card_that_chains_for_ever_is_cut_off(more: bytes) -> None:
    # Once a hang: every reply set MI, and the reader asked for more without end.
    chip = _Chip(None, limit=300, always=b"\x40" + more)
    with pytest.raises(CardIOError, match="chains"):
        _reader(chip)._exchange(1, bytes.fromhex("80B0000000"))
    assert chip.commands <= 259
