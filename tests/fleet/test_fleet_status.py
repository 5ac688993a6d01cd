"""``farecore fleet status``: a real collection point (signed heads, signed batches from
real journals) judged gate by gate, with its exit statuses and its JSON lines."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farecore.card.keys import SigningKey
from farecore.cli import main
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.fleet.status import Thresholds, fleet_status, service_day
from farecore.gate.tap import run_tap
from farecore.journal.batch import day_bounds_ms, export_batch
from farecore.journal.heads import ChainHead, head_of_journal, sign_head
from farecore.journal.records import GENESIS_HASH
from farecore.journal.terminal import Direction, Journal, TapContext
from farecore.settlement.terminals import TerminalInfo, format_terminals, parse_terminals
from readers.virtual import VirtualReader
from sim.issuer import Issuer, derive_key

SEED = "fleet-status-tests"
TODAY = dt.date(2026, 3, 5)
NOW_MS = day_bounds_ms(TODAY, 480)[0] + 10 * 3_600_000  # 10:00 in Qingdao
MIN = 60_000
CTX = TapContext("qd-bus", "1", "V1", Direction.BOARD)


def key_of(tid: int) -> SigningKey:
    return SigningKey("terminal", tid, derive_key(SEED, f"terminal-{tid}"))


def info_of(tid: int) -> TerminalInfo:
    key = key_of(tid)
    return TerminalInfo(
        tid, "qd-bus", "1", "V1", Direction.BOARD, key.algorithm, key.private.public_bytes, 0, 0
    )


def closed_days(n: int) -> list[dt.date]:
    """The ``n`` days before today, newest first."""
    return [TODAY - dt.timedelta(days=i) for i in range(1, n + 1)]


class Point:
    """A collection point laid out as ``farecore.fleet.collect`` keeps one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.point = root / "point"
        (self.point / "heads").mkdir(parents=True)
        (self.point / "batches").mkdir()
        self.infos: list[TerminalInfo] = []
        self.issuer = Issuer.from_seed(SEED)
        self.reader = VirtualReader()

    @property
    def register(self) -> Path:
        path = self.root / "terminals.csv"
        path.write_text(format_terminals(self.infos))
        return path

    def journal(self, tid: int, taps: int) -> Path:
        """A real journal with ``taps`` rides, the last one a minute before now."""
        path = self.root / f"journal-{tid}.sqlite"
        validator = Validator(TerminalPolicy(tid, frozenset({370200})), self.issuer.keyring())
        with Journal.open(path, tid) as j:
            for i in range(taps):
                when = NOW_MS - (taps - i) * MIN
                card = self.issuer.card(i + 1)
                decision = run_tap(self.reader.tap(card), validator, when, os.urandom(16))
                j.append(decision, CTX)
        return path

    def gate(
        self,
        tid: int,
        *,
        age_ms: int | None = 2 * MIN,
        package: int | None = 7,
        generation: int | None = 3,
        pending: int = 10,
        batch_days: list[dt.date] | None = None,
        taps: int = 0,
    ) -> ChainHead | None:
        """A registered gate: its journal, its signed batches and its newest head."""
        self.infos.append(info_of(tid))
        journal = self.journal(tid, taps)
        where = self.point / "batches" / str(tid)
        where.mkdir()
        for day in closed_days(3) if batch_days is None else batch_days:
            data = export_batch(journal, day, key_of(tid))
            (where / f"{tid}-{day.isoformat()}.fcb").write_bytes(data)
        if age_ms is None:
            return None
        head = head_of_journal(
            journal,
            time_ms=NOW_MS - age_ms,
            package_version=package,
            revocation_generation=generation,
            records_pending=pending,
        )
        self.publish(head)
        return head

    def publish(
        self, head: ChainHead, name: str = "latest.json", key: SigningKey | None = None
    ) -> None:
        where = self.point / "heads" / str(head.terminal)
        where.mkdir(exist_ok=True)
        data = sign_head(head, key or key_of(head.terminal))
        (where / name).write_bytes(data)
        day = dt.datetime.fromtimestamp(head.time_ms // 1000, dt.UTC).date()
        (where / f"{day.isoformat()}.json").write_bytes(data)


def run_cli(point: Point, *extra: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "farecore",
            "fleet",
            "status",
            "--point",
            str(point.point),
            "--register",
            str(point.register),
            "--now",
            str(NOW_MS),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def fleet(tmp_path: Path) -> Point:
    p = Point(tmp_path)
    p.gate(1, taps=3)  # current
    p.gate(2, package=6)  # stale: an older package
    p.gate(3, generation=2)  # stale: an older revocation table
    p.gate(4, age_ms=20 * MIN)  # silent: no head for 20 minutes
    p.gate(5, age_ms=None)  # silent: never published a head
    p.gate(6, pending=60_000)  # behind: records not uploaded
    p.gate(7, batch_days=closed_days(5)[2:])  # behind: nothing since three days ago
    p.gate(8, batch_days=[TODAY - dt.timedelta(days=d) for d in (1, 3, 4)])  # a hole
    p.gate(9, batch_days=[])  # behind: never handed in a batch
    return p


def test_every_state_from_a_real_point(fleet: Point) -> None:
    status = fleet_status(fleet.point, parse_terminals(fleet.register.read_text()), now_ms=NOW_MS)
    rows = {r.terminal_id: r for r in status.rows}
    assert {t: r.state for t, r in rows.items()} == {
        1: "current",
        2: "stale",
        3: "stale",
        4: "silent",
        5: "silent",
        6: "behind",
        7: "behind",
        8: "behind",
        9: "behind",
    }
    assert rows[1].reasons == () and rows[1].head is not None and rows[1].head.seq == 3
    assert rows[1].last_batch_day == TODAY - dt.timedelta(days=1)
    assert rows[2].reasons == ("package 6 behind 7",)
    assert rows[3].reasons == ("revocation generation 2 behind 3",)
    assert rows[4].reasons == ("no head for 20 min",)
    assert rows[5].reasons[0] == "no head published"
    assert rows[6].reasons == ("60000 records not yet uploaded",)
    assert rows[7].reasons == (
        f"no batch since {TODAY - dt.timedelta(days=3)} (due: {TODAY - dt.timedelta(days=2)})",
    )
    assert rows[8].reasons == (f"no batch for {TODAY - dt.timedelta(days=2)}",)
    assert rows[9].reasons == ("no batch handed in",)
    assert status.reference == (7, 3) and not status.reference_given
    assert status.counts() == {"current": 1, "stale": 2, "silent": 2, "behind": 4}
    assert not status.all_current


def test_the_published_reference_and_the_thresholds(fleet: Point) -> None:
    register = parse_terminals(fleet.register.read_text())
    status = fleet_status(fleet.point, register, now_ms=NOW_MS, published=(8, 3))
    assert {r.terminal_id: r.state for r in status.rows}[1] == "stale"
    assert status.reference_given
    looser = Thresholds(silent_after_ms=30 * MIN, max_pending=100_000)
    status = fleet_status(fleet.point, register, now_ms=NOW_MS, thresholds=looser)
    states = {r.terminal_id: r.state for r in status.rows}
    assert states[4] == "current" and states[6] == "current"
    # A silent gate that is also behind is silent, and says both.
    later = fleet_status(fleet.point, register, now_ms=NOW_MS + 2 * 86_400_000)
    row = next(r for r in later.rows if r.terminal_id == 1)
    assert row.state == "silent"
    assert row.reasons == (
        "no head for 2882 min",
        f"no batch since {TODAY - dt.timedelta(days=1)} (due: {TODAY})",
    )


def test_heads_that_fail_are_shown_refused_never_trusted(fleet: Point) -> None:
    fleet.gate(10)
    fleet.gate(11)
    fleet.gate(12)
    # 10: a head signed with another terminal's key; 11: a damaged file; 12: a directory.
    forged = ChainHead(10, 0, GENESIS_HASH, NOW_MS - MIN, 99, 99, 0)
    data = sign_head(dataclasses.replace(forged, terminal=11), key_of(11))
    (fleet.point / "heads" / "10" / "latest.json").write_bytes(
        data.replace(b'"terminal":11', b'"terminal":10')
    )
    (fleet.point / "heads" / "11" / "latest.json").write_bytes(b'{"format":"farecore-head/1"}')
    (fleet.point / "heads" / "12" / "latest.json").unlink()
    (fleet.point / "heads" / "12" / "latest.json").mkdir()
    status = fleet_status(fleet.point, parse_terminals(fleet.register.read_text()), now_ms=NOW_MS)
    rows = {r.terminal_id: r for r in status.rows}
    for tid in (10, 11, 12):
        assert rows[tid].state == "silent" and rows[tid].head is None
        assert rows[tid].reasons[0] == "its latest head is refused (not trusted)"
    assert "key id 11" in (rows[10].head_refused or "")
    assert "field" in (rows[11].head_refused or "")
    assert "not a regular file" in (rows[12].head_refused or "")
    # A refused head's 99 is not the fleet's newest package.
    assert status.reference == (7, 3)


def test_conflicting_heads_need_attention(tmp_path: Path) -> None:
    p = Point(tmp_path)
    head = p.gate(1, taps=2)
    assert head is not None
    other = dataclasses.replace(head, hash=b"\x01" * 32)
    (p.point / "heads" / "1" / f"conflict-{head.seq}-abc.json").write_bytes(
        sign_head(other, key_of(1))
    )
    code, out, _ = run_cli(p)
    assert code == 1
    assert "1 conflicting heads: a seq signed with two hashes" in out
    assert "1 with conflicting heads" in out.splitlines()[-1]


def test_exit_status_zero_when_every_gate_is_current(tmp_path: Path) -> None:
    p = Point(tmp_path)
    for tid in (1, 2, 3):
        p.gate(tid, taps=tid)
    code, out, err = run_cli(p)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["terminal", "state"]
    assert [line.split()[1] for line in lines[1:4]] == ["current"] * 3
    assert lines[-1] == (
        "3 terminals: 3 current, 0 stale, 0 silent, 0 behind; reference package 7, "
        "revocation generation 3 (newest reported across the fleet)"
    )


def test_exit_status_one_and_the_table(fleet: Point) -> None:
    code, out, _ = run_cli(fleet)
    assert code == 1
    rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert rows["1"].split()[1:3] == ["current", "2026-03-05T01:58:00Z"]
    assert "package 6 behind 7" in rows["2"]
    assert rows["5"].split()[1:3] == ["silent", "-"]
    assert out.splitlines()[-1].startswith("9 terminals: 1 current, 2 stale, 2 silent, 4 behind")


def test_json_lines(fleet: Point) -> None:
    code, out, err = run_cli(fleet, "--json")
    assert code == 1
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["terminal_id"] for d in docs] == list(range(1, 10))
    first = docs[0]
    assert first == {
        "terminal_id": 1,
        "state": "current",
        "reasons": [],
        "head_time_ms": NOW_MS - 2 * MIN,
        "head_time": "2026-03-05T01:58:00Z",
        "head_age_s": 120,
        "seq": 3,
        "package_version": 7,
        "revocation_generation": 3,
        "records_pending": 10,
        "last_batch_day": "2026-03-04",
        "head_refused": None,
        "conflicts": 0,
    }
    assert docs[4]["state"] == "silent" and docs[4]["seq"] is None
    assert "9 terminals" in err  # the summary goes to stderr: stdout is only JSON


def test_options_and_bad_arguments(
    fleet: Point, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["fleet", "status", "--register", str(fleet.register)]
    now = ["--now", "2026-03-05T10:00:00+08:00"]
    assert (
        main(
            [
                *base,
                "--point",
                str(fleet.point),
                *now,
                "--silent-after",
                "30",
                "--max-pending",
                "100000",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("9 terminals: 3 current, 2 stale, 1 silent, 3 behind")
    assert main([*base, "--point", str(tmp_path / "absent"), *now]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([*base, "--point", str(tmp_path / "empty"), *now]) == 2
    assert "not a collection point" in capsys.readouterr().err
    assert main([*base, "--point", str(fleet.point), "--now", "yesterday"]) == 2
    assert main([*base, "--point", str(fleet.point), "--now", "2026-03-05T10:00:00"]) == 2
    assert "names no time zone" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("terminal_id\n1\n")
    assert main(["fleet", "status", "--register", str(bad), "--point", str(fleet.point)]) == 2
    assert (
        main(
            [
                "fleet",
                "status",
                "--register",
                str(tmp_path / "none.csv"),
                "--point",
                str(fleet.point),
            ]
        )
        == 2
    )
    with pytest.raises(SystemExit) as exc:
        main([*base, "--point", str(fleet.point), "--silent-after", "-1"])
    assert exc.value.code == 2
    capsys.readouterr()


def test_unregistered_terminals_at_the_point_are_named_in_the_summary(fleet: Point) -> None:
    stranger = ChainHead(77, 0, GENESIS_HASH, NOW_MS - MIN, 7, 3, 0)
    fleet.publish(stranger)
    code, out, _ = run_cli(fleet)
    assert code == 1
    assert "1 unregistered terminals at the point ignored" in out.splitlines()[-1]
    assert not any(line.startswith("77 ") for line in out.splitlines())


def test_service_day_is_local() -> None:
    assert service_day(NOW_MS, 480) == TODAY
    assert service_day(day_bounds_ms(TODAY, 480)[0] - 1, 480) == TODAY - dt.timedelta(days=1)


def test_five_thousand_gates(tmp_path: Path) -> None:
    """A city's fleet: every head verified, every batch directory listed, in seconds."""
    point = tmp_path / "point"
    infos = []
    for tid in range(1, 5001):
        key = SigningKey("terminal", tid, derive_key(SEED, f"big-{tid}"))
        infos.append(
            TerminalInfo(
                tid,
                "qd-bus",
                "1",
                "V1",
                Direction.BOARD,
                key.algorithm,
                key.private.public_bytes,
                0,
                0,
            )
        )
        head = ChainHead(
            tid,
            tid,
            bytes(32 - len(str(tid))) + str(tid).encode(),
            NOW_MS - (tid % 20) * MIN,
            7,
            3,
            tid % 100,
        )
        where = point / "heads" / str(tid)
        where.mkdir(parents=True)
        (where / "latest.json").write_bytes(sign_head(head, key))
        days = point / "batches" / str(tid)
        days.mkdir(parents=True)
        for day in closed_days(3):
            (days / f"{tid}-{day.isoformat()}.fcb").write_bytes(b"")
    register = {i.terminal_id: i for i in infos}
    started = time.perf_counter()
    status = fleet_status(point, register, now_ms=NOW_MS)
    elapsed = time.perf_counter() - started
    # ages 0..19 minutes: 16..19 are silent (4 in 20)
    assert status.counts() == {"current": 4000, "stale": 0, "silent": 1000, "behind": 0}
    assert elapsed < 30, elapsed  # about 1 s on the 2-core development machine


def test_hostile_names_at_the_point_never_crash(tmp_path: Path) -> None:
    p = Point(tmp_path)
    p.gate(1, taps=1)
    heads, batches = p.point / "heads", p.point / "batches"
    for name in ("\u00b2", "9" * 30, "9" * 20, "01", "-1", "1 "):
        (heads / name).mkdir()
        (batches / name).mkdir()
    (batches / "1" / "1-2026-02-30.fcb").write_bytes(b"")  # no such day
    (batches / "1" / "1-\uff12\uff10\uff12\uff16-03-04.fcb").write_bytes(b"")  # wide digits
    (batches / "1" / "2-2026-03-04.fcb").write_bytes(b"")  # another terminal's name
    (heads / "1" / "conflict-\u00b2.json").write_bytes(b"\xff")
    status = fleet_status(p.point, parse_terminals(p.register.read_text()), now_ms=NOW_MS)
    row = status.rows[0]
    assert row.state == "current" and row.last_batch_day == TODAY - dt.timedelta(days=1)
    assert row.conflicts == 1  # named as a conflict file: counted, never trusted
    assert status.unregistered == (int("9" * 20),)  # a directory of digits, not a uint64


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=600), prefix=st.booleans())
def test_any_bytes_as_latest_head_are_refused_not_trusted(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, prefix: bool
) -> None:
    root = tmp_path_factory.mktemp("hostile")
    (root / "heads" / "1").mkdir(parents=True)
    payload = (b'{"algorithm":"Ed25519","format":"farecore-head/1",' if prefix else b"") + data
    (root / "heads" / "1" / "latest.json").write_bytes(payload)
    status = fleet_status(root, {1: info_of(1)}, now_ms=NOW_MS)
    row = status.rows[0]
    assert row.head is None and row.state == "silent"
    assert row.head_refused is not None and row.head_refused.startswith("1/latest.json")
