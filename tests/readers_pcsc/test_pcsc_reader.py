"""Finding readers, the entry point, 61xx/6Cxx handling, and the pcscd helper."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from farecore.errors import CardIOError, ConfigError, ReaderIOError
from farecore.gate.reader_port import open_reader
from farecore.gate.tap import run_tap
from readers.pcsc import PcscReader, PcscReaderFactory
from sim.card import VirtualCard
from sim.pcscd import PcscDaemon, _remove_stale, can_isolate
from sim.vpcd import VpcdCardServer

SELECT = bytes.fromhex("00A4040007F0524A4341524400")


class T0Card:
    """A card behind a T=0 transport: it answers ``61 xx`` and hands the data to one GET
    RESPONSE (in ``parts`` pieces, each but the last ending in 61xx again), and with
    ``wrong_le`` first asks for the right Le with 6Cxx: what real chips and readers do."""

    def __init__(self, inner: VirtualCard, parts: int = 1, wrong_le: bool = False) -> None:
        self.inner = inner
        self.parts = parts
        self.wrong_le = wrong_le
        self.pending: list[bytes] = []
        self.sw = b""

    def power_on(self) -> None:
        self.inner.power_on()
        self.pending = []

    def process_apdu(self, apdu: bytes) -> bytes:
        if apdu[1] == 0xC0:  # GET RESPONSE
            part = self.pending.pop(0) if self.pending else b""
            if self.pending:
                return part + bytes([0x61, min(len(self.pending[0]), 255)])
            return part + self.sw
        if self.wrong_le and apdu[1] == 0xA4:
            if apdu[-1] == 0x00:
                return b"\x6c\x02"
            # The Le it asked for: the answer comes at once.
            return self.inner.process_apdu(apdu[:-1] + b"\x00")
        response = self.inner.process_apdu(apdu)
        data, self.sw = response[:-2], response[-2:]
        if not data:
            return self.sw
        size = -(-len(data) // self.parts)
        self.pending = [data[i : i + size] for i in range(0, len(data), size)]
        return bytes([0x61, min(len(self.pending[0]), 255)])


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(wrong_le=st.booleans())
def test_one_t0_completion_is_transparent(
    deck: Any, card_server: VpcdCardServer, reader: PcscReader, now_ms: int, wrong_le: bool
) -> None:
    card = deck.card("good", card_id=300)
    card_server.swap(T0Card(card, 1, wrong_le))
    channel = reader.wait_for_card(5)
    assert channel is not None
    assert channel.transmit(SELECT) == b"\x01\x00\x90\x00"
    assert channel.transmit(bytes.fromhex("80B0000000")) == card.credential + b"\x90\x00"
    assert run_tap(channel, deck.validator(), now_ms, bytes(16)).accepted


def test_a_second_completion_is_not_made(
    deck: Any, card_server: VpcdCardServer, reader: PcscReader, now_ms: int
) -> None:
    # CARD-SPEC §3: at most one completion per command; what follows it is the answer.
    card_server.swap(T0Card(deck.card("good", card_id=301), parts=2))
    channel = reader.wait_for_card(5)
    assert channel is not None
    answer = channel.transmit(SELECT)
    assert answer[-2] == 0x61  # handed back as it came, for the terminal to judge
    decision = run_tap(channel, deck.validator(), now_ms, bytes(16))
    assert decision.reason is not None and decision.reason.name == "UNREADABLE"


@pytest.mark.parametrize(
    "target", ["", "Virtual PCD 00 01", "*01", r"PCD 00 01$", "Virtual PCD 00 0[1]"]
)
def test_reader_selection(
    target: str,
    deck: Any,
    card_server: VpcdCardServer,
    card_server_01: VpcdCardServer,
    now_ms: int,
) -> None:
    card_server.insert(deck.card("good", card_id=400))
    card_server_01.insert(deck.card("good", card_id=401))
    want = "Virtual PCD 00 00" if target == "" else "Virtual PCD 00 01"
    with PcscReader(target) as reader:
        channel = reader.wait_for_card(5)
        assert channel is not None
        assert reader.name == want
        decision = run_tap(channel, deck.validator(), now_ms, bytes(16))
        assert decision.card_id == (400 if want.endswith("00") else 401)


def test_no_matching_reader_is_a_reader_error(pcscd: PcscDaemon) -> None:
    with (
        PcscReader("No Such Reader") as reader,
        pytest.raises(ReaderIOError, match="no reader matches 'No Such Reader'"),
    ):
        reader.wait_for_card(0.4)


def test_closed_reader_refuses(pcscd: PcscDaemon) -> None:
    reader = PcscReader("")
    with pytest.raises(ReaderIOError, match="not open"):
        reader.wait_for_card(0.1)
    reader.open()
    reader.close()
    reader.close()  # idempotent
    with pytest.raises(ReaderIOError, match="not open"):
        reader.wait_for_removal(0.1)


def test_entry_point_and_options(pcscd: PcscDaemon) -> None:
    reader = open_reader("pcsc:Virtual PCD 00 00", transmit_timeout=0.5)
    assert isinstance(reader, PcscReader)
    assert reader.name == "Virtual PCD 00 00" and reader.transmit_timeout == 0.5
    with pytest.raises(ConfigError, match="unknown pcsc reader option"):
        PcscReaderFactory("", bogus=1)
    with pytest.raises(ConfigError, match="share"):
        PcscReader("", share="everyone")
    with pytest.raises(ConfigError, match="transmit_timeout"):
        PcscReader("", transmit_timeout=0)


def test_stale_pcscd_files_are_cleared_only_when_their_pid_is_dead(tmp_path: Any) -> None:
    (tmp_path / "pcscd.comm").write_text("")
    (tmp_path / "pcscd.pid").write_text(str(os.getpid()))  # alive: refuse
    with pytest.raises(ReaderIOError, match="another pcscd"):
        _remove_stale(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "pcscd.pid").write_text(str(dead.pid))
    _remove_stale(tmp_path)
    assert not (tmp_path / "pcscd.comm").exists() and not (tmp_path / "pcscd.pid").exists()


def test_second_isolated_daemon_runs_beside_the_first(tmp_path: Any, pcscd: PcscDaemon) -> None:
    if not can_isolate():
        pytest.skip("this machine cannot make a mount namespace (needs root or CAP_SYS_ADMIN)")
    with PcscDaemon(tmp_path) as other:
        assert other.running and other.port != pcscd.port
        assert other.socket_path != pcscd.socket_path
        assert b"daemon ready" in other.log_path.read_bytes()
    assert not other.running and pcscd.running


def test_pattern_watches_every_matching_slot(
    deck: Any,
    card_server: VpcdCardServer,
    card_server_01: VpcdCardServer,
    now_ms: int,
) -> None:
    validator = deck.validator()
    with PcscReader("Virtual PCD 00 0?") as reader:
        assert reader.wait_for_card(0.2) is None
        for server, slot, card_id in [(card_server_01, "01", 500), (card_server, "00", 501)]:
            server.insert(deck.card("good", card_id=card_id))
            channel = reader.wait_for_card(5)
            assert channel is not None
            assert reader.name == f"Virtual PCD 00 {slot}"
            assert run_tap(channel, validator, now_ms, bytes(16)).card_id == card_id
            server.remove()
            assert reader.wait_for_removal(3)


class ScriptedCard:
    """A card that answers every APDU with the next of some arbitrary byte strings."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.i = 0

    def power_on(self) -> None:
        pass

    def process_apdu(self, apdu: bytes) -> bytes:
        answer = self.answers[self.i % len(self.answers)]
        self.i += 1
        return answer


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(answers=st.lists(st.binary(min_size=0, max_size=260), min_size=1, max_size=4))
@example(answers=[b"\x00\x61\x00", b"\x00\x00"])  # data before a 61 xx, joined to the rest
def test_any_card_answer_is_data_or_a_card_error(
    deck: Any,
    card_server: VpcdCardServer,
    reader: PcscReader,
    now_ms: int,
    answers: list[bytes],
) -> None:
    """Whatever bytes a card sends back, transmit returns them or raises CardIOError."""
    card_server.swap(ScriptedCard(answers))
    if not card_server.wait_connected(2):
        card_server.swap(ScriptedCard(answers))  # an empty answer dropped the link
    channel = reader.wait_for_card(5)
    if channel is not None:
        try:
            response = channel.transmit(SELECT)
        except CardIOError:
            pass
        else:
            assert len(response) >= 2
            if response[-2] not in (0x61, 0x6C):
                # Or, after a 61 xx with data, that data and the GET RESPONSE's answer
                # (CARD-SPEC §3, farecore.card.apdu.complete_t0).
                after = answers[1:] + answers[:1]  # a scripted card's answers go round
                joined = [
                    a[:-2] + b for a, b in zip(answers, after, strict=True) if a[-2:-1] == b"\x61"
                ]
                assert response in answers or response in joined
        decision = run_tap(channel, deck.validator(), now_ms, bytes(16))
        assert decision.reason is not None  # a scripted card is never accepted


@given(
    events=st.integers(0, 0xFFFF),
    moved=st.integers(0, 3) | st.integers(0, 0xFFFF),
    present=st.booleans(),
    mute=st.booleans(),
)
@example(events=0xFFFF, moved=1, present=True, mute=False)  # the counter wraps
def test_after_a_failed_card_only_a_true_removal_ends_the_wait(
    events: int, moved: int, present: bool, mute: bool
) -> None:
    """With its handle dropped after a failed transaction, the reader takes the card for
    gone when the slot is empty or mute, or when pcscd counted at least a removal and an
    insertion since (two events); one event while a card is shown is the failed card, or
    its ghost until pcscd's next poll, never room for the next tap."""
    from smartcard import scard

    reader = PcscReader("Virtual PCD 00 00")  # never opened: the rule is pure logic
    reader._events, reader._handle = events, None
    counter = (events + moved) & 0xFFFF
    state = (counter << 16) | (scard.SCARD_STATE_PRESENT if present else scard.SCARD_STATE_EMPTY)
    if mute:
        state |= scard.SCARD_STATE_MUTE
    gone = reader._card_gone(state) and not reader._still_ours(state)
    assert gone == (not present or mute or moved >= 2)
