"""The reader recovers by itself: pcscd killed or stopped, socket dropped, stale handle, timeouts."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from farecore.decide.decision import Reason
from farecore.errors import ReaderIOError
from farecore.gate.tap import run_tap
from readers.pcsc import PcscReader
from sim.pcscd import PcscDaemon
from sim.vpcd import VpcdCardServer

READER_00 = "Virtual PCD 00 00"


def _tap(reader: PcscReader, validator: Any, now_ms: int, timeout: float = 5.0) -> Any:
    channel = reader.wait_for_card(timeout)
    assert channel is not None, "no card seen"
    return run_tap(channel, validator, now_ms, bytes(16))


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_pcscd_gone_and_back_same_reader(
    how: str,
    pcscd: PcscDaemon,
    deck: Any,
    card_server: VpcdCardServer,
    reader: PcscReader,
    now_ms: int,
) -> None:
    validator = deck.validator()
    card_server.insert(deck.card("good", card_id=101))
    channel = reader.wait_for_card(5)
    assert channel is not None
    assert run_tap(channel, validator, now_ms, bytes(16)).accepted

    if how == "kill":
        pcscd.kill()
        # SIGKILL leaves the socket and pid file behind; start() must clear them.
        assert (pcscd.run_dir / "pcscd.comm").exists()
    else:
        pcscd.stop()
    # The channel of the dead daemon denies cleanly; waiting reports the reader trouble.
    assert run_tap(channel, validator, now_ms, bytes(16)).reason is Reason.UNREADABLE
    with pytest.raises(ReaderIOError, match="pcscd"):
        reader.wait_for_card(0.5)
    assert reader.wait_for_removal(0.2)  # no daemon: nothing of ours is in the field

    pcscd.start()
    # The card server reconnects to the new vpcd by itself; the reader is the same object.
    decision = _tap(reader, validator, now_ms, timeout=10)
    assert decision.accepted and decision.card_id == 101


def test_card_socket_dropped_mid_transaction(
    deck: Any, card_server: VpcdCardServer, reader: PcscReader, now_ms: int
) -> None:
    validator = deck.validator()
    card = deck.card("good", card_id=102)
    card.faults.delay_s = 0.3  # slow enough to pull the socket while an APDU is in flight
    card_server.insert(card)
    channel = reader.wait_for_card(5)
    assert channel is not None
    timer = threading.Timer(0.15, card_server.drop)
    timer.start()
    try:
        decision = run_tap(channel, validator, now_ms, bytes(16))
    finally:
        timer.join()
    assert decision.reason is Reason.UNREADABLE
    card.faults.delay_s = 0.0
    # The card stays "inserted", so it reconnects after a pause pcscd can see.
    assert reader.wait_for_removal(3)
    decision = _tap(reader, validator, now_ms)
    assert decision.accepted and decision.card_id == 102


def test_card_socket_dropped_between_taps(
    deck: Any, card_server: VpcdCardServer, reader: PcscReader, now_ms: int
) -> None:
    validator = deck.validator()
    card_server.insert(deck.card("good", card_id=103))
    assert _tap(reader, validator, now_ms).accepted
    card_server.drop()
    assert card_server.wait_disconnected(2)
    assert reader.wait_for_removal(3)
    assert _tap(reader, validator, now_ms).accepted


def test_stale_handle_reconnects(
    deck: Any,
    card_server: VpcdCardServer,
    reader: PcscReader,
    now_ms: int,
    field: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    validator = deck.validator()
    card_server.insert(deck.card("good", card_id=104))
    channel = reader.wait_for_card(5)
    assert channel is not None
    # Behind the reader's back: the card leaves, pcscd sees it, another card arrives.
    card_server.remove()
    field(READER_00, present=False)
    card_server.insert(deck.card("good", card_id=105))
    field(READER_00, present=True)
    with caplog.at_level(logging.INFO, logger="readers.pcsc"):
        decision = run_tap(channel, validator, now_ms, bytes(16))
    assert "stale handle" in caplog.text  # 0x80100069 was seen and handled
    assert decision.accepted and decision.card_id == 105


def test_stale_handle_mid_transaction_is_unreadable_then_recovers(
    deck: Any,
    card_server: VpcdCardServer,
    reader: PcscReader,
    now_ms: int,
    field: Callable[..., None],
) -> None:
    validator = deck.validator()
    card_server.insert(deck.card("good", card_id=106))
    channel = reader.wait_for_card(5)
    assert channel is not None
    assert channel.transmit(bytes.fromhex("00A4040007F0524A4341524400"))[-2:] == b"\x90\x00"
    card_server.remove()
    field(READER_00, present=False)
    card_server.insert(deck.card("good", card_id=107))
    field(READER_00, present=True)
    # Part of a transaction already went to the old card: never finish it on the new one.
    decision = run_tap(channel, validator, now_ms, bytes(16))
    assert decision.reason is Reason.UNREADABLE
    assert "0x80100069" in decision.detail
    # The next wait_for_card notices the new card (pcscd's event counter) and connects.
    decision = _tap(reader, validator, now_ms)
    assert decision.accepted and decision.card_id == 107


def test_transmit_timeout_then_recovery(
    deck: Any, card_server: VpcdCardServer, pcscd: PcscDaemon, now_ms: int
) -> None:
    validator = deck.validator()
    card = deck.card("good", card_id=109)
    card.faults.delay_s = 1.0
    card_server.insert(card)
    with PcscReader(READER_00, transmit_timeout=0.3) as reader:
        channel = reader.wait_for_card(5)
        assert channel is not None
        start = time.monotonic()
        decision = run_tap(channel, validator, now_ms, bytes(16))
        assert time.monotonic() - start < 1.0  # the card answers only after 1.0 s
        assert decision.reason is Reason.UNREADABLE
        assert "did not answer" in decision.detail
        card.faults.delay_s = 0.0
        time.sleep(1.0)  # let the slow answer reach the abandoned call
        decision = _tap(reader, validator, now_ms)
        assert decision.accepted, decision


def test_close_from_another_thread_wakes_a_waiter(pcscd: PcscDaemon, card_server: Any) -> None:
    reader = PcscReader(READER_00)
    reader.open()
    timer = threading.Timer(0.3, reader.close)
    timer.start()
    start = time.monotonic()
    with pytest.raises(ReaderIOError, match="not open"):
        reader.wait_for_card(10)
    timer.join()
    assert time.monotonic() - start < 3
    threads = [t.name for t in threading.enumerate()]
    assert "pcsc-transmit" not in threads


def test_card_that_left_unseen_is_unreadable_then_the_next_card_is_served(
    deck: Any,
    pcscd: PcscDaemon,
    reader: PcscReader,
    now_ms: int,
    field: Callable[..., None],
) -> None:
    """pcscd still shows the old card (its poll has not run yet) while a new one waits.

    The first APDU fails (0x80100016) and nothing was read, so the tap is UNREADABLE.
    vpcd hands pcscd the waiting card at the same poll that drops the old one, so pcscd
    reports no removal: the rider lifts the card and taps again, and that tap is served.
    """
    validator = deck.validator()
    field(READER_00, present=False)
    with VpcdCardServer(pcscd.port, reconnect_delay=0.0) as server:
        server.insert(deck.card("good", card_id=107))
        channel = reader.wait_for_card(5)
        assert channel is not None
        # The card leaves and the next one is in the field before pcscd polls again.
        server.remove()
        server.insert(deck.card("good", card_id=108))
        decision = run_tap(channel, validator, now_ms, bytes(16))
        assert decision.reason is Reason.UNREADABLE and decision.card_id is None
        server.remove()
        field(READER_00, present=False)
        server.insert(deck.card("good", card_id=108))
        assert reader.wait_for_removal(3)
        decision = _tap(reader, validator, now_ms)
    assert decision.accepted and decision.card_id == 108
