"""A real ``farecore gate`` process on ``pn532:`` over the emulated chip: mixed taps, 0 wrong.

The gate reads its JSON decision lines from stdout. Garbage bytes and damaged checksums
are put on the line throughout, and halfway the pty is closed and reopened under the
same path: the same gate process must notice, reconnect by itself and carry on.
"""

from __future__ import annotations

import json
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
from sim.pn532_emulator import Pn532Emulator

TAPS = 206
KINDS = ["good", "good", "good_p256", "forged", "clone", "revoked", "expired"]
REMOVED = ["removed_select", "removed_read", "removed_auth"]


def _config(deck: Any, tmp: Path) -> Path:
    from farecore.revocation import build_table

    signer = SigningKey("revocation", 77, derive_key("pn532-gate", "revocation"))
    _, pub = save_signing_key(signer, tmp / "revocation")
    build_table([deck.revoked_id], [1_790_000_000], [2], signer, 1, int(time.time()), tmp / "t.frt")
    deck.issuer.keyring().save(tmp / "keyring.json")
    cfg = tmp / "gate.toml"
    cfg.write_text(
        '[terminal]\nid = 51002\noperator = "qd-metro"\nline = "M3"\nplace = "wusi"\n'
        'role = "bus"\n[policy]\nregions = [370200]\n[keyring]\npath = "keyring.json"\n'
        '[journal]\npath = "journal.sqlite"\n'
        f'[revocation]\ntable = "t.frt"\nsigner = "{pub.name}"\n'
    )
    return cfg


def _pump(stream: TextIO, sink: queue.Queue[str | None]) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


@pytest.fixture
def gate(
    deck: Any, emulator: Pn532Emulator, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str | None], Path]]:
    err = tmp_path / "gate.err"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "farecore", "gate"),
            *("--reader", f"pn532:{emulator.path}"),
            *("--config", str(_config(deck, tmp_path)), "--quiet"),
        ],
        stdout=subprocess.PIPE,
        stderr=open(err, "w"),  # noqa: SIM115 - closed with the process
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    try:
        yield proc, lines, err
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
        raise AssertionError(
            f"gate wrote no line in {timeout} s:\n{err.read_text()[-2000:]}"
        ) from None
    assert line is not None, f"gate exited:\n{err.read_text()[-2000:]}"
    return json.loads(line)  # type: ignore[no-any-return]


def test_gate_process_mixed_taps_with_line_faults_and_reopen(
    deck: Any,
    emulator: Pn532Emulator,
    gate: tuple[subprocess.Popen[str], queue.Queue[str | None], Path],
) -> None:
    proc, lines, err = gate
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
        entry = _next_line(lines, err, timeout=20 if i == reopen_at else 5)
        got = entry["reason"] or entry["decision"]
        identified = kind not in ("removed_select", "removed_read")
        if got != deck.expected[kind] or (identified and entry["card_id"] != cards[i].card_id):
            wrong.append((i, kind, entry))
        emulator.remove()
    assert wrong == []
    assert len(plan) >= 200
    assert proc.poll() is None, "the gate must still be running"
    assert "reader unavailable" in err.read_text()  # it saw the port go, and carried on
    assert emulator.commands.count(0x14) == 2  # SAMConfiguration again: it reconnected
