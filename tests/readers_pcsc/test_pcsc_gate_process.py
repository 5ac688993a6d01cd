"""A real ``farecore gate`` process on ``pcsc:`` through pcscd + vpcd: mixed taps, 0 wrong.

pcscd sees an insertion or a removal only at its next presence poll (~400 ms), and the
gate waits for each card to leave. So the gate watches both vpcd slots
(``pcsc:Virtual PCD 00 0?``) and the test alternates them: as soon as the gate's JSON
line for one card arrives, that card is pulled and the next goes into the other slot,
once pcscd itself reports that slot empty (a loaded machine can delay pcscd's poll past
the card server's reconnect pause, and a card that physically left is gone at once for a
real reader, never "still present" to a new tap). Halfway, pcscd is SIGKILLed and restarted; the
same gate process must carry on.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gate_process import KINDS, REMOVED, gate_process, write_gate_config

from sim.pcscd import PcscDaemon
from sim.vpcd import VpcdCardServer

SLOTS = ("Virtual PCD 00 00", "Virtual PCD 00 01")
TAPS = int(os.environ.get("FARECORE_PCSC_GATE_TAPS", "200"))


@pytest.mark.slow
def test_gate_process_mixed_taps_with_pcscd_restart(
    deck: Any,
    pcscd: PcscDaemon,
    card_server: VpcdCardServer,
    card_server_01: VpcdCardServer,
    field: Callable[..., None],
    tmp_path: Path,
) -> None:
    config = write_gate_config(deck, tmp_path, 51001, "pcsc-gate")
    with gate_process("pcsc:Virtual PCD 00 0?", config, {**os.environ, **pcscd.client_env}) as gate:
        _serve_plan(deck, pcscd, (card_server, card_server_01), gate, field)


def _serve_plan(
    deck: Any,
    pcscd: PcscDaemon,
    servers: tuple[VpcdCardServer, ...],
    gate: Any,
    field: Callable[..., None],
) -> None:
    rng = random.Random(51)
    plan = [rng.choice(KINDS) for _ in range(TAPS - 6)] + REMOVED * 2
    rng.shuffle(plan)
    cards = [deck.card(kind, card_id=20_000 + i) for i, kind in enumerate(plan)]
    wrong: list[tuple[int, str, Any]] = []
    seen: list[dict[str, Any]] = []  # every decision line, in order
    logs: list[str] = []  # card servers' events and pcscd's log around each wrong tap
    restart_at = TAPS // 2
    mark = _log_size(pcscd)
    servers[0].insert(cards[0])
    for i, kind in enumerate(plan):
        entry = gate.next_decision(timeout=20 if i == restart_at else 5)
        want = deck.expected[kind]
        got = entry["reason"] or entry["decision"]
        # A card whose credential was read is identified: the gate served *this* card.
        identified = kind not in ("removed_select", "removed_read")
        seen.append(entry)
        if got != want or (identified and entry["card_id"] != cards[i].card_id):
            wrong.append((i, kind, entry))
            t0 = time.monotonic()
            logs.append(f"tap {i} on card server {i % 2}; the decisions before it:")
            logs += [f"  {e}" for e in seen[-4:-1]]
            for n, server in enumerate(servers):
                logs.append(f"card server {n} (times relative to tap {i}'s decision):")
                logs += [f"  {t - t0:+.3f} s {what}" for t, what in list(server.events)[-24:]]
            log = pcscd._log_since(mark).decode("utf-8", "replace")
            logs.append(f"pcscd log since the insertion, last 8000 of {len(log)} characters:")
            logs.append(log[-8000:])
        servers[i % 2].remove()
        if i + 1 < len(plan):
            # The other slot's last card left before the gate served this one; wait
            # until pcscd has polled and seen it go, so the new card is never confused
            # with it.
            field(SLOTS[(i + 1) % 2], present=False)
            mark = _log_size(pcscd)
            servers[(i + 1) % 2].insert(cards[i + 1])
        if i + 1 == restart_at:
            pcscd.kill()
            time.sleep(0.3)
            pcscd.start()
    assert wrong == [], "\n".join(
        [f"tap {i} ({kind}): {entry}" for i, kind, entry in wrong]
        + ["gate stderr:", gate.err.read_text()[-3000:], *logs]
    )
    assert len(plan) >= 200 or TAPS < 200
    assert gate.proc.poll() is None, "the gate must still be running"
    assert "reader unavailable" in gate.err.read_text()  # it saw pcscd go, and carried on


def _log_size(pcscd: PcscDaemon) -> int:
    try:
        return pcscd.log_path.stat().st_size
    except FileNotFoundError:
        return 0
