"""The gate loop with a real reader thread: cards come and go, the loop serves each once."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest

from farecore.config import load_gate_config
from farecore.errors import ConfigError
from farecore.gate import Gate
from farecore.validator import TerminalPolicy, Validator
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
        '[keyring]\npath = "k.json"\n[policy]\nregions = [370200]\n'
    )
    with pytest.raises(ConfigError, match="terminal.role"):
        load_gate_config(cfg)
    good = '[terminal]\nid = 1\noperator = "o"\nline = "l"\nplace = "p"\nrole = "bus"\n'
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
