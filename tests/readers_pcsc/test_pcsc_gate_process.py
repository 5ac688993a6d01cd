"""A real ``farecore gate`` process on ``pcsc:`` through pcscd + vpcd: mixed taps, 0 wrong.

pcscd sees an insertion or a removal only at its next presence poll (~400 ms), and the
gate waits for each card to leave. So the gate watches both vpcd slots
(``pcsc:Virtual PCD 00 0?``) and the test alternates them: as soon as the gate's JSON
line for one card arrives, that card is pulled and the next goes into the other slot,
which pcscd has already seen empty. Halfway, pcscd is SIGKILLed and restarted; the
same gate process must carry on.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from farecore.keys import SigningKey, save_signing_key
from sim.issuer import derive_key
from sim.pcscd import PcscDaemon
from sim.vpcd import VpcdCardServer

SLOTS = ("Virtual PCD 00 00", "Virtual PCD 00 01")
TAPS = int(os.environ.get("FARECORE_PCSC_GATE_TAPS", "200"))
KINDS = ["good", "good", "good_p256", "forged", "clone", "revoked", "expired"]
REMOVED = ["removed_select", "removed_read", "removed_auth"]


def _revocation_files(deck: Any, tmp: Path) -> str:
    """A signed revocation table naming the deck's revoked card, and its config lines."""
    from farecore.revocation import build_table

    signer = SigningKey("revocation", 77, derive_key("pcsc-gate", "revocation"))
    _, pub = save_signing_key(signer, tmp / "revocation")
    build_table([deck.revoked_id], [1_790_000_000], [2], signer, 1, int(time.time()), tmp / "t.frt")
    return f'[revocation]\ntable = "t.frt"\nsigner = "{pub.name}"\n'


def _config(deck: Any, tmp: Path) -> Path:
    deck.issuer.keyring().save(tmp / "keyring.json")
    cfg = tmp / "gate.toml"
    cfg.write_text(
        '[terminal]\nid = 51001\noperator = "qd-metro"\nline = "M3"\nplace = "wusi"\n'
        'role = "bus"\n[policy]\nregions = [370200]\n[keyring]\npath = "keyring.json"\n'
        '[journal]\npath = "journal.sqlite"\n' + _revocation_files(deck, tmp)
    )
    return cfg


def _pump(stream: TextIO, sink: queue.Queue[str | None]) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


@pytest.fixture
def gate_process(
    deck: Any, pcscd: PcscDaemon, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str | None], Path]]:
    env = {**os.environ, **pcscd.client_env}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "farecore",
            "gate",
            "--reader",
            "pcsc:Virtual PCD 00 0?",
            "--config",
            str(_config(deck, tmp_path)),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "gate.err", "w"),  # noqa: SIM115 - closed with the process
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    try:
        yield proc, lines, tmp_path / "gate.err"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _next_line(lines: queue.Queue[str | None], err: Path, timeout: float) -> dict[str, Any]:
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        tail = err.read_text()[-2000:]
        raise AssertionError(f"gate wrote no line in {timeout} s:\n{tail}") from None
    assert line is not None, f"gate exited:\n{err.read_text()[-2000:]}"
    return json.loads(line)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_gate_process_mixed_taps_with_pcscd_restart(
    deck: Any,
    pcscd: PcscDaemon,
    card_server: VpcdCardServer,
    card_server_01: VpcdCardServer,
    gate_process: tuple[subprocess.Popen[str], queue.Queue[str | None], Path],
) -> None:
    proc, lines, err = gate_process
    servers = (card_server, card_server_01)
    rng = random.Random(51)
    plan = [rng.choice(KINDS) for _ in range(TAPS - 6)] + REMOVED * 2
    rng.shuffle(plan)
    cards = [deck.card(kind, card_id=20_000 + i) for i, kind in enumerate(plan)]
    wrong: list[tuple[int, str, Any]] = []
    restart_at = TAPS // 2
    servers[0].insert(cards[0])
    for i, kind in enumerate(plan):
        entry = _next_line(lines, err, timeout=20 if i == restart_at else 5)
        want = deck.expected[kind]
        got = entry["reason"] or entry["decision"]
        # A card whose credential was read is identified: the gate served *this* card.
        identified = kind not in ("removed_select", "removed_read")
        if got != want or (identified and entry["card_id"] != cards[i].card_id):
            wrong.append((i, kind, entry))
        servers[i % 2].remove()
        if i + 1 < len(plan):
            # The other slot's last card left before the gate served this one, so
            # pcscd already sees it empty: the new card cannot be confused with it.
            servers[(i + 1) % 2].insert(cards[i + 1])
        if i + 1 == restart_at:
            pcscd.kill()
            time.sleep(0.3)
            pcscd.start()
    assert wrong == []
    assert len(plan) >= 200 or TAPS < 200
    assert proc.poll() is None, "the gate must still be running"
    assert "reader unavailable" in err.read_text()  # it saw pcscd go, and carried on
