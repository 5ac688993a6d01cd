"""Line and card faults on a real pty: each ends in the right deny or a recovery.

After every fault the same reader object must go on serving good taps.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farecore.errors import CardIOError, ReaderIOError
from farecore.gate.reader_port import open_reader
from farecore.gate.tap import run_tap
from readers.pn532 import Pn532Reader
from readers.pn532_frames import ERROR_FRAME
from sim.card import CardFaults
from sim.pn532_emulator import Pn532Emulator

SELECT = bytes.fromhex("00A4040007F0524A4341524400")


def good_tap(reader: Pn532Reader, emu: Pn532Emulator, deck: Any, card_id: int) -> str:
    emu.insert(deck.card("good", card_id))
    channel = reader.wait_for_card(2.0)
    assert channel is not None
    decision = run_tap(channel, deck.validator(), deck.now_ms, card_id.to_bytes(16, "big"))
    emu.remove()
    assert reader.wait_for_removal(2.0)
    return str(decision.label)


@given(junk=st.binary(min_size=1, max_size=64))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_arbitrary_garbage_on_the_line(
    junk: bytes, deck: Any, emulator: Pn532Emulator, reader: Pn532Reader
) -> None:
    emulator.inject_garbage(junk)
    assert good_tap(reader, emulator, deck, 31) == "ACCEPT"


def test_an_error_frame_makes_the_reader_send_the_command_again(
    deck: Any, emulator: Pn532Emulator, reader: Pn532Reader
) -> None:
    # What a chip answers when line noise garbled the command on its way in (hypothesis
    # found this: the noise itself can spell an error frame). The command was not run.
    before = reader.resends
    emulator.inject_garbage(ERROR_FRAME)
    assert good_tap(reader, emulator, deck, 30) == "ACCEPT"
    assert reader.resends == before + 1


def test_bad_checksum_is_nacked_and_resent(
    deck: Any, emulator: Pn532Emulator, reader: Pn532Reader
) -> None:
    emulator.insert(deck.card("good", 32))
    channel = reader.wait_for_card(2.0)
    assert channel is not None
    emulator.corrupt_next_checksum()
    assert channel.transmit(SELECT)[-2:] == b"\x90\x00"
    assert reader.nacks_sent == 1


def test_missing_ack_and_swallowed_command(
    deck: Any, emulator: Pn532Emulator, reader: Pn532Reader
) -> None:
    emulator.drop_next_ack()
    assert good_tap(reader, emulator, deck, 33) == "ACCEPT"
    emulator.swallow_next_command()  # no ACK, no answer: the reader must resend
    assert good_tap(reader, emulator, deck, 34) == "ACCEPT"
    assert reader.resends >= 1


def test_pty_closed_and_reopened(deck: Any, emulator: Pn532Emulator, reader: Pn532Reader) -> None:
    assert good_tap(reader, emulator, deck, 35) == "ACCEPT"
    old = emulator.slave_name
    emulator.reopen()
    assert emulator.slave_name != old or os.path.realpath(emulator.path) == emulator.slave_name
    with pytest.raises(ReaderIOError):
        reader.wait_for_card(0.2)
    # The next call reopens the port (the link now names the fresh pty) by itself.
    assert good_tap(reader, emulator, deck, 36) == "ACCEPT"
    assert reader.reconnects == 1


def test_card_removed_mid_apdu(deck: Any, emulator: Pn532Emulator, reader: Pn532Reader) -> None:
    emulator.insert(deck.issuer.card(37, faults=CardFaults(remove_at="read")))
    channel = reader.wait_for_card(2.0)
    assert channel is not None
    assert channel.transmit(SELECT)[-2:] == b"\x90\x00"
    with pytest.raises(CardIOError):
        channel.transmit(bytes.fromhex("80B0000000"))
    with pytest.raises(CardIOError):  # the channel stays dead
        channel.transmit(SELECT)
    assert reader.wait_for_removal(0.5)
    assert good_tap(reader, emulator, deck, 38) == "ACCEPT"


def test_empty_field_and_removal_timeout(
    deck: Any, emulator: Pn532Emulator, reader: Pn532Reader
) -> None:
    assert reader.wait_for_card(0.1) is None
    emulator.insert(deck.card("good", 39))
    assert reader.wait_for_card(1.0) is not None
    assert reader.wait_for_removal(0.1) is False  # still in the field
    emulator.remove()
    assert reader.wait_for_removal(1.0) is True


def test_missing_port_and_closed_reader(tmp_path: Path) -> None:
    reader = Pn532Reader(str(tmp_path / "nothing"))
    with pytest.raises(ReaderIOError, match="cannot open"):
        reader.open()
    with pytest.raises(ReaderIOError, match="not open"):
        Pn532Reader(str(tmp_path / "nothing")).wait_for_card(0.1)


def test_silent_device_is_a_reader_error(tmp_path: Path) -> None:
    # A pty with nobody behind it: the wake-up and SAMConfiguration go unanswered.
    master, slave = os.openpty()
    try:
        reader = Pn532Reader(os.ttyname(slave), ack_timeout=0.02, retries=1)
        with pytest.raises(ReaderIOError, match="no answer"):
            reader.open()
    finally:
        os.close(master)
        os.close(slave)


def test_entry_point(deck: Any, emulator: Pn532Emulator) -> None:
    reader = open_reader(f"pn532:{emulator.path}")
    assert isinstance(reader, Pn532Reader)
    reader.open()
    try:
        assert good_tap(reader, emulator, deck, 40) == "ACCEPT"
    finally:
        reader.close()


def test_late_reply_after_resend_is_not_taken_for_the_next(
    deck: Any, emulator: Pn532Emulator, reader: Pn532Reader
) -> None:
    # The chip stalls past the ACK timeout: the reader resends, and then both answers
    # arrive. The second must not be read as the answer to the next command.
    emulator.insert(deck.card("good", 41))
    channel = reader.wait_for_card(2.0)
    assert channel is not None
    emulator.delay_next_reply(reader.ack_timeout * 1.5)
    assert channel.transmit(SELECT) == b"\x01\x00\x90\x00"
    assert reader.resends == 1
    read = channel.transmit(bytes.fromhex("80B0000000"))
    assert read[-2:] == b"\x90\x00" and len(read) > 100


def test_faster_line_speed(deck: Any, tmp_path: Path) -> None:
    with Pn532Emulator(str(tmp_path / "fast"), line_baud=115200) as emu:
        reader = open_reader(f"pn532:{emu.path}?speed=921600")
        reader.open()
        try:
            assert good_tap(reader, emu, deck, 42) == "ACCEPT"  # type: ignore[arg-type]
        finally:
            reader.close()
        assert emu.line_baud == 921600
    with pytest.raises(ReaderIOError, match="speed"):
        open_reader("pn532:/dev/ttyUSB0?speed=12345")
    with pytest.raises(ReaderIOError, match="unknown option"):
        open_reader("pn532:/dev/ttyUSB0?baud=9600")


def test_noise_that_looks_like_a_long_frame_header(
    deck: Any, emulator: Pn532Emulator, reader: Pn532Reader
) -> None:
    # An extended header announcing 4 KiB on both directions of the line: neither side
    # may sit waiting for bytes that never come.
    noise = b"\x00\x00\xff\xff\xff\x10\x00\xf0"
    emulator.inject_garbage(noise)
    port = reader._port()
    port.write(noise)  # towards the chip, too
    assert good_tap(reader, emulator, deck, 43) == "ACCEPT"
