"""Real parts for the collection point and courier tests (imported by them; its own
tests check that the parts are what the others assume).

Journals hold real rides: sim cards tapped through the virtual reader and decided by a
real validator, written by ``Journal``. Keys are derived from a fixed seed, so a day's
batch has the same bytes whenever it is exported (Ed25519 signs deterministically).
``collect_process`` runs a real ``farecore collect``; ``CutProxy`` is a TCP relay that
can stop forwarding after a given number of bytes.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from farecore.card.crypto import Algorithm
from farecore.card.keys import SigningKey
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import run_tap
from farecore.journal.batch import day_bounds_ms, export_batch
from farecore.journal.terminal import Direction, Journal, TapContext
from farecore.settlement.terminals import TerminalInfo, format_terminals
from readers.virtual import VirtualReader
from sim.card import VirtualCard
from sim.issuer import Issuer, derive_key

SEED = "fleet-collect-tests"
TID = 4242
OTHER_TID = 4243
DAY = dt.date(2026, 3, 2)
TZ = 480
CTX = TapContext("qd-bus", "1", "V1", Direction.BOARD)


def terminal_key(tid: int = TID, algorithm: Algorithm = Algorithm.ED25519) -> SigningKey:
    return SigningKey("terminal", tid, derive_key(SEED, f"terminal-{tid}", algorithm))


def day_ms(day: dt.date, hour: float) -> int:
    return day_bounds_ms(day, TZ)[0] + int(hour * 3_600_000)


def write_register(path: Path, keys: list[SigningKey]) -> Path:
    infos = [
        TerminalInfo(
            k.key_id,
            "qd-bus",
            "1",
            "V1",
            Direction.BOARD,
            k.algorithm,
            k.private.public_bytes,
            0,
            0,
        )
        for k in keys
    ]
    path.write_text(format_terminals(infos))
    return path


@dataclass
class Tapper:
    """Taps real cards at one terminal and journals the decisions."""

    journal: Journal
    issuer: Issuer
    validator: Validator
    reader: VirtualReader
    cards: dict[int, VirtualCard]
    rng: random.Random

    def tap(self, card_id: int, time_ms: int) -> None:
        card = self.cards.get(card_id)
        if card is None:
            card = self.cards[card_id] = self.issuer.card(card_id)
        decision = run_tap(self.reader.tap(card), self.validator, time_ms, self.rng.randbytes(16))
        self.journal.append(decision, CTX)

    def day(self, day: dt.date, taps: int, seed: int = 1) -> None:
        """``taps`` rides spread over ``day`` (06:00 to 22:00), in time order."""
        rng = random.Random(seed)
        times = sorted(rng.randrange(day_ms(day, 6), day_ms(day, 22)) for _ in range(taps))
        for t in times:
            self.tap(rng.randint(1, 40), t)


@contextmanager
def tapper(path: Path, tid: int = TID) -> Iterator[Tapper]:
    issuer = Issuer.from_seed(SEED)
    journal = Journal.open(path, tid)
    try:
        yield Tapper(
            journal,
            issuer,
            Validator(TerminalPolicy(tid, frozenset({370200})), issuer.keyring()),
            VirtualReader(),
            {},
            random.Random(tid),
        )
    finally:
        journal.close()


def batch_of(journal: Path, day: dt.date, key: SigningKey | None = None) -> bytes:
    key = key or terminal_key()
    return export_batch(journal, day, key, TZ, key.key_id)


@dataclass
class CollectProcess:
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    stderr: Path
    root: Path

    def log(self) -> str:
        return self.stderr.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


def start_collect(
    root: Path, register: Path, *extra: str, listen: str = "127.0.0.1:0"
) -> CollectProcess:
    """Start ``farecore collect`` and wait for its ``ready`` line."""
    root.mkdir(parents=True, exist_ok=True)
    err = root.parent / f"{root.name}-collect.err"
    with open(err, "wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "farecore",
                "collect",
                "--dir",
                str(root),
                "--register",
                str(register),
                "--listen",
                listen,
                "--tz",
                "+08:00",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=fh,
        )
    assert proc.stdout is not None
    line = _read_line(proc, 30.0)
    if not line.startswith("ready "):
        proc.kill()
        proc.wait()
        raise AssertionError(f"no ready line: {line!r}; stderr: {err.read_text()}")
    url = line.split()[1]
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    return CollectProcess(proc, url, port, err, root)


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            break
        piece = os.read(fd, 1)
        if not piece:
            break
        buf += piece
    sel.close()
    return buf.decode()


@contextmanager
def collect_process(root: Path, register: Path, *extra: str) -> Iterator[CollectProcess]:
    cp = start_collect(root, register, *extra)
    try:
        yield cp
    finally:
        status = cp.stop()
        assert status == 0, cp.log()
        assert "Traceback" not in cp.log(), cp.log()


class CutProxy:
    """A TCP relay to ``port``. With ``cut_after`` set, it forwards that many bytes from
    the client, then sets ``held`` and forwards nothing more; ``drop`` then closes both
    sides of every connection. Without it, it relays everything."""

    def __init__(self, port: int, listen_port: int = 0) -> None:
        self.target = port
        self.cut_after: int | None = None
        self.forwarded = 0
        self.held = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", listen_port))
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._socks += [client, upstream]
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if self.cut_after is not None:
                        room = self.cut_after - self.forwarded
                        data = data[: max(0, room)]
                    self.forwarded += len(data)
                    full = self.cut_after is not None and self.forwarded >= self.cut_after
                if data:
                    dst.sendall(data)
                if full:
                    self.held.set()
                    return  # hold: read nothing more, forward nothing more
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _down(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def drop(self) -> None:
        """Close every connection, both sides (the point sees its client gone)."""
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def relay_all(self) -> None:
        with self._lock:
            self.cut_after = None
        self.held.clear()

    def close(self) -> None:
        self._listener.close()
        self.drop()


def test_journal_days_export_deterministically(tmp_path: Path) -> None:
    """What the other tests assume: a day's batch has the same bytes each export."""
    with tapper(tmp_path / "j.sqlite") as t:
        t.day(DAY, 30)
        a = batch_of(tmp_path / "j.sqlite", DAY)
        b = batch_of(tmp_path / "j.sqlite", DAY)
    assert a == b and len(a) > 30 * 200
