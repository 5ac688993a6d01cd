"""Crash test: a real gate process SIGKILLed at random points never loses an opened ride."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from journal_support import TERMINAL_ID

from farecore.journal.terminal import JournalReader

DRIVER = Path(__file__).with_name("journal_gate_driver.py")


def _run_and_kill(
    journal: Path, store: Path, rng: random.Random, extra: list[str]
) -> tuple[int, list[int]]:
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), str(journal), str(store), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    opened: list[int] = []
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready and ready[0] == "READY", ready
        start = int(ready[1])
        target = rng.randint(1, 25)
        while len(opened) < target:
            line = proc.stdout.readline()
            if not line:
                break
            opened.append(int(line.split()[1]))
        time.sleep(rng.random() * 0.02)  # kill mid-append as often as between appends
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # Lines already written to the pipe before the kill were also signalled "open".
        opened += [int(ln.split()[1]) for ln in proc.stdout.read().splitlines() if ln]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return start, opened


@pytest.mark.parametrize("group", [None, "3"])
def test_sigkill_loses_no_opened_ride(tmp_path: Path, group: str | None) -> None:
    rng = random.Random(20261129 if group is None else 7)
    journal, store = tmp_path / "gate.sqlite", tmp_path / "station.sqlite"
    all_opened: list[int] = []
    last_seen = 0
    kills = 20 if group is None else 6
    for _ in range(kills):
        start, opened = _run_and_kill(journal, store, rng, [group] if group else [])
        assert start >= last_seen  # the restarted process continues, never rewinds
        all_opened += opened
        with JournalReader(journal) as r:
            count = r.verify_chain()  # every link verifies and no seq is missing
        assert count >= start
        last_seen = count
    with JournalReader(journal) as r:
        assert r.terminal_id == TERMINAL_ID
        records = {rec.seq: rec for rec in r.records()}
    assert sorted(records) == list(range(1, len(records) + 1))
    for seq in all_opened:
        assert seq in records and records[seq].accepted, f"opened ride {seq} was lost"
    assert len(set(all_opened)) == len(all_opened)
    assert len(all_opened) >= kills
