"""A real ``farecore gate`` process that decides only from bytes it has verified.

On the emulated PN532: the published revocation table is written in place, truncated
and replaced under a gate serving a stream of taps; a restarted gate is handed an older
table; a gate's clock is set back a day, and to 2022.
Every decision stays what the verified table and a trusted clock say, and the gate
stays up.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gate_process import GateProcess, gate_process, write_gate_config

from farecore.card.keys import SigningKey
from farecore.decide.revocation import build_table
from sim.deck import Deck
from sim.issuer import derive_key
from sim.pn532_emulator import Pn532Emulator

SEED = "pn532-failsafe"
SIGNER = SigningKey("revocation", 77, derive_key(SEED, "revocation"))
IMPOSTOR = SigningKey("revocation", 77, derive_key("impostor", "revocation"))
GOOD, LATER_REVOKED = 31_001, 31_002


def _publish(path: Path, ids: list[int], generation: int, key: SigningKey = SIGNER) -> None:
    tmp = path.with_name("next.frt")
    build_table(
        ids, [1_790_000_000] * len(ids), [2] * len(ids), key, generation, int(time.time()), tmp
    )
    os.replace(tmp, path)


def _tap(emulator: Pn532Emulator, gate: GateProcess, card: Any) -> dict[str, Any]:
    emulator.insert(card)
    entry = gate.next_decision(timeout=10)
    emulator.remove()
    return entry


def _taps_during(
    emulator: Pn532Emulator, gate: GateProcess, deck: Deck, seconds: float
) -> list[tuple[int, str]]:
    """Tap the good and the revoked card in turn for ``seconds`` (the gate polls the
    published path every second); return (card id, decision) of each."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for card_id in (GOOD, deck.revoked_id, LATER_REVOKED):
            entry = _tap(emulator, gate, deck.issuer.card(card_id))
            seen.append((card_id, entry["reason"] or entry["decision"]))
    return seen


def test_the_published_table_attacked_under_a_gate_changes_no_decision(
    deck: Deck, emulator: Pn532Emulator, tmp_path: Path
) -> None:
    config = write_gate_config(deck, tmp_path, 52001, SEED)
    table = tmp_path / "t.frt"
    want = {GOOD: "ACCEPT", deck.revoked_id: "REVOKED", LATER_REVOKED: "ACCEPT"}
    attacks: list[tuple[str, Callable[[], None]]] = [
        ("in-place write", lambda: _zero_body(table)),
        ("in-place truncation", lambda: os.truncate(table, 100)),
        ("rename-over by an impostor", lambda: _publish(table, [], 9, IMPOSTOR)),
        ("rename-over, same generation", lambda: _publish(table, [], 1)),
    ]
    with gate_process(f"pn532:{emulator.path}", config) as gate:
        for what, attack in attacks:
            attack()
            decisions = _taps_during(emulator, gate, deck, 1.5)
            wrong = [(c, d) for c, d in decisions if d != want[c]]
            assert wrong == [], f"after the {what}: {wrong}"
        _publish(table, [deck.revoked_id, LATER_REVOKED], 2)
        deadline = time.monotonic() + 10
        while _tap(emulator, gate, deck.issuer.card(LATER_REVOKED))["reason"] != "REVOKED":
            assert time.monotonic() < deadline, "the newer table never went in force"
        entry = _tap(emulator, gate, deck.issuer.card(deck.revoked_id))
        assert entry["reason"] == "REVOKED" and entry["revocation_generation"] == 2
        assert gate.proc.poll() is None
    err = gate.err.read_text()
    assert "Traceback" not in err
    for why in ("reserved bytes", "truncated", "signature does not verify", "not newer"):
        assert why in err, why


def _zero_body(path: Path) -> None:
    with open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(256)
        fh.write(bytes(size - 256))
    # The header is untouched, so the gate's copy of that signed table stays in force:
    # now make the header say something else too, which its signature cannot cover.
    with open(path, "r+b") as fh:
        fh.seek(256 - 1)
        fh.write(b"\x01")


def test_a_restarted_gate_refuses_an_older_table(
    deck: Deck, emulator: Pn532Emulator, tmp_path: Path
) -> None:
    config = write_gate_config(deck, tmp_path, 52002, SEED)
    table = tmp_path / "t.frt"
    _publish(table, [deck.revoked_id, LATER_REVOKED], 2)
    with gate_process(f"pn532:{emulator.path}", config) as gate:
        entry = _tap(emulator, gate, deck.issuer.card(LATER_REVOKED))
        assert entry["reason"] == "REVOKED" and entry["revocation_generation"] == 2
    _publish(table, [deck.revoked_id], 1)  # generation 1 again: LATER_REVOKED was not in it
    with gate_process(f"pn532:{emulator.path}", config) as gate:
        entry = _tap(emulator, gate, deck.issuer.card(LATER_REVOKED))
        assert entry["reason"] == "REVOKED" and entry["revocation_generation"] == 2
    assert "older than generation 2, which this gate already held" in gate.err.read_text()


def _clock_set(spec: str) -> list[str]:
    """How to run farecore with its wall clock set (see skewed_clock.py)."""
    return [sys.executable, str(Path(__file__).parent.parent / "skewed_clock.py"), spec]


@pytest.mark.parametrize("clock", ["-86400", "@1654084800"])  # a day back; June 2022
def test_a_gate_whose_clock_went_back_refuses_every_ride(
    deck: Deck, emulator: Pn532Emulator, tmp_path: Path, clock: str
) -> None:
    config = write_gate_config(deck, tmp_path, 52003, SEED)
    # Valid from 2021 to 2023: expired today, valid by a clock set to 2022.
    lapsed = deck.issuer.card(GOOD + 1, valid_from=1_609_459_200, valid_until=1_672_531_200)
    with gate_process(f"pn532:{emulator.path}", config) as gate:
        assert _tap(emulator, gate, deck.issuer.card(GOOD))["decision"] == "ACCEPT"
        assert _tap(emulator, gate, lapsed)["reason"] == "EXPIRED"
    with gate_process(f"pn532:{emulator.path}", config, farecore=_clock_set(clock)) as gate:
        for card in (deck.issuer.card(GOOD), lapsed, deck.issuer.card(deck.revoked_id)):
            entry = _tap(emulator, gate, card)
            assert (entry["decision"], entry["reason"]) == ("DENY", "CLOCK_FAULT"), entry
        assert gate.proc.poll() is None
    assert "CLOCK FAULT" in gate.err.read_text()
    with gate_process(f"pn532:{emulator.path}", config) as gate:  # the clock is right again
        assert _tap(emulator, gate, deck.issuer.card(GOOD))["decision"] == "ACCEPT"
        assert _tap(emulator, gate, lapsed)["reason"] == "EXPIRED"
