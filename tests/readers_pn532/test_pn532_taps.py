"""Hundreds of mixed taps through our reader and the emulated PN532 on a real pty.

Line faults (garbage, a damaged checksum, a lost ACK, a swallowed command) are sprinkled
in; none may change a decision.
"""

from __future__ import annotations

import statistics
from typing import Any

from farecore.decide.decision import Decision
from farecore.gate.tap import run_tap
from readers.pn532 import Pn532Reader
from sim.pn532_emulator import Pn532Emulator


def tap(reader: Pn532Reader, emu: Pn532Emulator, card: Any, i: int, deck: Any) -> Decision:
    """Insert ``card``, run one tap at the deck's terminal time, pull the card out."""
    emu.insert(card)
    channel = reader.wait_for_card(2.0)
    assert channel is not None, f"tap {i}: no card found"
    decision = run_tap(channel, deck.validator(), deck.now_ms, i.to_bytes(16, "big"))
    emu.remove()
    assert reader.wait_for_removal(2.0)
    return decision


def test_mixed_taps_zero_wrong_decisions(
    deck: Any, emulator: Pn532Emulator, reader: Pn532Reader
) -> None:
    wrong: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    latencies: list[float] = []
    kinds = sorted(deck.expected)
    for i in range(216):
        kind = kinds[i % len(kinds)]
        if i % 11 == 3:
            emulator.inject_garbage(bytes([0x55, 0x00, 0xFF, 0x12, i & 0xFF]) * 3)
        if i % 13 == 5:
            emulator.corrupt_next_checksum()
        if i % 17 == 7:
            emulator.drop_next_ack()
        if i % 19 == 9:
            emulator.swallow_next_command()
        decision = tap(reader, emulator, deck.card(kind, 10_000 + i), i, deck)
        seen.add(decision.label)
        latencies.append(decision.timings.total_us / 1000)
        if decision.label != deck.expected[kind]:
            wrong.append((i, kind, decision.label))
    assert wrong == []
    assert seen == set(deck.expected.values())
    assert reader.resends > 0 and reader.nacks_sent > 0  # the faults really happened
    latencies.sort()
    print(
        f"run_tap over PN532 pty: p50 {statistics.median(latencies):.2f} ms,"
        f" p99 {latencies[int(len(latencies) * 0.99)]:.2f} ms"
    )


def test_mi_chaining_with_small_frames(deck: Any) -> None:
    # 40 data bytes per reply: READ CREDENTIAL (124+2 bytes) and AUTH need MI chaining.
    with Pn532Emulator(max_data=40) as emu, Pn532Reader(emu.path) as reader:
        for i, kind in enumerate(["good", "good_p256", "clone", "forged"]):
            decision = tap(reader, emu, deck.card(kind, 20_000 + i), i, deck)
            assert decision.label == deck.expected[kind]
        assert emu.commands.count(0x40) > 3 * 4
