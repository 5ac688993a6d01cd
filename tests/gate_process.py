"""Run a real ``farecore gate`` process in a test and read its JSON decision lines.

Shared by the transport tests (PC/SC, PN532): each writes a gate configuration with a
signed revocation table for its deck, starts the gate on its reader URL, and checks
every decision line against the card it presented.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from farecore.card.keys import SigningKey, save_signing_key
from farecore.decide.revocation import build_table
from sim.deck import Deck
from sim.issuer import derive_key

#: The kinds a gate-process test taps (good cards twice as often), and the pulled ones.
KINDS = ["good", "good", "good_p256", "forged", "clone", "revoked", "expired"]
REMOVED = ["removed_select", "removed_read", "removed_auth"]


def write_gate_config(deck: Deck, tmp: Path, terminal_id: int, seed: str) -> Path:
    """Keyring, a signed revocation table naming the deck's revoked card, and gate.toml."""
    signer = SigningKey("revocation", 77, derive_key(seed, "revocation"))
    _, pub = save_signing_key(signer, tmp / "revocation")
    build_table([deck.revoked_id], [1_790_000_000], [2], signer, 1, int(time.time()), tmp / "t.frt")
    deck.issuer.keyring().save(tmp / "keyring.json")
    cfg = tmp / "gate.toml"
    cfg.write_text(
        f'[terminal]\nid = {terminal_id}\noperator = "qd-metro"\nline = "M3"\nplace = "wusi"\n'
        'role = "bus"\n[policy]\nregions = [370200]\n[keyring]\npath = "keyring.json"\n'
        '[journal]\npath = "journal.sqlite"\n'
        f'[revocation]\ntable = "t.frt"\nsigner = "{pub.name}"\n'
    )
    return cfg


class GateProcess:
    """A running gate; ``next_decision`` returns its next JSON line as a dict."""

    def __init__(self, proc: subprocess.Popen[str], err: Path) -> None:
        self.proc = proc
        self.err = err
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stream: TextIO) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, timeout: float = 30) -> None:
        """Block until the gate says it is ready (it has loaded everything it decides from)."""
        deadline = time.monotonic() + timeout
        while "ready on" not in self.err.read_text():
            assert self.proc.poll() is None, f"gate exited:\n{self.err.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"gate not ready in {timeout} s"
            time.sleep(0.05)

    def next_decision(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            tail = self.err.read_text()[-2000:]
            raise AssertionError(f"gate wrote no line in {timeout} s:\n{tail}") from None
        assert line is not None, f"gate exited:\n{self.err.read_text()[-2000:]}"
        return json.loads(line)  # type: ignore[no-any-return]


@contextmanager
def gate_process(
    reader_url: str,
    config: Path,
    env: Mapping[str, str] | None = None,
    farecore: Sequence[str] = (sys.executable, "-m", "farecore"),
) -> Iterator[GateProcess]:
    """Start ``farecore gate --quiet`` (``farecore`` is how to run the command) and wait
    until it is ready; terminate it (then kill it) when the block ends."""
    err = config.parent / "gate.err"
    with open(err, "w") as err_file:
        proc = subprocess.Popen(
            [
                *farecore,
                "gate",
                "--reader",
                reader_url,
                "--config",
                str(config),
                "--quiet",
            ],
            stdout=subprocess.PIPE,
            stderr=err_file,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(env) if env is not None else None,
        )
    try:
        gate = GateProcess(proc, err)
        # Decisions are awaited with short timeouts; starting (imports, verifying the
        # table) may take seconds on a loaded machine, so it is awaited here.
        gate.wait_ready(60)
        yield gate
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
