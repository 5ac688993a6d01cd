"""Several gate processes on one host, one endpoint: multi-process mode with real processes.

Each gate here is a real process (this file run as a script: the driver at the bottom)
with a real ``Gate`` loop on a virtual reader, writing its metrics into one shared
directory. Whichever holds the address serves the host's sum; the tests kill gates with
SIGKILL and check that a dead gate's live gauges go while its counted taps stay, and that
a standing-by gate takes the endpoint over when the serving one dies.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
LIVE = (
    "farecore_gate_info",
    "farecore_reader_up",
    "farecore_revocation_generation",
    "farecore_revocation_table_created_timestamp_seconds",
    "farecore_clock_tolerance_seconds",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def series(samples: Samples, name: str, terminal: str) -> list[float]:
    return [
        v for (n, labels), v in samples.items() if n == name and ("terminal", terminal) in labels
    ]


def taps(samples: Samples, terminal: str, decision: str, reason: str) -> float | None:
    labels = frozenset({("terminal", terminal), ("decision", decision), ("reason", reason)})
    return samples.get(("farecore_taps_total", labels))


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


class Driver:
    """One gate process: send it a command, get its one-line answer."""

    def __init__(self, terminal: int, port: int, directory: Path) -> None:
        self.terminal = str(terminal)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(terminal), f"127.0.0.1:{port}", str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        ready = self.answer(60).split()
        assert ready[0] == "READY", ready
        self.serving = ready[1] == "serving=1"
        self.pid = self.proc.pid

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def answer(self, timeout: float = 150) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"gate {self.terminal} said nothing in {timeout} s") from None
        if line is None:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"gate {self.terminal} exited: {err[-2000:]}")
        return line

    def do(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        reply = self.answer()
        assert reply.startswith("OK"), reply
        return reply

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)  # reaped: its files are closed and its lock released

    def quit(self) -> None:
        self.do("quit")
        assert self.proc.wait(10) == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def host(tmp_path: Path, *terminals: int) -> Iterator[tuple[int, Path, list[Driver]]]:
    """Gate processes started one after the other on one port and one directory."""
    port = free_port()
    directory = tmp_path / "metrics"
    directory.mkdir()
    drivers: list[Driver] = []
    try:
        for t in terminals:
            drivers.append(Driver(t, port, directory))
        yield port, directory, drivers
    finally:
        for d in drivers:
            d.stop()


def live_files(directory: Path, pid: int) -> list[str]:
    return sorted(
        p.name for p in directory.iterdir() if p.name.endswith(f"_{pid}.db") and "live" in p.name
    ) + sorted(p.name for p in directory.iterdir() if p.name == f"live_{pid}.lock")


def test_one_endpoint_serves_the_sum_of_every_gate_process(tmp_path: Path) -> None:
    with host(tmp_path, 1001, 1002) as (port, _, (a, b)):
        assert a.serving and not b.serving  # the second found the address taken
        a.do("tap good 1")
        a.do("tap expired 2")
        b.do("tap good 3")
        b.do("tap good 4")
        b.do("lose")
        b.do("courier 40")
        got = scrape(port)
    assert taps(got, "1001", "ACCEPT", "none") == 1
    assert taps(got, "1001", "DENY", "EXPIRED") == 1
    assert taps(got, "1002", "ACCEPT", "none") == 2
    assert series(got, "farecore_reader_up", "1001") == [1]
    assert series(got, "farecore_reader_up", "1002") == [0]
    assert series(got, "farecore_tap_duration_seconds_count", "1002") == [2]
    assert series(got, "farecore_journal_pending_records", "1002") == [40]
    assert series(got, "farecore_journal_closed_days_pending", "1002") == [1]
    for name in LIVE:
        assert len(series(got, name, "1001")) == 1, name
    # The sum hides which process wrote what: no pid label reaches Prometheus.
    assert not [labels for (_, labels) in got if any(k == "pid" for k, _ in labels)]


def test_a_killed_gate_leaves_its_taps_but_no_live_gauge(tmp_path: Path) -> None:
    with host(tmp_path, 1001, 1002) as (port, directory, (a, b)):
        b.do("tap good 1")
        b.do("tap revoked 2")
        b.do("courier 7")
        assert live_files(directory, b.pid)
        b.kill()
        got = scrape(port)  # the serving gate finds b dead before it answers
        assert live_files(directory, b.pid) == []
        a.do("tap good 3")
        again = scrape(port)
    for name in LIVE:
        assert series(got, name, "1002") == [], name
        assert len(series(got, name, "1001")) == 1, name
    # Its counted taps stay in the sum: a counter must never go down.
    assert taps(got, "1002", "ACCEPT", "none") == 1
    assert taps(got, "1002", "DENY", "REVOKED") == 1
    # What a courier said stays true after it goes (the backlog it left is still there).
    assert series(got, "farecore_journal_pending_records", "1002") == [7]
    assert series(got, "farecore_journal_closed_days_pending", "1002") == [1]
    assert taps(again, "1001", "ACCEPT", "none") == 1
    assert taps(again, "1002", "ACCEPT", "none") == 1


def test_a_standing_by_gate_takes_over_the_endpoint_when_the_serving_one_dies(
    tmp_path: Path,
) -> None:
    with host(tmp_path, 1001, 1002) as (port, directory, (a, b)):
        a.do("tap good 1")
        a.do("tap good 2")
        b.do("tap good 3")
        a.kill()

        def answered() -> bool:
            try:
                scrape(port)
            except (urllib.error.URLError, ConnectionError):
                return False
            return True

        wait_for(answered, "the standing-by gate serving the address")
        wait_for(lambda: b.do("state") == "OK serving=1", "the gate saying it serves")
        got = scrape(port)
        assert live_files(directory, a.pid) == []
    for name in LIVE:
        assert series(got, name, "1001") == [], name
        assert len(series(got, name, "1002")) == 1, name
    assert taps(got, "1001", "ACCEPT", "none") == 2
    assert taps(got, "1002", "ACCEPT", "none") == 1


def test_a_gate_that_stops_cleanly_takes_its_live_gauges_at_once(tmp_path: Path) -> None:
    with host(tmp_path, 1001, 1002) as (port, directory, (a, b)):
        b.do("tap good 1")
        pid = b.pid
        b.quit()
        assert live_files(directory, pid) == []  # gone before any scrape swept
        got = scrape(port)
        a.quit()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    assert series(got, "farecore_reader_up", "1002") == []
    assert taps(got, "1002", "ACCEPT", "none") == 1
    assert live_files(directory, a.pid) == []


def test_multi_process_settings_that_cannot_work_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from farecore.errors import ConfigError
    from farecore.fleet.metrics import use_multiprocess_dir
    from farecore.fleet.metrics_http import start_gate_metrics

    with pytest.raises(ConfigError, match="no such directory"):
        use_multiprocess_dir(tmp_path / "absent")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR is .* but metrics"):
        use_multiprocess_dir(other)
    with pytest.raises(ConfigError, match="set in the environment but metrics.multiprocess_dir"):
        start_gate_metrics("127.0.0.1:0")


# --- the gate process these tests start --------------------------------------------------


def _drive(terminal: int, listen: str, directory: str) -> None:
    """A gate with its metrics in ``directory``; commands on stdin, one answer each."""
    from farecore.decide.checks import InMemoryRevocation, RevocationEntry
    from farecore.decide.validator import TerminalPolicy, Validator
    from farecore.fleet.metrics_http import start_gate_metrics
    from farecore.gate.runtime import Gate
    from readers.virtual import VirtualChannel, VirtualReader
    from sim.deck import Deck

    class Reader(VirtualReader):
        """The virtual reader, telling when the gate waits for a card: the next card
        must not come before the gate has seen the last one leave (it would wait for
        that one to leave, as for a card left on the reader)."""

        def __init__(self) -> None:
            super().__init__(f"gate-{terminal}")
            self.waiting = threading.Event()

        def wait_for_card(self, timeout: float) -> VirtualChannel | None:
            self.waiting.set()
            return super().wait_for_card(timeout)

    deck = Deck.from_seed("fleet-processes")
    service = start_gate_metrics(listen, directory, interval_s=0.1)
    reader = Reader()
    reader.open()
    revoked = InMemoryRevocation([RevocationEntry(deck.revoked_id, 1_790_000_000, 2)], 1)
    policy = TerminalPolicy(terminal, frozenset({370200}))
    gate = Gate(reader, Validator(policy, deck.issuer.keyring(), revoked))
    g = service.metrics.gate(terminal)
    g.attach("wusi", "bus")
    g.limits(max_age_s=172_800, clock_tolerance_s=300)
    g.revocation(1, time.time())
    gate.observer = g
    loop = threading.Thread(target=gate.run, kwargs={"poll_s": 0.02}, daemon=True)
    loop.start()
    print(f"READY serving={int(service.serving)}", flush=True)

    def until(check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 120  # a machine under load is slow, not broken
        while not check():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {line.strip()}")
            time.sleep(0.005)

    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "tap":
            want = gate.taps + 1
            reader.present(deck.card(args[0], int(args[1])))
            until(lambda: gate.taps >= want)  # noqa: B023 (waited for before the loop goes on)
            reader.waiting.clear()
            reader.remove()
            until(reader.waiting.is_set)
        elif cmd == "lose":
            reader.close()
            until(lambda: gate._reader_lost)
        elif cmd == "courier":
            g.journal_pending(int(args[0]))
            g.closed_days_pending(1)
            g.uploaded(time.time())
        elif cmd == "state":
            print(f"OK serving={int(service.serving)}", flush=True)
            continue
        elif cmd == "quit":
            gate.stop()
            loop.join(10)
            service.close()
            print("OK", flush=True)
            return
        print("OK", flush=True)


if __name__ == "__main__":
    _drive(int(sys.argv[1]), sys.argv[2], sys.argv[3])
