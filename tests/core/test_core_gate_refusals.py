"""What a gate refuses to start with: each case is one line on stderr and exit status 2.

A real ``farecore gate`` process on ``virtual:`` per case: a terminal key that is not the
registered one, a register that places the terminal elsewhere, a table store others may
write, damaged marks, a clock tolerance out of range.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from farecore.card.keys import SigningKey, save_signing_key
from farecore.decide.revocation import build_table
from farecore.journal.records import Direction
from farecore.settlement.terminals import TerminalInfo, format_terminals
from sim.issuer import Issuer, derive_key

TERMINAL = 4401


def _gate(tmp: Path, extra: str = "") -> Path:
    issuer = Issuer.from_seed("gate-refusals")
    issuer.keyring().save(tmp / "keyring.json")
    key = SigningKey("terminal", TERMINAL, derive_key("gate-refusals", "terminal"))
    save_signing_key(key, tmp / "terminal")
    signer = SigningKey("revocation", 5, derive_key("gate-refusals", "revocation"))
    _, pub = save_signing_key(signer, tmp / "revocation")
    build_table([9], [1_790_000_000], [1], signer, 1, 1_790_000_000, tmp / "t.frt")
    _register(tmp, key, place="wusi")
    cfg = tmp / "gate.toml"
    cfg.write_text(
        f'[terminal]\nid = {TERMINAL}\nkey = "terminal.key"\noperator = "qd-metro"\n'
        'line = "M3"\nplace = "wusi"\nrole = "metro_entry"\nregister = "terminals.csv"\n'
        '[policy]\nregions = [370200]\n[keyring]\npath = "keyring.json"\n'
        f'[revocation]\ntable = "t.frt"\nsigner = "{pub.name}"\nmax_age_s = 315360000\n'
        f"{extra}"
    )
    return cfg


def _register(tmp: Path, key: SigningKey, place: str) -> None:
    public = key.public()
    info = TerminalInfo(
        TERMINAL,
        "qd-metro",
        "M3",
        place,
        Direction.ENTRY,
        public.algorithm,
        public.public_key,
        0,
        0,
    )
    (tmp / "terminals.csv").write_text(format_terminals([info]))


def _other_key(tmp: Path) -> None:
    other = SigningKey("terminal", TERMINAL, derive_key("someone-else", "terminal"))
    save_signing_key(other, tmp / "terminal")


def _start(cfg: Path) -> subprocess.CompletedProcess[str]:
    """Start the gate; once it says it is ready, stop it with SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "farecore", "gate", "--reader", "virtual:", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "ready on" in line:
                proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", "".join(lines))


def test_a_well_configured_gate_starts(tmp_path: Path) -> None:
    r = _start(_gate(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "ready" in r.stderr
    assert (tmp_path / "state" / f"marks-{TERMINAL}.json").exists()


CASES: list[tuple[str, Callable[[Path], None], str]] = [
    (
        "another key than the registered one",
        _other_key,
        "is not the key the register",
    ),
    (
        "registered at another place",
        lambda tmp: _register(
            tmp,
            SigningKey("terminal", TERMINAL, derive_key("gate-refusals", "terminal")),
            place="taidong",
        ),
        "is registered as qd-metro/M3/taidong/ENTRY",
    ),
    (
        "a table store others may write",
        lambda tmp: (
            (tmp / "state" / "tables").mkdir(parents=True, mode=0o777)
            or os.chmod(tmp / "state" / "tables", 0o777)
        ),
        "writable by no one else",
    ),
    (
        "a register that is not a register",
        lambda tmp: (tmp / "terminals.csv").write_text("terminal_id,operater\n4401,x\n"),
        "terminals.csv: header must be",
    ),
    (
        "a state dir that is a file",
        lambda tmp: (tmp / "state").write_text(""),
        "state/marks-4401.json: cannot read the gate's marks",
    ),
    (
        "a table store that is a file",
        lambda tmp: (tmp / "state").mkdir() or (tmp / "state" / "tables").write_text(""),
        "table store",
    ),
    (
        "damaged marks",
        lambda tmp: (
            (tmp / "state").mkdir()
            or (tmp / "state" / f"marks-{TERMINAL}.json").write_text('{"format": 1')
        ),
        "damaged gate marks",
    ),
    (
        "the marks of another terminal",
        lambda tmp: (
            (tmp / "state").mkdir()
            or (tmp / "state" / f"marks-{TERMINAL}.json").write_text(
                '{"format": "farecore-marks/1", "terminal_id": 7, "revocation": null, '
                '"issued": {}, "time_ms": 0}'
            )
        ),
        "holds the marks of terminal 7",
    ),
]


@pytest.mark.parametrize(("what", "damage", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_gate_refuses_to_start(
    tmp_path: Path, what: str, damage: Callable[[Path], None], message: str
) -> None:
    cfg = _gate(tmp_path)
    damage(tmp_path)
    r = _start(cfg)
    assert r.returncode == 2, (what, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[clock]\ntolerance_s = -1\n", "clock.tolerance_s must be 0..86400"),
        ("[clock]\ntolerance_s = '300'\n", "clock.tolerance_s must be an integer"),
        ("[state]\ndir = 7\n", "state.dir must be a string"),
        ("[clock]\ntolerance_s = 86401\n", "clock.tolerance_s must be 0..86400"),
        ("[clock]\ntolerence_s = 5\n", "did you mean 'tolerance_s'"),
        ("[stat]\ndir = 'x'\n", "did you mean 'state'"),
    ],
)
def test_clock_and_state_settings_are_checked(tmp_path: Path, extra: str, message: str) -> None:
    r = _start(_gate(tmp_path, extra))
    assert r.returncode == 2 and message in r.stderr, r.stderr
