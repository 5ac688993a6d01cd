"""A damaged journal file is the journal's own error, in one line.

Each row damages a copy of a real journal (a terminal's own, or a station's) the way a
disk, a crash or a careless hand might, then opens it every way farecore does: the gate
(``Journal.open``, ``StationJournal.open``), the reader behind ``journal check`` and
``journal export``, and the commands themselves in a real process. Every one must end in
JournalError (exit 2 from the command line, one line, no traceback), never a raw
sqlite3.DatabaseError, ValueError or TypeError, and never a silently short batch.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from farecore.card.keys import SigningKey, save_signing_key
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.errors import JournalError
from farecore.gate.tap import run_tap
from farecore.journal.batch import export_batch, parse_day
from farecore.journal.layout import RECENT_RECORDS
from farecore.journal.records import Direction
from farecore.journal.station import StationJournal
from farecore.journal.terminal import Journal, JournalReader, TapContext
from readers.virtual import VirtualReader
from sim.issuer import Issuer, derive_key

TERMINAL = 4242
STATION = (501, 502)
BASE_MS = 1_772_416_800_000  # 2026-03-02 10:00 in Qingdao (UTC+8)
DAY = "2026-03-02"
CTX = TapContext("qd-metro", "M3", "wusi-square", Direction.ENTRY)


def _key(terminal: int) -> SigningKey:
    return SigningKey("terminal", terminal, derive_key("damaged-journals", f"t{terminal}"))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a good terminal journal, a good station journal and their keys."""
    root = tmp_path_factory.mktemp("good")
    issuer = Issuer.from_seed("damaged-journals")
    reader = VirtualReader()

    def tap(terminal: int, card_id: int, now_ms: int):  # type: ignore[no-untyped-def]
        validator = Validator(TerminalPolicy(terminal, frozenset({370200})), issuer.keyring())
        decision = run_tap(reader.tap(issuer.card(card_id)), validator, now_ms, os.urandom(16))
        reader.remove()
        return decision

    with Journal.open(root / "terminal.sqlite", TERMINAL) as journal:
        for i in range(3):
            journal.append(tap(TERMINAL, i + 1, BASE_MS + i * 60_000), CTX)
    with StationJournal.open(root / "station.sqlite", STATION) as station:
        for i in range(4):
            terminal = STATION[i % 2]
            station.stage(terminal, tap(terminal, i + 1, BASE_MS + i * 60_000), CTX)
        station.commit()
    for terminal in (TERMINAL, *STATION):
        save_signing_key(_key(terminal), root / f"t{terminal}")
    return root


Damage = Callable[[Path], None]


def _sql(*statements: str) -> Damage:
    def damage(path: Path) -> None:
        db = sqlite3.connect(path)
        for statement in statements:
            db.execute(statement)
        db.commit()
        db.close()

    return damage


def _loose(table: str, *statements: str) -> Damage:
    """Rebuild ``table`` with the same columns but no types or constraints, then run
    ``statements``: the right table, holding what its schema would have refused."""

    def damage(path: Path) -> None:
        db = sqlite3.connect(path)
        cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
        db.execute(f"CREATE TABLE loose ({', '.join(cols)})")
        db.execute(f"INSERT INTO loose SELECT * FROM {table}")
        db.execute(f"DROP TABLE {table}")
        db.execute(f"ALTER TABLE loose RENAME TO {table}")
        for statement in statements:
            db.execute(statement)
        db.commit()
        db.close()

    return damage


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zero_length(path: Path) -> None:
    path.write_bytes(b"")


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


@dataclass(frozen=True)
class Case:
    name: str
    station: bool  # which good file it damages
    damage: Damage
    says: str  # in the JournalError of ``journal check`` (and the command's line)
    gate_opens: bool = False  # the writer may open it: the damage is behind its chain's head
    chain_ok: bool = False  # ``journal check`` walks the chain, which this damage leaves alone
    export_ok: bool = False  # nor is it in what a batch is made of (only the writer reads it)


_T = f"records_{STATION[0]}"
CASES = [
    Case("random-bytes", False, _random_bytes, "not a farecore journal"),
    Case("truncated", False, _truncated, "malformed"),
    Case("zero-length", False, _zero_length, "no such table: meta", gate_opens=True),
    Case("directory", False, _directory, "cannot open the journal"),
    Case("no-records-table", False, _sql("DROP TABLE records"), "no records table"),
    Case("no-credentials-table", False, _sql("DROP TABLE credentials"), "no credentials"),
    Case("no-meta-table", False, _sql("DROP TABLE meta"), "no such table: meta"),
    Case(
        "terminal-id-text",
        False,
        _sql("UPDATE meta SET value = 'abc' WHERE key = 'terminal_id'"),
        "terminal id 'abc'",
    ),
    Case(
        "terminal-id-infinite",
        False,
        _sql("UPDATE meta SET value = 1e999 WHERE key = 'terminal_id'"),
        "terminal id",
    ),
    Case(
        "hash-text",
        False,
        _sql("UPDATE records SET hash = 'abc' WHERE seq = 3"),
        "record 3 is garbled",
    ),
    Case(
        "hash-3-bytes",
        False,
        _sql("UPDATE records SET hash = x'010203' WHERE seq = 3"),
        "record 3 breaks the hash chain",
    ),
    Case(
        "hash-null",
        False,
        _loose("records", "UPDATE records SET hash = NULL WHERE seq = 3"),
        "record 3 is garbled",
    ),
    Case(
        "body-text",
        False,
        _sql("UPDATE records SET body = 'hello' WHERE seq = 2"),
        "record 2 is garbled",
        gate_opens=True,
    ),
    Case(
        "body-3-bytes",
        False,
        _sql("UPDATE records SET body = x'010203' WHERE seq = 2"),
        "record 2: journal record does not parse",
        gate_opens=True,
    ),
    Case(
        "body-null",
        False,
        _loose("records", "UPDATE records SET body = NULL WHERE seq = 2"),
        "record 2 is garbled",
        gate_opens=True,
    ),
    Case(
        "time-text",
        False,
        _sql("UPDATE records SET time_ms = 'late' WHERE seq = 3"),
        "time column 'late'",
    ),
    Case(
        "time-null",
        False,
        _loose("records", "UPDATE records SET time_ms = NULL WHERE seq = 2"),
        "time column None",
        gate_opens=True,
    ),
    Case(
        "credential-text",
        False,
        _sql("UPDATE credentials SET data = 'zz'"),
        "is corrupt",
        gate_opens=True,
        chain_ok=True,
    ),
    Case("station-random-bytes", True, _random_bytes, "not a farecore journal"),
    Case("station-no-terminal-table", True, _sql(f"DROP TABLE {_T}"), f"no {_T} table"),
    Case(
        "station-hash-3-bytes",
        True,
        _sql(f"UPDATE {_T} SET hash = x'010203' WHERE seq = 2"),
        "record 2 breaks the hash chain",
    ),
    Case(
        "station-recent-terminal-text",
        True,
        _sql(
            f"INSERT INTO {RECENT_RECORDS} SELECT 'abc', seq + 10, time_ms, card_id, body, hash "
            f"FROM {_T}"
        ),
        "",  # a row of no terminal: the reader never sees it; the writer refuses the file
        chain_ok=True,
        export_ok=True,
    ),
    Case(
        "station-lockout-text",
        True,
        _sql(
            "INSERT INTO passback_log (place, card_id, wall_ms, mono_ms, boot) "
            "VALUES ('wusi', 7, 'soon', 0, 'b')"
        ),
        "",  # the lockout log is no part of a batch
        chain_ok=True,
        export_ok=True,
    ),
]
# The writer refuses (``gate_opens`` False) for these reasons; the reader's words differ.
_OPEN_SAYS = {
    "station-recent-terminal-text": "recent record row",
    "station-lockout-text": "lockout row",
}
IDS = [c.name for c in CASES]


@pytest.fixture
def damaged(request: pytest.FixtureRequest, good: Path, tmp_path: Path) -> tuple[Case, Path]:
    case: Case = request.param
    for key in good.glob("t*.key"):
        shutil.copy(key, tmp_path / key.name)
        shutil.copy(key.with_suffix(".pub"), tmp_path / key.with_suffix(".pub").name)
    path = tmp_path / ("station.sqlite" if case.station else "terminal.sqlite")
    shutil.copy(good / path.name, path)
    case.damage(path)
    return case, path


def _terminal(case: Case) -> int:
    return STATION[0] if case.station else TERMINAL


@pytest.mark.parametrize("damaged", CASES, ids=IDS, indirect=True)
def test_the_gate_refuses_a_damaged_journal_at_start(damaged: tuple[Case, Path]) -> None:
    case, path = damaged
    terminal = _terminal(case)

    def start() -> None:
        if case.station:
            StationJournal.open(path, STATION).close()
        else:
            Journal.open(path, terminal).close()

    if case.gate_opens:
        start()  # damage behind the head of the chain: the export and check find it
        return
    with pytest.raises(JournalError) as err:
        start()
    assert _OPEN_SAYS.get(case.name, "") in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damaged", CASES, ids=IDS, indirect=True)
def test_check_and_export_raise_journal_error(damaged: tuple[Case, Path]) -> None:
    case, path = damaged
    terminal = _terminal(case)

    def check() -> int:
        with JournalReader(path, terminal) as reader:
            return reader.verify_chain()

    if case.chain_ok:
        assert check() > 0
    else:
        with pytest.raises(JournalError, match=case.says.replace("(", r"\(")) as err:
            check()
        assert "\n" not in str(err.value)
    if case.export_ok:
        return
    with pytest.raises(JournalError):
        export_batch(path, parse_day(DAY), _key(terminal), terminal_id=terminal)


def _farecore(*runs: list[str], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """Run ``farecore`` with each argument list, all at once (each start imports it all)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "farecore", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in runs
    ]
    done = []
    for args, proc in zip(runs, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def _one_error_line(r: subprocess.CompletedProcess[str], *names: str) -> str:
    assert r.returncode == 2, (r.args, r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("farecore: error: "), r.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


# ``verify`` reads a batch, and a journal is none: the kinds of file it may be handed.
_VERIFY = {"random-bytes", "zero-length", "directory", "hash-text"}


@pytest.mark.parametrize("damaged", CASES, ids=IDS, indirect=True)
def test_the_journal_commands_say_it_in_one_line(damaged: tuple[Case, Path]) -> None:
    case, path = damaged
    terminal = str(_terminal(case))
    where = ["--terminal", terminal] if case.station else []
    runs = {}
    if not case.chain_ok:
        runs["check"] = ["journal", "check", path.name, *where]
    if not case.export_ok:
        key = f"t{terminal}.key"
        runs["export"] = ["journal", "export", "--journal", path.name, "--day", DAY]
        runs["export"] += ["--key", key, "--out", "b.fcb", *where]
    if case.name in _VERIFY:  # the batch's own error (BatchRejected)
        runs["verify"] = ["journal", "verify", path.name]
    results = dict(zip(runs, _farecore(*runs.values(), cwd=path.parent), strict=True))
    for command, r in results.items():
        line = _one_error_line(r, path.name if command != "verify" else "")
        if command == "check":
            assert case.says in line
    assert not (path.parent / "b.fcb").exists()


@pytest.mark.parametrize(
    "damaged",
    [c for c in CASES if c.name in ("random-bytes", "no-records-table", "hash-text")],
    ids=lambda c: c.name,
    indirect=True,
)
def test_a_gate_on_a_damaged_journal_stops_with_one_line(damaged: tuple[Case, Path]) -> None:
    _, path = damaged
    cwd = path.parent
    Issuer.from_seed("damaged-journals").keyring().save(cwd / "keyring.json")
    (cwd / "gate.toml").write_text(
        f'[terminal]\nid = {TERMINAL}\noperator = "qd-metro"\nline = "M3"\nplace = "wusi"\n'
        'role = "bus"\n[policy]\nregions = [370200]\n[keyring]\npath = "keyring.json"\n'
        f'[revocation]\nenabled = false\n[journal]\npath = "{path.name}"\n'
    )
    gate = ["gate", "--reader", "virtual:", "--config", "gate.toml", "--quiet"]
    _one_error_line(_farecore(gate, cwd=cwd)[0], path.name)


def test_a_journal_name_with_uri_characters_is_read_as_named(good: Path, tmp_path: Path) -> None:
    # The reader opens files read-only through an SQLite URI: a '?' or '#' in the name
    # must not end the path there, and open (and create) another file read-write.
    odd = tmp_path / "day?1#2%3.sqlite"
    shutil.copy(good / "terminal.sqlite", odd)
    with JournalReader(odd) as reader:
        assert reader.verify_chain() == 3
    assert JournalReader.terminals_in(odd) == [TERMINAL]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(odd.name)) == []
