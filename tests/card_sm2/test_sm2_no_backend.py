"""A machine without the SM2 backend (an aarch64 gate: gmssl-pyx has no wheel there).

Each test runs a real Python process in which ``import gmssl_pyx`` fails, as it does where
the ``sm`` extra is not installed: an SM2 key anywhere in a gate's configuration stops
the gate with exit status 2 and one line naming the extra; a card of algorithm 3 is
decided by the ordinary rules, with no SM2 key to verify with (docs/crypto-sm2.md).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from card_vectors import SM2_VECTORS_PATH

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import IssuerKey, Keyring, SigningKey, save_signing_key
from farecore.decide.revocation import build_table

pytest.importorskip("gmssl_pyx", reason="the configurations are made with the backend")

HINT = "pip install 'farecore[sm]'"
BLOCK = "import sys; sys.modules['gmssl_pyx'] = None\n"
V = json.loads(SM2_VECTORS_PATH.read_text())
TERMINAL = 4401


def _python(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def _farecore_blocked(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _python("from farecore.cli import main\nsys.exit(main())", *args, cwd=cwd)


def test_the_blocker_really_blocks() -> None:
    r = _python("import gmssl_pyx")
    assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr


def _without_backend(case: dict[str, Any]) -> str:
    """The reason a gate without the backend gives. Its keyring holds no SM2 key (it
    would not start with one), so an SM2 issuer is UNKNOWN_ISSUER_KEY (§7.3); an SM2
    card key cannot verify the card's signature, so a card that passes checks 3 to 8
    fails check 9, CARD_AUTH_FAILED, as a card key that is no valid point does (§4a)."""
    raw = bytes.fromhex(case["credential"])
    expect: str = case["expect"]
    if expect in ("UNREADABLE", "CARD_BLOCKED", "UNKNOWN_ISSUER_KEY"):
        return expect
    if raw[1] == 3:
        return "UNKNOWN_ISSUER_KEY"
    if raw[27] == 3 and expect in ("ACCEPT", "PASSBACK"):
        return "CARD_AUTH_FAILED"
    return expect


_DECIDE_ALL = """
import json
from card_vectors import load_sm2_vectors, vector_policy
from farecore.card.crypto import Algorithm
from farecore.card.keys import IssuerKey, Keyring
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.errors import MalformedInput
from farecore.gate.tap import run_tap
from test_sm2_vectors_scripted import ScriptedCard

v = load_sm2_vectors()
keys, refused = [], []
for k in v["keyring"]:
    try:
        keys.append(IssuerKey(k["key_id"], Algorithm.from_label(k["algorithm"]),
                              bytes.fromhex(k["public_key"])))
    except MalformedInput as exc:
        refused.append(str(exc))
ring = Keyring(keys)
out = {"refused": refused, "labels": {}}
base = vector_policy(v)
for case in v["cases"] + v["negative_cases"]:
    ch = bytes.fromhex(case["challenge"])
    policy = TerminalPolicy(int.from_bytes(ch[:8], "big"), base.accepted_regions,
                            base.accepted_categories)
    card = ScriptedCard(bytes.fromhex(case["credential"]), bytes.fromhex(case["auth_response"]))
    d = run_tap(card, Validator(policy, ring), int.from_bytes(ch[8:16], "big"), ch[16:])
    out["labels"][case["name"]] = d.label
print(json.dumps(out))
"""


def test_sm2_cards_are_decided_by_the_ordinary_rules_without_the_backend(tmp_path: Path) -> None:
    (tmp_path / "test_sm2_vectors_scripted.py").write_text(
        "class ScriptedCard:\n"
        "    def __init__(self, credential, auth):\n"
        "        self.credential, self.auth = credential, auth\n"
        "    def transmit(self, apdu):\n"
        "        if apdu[:2] == b'\\x00\\xa4':\n"
        "            return bytes.fromhex('01009000')\n"
        "        if apdu[:2] == b'\\x80\\xb0':\n"
        "            return self.credential + b'\\x90\\x00'\n"
        "        return self.auth + b'\\x90\\x00'\n"
    )
    tests_dir = str(Path(__file__).resolve().parents[1])
    code = f"sys.path[:0] = [{tests_dir!r}, {str(tmp_path)!r}]\n" + _DECIDE_ALL
    r = _python(code)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    out = json.loads(r.stdout)
    assert len(out["refused"]) == 1 and HINT in out["refused"][0]
    cases = V["cases"] + V["negative_cases"]
    assert out["labels"] == {c["name"]: _without_backend(c) for c in cases}
    # Every case without algorithm 3 is decided exactly as with the backend.
    for c in cases:
        raw = bytes.fromhex(c["credential"])
        if 3 not in (raw[1], raw[27]):
            assert out["labels"][c["name"]] == c["expect"]


def _gate_config(tmp: Path, sm2_part: str) -> Path:
    """A complete gate configuration whose ``sm2_part`` key (keyring, terminal,
    revocation) is SM2-SM3 and the rest Ed25519."""

    def alg(part: str) -> Algorithm:
        return Algorithm.SM2_SM3 if part == sm2_part else Algorithm.ED25519

    issuer = PrivateKey.generate(alg("keyring"))
    Keyring([IssuerKey(1, issuer.algorithm, issuer.public_bytes)]).save(tmp / "keyring.json")
    save_signing_key(
        SigningKey("terminal", TERMINAL, PrivateKey.generate(alg("terminal"))), tmp / "terminal"
    )
    signer = SigningKey("revocation", 5, PrivateKey.generate(alg("revocation")))
    _, pub = save_signing_key(signer, tmp / "revocation")
    build_table([9], [1_790_000_000], [1], signer, 1, 1_790_000_000, tmp / "t.frt")
    cfg = tmp / "gate.toml"
    cfg.write_text(
        f'[terminal]\nid = {TERMINAL}\nkey = "terminal.key"\noperator = "qd-metro"\n'
        'line = "M3"\nplace = "wusi"\nrole = "metro_entry"\n'
        '[policy]\nregions = [370200]\n[keyring]\npath = "keyring.json"\n'
        f'[revocation]\ntable = "t.frt"\nsigner = "{pub.name}"\nmax_age_s = 315360000\n'
        '[journal]\npath = "journal.sqlite"\n'
    )
    return cfg


@pytest.mark.parametrize("sm2_part", ["keyring", "terminal", "revocation"])
def test_a_gate_with_an_sm2_key_refuses_to_start_without_the_backend(
    tmp_path: Path, sm2_part: str
) -> None:
    cfg = _gate_config(tmp_path, sm2_part)
    r = _farecore_blocked("gate", "--reader", "virtual:", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and HINT in lines[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "journal.sqlite").exists()  # refused before serving anyone


def test_the_same_gate_starts_with_the_backend(tmp_path: Path) -> None:
    cfg = _gate_config(tmp_path, "keyring")
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
        assert proc.wait(timeout=60) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any("ready on" in line for line in lines)


@pytest.mark.parametrize("role", ["issuer", "terminal", "revocation"])
def test_keys_new_sm2_without_the_backend_is_one_line(tmp_path: Path, role: str) -> None:
    r = _farecore_blocked(
        "keys", "new", "--role", role, "--id", "1", "--alg", "sm2", "--out", "k", cwd=tmp_path
    )
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and HINT in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_selftest_without_the_backend_says_so_and_stays_fit(tmp_path: Path) -> None:
    r = _farecore_blocked("selftest", "--taps", "20", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    skips = [line for line in r.stdout.splitlines() if line.startswith("SKIP")]
    assert len(skips) == 1 and "SM2" in skips[0] and HINT in skips[0]
    assert "FAIL" not in r.stdout and "FIT: " in r.stdout and "1 skipped" in r.stdout
    js = _farecore_blocked("selftest", "--taps", "20", "--json", cwd=tmp_path)
    doc = json.loads(js.stdout)
    assert doc["fit"] is True
    assert [c["name"] for c in doc["checks"] if c["skipped"]] == [
        "SM2-SM3 (algorithm 3): unavailable"
    ]
