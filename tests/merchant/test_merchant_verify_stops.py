"""``farecore verify`` stops in the two ways its session does not see coming: the
merchant's software closes standard output after a claim is journaled, and Ctrl-C or
SIGTERM while the till is still starting (a PN532 on a serial line that never answers,
a real pty). Each is a real process: the first exits 0, the second as a gate does (130
for Ctrl-C with one line, killed by SIGTERM), with nothing journaled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from merchant_world import World, env, make_world

from farecore.journal.reader import JournalReader
from farecore.journal.terminal import Journal


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = make_world(tmp_path_factory.mktemp("stops"))
    w.card("alice", 42)
    return w


def _start(world: World, tid: int, reader: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "farecore", "verify", "--config", str(world.root / f"till-{tid}.toml"),
         "--merchant", world.tills[tid][0], "--reader", reader, "--tap-timeout", "20"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), **kw,
    )  # fmt: skip


def _await_line(p: subprocess.Popen[str], words: str) -> list[str]:
    assert p.stderr is not None
    seen = []
    while not seen or words not in seen[-1]:
        line = p.stderr.readline()
        assert line, f"ended before {words!r}: {seen}"
        seen.append(line)
    return seen


def test_stdout_closed_after_a_claim_stops_the_till_with_the_claim_journaled(
    world: World,
) -> None:
    world.till(6001)
    card = str(world.root / "alice.card")
    p = _start(world, 6001, f"virtual:{card},{card}", stdout=subprocess.PIPE)
    assert p.stdin is not None and p.stdout is not None and p.stderr is not None
    _await_line(p, "ready")
    p.stdin.write("10\n")
    p.stdin.flush()
    assert '"seq":1' in p.stdout.readline()
    p.stdout.close()  # the merchant's software goes away
    p.stdin.write("20\n30\n")
    p.stdin.close()
    assert p.wait(timeout=60) == 0
    err = p.stderr.read()
    assert "standard output closed after claim 2 (journaled)" in err, err
    assert "stopped after 2 claims" in err and "journal closed" in err
    assert "Traceback" not in err and "Exception ignored" not in err
    with JournalReader(world.root / "claims-6001.sqlite") as r:
        assert [rec.seq for rec in r.records()] == [1, 2]  # the third amount is never served


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_stops_the_till_cleanly(
    world: World, signum: signal.Signals
) -> None:
    pytest.importorskip("serial")
    world.till(6002)
    controller, device = os.openpty()  # a PN532 that never answers: start-up waits
    try:
        p = _start(world, 6002, f"pn532:{os.ttyname(device)}", stdout=subprocess.DEVNULL)
        _await_line(p, "in force")  # the table is read; the reader is being opened
        p.send_signal(signum)
        _, err = p.communicate(timeout=30)
    finally:
        os.close(controller)
        os.close(device)
    # As a gate: a stop while starting ends the process at once, nothing journaled.
    if signum == signal.SIGINT:
        assert p.returncode == 130, err
        assert err.strip().endswith("interrupted"), err
    else:
        assert p.returncode == -signal.SIGTERM, err
    assert "Traceback" not in err
    claims = world.root / "claims-6002.sqlite"
    if claims.exists():  # stopped while it was being made: the next start takes it up
        Journal.open(claims, 6002).close()
        assert _count(world, 6002) == 0


def _count(world: World, tid: int) -> int:
    with JournalReader(world.root / f"claims-{tid}.sqlite") as r:
        return sum(1 for _ in r.records())
