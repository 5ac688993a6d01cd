"""The fleet's sections of gate.toml ([package], [upload], [metrics]) and the terminal
register command: every typo and bad value is one line naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from farecore.errors import ConfigError
from farecore.gate.config import load_gate_config

BASE = (
    '[terminal]\nid = 77\noperator = "qd"\nline = "1"\nplace = "p"\nrole = "bus"\n'
    '[keyring]\npath = "keyring.json"\n'
)


def _load(tmp_path: Path, text: str) -> object:
    cfg = tmp_path / "gate.toml"
    cfg.write_text(BASE + text)
    return load_gate_config(cfg)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[revocation]\nsigner = "r.pub"\n[package]\nsorce = "pkg"\n', "sorce"),
        ('[revocation]\nsigner = "r.pub"\n[package]\nsource = ""\n', "package.source"),
        ('[revocation]\nsigner = "r.pub"\n[package]\nsource = "ftp://x/"\n', "expected a dir"),
        ('[revocation]\nsigner = "r.pub"\n[package]\nsource = "p"\npoll_s = 0\n', "poll_s"),
        ('[revocation]\nsigner = "r.pub"\n[package]\nsource = "p"\ntimeout_s = 1e9\n', "timeout"),
        ('[package]\nsource = "p"\n', "revocation.signer"),
        ('[revocation]\nenabled = false\n[package]\nsource = "p"\n', "enabled = false"),
        ('[revocation]\nenabled = false\n[metrics]\nlisten = "nowhere"\n', "HOST:PORT"),
        ('[revocation]\nenabled = false\n[metrics]\nlisten = "h:99999"\n', "HOST:PORT"),
        ('[revocation]\nenabled = false\n[metrics]\nmultiprocess_dir = "m"\n', "listen is not"),
        ('[revocation]\nenabled = false\n[upload]\nto = "p"\nhead_interval = 3\n', "head_interval"),
    ],
)
def test_every_bad_fleet_setting_is_named(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        _load(tmp_path, text)


def test_a_package_gate_needs_no_local_table(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[revocation]\nsigner = "r.pub"\n[package]\nsource = "pkg"\n')
    assert cfg.package_source == str(tmp_path / "pkg")  # type: ignore[attr-defined]
    assert cfg.revocation_max_age_s == 172_800  # type: ignore[attr-defined]


def test_bad_upload_values_stop_the_gate_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "gate.toml"
    cfg.write_text(BASE + '[revocation]\nenabled = false\n[upload]\nto = "p"\npoll_s = -1\n')
    done = subprocess.run(
        [sys.executable, "-m", "farecore", "gate", "--reader", "virtual:", "--config", cfg],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "upload.poll_s" in done.stderr, done.stderr


def farecore(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farecore", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_register_add_and_list(tmp_path: Path) -> None:
    reg = tmp_path / "terminals.csv"
    for role, tid in (("terminal", 1001), ("issuer", 1)):
        done = farecore("keys", "new", "--role", role, "--id", tid, "--out", tmp_path / f"k{tid}")
        assert done.returncode == 0, done.stderr
    add = ["register", "add", "--register", reg, tmp_path / "k1001.pub", "--operator", "qd-metro"]
    add += ["--line", "M3", "--place", "wusi", "--role", "metro_entry"]
    assert farecore(*add).returncode == 0
    listed = farecore("register", "list", "--register", reg)
    assert "1001" in listed.stdout and "qd-metro/M3/wusi" in listed.stdout
    again = farecore(*add)
    assert again.returncode == 2 and "already in" in again.stderr
    wrong = farecore(*[tmp_path / "k1.pub" if a == tmp_path / "k1001.pub" else a for a in add])
    assert wrong.returncode == 2 and "role 'terminal' is needed" in wrong.stderr
    reg.write_text("not,a,register\n")
    broken = farecore(*add)
    assert broken.returncode == 2 and "header must be" in broken.stderr
    assert broken.stderr.count("\n") == 1


def test_register_add_a_venue_entrance_and_a_till(tmp_path: Path) -> None:
    reg = tmp_path / "terminals.csv"
    for tid in (5001, 7001, 7002):
        done = farecore(
            "keys", "new", "--role", "terminal", "--id", tid, "--out", tmp_path / f"k{tid}"
        )
        assert done.returncode == 0, done.stderr
    venue = ["register", "add", "--register", reg, tmp_path / "k5001.pub", "--operator", "qd-parks"]
    assert (
        farecore(
            *venue, "--line", "zhongshan-park", "--place", "south", "--role", "venue"
        ).returncode
        == 0
    )
    till = ["register", "add", "--register", reg, tmp_path / "k7001.pub"]
    done = farecore(*till, "--line", "laoshan-books", "--place", "till-1", "--role", "till")
    assert done.returncode == 0, done.stderr
    wrong = ["register", "add", "--register", reg, tmp_path / "k7002.pub", "--operator", "qd-bus"]
    refused = farecore(*wrong, "--line", "m", "--place", "t", "--role", "till")
    assert refused.returncode == 2 and "a till's operator is rongjun-alliance" in refused.stderr
    gate = ["register", "add", "--register", reg, tmp_path / "k7002.pub", "--line", "1"]
    refused = farecore(*gate, "--place", "v", "--role", "bus")
    assert refused.returncode == 2 and "--operator is required" in refused.stderr
    rows = reg.read_text().splitlines()
    assert any(",qd-parks,zhongshan-park,south,VISIT," in r for r in rows)
    assert any(",rongjun-alliance,laoshan-books,till-1,CLAIM," in r for r in rows)
