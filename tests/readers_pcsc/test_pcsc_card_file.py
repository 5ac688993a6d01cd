"""A card file (``farecore card new``) served by ``python -m sim.vpcd --card-file`` to a
real pcscd: a gate's reader and validator accept it, and its counter is saved."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from farecore.card.cardfile import load_card_file
from farecore.card.crypto import Algorithm
from farecore.card.keys import IssuerKey, Keyring, load_private_key, new_key_pair
from farecore.cli import main
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import run_tap
from readers.pcsc import PcscReader
from sim.pcscd import PcscDaemon

READER_01 = "Virtual PCD 00 01"


def test_vpcd_serves_a_card_file_a_gate_accepts(
    tmp_path: Path, pcscd: PcscDaemon, field: Callable[..., None], now_ms: int
) -> None:
    new_key_pair("issuer", 3, tmp_path / "issuer", Algorithm.ED25519)
    card = tmp_path / "alice.card"
    assert main([
        "card", "new", "--key", str(tmp_path / "issuer.key"), "--id", "77", "--category", "2",
        "--region", "370200", "--valid-from", "2026-01-01T00:00:00Z", "--out", str(card),
    ]) == 0  # fmt: skip
    public = load_private_key(tmp_path / "issuer.key").public()
    ring = Keyring([IssuerKey(public.key_id, public.algorithm, public.public_key)])
    validator = Validator(TerminalPolicy(1001, frozenset({370200})), ring)
    field(READER_01)
    server = subprocess.Popen(
        [sys.executable, "-m", "sim.vpcd", "--port", str(pcscd.port + 1), "--card-file", str(card)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert "card 77 inserted" in server.stdout.readline()
        with PcscReader(READER_01) as reader:
            channel = reader.wait_for_card(10)
            assert channel is not None, "pcscd never saw the card file's card"
            decision = run_tap(channel, validator, now_ms, bytes(16))
        assert decision.accepted, decision
        assert decision.card_id == 77
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
    assert load_card_file(card).counter == 1
    field(READER_01)
