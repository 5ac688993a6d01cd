"""`farecore gate` as a real process: it starts from its TOML, stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from farecore.decide.issued import build_issued_list
from farecore.journal.terminal import JournalReader
from sim.issuer import Issuer


def _config(tmp_path: Path, role: str = "metro_entry", issued: bytes | None = None) -> Path:
    issuer = Issuer.from_seed("gate-process")
    issuer.keyring().save(tmp_path / "keyring.json")
    if issued is None:
        card = issuer.card(5)
        issued = build_issued_list([("card 5", card.credential)], issuer.key, 1, 0)
    (tmp_path / "issued.fil").write_bytes(issued)
    cfg = tmp_path / "gate.toml"
    cfg.write_text(
        f"""
[terminal]
id = 77
operator = "qingdao-metro"
line = "M3"
place = "wusi-square"
role = "{role}"

[policy]
regions = [370200]

[keyring]
path = "keyring.json"
issued = "issued.fil"

[journal]
path = "journal.sqlite"

[revocation]
enabled = false

[passback]
window_s = 600
store = "station.sqlite"
"""
    )
    return cfg


def _refused(cfg: Path, reader: str) -> subprocess.CompletedProcess[str]:
    """Run a gate that must refuse to start; it exits 2 with one line, no traceback."""
    r = subprocess.run(
        [sys.executable, "-m", "farecore", "gate", "--reader", reader, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    return r


def test_gate_process_starts_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "farecore", "gate", "--reader", "virtual:", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while "ready" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        assert "terminal 77 (metro_entry at wusi-square) ready" in line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "journal closed" in err
    with JournalReader(tmp_path / "journal.sqlite") as journal:
        assert journal.verify_chain() == 0
    assert (tmp_path / "station.sqlite").exists()


def test_gate_process_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    cfg = _config(tmp_path, role="tram")
    r = _refused(cfg, "virtual:")
    assert "terminal.role must be one of bus, metro_entry, metro_exit" in r.stderr


def test_gate_process_refuses_a_damaged_issued_list_in_one_line(tmp_path: Path) -> None:
    cfg = _config(tmp_path, issued=b"FCISSUED" + bytes(300))
    r = _refused(cfg, "virtual:")
    assert "issued.fil: list version 0 is not supported" in r.stderr


def test_gate_process_names_a_missing_reader_adapter(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    r = _refused(cfg, "nfc:usb")
    assert "no reader adapter for 'nfc'" in r.stderr and "pcsc" in r.stderr


def test_a_gate_with_a_stale_table_says_so_at_start(tmp_path: Path) -> None:
    from farecore.card.keys import SigningKey, save_signing_key
    from farecore.decide.revocation import build_table
    from sim.issuer import derive_key

    cfg = _config(tmp_path)
    signer = SigningKey("revocation", 3, derive_key("stale", "revocation"))
    _, pub = save_signing_key(signer, tmp_path / "revocation")
    three_days_ago = int(time.time()) - 3 * 86_400
    build_table([9], [three_days_ago], [1], signer, 1, three_days_ago, tmp_path / "t.frt")
    cfg.write_text(
        cfg.read_text().replace(
            "enabled = false", f'table = "t.frt"\nsigner = "{pub.name}"\nmax_age_s = 172800'
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "farecore", "gate", "--reader", "virtual:", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline()]
        while "ready" not in lines[-1] and lines[-1]:
            lines.append(proc.stderr.readline())
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    [warning] = [line for line in lines if "WARNING" in line]
    assert "generation 1 is already stale" in warning and "REVOCATION_STALE" in warning


def test_the_wiring_judges_time_by_the_gates_own_clock(tmp_path: Path) -> None:
    """A gate built on another clock (the simulator's day, months behind the wall clock)
    decides by that clock alone: no CLOCK_FAULT, and its time mark is that clock's."""
    from farecore.gate.config import load_gate_config
    from farecore.gate.marks import GateMarks
    from farecore.gate.wiring import build_gate
    from readers.virtual import VirtualReader

    cfg = load_gate_config(_config(tmp_path))
    then_ms = 1_772_400_000_000  # 2026-03-01, before the wall clock of any run
    reader = VirtualReader("wiring")
    with build_gate(cfg, reader, clock_ms=lambda: then_ms) as wired:
        decision = wired.gate.process(reader.tap(Issuer.from_seed("gate-process").card(5)))
        reader.remove()
        assert wired.clock.faulted is False
    assert decision.accepted, decision.reason
    assert decision.time_ms == then_ms
    assert GateMarks.load(cfg.marks, 77).time_ms == then_ms
