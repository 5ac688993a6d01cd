"""Bad input to any command: one clear line and its documented exit status.

Each row is a command line, the files it needs (written here), the exit status it must
end with and words its one line must hold. Every row runs in a real ``farecore``
process; none may print a traceback, and stderr must be that one line (after argparse's
usage, for an argument argparse refuses). A row may also name files the command must
not have written.

The loaders' own tables of typos and bad values are in the tests of each area
(``test_core_gate_loop``, ``test_settlement_ledger``, ``test_core_keys_cli``); the rows
here are the same kinds of fault seen from the command line.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from farecore.card.keys import Keyring, SigningKey, load_public_key_file, save_signing_key
from farecore.errors import ConfigError, KeyFileError, MalformedFile
from farecore.gate.config import load_gate_config
from farecore.settlement.fares import parse_fares
from sim.issuer import Issuer, derive_key

DEEP_JSON = b"[" * 5000 + b"]" * 5000
TEN_MB = 10 << 20
GATE = (
    '[terminal]\nid = 1\noperator = "o"\nline = "l"\nplace = "p"\nrole = "bus"\n'
    '[keyring]\npath = "kr.json"\n'
    "[revocation]\nenabled = false\n"
)
SETTLE = (
    "settle --batches batches --terminals terminals.csv --keyring kr.json --fares fares.toml "
    "--day 2026-03-02 --out out --ledger ledger.sqlite"
)
GATE_RUN = "gate --reader virtual: --config gate.toml"


@dataclass(frozen=True)
class Row:
    id: str
    argv: str  # as a shell would split it
    status: int
    says: str
    files: dict[str, bytes | str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # what the command must not have written
    needs: str | None = None  # a module of an optional extra the row needs


def _world(tmp: Path) -> None:
    """What every row may use: keys, a keyring, an empty register, fares file and batch
    folder (rows overwrite what they need to be bad)."""
    save_signing_key(SigningKey("revocation", 5, derive_key("bad-args", "revocation")), tmp / "rv")
    issuer = Issuer.from_seed("bad-args")
    issuer.keyring().save(tmp / "kr.json")
    (tmp / "terminals.csv").write_text(
        "terminal_id,operator,line,place,direction,algorithm,public_key,x_m,y_m\n"
    )
    (tmp / "fares.toml").write_text("")  # no fares and no operator: enough for no terminal
    (tmp / "batches").mkdir()


def _gate(typo: str, fixed: str) -> str:
    assert typo in GATE
    return GATE.replace(typo, fixed)


ROWS = [
    # Numbers that mean nothing: argparse refuses them before anything runs.
    Row(
        "gate-max-taps-negative",
        "gate --reader virtual: --config gate.toml --max-taps -1",
        2,
        "argument --max-taps: the number of taps must be at least 1, not -1",
    ),
    Row(
        "gate-max-taps-zero",
        "gate --reader virtual: --config gate.toml --max-taps 0",
        2,
        "the number of taps must be at least 1, not 0",
    ),
    Row("sim-workers-zero", "sim --out run --workers 0", 2, "--workers must be at"),
    Row("sim-workers-negative", "sim --out run --workers -4", 2, "not -4"),
    Row("sim-seed-negative", "sim --out run --seed -1", 2, "--seed must be 0.."),
    Row("sim-out-empty", "sim --out ''", 2, "argument --out: an empty path names no file"),
    Row(
        "keys-out-empty",
        "keys new --role terminal --id 1 --out ''",
        2,
        "argument --out: an empty path names no file",
        absent=(".key", ".pub"),
    ),
    Row(
        "keyring-retire-negative-time",
        "keyring retire --keyring kr.json 1 --at -5",
        2,
        "argument --at: time must be 0..4294967295, not -5",
    ),
    Row(
        "keyring-keyring-empty",
        "keyring list --keyring ''",
        2,
        "argument --keyring: an empty path",
    ),
    Row(
        "revocation-card-id-zero",
        "revocation build --in r.csv --key rv.key --generation 1 --out t.frt",
        2,
        "r.csv: line 3: card id 0 is no card's id",
        files={"r.csv": "card_id,revoked_at,reason\n17,1790000000,lost\n0,1790000000,stolen\n"},
        absent=("t.frt",),
    ),
    Row(
        "revocation-config-empty",
        "revocation info --config ''",
        2,
        "argument --config: an empty path",
    ),
    Row("selftest-taps-zero", "selftest --taps 0", 2, "at least 1, not 0"),
    Row("selftest-taps-negative", "selftest --taps -5", 2, "at least 1, not -5"),
    Row(
        "journal-check-terminal-negative",
        "journal check j.sqlite --terminal -1",
        2,
        "argument --terminal: terminal id must be 0..18446744073709551615, not -1",
    ),
    Row(
        "journal-export-out-empty",
        "journal export --journal j.sqlite --day 2026-03-02 --key t.key --out ''",
        2,
        "argument --out: an empty path",
    ),
    Row(
        "journal-export-tz-empty",
        "journal export --journal j.sqlite --day 2026-03-02 --key t.key --out b.fcb --tz ''",
        2,
        "time zone '' must look like +08:00",
        absent=("b.fcb",),
    ),
    Row(
        "issued-jobs-zero",
        "issued build --credentials c.txt --key iss.key --generation 1 --out l.fil --jobs 0",
        2,
        "argument --jobs: the number of processes must be at least 1, not 0",
    ),
    Row("settle-out-empty", SETTLE.replace("--out out", "--out ''"), 2, "argument --out: an empty"),
    Row(
        "settle-dask-workers-zero",
        SETTLE + " --dask-workers 0",
        2,
        "argument --dask-workers: the number of workers must be at least 1, not 0",
    ),
    Row(
        "settle-dask-threads-negative",
        SETTLE + " --dask-threads -1",
        2,
        "the number of threads must be at least 1, not -1",
    ),
    Row(
        "settle-scheduler-empty",
        SETTLE + " --scheduler ''",
        2,
        "--scheduler '': missing port number",
        absent=("out", "ledger.sqlite"),
        needs="distributed",
    ),
    Row(
        "settle-scheduler-no-port",
        SETTLE + " --scheduler tcp://localhost",
        2,
        "--scheduler 'tcp://localhost': missing port number",
        absent=("out", "ledger.sqlite"),
        needs="distributed",
    ),
    # Typos in a gate configuration and in the fares file, from the command line.
    Row(
        "gate-toml-section-typo",
        GATE_RUN,
        2,
        "gate.toml: unknown section 'revocaton'; did you mean 'revocation'?",
        files={"gate.toml": _gate("[revocation]", "[revocaton]")},
    ),
    Row(
        "gate-toml-key-typo",
        GATE_RUN,
        2,
        "gate.toml: [terminal]: unknown key 'plac'; did you mean 'place'?",
        files={"gate.toml": _gate('place = "p"', 'plac = "p"')},
    ),
    Row(
        "revocation-info-config-typo",
        "revocation info --config gate.toml",
        2,
        'needs [revocation] with signer = "path/to/revocation.pub"',
        files={"gate.toml": _gate("[revocation]", "[revocaton]")},
    ),
    Row(
        "fares-key-typo",
        SETTLE,
        2,
        "fares.toml: operator[0]: unknown key 'regoins'; did you mean 'regions'?",
        files={"fares.toml": '[[operator]]\nid = "qd-bus"\nregoins = [370200]\n'},
        absent=("out", "ledger.sqlite"),
    ),
    # Hostile sizes and nesting: the module's own error, never RecursionError.
    Row(
        "gate-toml-deep",
        GATE_RUN,
        2,
        "gate.toml: nested deeper than 8",
        files={"gate.toml": "x = " + "[" * 5000 + "]" * 5000 + "\n"},
    ),
    Row(
        "gate-toml-deep-dotted-key",
        GATE_RUN,
        2,
        "gate.toml: nested deeper than 8",
        files={"gate.toml": "terminal" + ".x" * 5000 + " = 1\n"},
    ),
    Row(
        "gate-toml-10mb",
        GATE_RUN,
        2,
        "gate.toml: larger than 1048576 bytes",
        files={"gate.toml": "# " + "x" * TEN_MB + "\n"},
    ),
    Row(
        "revocation-info-config-deep",
        "revocation info --config gate.toml",
        2,
        "gate.toml: nested deeper than 8",
        files={"gate.toml": "[revocation]\nsigner = " + "{a = " * 5000 + "1" + "}" * 5000},
    ),
    Row(
        "keyring-deep",
        "keyring list --keyring deep.json",
        2,
        "deep.json: nested deeper than 8",
        files={"deep.json": DEEP_JSON},
    ),
    Row(
        "keyring-10mb",
        "keyring list --keyring big.json",
        2,
        "big.json: larger than 1048576 bytes",
        files={"big.json": b" " * TEN_MB + b"{}"},
    ),
    Row(
        "key-file-deep",
        "keyring add --keyring new.json deep.pub",
        2,
        "deep.pub: nested deeper than 8",
        files={"deep.pub": DEEP_JSON},
        absent=("new.json",),
    ),
    Row(
        "key-file-10mb",
        "revocation build --in r.csv --key big.key --generation 1 --out t.frt",
        2,
        "big.key: larger than 65536 bytes",
        files={"big.key": b" " * TEN_MB, "r.csv": "card_id,revoked_at,reason\n"},
    ),
    Row(
        "fares-deep",
        SETTLE,
        2,
        "fares.toml: nested deeper than 8",
        files={"fares.toml": "x = " + "{y = " * 5000 + "1" + "}" * 5000},
    ),
    Row(
        "fares-10mb",
        SETTLE,
        2,
        "fares.toml: larger than 1048576 bytes",
        files={"fares.toml": "#" * TEN_MB},
    ),
]


def _farecore(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farecore", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line(stderr: str) -> str:
    """The error line; fails unless stderr is just it (after argparse's usage, if any)."""
    lines = stderr.rstrip("\n").splitlines()
    assert lines, "nothing on stderr"
    if lines[0].startswith("usage: "):  # argparse: the usage, wrapped, then the error
        assert all(line.startswith(" ") for line in lines[1:-1]), stderr
        assert ": error: argument " in lines[-1], stderr
    else:
        assert len(lines) == 1, stderr
        assert lines[0].startswith("farecore: error: "), stderr
    return lines[-1]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_is_one_line_and_its_exit_status(row: Row, tmp_path: Path) -> None:
    if row.needs is not None:
        pytest.importorskip(row.needs)
    _world(tmp_path)
    for name, content in row.files.items():
        data = content.encode() if isinstance(content, str) else content
        (tmp_path / name).write_bytes(data)
    if "gate.toml" not in row.files:
        (tmp_path / "gate.toml").write_text(GATE)
    r = _farecore(shlex.split(row.argv), tmp_path)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == row.status, (r.returncode, r.stderr)
    line = _one_line(r.stderr)
    assert row.says in line, line
    for name in row.absent:
        assert not (tmp_path / name).exists(), name


# The same bounds in-process: each loader raises its own module's error type.
_Loader = Callable[[Path], Any]
BOUNDED: list[tuple[str, _Loader, bytes, type[Exception], str]] = [
    ("gate-config", load_gate_config, b"x = " + b"[" * 5000, ConfigError, "nested deeper"),
    ("gate-config-size", load_gate_config, b"#" * TEN_MB, ConfigError, "larger than"),
    ("keyring", Keyring.load, DEEP_JSON, MalformedFile, "nested deeper"),
    ("keyring-size", Keyring.load, b" " * TEN_MB, MalformedFile, "larger than"),
    ("key-file", load_public_key_file, DEEP_JSON, KeyFileError, "nested deeper"),
    ("key-file-size", load_public_key_file, b" " * TEN_MB, KeyFileError, "larger than"),
    (
        "key-file-long-number",
        load_public_key_file,
        b'{"format": "farecore-key/1", "kind": "public", "key_id": ' + b"9" * 5000 + b"}",
        KeyFileError,
        "not a farecore key file",
    ),
    (
        "fares",
        lambda p: parse_fares(p.read_text(), str(p)),
        b"a" + b".a" * 5000 + b" = 1",
        MalformedFile,
        "nested deeper",
    ),
]


@pytest.mark.parametrize(
    ("loader", "data", "error", "says"),
    [b[1:] for b in BOUNDED],
    ids=[b[0] for b in BOUNDED],
)
def test_hostile_files_are_the_loaders_own_error(
    tmp_path: Path, loader: _Loader, data: bytes, error: type[Exception], says: str
) -> None:
    path = tmp_path / "input"
    path.write_bytes(data)
    with pytest.raises(error) as err:
        loader(path)
    assert says in str(err.value) and "\n" not in str(err.value)
