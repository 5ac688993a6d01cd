"""Independent PN532 clients accept the emulator: libnfc's nfc-list and nfcpy.

Both are real third-party stacks talking HSU frames over a real pty; neither knows
anything about farecore, so they check the emulator, not our reader.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import nfc

from farecore.card.apdu import AID
from farecore.card.credential import parse_unverified
from farecore.card.crypto import Algorithm, PrivateKey, load_public_key
from farecore.card.proof import parse_auth_response, verify_card_signature
from sim.card import VirtualCard
from sim.issuer import Issuer
from sim.pn532_emulator import Pn532Emulator


def _vector_card(case: dict[str, Any]) -> VirtualCard:
    key = case["card_key"]
    secret = key.get("ed25519_seed") or key["p256_private_scalar"]
    return VirtualCard(
        bytes.fromhex(case["credential"]),
        PrivateKey(Algorithm.from_label(key["algorithm"]), bytes.fromhex(secret)),
    )


def test_nfc_list_prints_the_uid(tmp_path: Path) -> None:
    card = Issuer.from_seed("pn532-tests", key_id=9).card(0x0A0B0C0D)
    with Pn532Emulator(str(tmp_path / "pn532")) as emu:
        emu.insert(card)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIBNFC_")}
        env.update(LIBNFC_AUTO_SCAN="false", LIBNFC_DEVICE=f"pn532_uart:{emu.path}")
        run = subprocess.run(
            ["nfc-list", "-v"], env=env, capture_output=True, text=True, timeout=30
        )
    assert run.returncode == 0, run.stderr
    assert "1 ISO14443A passive target(s) found" in run.stdout
    assert "UID (NFCID1): 0a  0b  0c  0d" in run.stdout
    assert "Compliant with ISO/IEC 14443-4" in run.stdout
    assert "0 Felica" in run.stdout  # the other probes see no phantom cards


def test_nfcpy_selects_and_authenticates_golden_card(vectors: dict[str, Any]) -> None:
    case = next(c for c in vectors["cases"] if c["expect"] == "ACCEPT")
    card = _vector_card(case)
    name = f"farecore-pn532-{os.getpid()}"
    link = f"/dev/{name}"  # nfcpy looks for tty:NAME under /dev only
    with Pn532Emulator(link) as emu:
        emu.insert(card)
        clf = nfc.ContactlessFrontend(f"tty:{name}:pn532")
        try:
            tag = clf.connect(rdwr={"on-connect": lambda tag: False})
            assert tag is not None and tag.type == "Type4Tag"
            select = tag.send_apdu(0x00, 0xA4, 0x04, 0x00, AID, mrl=256, check_status=False)
            assert select == b"\x01\x00\x90\x00"
            challenge = bytes.fromhex(case["challenge"])
            auth = tag.send_apdu(0x80, 0x88, 0x00, 0x00, challenge, mrl=256, check_status=False)
        finally:
            clf.close()
        assert 0x10 in emu.commands  # nfcpy asked for a faster line
        assert 0x42 in emu.commands  # ISO-DEP went through InCommunicateThru
    assert not os.path.lexists(link)
    assert auth == bytes.fromhex(case["auth_response"]) + b"\x90\x00"
    credential = parse_unverified(bytes.fromhex(case["credential"]))
    counter, signature = parse_auth_response(auth[:-2])
    f = credential.fields
    key = load_public_key(f.card_key_algorithm, f.card_public_key)
    verify_card_signature(key, f.card_id, counter, challenge, signature)  # raises if bad
