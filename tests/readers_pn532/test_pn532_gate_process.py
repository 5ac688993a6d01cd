"""A real ``farecore gate`` process on ``pn532:`` over the emulated chip: mixed taps, 0 wrong.

The gate reads its JSON decision lines from stdout. Garbage bytes and damaged checksums
are put on the line throughout, and halfway the pty is closed and reopened under the
same path: the same gate process must notice, reconnect by itself and carry on.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from gate_process import KINDS, REMOVED, gate_process, write_gate_config

from sim.pn532_emulator import Pn532Emulator

TAPS = 206


def test_gate_process_mixed_taps_with_line_faults_and_reopen(
    deck: Any,
    emulator: Pn532Emulator,
    tmp_path: Path,
) -> None:
    config = write_gate_config(deck, tmp_path, 51002, "pn532-gate")
    with gate_process(f"pn532:{emulator.path}", config) as gate:
        _serve_plan(deck, emulator, gate)


def _serve_plan(deck: Any, emulator: Pn532Emulator, gate: Any) -> None:
    rng = random.Random(532)
    plan = [rng.choice(KINDS) for _ in range(TAPS - 6)] + REMOVED * 2
    rng.shuffle(plan)
    cards = [deck.card(kind, card_id=30_000 + i) for i, kind in enumerate(plan)]
    reopen_at = TAPS // 2
    wrong: list[tuple[int, str, Any]] = []
    for i, kind in enumerate(plan):
        if i == reopen_at:
            # Close the port while the gate polls for a card (not while it waits for
            # a removal, where a failure is silently the end of the wait).
            n = len(emulator.commands)
            deadline = time.monotonic() + 5
            while not (len(emulator.commands) > n and emulator.commands[-1] == 0x4A):
                assert time.monotonic() < deadline, "gate stopped polling"
                time.sleep(0.005)
            emulator.reopen()
        if i % 10 == 4:
            emulator.inject_garbage(bytes([0x00, 0x00, 0xFF, 0x07, 0x55, i & 0xFF]))
        if i % 15 == 6:
            emulator.corrupt_next_checksum()
        emulator.insert(cards[i])
        entry = gate.next_decision(timeout=20 if i == reopen_at else 5)
        got = entry["reason"] or entry["decision"]
        identified = kind not in ("removed_select", "removed_read")
        if got != deck.expected[kind] or (identified and entry["card_id"] != cards[i].card_id):
            wrong.append((i, kind, entry))
        emulator.remove()
    assert wrong == []
    assert len(plan) >= 200
    assert gate.proc.poll() is None, "the gate must still be running"
    assert "reader unavailable" in gate.err.read_text()  # it saw the port go, and carried on
    assert emulator.commands.count(0x14) == 2  # SAMConfiguration again: it reconnected
