"""The gate loop with a real reader thread: cards come and go, the loop serves each once."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest

from farecore.decide.validator import TerminalPolicy, Validator
from farecore.errors import ConfigError
from farecore.gate.config import load_gate_config
from farecore.gate.runtime import Gate
from readers.virtual import VirtualReader
from sim.issuer import Issuer

ISSUER = Issuer.from_seed("loop")


def test_loop_serves_each_presented_card_once_and_stops_cleanly() -> None:
    reader = VirtualReader()
    reader.open()
    log = io.StringIO()
    gate = Gate(
        reader, Validator(TerminalPolicy(1, frozenset({370200})), ISSUER.keyring()), log=log
    )
    worker = threading.Thread(target=gate.run, kwargs={"poll_s": 0.02})
    worker.start()
    cards = [ISSUER.card(i) for i in range(1, 6)]
    for card in cards:
        reader.present(card)
        time.sleep(0.05)  # the card lingers: it must not be charged twice
        reader.remove()
        time.sleep(0.01)
    gate.stop()
    worker.join(timeout=5)
    assert not worker.is_alive()
    lines = [json.loads(x) for x in log.getvalue().splitlines()]
    assert [x["card_id"] for x in lines] == list(range(1, 6))
    assert all(x["decision"] == "ACCEPT" for x in lines)
    assert [c.counter for c in cards] == [1] * 5


def test_loop_survives_a_closed_reader_and_keeps_trying() -> None:
    reader = VirtualReader()  # never opened: every wait raises ReaderIOError
    gate = Gate(reader, Validator(TerminalPolicy(1, frozenset({370200})), ISSUER.keyring()))
    worker = threading.Thread(target=gate.run, kwargs={"poll_s": 0.01})
    worker.start()
    time.sleep(0.2)
    reader.open()
    reader.present(ISSUER.card(9))
    deadline = time.monotonic() + 5
    while gate.taps == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.stop()
    reader.remove()
    worker.join(timeout=5)
    assert gate.taps == 1


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "gate.toml"
    cfg.write_text('[terminal]\nid = "x"\n')
    with pytest.raises(ConfigError, match="terminal.id must be an integer"):
        load_gate_config(cfg)
    cfg.write_text(
        '[terminal]\nid = 1\noperator = "o"\nline = "l"\nplace = "p"\nrole = "tram"\n'
        '[keyring]\npath = "k.json"\n[policy]\nregions = [370200]\n[revocation]\nenabled = false\n'
    )
    with pytest.raises(ConfigError, match="terminal.role"):
        load_gate_config(cfg)
    good = (
        '[terminal]\nid = 1\noperator = "o"\nline = "l"\nplace = "p"\nrole = "bus"\n'
        "[revocation]\nenabled = false\n"
    )
    cfg.write_text(good + '[keyring]\npath = "k.json"\nissued = "lists/a.fil"\n')
    assert load_gate_config(cfg).issued_lists == (tmp_path / "lists/a.fil",)
    cfg.write_text(good + '[keyring]\npath = "k.json"\nissued = ["a.fil", 3]\n')
    with pytest.raises(ConfigError, match="keyring.issued must be a path or a list of paths"):
        load_gate_config(cfg)
    cfg.write_text("not = [toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_gate_config(cfg)
    with pytest.raises(ConfigError, match="no such configuration"):
        load_gate_config(tmp_path / "absent.toml")


_GOOD = (
    '[terminal]\nid = 1\noperator = "o"\nline = "l"\nplace = "p"\nrole = "bus"\n'
    '[keyring]\npath = "k.json"\n'
    '[revocation]\ntable = "t.frt"\nsigner = "r.pub"\nmax_age_s = 3600\n'
    '[journal]\ngroup_commit_ms = 2\n[passback]\nwindow_s = 300\nstore = "s.sqlite"\n'
)


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ("[revocation]", "[revocaton]", "unknown section 'revocaton'; did you mean 'revocation'?"),
        ("max_age_s = 3600", "max_age = 3600", "did you mean 'max_age_s'?"),
        ("window_s = 300", "windows = 300", "did you mean 'window_s'?"),
        ("group_commit_ms = 2", "group_commit_ms = 1001", "group_commit_ms must be 0..1000"),
        ("group_commit_ms = 2", "group_commit_ms = nan", "group_commit_ms must be 0..1000"),
        ("group_commit_ms = 2", "group_commit_ms = inf", "group_commit_ms must be 0..1000"),
        ('operator = "o"', 'operator = ""', "terminal.operator must be a non-empty string"),
        ('place = "p"', 'place = ""', "terminal.place must be a non-empty string"),
        ('path = "k.json"', 'path = ""', "keyring.path must name the keyring file"),
        ("window_s = 300", "window_s = 10000000000000000", "passback.window_s must be 0"),
        ("max_age_s = 3600", "max_age_s = 0", "revocation.max_age_s must be 1.."),
        ('table = "t.frt"\n', "", "names no table: such a gate accepts revoked cards"),
        ('table = "t.frt"\n', 'enabled = "no"\n', "revocation.enabled must be true or false"),
        ('table = "t.frt"\n', 'table = "t.frt"\nenabled = false\n', "but revocation.table"),
    ],
)
def test_every_typo_and_bad_value_is_named(tmp_path: Path, old: str, new: str, says: str) -> None:
    cfg = tmp_path / "gate.toml"
    assert old in _GOOD
    cfg.write_text(_GOOD)
    load_gate_config(cfg)  # the good one loads
    cfg.write_text(_GOOD.replace(old, new))
    with pytest.raises(ConfigError) as err:
        load_gate_config(cfg)
    assert says in str(err.value) and str(cfg) in str(err.value)


def test_a_gate_refuses_another_terminals_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    from farecore.card.keys import SigningKey, save_signing_key
    from sim.issuer import derive_key

    save_signing_key(SigningKey("terminal", 2, derive_key("x", "t2")), tmp_path / "t2")
    cfg = tmp_path / "gate.toml"
    cfg.write_text(_GOOD.replace('role = "bus"', 'role = "bus"\nkey = "t2.key"'))
    r = subprocess.run(
        [sys.executable, "-m", "farecore", "gate", "--reader", "virtual:", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "terminal 2's key, not terminal 1's" in r.stderr
    cfg.write_text(_GOOD.replace('role = "bus"', 'role = "bus"\nkey = "nope.key"'))
    r = subprocess.run(
        [sys.executable, "-m", "farecore", "gate", "--reader", "virtual:", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "nope.key" in r.stderr and "Traceback" not in r.stderr
