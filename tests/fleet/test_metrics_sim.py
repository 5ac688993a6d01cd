"""The simulator's endpoint: every simulated gate's metrics, during the day and after it.

A small day runs through ``farecore sim --metrics-listen`` in two worker processes. While
a worker is stopped (SIGSTOP) mid-day, the endpoint shows its gates as live gates; after
the day, while the simulator lingers, the counted taps equal the day's decisions and no
gate claims to be alive any more.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by_terminal(samples: Samples, name: str) -> dict[str, float]:
    return {dict(labels)["terminal"]: v for (n, labels), v in samples.items() if n == name}


#: What a simulated gate's process says of it while it runs (set when the gate is built).
LIVE = (
    "farecore_gate_info",
    "farecore_reader_up",
    "farecore_revocation_generation",
    "farecore_revocation_max_age_seconds",
    "farecore_clock_tolerance_seconds",
    "farecore_clock_fault",
)


def built(samples: Samples) -> set[str]:
    """The terminals whose every live gauge is there (a worker stopped while it builds
    its gates may have said only part of it for the last one)."""
    sets = [set(by_terminal(samples, name)) for name in LIVE]
    return set.intersection(*sets)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _catch_a_worker_mid_day(directory: Path, port: int, proc: subprocess.Popen[str]) -> Samples:
    """Once a worker has written live gauges (its gates are being built), stop it,
    scrape, and let it go on: a stopped worker can neither finish its day nor exit
    between the check and the scrape, and it runs freely between two tries."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the simulator ended before a worker was caught"
        for live in directory.glob("gauge_livemostrecent_*.db"):
            pid = int(live.stem.rsplit("_", 1)[1])
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            try:
                got = scrape(port) if live.exists() else {}
            finally:
                os.kill(pid, signal.SIGCONT)
            if built(got):
                return got
            time.sleep(0.05)
        time.sleep(0.002)
    raise AssertionError("no worker with built gates was caught in 600 s")


def test_the_simulator_serves_every_simulated_gate(tmp_path: Path) -> None:
    port = free_port()
    directory = tmp_path / "metrics"
    directory.mkdir()
    out = tmp_path / "run"
    args = ["--cards", "300", "--taps", "600", "--gates", "6", "--workers", "2", "--no-plots"]
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "farecore", "sim", "--out", str(out), *args),
            *(f"--metrics-listen=127.0.0.1:{port}", f"--metrics-dir={directory}"),
            *("--metrics-linger", "300"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        during = _catch_a_worker_mid_day(directory, port, proc)
        deadline = time.monotonic() + 600
        while not (out / "summary.json").exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no summary in 600 s"
            time.sleep(0.05)
        time.sleep(0.2)  # summary.json is written just before the summary is printed
        after = scrape(port)
        proc.send_signal(signal.SIGINT)  # ends the linger
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    terminals = {p.stem.split("-")[1] for p in (out / "gates").glob("gate-*.toml")}
    assert len(terminals) == 6

    live = built(during)
    assert live and live <= terminals
    for t in live:
        assert by_terminal(during, "farecore_reader_up")[t] == 1
        assert by_terminal(during, "farecore_clock_fault")[t] == 0
        assert by_terminal(during, "farecore_revocation_generation")[t] in (1, 2)
        assert by_terminal(during, "farecore_revocation_max_age_seconds")[t] == 172_800

    # After the day: every decision counted, by reason, and for every gate.
    counted: dict[str, float] = {}
    per_gate: dict[str, float] = {}
    for (name, labels), v in after.items():
        if name == "farecore_taps_total":
            lab = dict(labels)
            reason = "ACCEPT" if lab["decision"] == "ACCEPT" else lab["reason"]
            counted[reason] = counted.get(reason, 0) + v
            per_gate[lab["terminal"]] = per_gate.get(lab["terminal"], 0) + v
    assert {k: v for k, v in counted.items() if v} == summary["decisions_by_reason"]
    assert set(per_gate) == terminals and sum(per_gate.values()) == summary["taps"]
    assert sum(by_terminal(after, "farecore_tap_duration_seconds_count").values()) == 600
    # The workers are gone: none of their gates says it is up.
    assert by_terminal(after, "farecore_reader_up") == {}
    assert not list(directory.glob("live_*.lock"))
    assert "metrics of the simulated gates on 127.0.0.1" in stderr


def test_metrics_arguments_that_cannot_work_are_one_line_errors(tmp_path: Path) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "stale.db").write_bytes(b"")
    for extra, says in [
        (["--metrics-linger", "5"], "--metrics-dir and --metrics-linger need --metrics-listen"),
        (["--metrics-listen", "nope"], "--metrics-listen must be HOST:PORT"),
        (
            ["--metrics-listen", "127.0.0.1:0", "--metrics-dir", str(used)],
            "must be an empty directory",
        ),
        (["--metrics-listen", "127.0.0.1:0", "--metrics-linger", "-1"], "--metrics-linger must"),
    ]:
        out = tmp_path / "run"
        done = subprocess.run(
            [sys.executable, "-m", "farecore", "sim", "--out", str(out), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not out.exists()  # refused before anything was made
