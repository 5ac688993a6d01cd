"""CARD-SPEC §3: a card behind a T=0 transport gets one decision on every reader kind.

The same card, answering 61xx and 6Cxx, taps through the virtual reader, a real pcscd
with the vpcd virtual reader, and our PN532 driver on an emulated PN532 on a pty: every
reader completes the transport once (``farecore.card.apdu.complete_t0``) and decides alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_pcsc_reader import T0Card

from farecore.gate.reader_port import Reader
from farecore.gate.tap import run_tap
from readers.pcsc import PcscReader
from readers.pn532 import Pn532Reader
from readers.virtual import VirtualReader
from sim.pn532_emulator import Pn532Emulator
from sim.vpcd import VpcdCardServer


def _decide(reader: Reader, deck: Any, now_ms: int) -> str:
    channel = reader.wait_for_card(5)
    assert channel is not None
    return run_tap(channel, deck.validator(), now_ms, bytes(16)).label


@pytest.mark.parametrize(
    ("parts", "wrong_le", "expected"),
    [(1, False, "ACCEPT"), (1, True, "ACCEPT"), (2, False, "UNREADABLE")],
)
def test_the_same_card_gets_the_same_decision_on_every_reader(
    deck: Any,
    card_server: VpcdCardServer,
    reader: PcscReader,
    tmp_path: Path,
    now_ms: int,
    parts: int,
    wrong_le: bool,
    expected: str,
) -> None:
    def card() -> T0Card:
        return T0Card(deck.card("good", card_id=500), parts, wrong_le)

    got = {}
    virtual = VirtualReader()
    virtual.open()
    virtual.present(card())
    got["virtual"] = _decide(virtual, deck, now_ms)
    card_server.swap(card())
    got["pcsc"] = _decide(reader, deck, now_ms)
    with Pn532Emulator(str(tmp_path / "pn532")) as emu, Pn532Reader(emu.path) as pn532:
        emu.insert(card())
        got["pn532"] = _decide(pn532, deck, now_ms)
    assert got == {"virtual": expected, "pcsc": expected, "pn532": expected}
