"""The sans-I/O PN532 frame codec: round trips, garbage, corruption, resynchronisation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from readers.pn532_frames import (
    ACK,
    ERROR_FRAME,
    NACK,
    TFI_FROM_CHIP,
    TFI_TO_CHIP,
    Ack,
    BadFrame,
    ErrorFrame,
    Event,
    Frame,
    FrameDecoder,
    Nack,
    NeedData,
    encode_frame,
)

tfis = st.sampled_from([TFI_TO_CHIP, TFI_FROM_CHIP])
MAX_LEN = 0xFFFF  # the extended LEN field's range
payloads = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.integers(250, 3000).map(lambda n: bytes(i * 7 & 0xFF for i in range(n))),
)


def encodings(frame: Frame) -> list[bytes]:
    """The bytes (without postamble) a frame may legally have on the wire."""
    out = [encode_frame(frame.tfi, frame.data, extended=True)[:-1]]
    if len(frame.data) <= 254:
        out.append(encode_frame(frame.tfi, frame.data)[:-1])
    return out


def drain(decoder: FrameDecoder) -> list[Event]:
    out: list[Event] = []
    while not isinstance(event := decoder.next_event(), NeedData):
        out.append(event)
    return out


def decode(data: bytes, split: int | None = None) -> list[Event]:
    decoder = FrameDecoder()
    events: list[Event] = []
    for piece in (data,) if split is None else (data[:split], data[split:]):
        decoder.receive_data(piece)
        events += drain(decoder)
    return events


def test_known_frames() -> None:
    # GetFirmwareVersion as libnfc and nfcpy send it, and the PN532's answer.
    assert encode_frame(TFI_TO_CHIP, b"\x02") == bytes.fromhex("0000ff02fed4022a00")
    reply = bytes.fromhex("0000ff06fad50332010607e800")
    assert decode(reply) == [Frame(TFI_FROM_CHIP, bytes.fromhex("0332010607"))]
    assert decode(ACK + NACK + ERROR_FRAME) == [Ack(), Nack(), ErrorFrame()]


def test_extended_frame_layout() -> None:
    frame = encode_frame(TFI_FROM_CHIP, bytes(300))
    assert frame[:5] == b"\x00\x00\xff\xff\xff"
    assert frame[5:7] == (301).to_bytes(2, "big")
    assert (frame[5] + frame[6] + frame[7]) & 0xFF == 0
    assert len(frame) == 8 + 301 + 2


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_frame(0x7F, b"\x00")
    with pytest.raises(ValueError):
        encode_frame(TFI_TO_CHIP, bytes(MAX_LEN))


@given(tfis, payloads, st.integers(0, 2000))
@settings(max_examples=300)
def test_round_trip_any_split(tfi: int, data: bytes, split: int) -> None:
    frame = encode_frame(tfi, data)
    assert decode(frame, split % (len(frame) + 1)) == [Frame(tfi, data)]


@given(st.lists(st.tuples(tfis, payloads), max_size=5), st.binary(max_size=40))
def test_stream_of_frames_with_garbage_between(
    frames: list[tuple[int, bytes]], junk: bytes
) -> None:
    # Garbage without a start code in it between frames must never lose a frame.
    junk = junk.replace(b"\x00\x00\xff", b"")
    stream = b"".join(junk + encode_frame(t, d) for t, d in frames)
    got = [e for e in decode(stream) if isinstance(e, Frame)]
    assert got == [Frame(t, d) for t, d in frames]


@given(st.binary(max_size=2000))
@settings(max_examples=500)
def test_garbage_never_raises_and_invents_no_frame(junk: bytes) -> None:
    events = decode(junk)
    # A frame may be decoded only if its exact encoding is in the input.
    for event in events:
        if isinstance(event, Frame):
            assert any(e in junk for e in encodings(event))
        assert not isinstance(event, NeedData)


@given(tfis, st.binary(min_size=1, max_size=300), st.data())
@settings(max_examples=400)
def test_every_single_byte_corruption_is_rejected_or_resynced(
    tfi: int, data: bytes, draw: st.DataObject
) -> None:
    frame = encode_frame(tfi, data)
    index = draw.draw(st.integers(0, len(frame) - 2))  # the postamble carries no meaning
    flip = draw.draw(st.integers(1, 255))
    bad = bytearray(frame)
    bad[index] ^= flip
    follower = encode_frame(TFI_FROM_CHIP, b"\x41\x00\x90\x00")
    # Zero padding flushes any half-read candidate without adding a start code.
    events = decode(bytes(bad) + follower + bytes(MAX_LEN + 16))
    frames = [e for e in events if isinstance(e, Frame)]
    # The damaged frame never decodes as itself nor as some other frame, except frames
    # whose exact bytes sit inside it (a payload may legitimately contain one).
    for f in frames[:-1]:
        assert any(e in bytes(bad) for e in encodings(f))
        assert f != Frame(tfi, data)
    assert frames and frames[-1] == Frame(TFI_FROM_CHIP, b"\x41\x00\x90\x00")


def test_bad_checksum_then_good_frame() -> None:
    good = encode_frame(TFI_FROM_CHIP, b"\x41\x00\x90\x00")
    bad = good[:-2] + bytes([good[-2] ^ 1]) + good[-1:]
    events = decode(bad + good)
    assert isinstance(events[0], BadFrame) and "checksum" in events[0].reason
    assert events[-1] == Frame(TFI_FROM_CHIP, b"\x41\x00\x90\x00")


def test_wakeup_preamble_is_skipped() -> None:
    sam = encode_frame(TFI_TO_CHIP, b"\x14\x01")
    decoder = FrameDecoder()
    decoder.receive_data(b"\x55\x55" + bytes(14) + sam)
    assert drain(decoder) == [Frame(TFI_TO_CHIP, b"\x14\x01")]
    assert decoder.pending <= 2
