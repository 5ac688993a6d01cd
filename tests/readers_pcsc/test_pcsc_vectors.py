"""The golden vectors, byte for byte, through a real pcscd, the vpcd driver and our reader."""

from __future__ import annotations

from typing import Any

from farecore.card.apdu import AID
from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.proof import challenge_fields
from farecore.decide.validator import Validator
from farecore.gate.tap import run_tap
from readers.pcsc import PcscReader
from sim.card import VirtualCard
from sim.vpcd import VpcdCardServer

SELECT = bytes.fromhex("00A40400") + bytes([len(AID)]) + AID + b"\x00"
READ = bytes.fromhex("80B0000000")


def _card(case: dict[str, Any]) -> VirtualCard:
    key = case["card_key"]
    secret = key.get("ed25519_seed") or key["p256_private_scalar"]
    return VirtualCard(
        bytes.fromhex(case["credential"]),
        PrivateKey(Algorithm.from_label(key["algorithm"]), bytes.fromhex(secret)),
    )


def test_vectors_raw_apdus(
    vectors: dict[str, Any], card_server: VpcdCardServer, reader: PcscReader
) -> None:
    for case in vectors["cases"]:
        card_server.swap(_card(case))  # the first swap inserts; later ones keep the link
        channel = reader.wait_for_card(5)
        assert channel is not None
        assert channel.transmit(SELECT) == b"\x01\x00\x90\x00"
        assert channel.transmit(READ) == bytes.fromhex(case["credential"]) + b"\x90\x00"
        auth = bytes.fromhex("8088000020") + bytes.fromhex(case["challenge"]) + b"\x00"
        assert channel.transmit(auth) == bytes.fromhex(case["auth_response"]) + b"\x90\x00", case[
            "name"
        ]


def test_vectors_through_run_tap(
    vectors: dict[str, Any],
    keyring: Any,
    policy: Any,
    now_ms: int,
    card_server: VpcdCardServer,
    reader: PcscReader,
) -> None:
    validator = Validator(policy, keyring)
    for case in vectors["cases"]:
        terminal_id, time_ms, nonce = challenge_fields(bytes.fromhex(case["challenge"]))
        assert terminal_id == policy.terminal_id
        card_server.swap(_card(case))
        channel = reader.wait_for_card(5)
        assert channel is not None
        decision = run_tap(channel, validator, time_ms, nonce)
        assert decision.accepted == (case["expect"] == "ACCEPT"), (case["name"], decision)
        response = bytes.fromhex(case["auth_response"])
        assert decision.counter == int.from_bytes(response[:4], "big")
        assert decision.card_signature == response[4:]
        assert decision.credential == bytes.fromhex(case["credential"])
