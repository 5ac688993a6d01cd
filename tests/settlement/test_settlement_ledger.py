"""The ledger across nights: a late batch, re-runs, a killed write, and the exit statuses."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from settle_world import DAY, FARES, World, day_ms
from test_settlement_outputs import OUTPUTS, settle

from farecore.settlement import Ledger

NEXT = DAY + dt.timedelta(days=1)
MIN_FARES = FARES.replace('entry = "max"', 'entry = "min"')


def dump(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def amount(files: dict[str, bytes]) -> int:
    return int(json.loads(files["manifest.json"])["stats"]["amount_fen"])


def two_days(world: World) -> None:
    """Metro trips on DAY and NEXT; exit gate 204's batch of DAY arrives a night late."""
    (world.root / "fares.toml").write_text(MIN_FARES)
    world.tap(201, 1, day_ms(8))  # A -> B: 200
    world.tap(204, 1, day_ms(8.3))
    world.tap(205, 2, day_ms(9))  # C -> D: 400
    world.tap(206, 2, day_ms(9.5))
    world.tap(203, 3, day_ms(10))  # B -> B: 200
    world.tap(204, 3, day_ms(10.2))
    world.tap(101, 4, day_ms(11))  # bus: 200
    world.export(DAY)
    one = 86_400_000
    world.tap(201, 1, day_ms(8) + one)  # next day: A -> B again
    world.tap(204, 1, day_ms(8.4) + one)
    world.export(NEXT)


def test_a_late_batch_settles_as_a_correction_and_nothing_is_paid_twice(
    world: World, tmp_path: Path
) -> None:
    two_days(world)
    truth = world.root / "truth"
    truth.mkdir()
    for f in world.batches.glob(f"*-{DAY.isoformat()}.fcb"):
        shutil.copy(f, truth / f.name)
    late = world.batches / f"204-{DAY.isoformat()}.fcb"
    held_back = tmp_path / late.name
    late.rename(held_back)
    ledger_path = tmp_path / "ledger.sqlite"
    with Ledger.open(ledger_path) as ledger:
        night1 = settle(world, tmp_path / "n1", ledger=ledger)
        # Without exit 204, the entries whose exit may be on it wait; the rest is paid.
        assert amount(night1) == 400 + 200
        held = sorted(
            (a["terminal_id"], a["seq"])
            for a in json.loads(night1["anomalies.json"])["anomalies"]
            if a["kind"] == "held"
        )
        assert held == [(201, 1), (203, 1)]
        held_back.rename(late)  # it arrives with the next day's batches
        night2 = settle(world, tmp_path / "n2", day=NEXT, ledger=ledger)
    assert night2["corrections.csv"].decode().splitlines()[1:] == [
        "2026-03-02,qd-metro,M1,2,400",
    ]
    assert amount(night2) == 200  # the next day's own trip
    # Both nights together pay exactly what one complete night would have.
    manifest2 = json.loads(night2["manifest.json"])
    assert manifest2["correction_days"] == [DAY.isoformat()]
    whole = amount(night1) + manifest2["stats"]["correction_amount_fen"]
    (tmp_path / "fresh").mkdir()
    shutil.copytree(truth, tmp_path / "fresh" / "batches")
    fresh = World(tmp_path / "fresh")
    (fresh.root / "fares.toml").write_text(MIN_FARES)
    assert whole == amount(settle(fresh, tmp_path / "whole")) == 1000

    # Re-running either night gives the same bytes and adds nothing to the ledger.
    before = dump(ledger_path)
    with Ledger.open(ledger_path) as ledger:
        again1 = settle(world, tmp_path / "r1", ledger=ledger)
        again2 = settle(world, tmp_path / "r2", day=NEXT, ledger=ledger)
    assert again1 == night1 and again2 == night2
    assert dump(ledger_path) == before
    # A third night pays none of it again: every batch is already settled.
    with Ledger.open(ledger_path) as ledger:
        night3 = settle(world, tmp_path / "n3", day=NEXT + dt.timedelta(days=1), ledger=ledger)
    assert amount(night3) == 0 and night3["corrections.csv"].count(b"\n") == 1


def test_a_settled_night_is_final(world: World, tmp_path: Path) -> None:
    from farecore.errors import SettlementError

    two_days(world)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        settle(world, tmp_path / "n1", ledger=ledger)
        (world.root / "fares.toml").write_text(MIN_FARES + "\n# edited\n")
        with pytest.raises(SettlementError, match="other inputs"):
            settle(world, tmp_path / "again", ledger=ledger)
        (world.root / "fares.toml").write_text(MIN_FARES)
        victim = world.batches / f"101-{DAY.isoformat()}.fcb"
        victim.rename(tmp_path / "gone.fcb")
        with pytest.raises(SettlementError, match="no longer in the batch directory"):
            settle(world, tmp_path / "again", ledger=ledger)


_KILL_BEFORE_COMMIT = """
import os, signal, sys
from farecore.settlement import ledger as L

real = L.Ledger.record_night

def record_night(self, *args, **kwargs):
    wrote = []

    def trace(sql):
        if sql.startswith("INSERT INTO taken"):
            wrote.append(sql)
        if sql == "COMMIT" and wrote:  # every row is written, none committed
            os.kill(os.getpid(), signal.SIGKILL)

    self._db.set_trace_callback(trace)
    return real(self, *args, **kwargs)

L.Ledger.record_night = record_night
from farecore.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_in_the_ledger_write_leaves_the_ledger_as_before(
    world: World, tmp_path: Path
) -> None:
    two_days(world)

    def cli(day: dt.date, out: Path, ledger: Path, script: str | None = None) -> int:
        args = [
            "settle",
            "--batches",
            str(world.batches),
            "--terminals",
            str(world.root / "terminals.csv"),
            "--keyring",
            str(world.root / "keyring.json"),
            "--fares",
            str(world.root / "fares.toml"),
            "--day",
            day.isoformat(),
            "--out",
            str(out),
            "--ledger",
            str(ledger),
            "--quiet",
        ]
        head = ["-c", script] if script else ["-m", "farecore"]
        return subprocess.run([sys.executable, *head, *args], timeout=120).returncode

    ledger = tmp_path / "ledger.sqlite"
    assert cli(DAY, tmp_path / "n1", ledger) == 0
    shutil.copy(ledger, tmp_path / "spare.sqlite")
    before = dump(ledger)
    assert cli(NEXT, tmp_path / "killed", ledger, _KILL_BEFORE_COMMIT) == -9
    assert dump(ledger) == before  # the WAL's uncommitted night is gone
    assert cli(NEXT, tmp_path / "n2", ledger) == 0
    assert cli(NEXT, tmp_path / "clean", tmp_path / "spare.sqlite") == 0
    for name in OUTPUTS:
        assert (tmp_path / "n2" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    assert dump(ledger) == dump(tmp_path / "spare.sqlite")


def _args(world: World, tmp_path: Path, **change: str) -> list[str]:
    args = {
        "--batches": str(world.batches),
        "--terminals": str(world.root / "terminals.csv"),
        "--keyring": str(world.root / "keyring.json"),
        "--fares": str(world.root / "fares.toml"),
        "--day": DAY.isoformat(),
        "--out": str(tmp_path / "out"),
        "--ledger": str(tmp_path / "ledger.sqlite"),
    }
    args.update({f"--{k.replace('_', '-')}": v for k, v in change.items()})
    return ["settle", "--quiet", *(x for kv in args.items() for x in kv)]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farecore", *args], capture_output=True, text=True, timeout=120
    )


def test_exit_statuses(world: World, tmp_path: Path) -> None:
    two_days(world)
    (tmp_path / "empty").mkdir()
    (tmp_path / "ledger-dir").mkdir()
    (tmp_path / "typo.toml").write_text(MIN_FARES.replace("[unpaired]", "[unpaird]"))
    (tmp_path / "fen.toml").write_text(MIN_FARES.replace('entry = "min"', "entry = -5"))
    no_op = MIN_FARES.replace('[[operator]]\nid = "qd-bus"\nregions = [370200]\n', "")
    (tmp_path / "no-op.toml").write_text(no_op)
    (tmp_path / "ledger-junk").write_bytes(b"not a database at all" * 100)
    cases = [
        # (arguments changed, exit status, what stderr or stdout must say)
        ({"day": "2026-02-01", "ledger": str(tmp_path / "l1")}, 3, "no batch for 2026-02-01"),
        ({"batches": str(tmp_path / "empty"), "ledger": str(tmp_path / "l2")}, 3, ""),
        ({"batches": str(tmp_path / "nope")}, 2, "does not exist"),
        ({"fares": str(tmp_path / "typo.toml")}, 2, "did you mean 'unpaired'"),
        ({"fares": str(tmp_path / "fen.toml")}, 2, "unpaired.entry"),
        ({"fares": str(tmp_path / "no-op.toml")}, 2, "no [[operator]] for qd-bus"),
        ({"terminals": str(tmp_path / "nope.csv")}, 2, "cannot read terminal register"),
        ({"keyring": str(tmp_path)}, 2, "is a directory"),
        ({"ledger": str(tmp_path / "ledger-dir")}, 2, "is not a file"),
        ({"ledger": str(tmp_path / "ledger-junk")}, 2, "not a farecore ledger"),
        ({"day": "2026-13-01"}, 2, "not YYYY-MM-DD"),
        ({"jobs": "0"}, 2, "--jobs: the number of processes must be at least 1"),
        ({"ledger": str(tmp_path / "l3")}, 0, ""),
    ]
    for change, status, says in cases:
        r = _run(_args(world, tmp_path, **change))
        assert r.returncode == status, (change, r.stdout, r.stderr)
        assert (
            says in r.stderr + (tmp_path / "out" / "anomalies.json").read_text(errors="replace")
            if status == 3
            else says in r.stderr
        ), (change, r.stderr)
        assert "Traceback" not in r.stderr
    # Rejected: a tampered batch is named, the rest settles, and the night needs review.
    target = world.batches / f"201-{DAY.isoformat()}.fcb"
    data = bytearray(target.read_bytes())
    data[-10] ^= 1
    target.write_bytes(bytes(data))
    r = _run(_args(world, tmp_path, ledger=str(tmp_path / "l4"), out=str(tmp_path / "o4")))
    assert r.returncode == 3 and "Traceback" not in r.stderr
    kinds = {
        a["kind"] for a in json.loads((tmp_path / "o4" / "anomalies.json").read_text())["anomalies"]
    }
    assert {"batch_rejected", "missing_batch", "held"} <= kinds


def test_a_held_ride_settles_after_its_terminal_leaves_the_register(
    world: World, tmp_path: Path
) -> None:
    two_days(world)
    late = world.batches / f"204-{DAY.isoformat()}.fcb"
    held_back = tmp_path / late.name
    late.rename(held_back)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        settle(world, tmp_path / "n1", ledger=ledger)
        # Entry gate 201 (whose ride is held) is taken out of service and unregistered.
        lines = (world.root / "terminals.csv").read_text().splitlines()
        (world.root / "terminals.csv").write_text(
            "\n".join(ln for ln in lines if not ln.startswith("201,")) + "\n"
        )
        held_back.rename(late)
        night2 = settle(world, tmp_path / "n2", day=NEXT, ledger=ledger)
    # The held entry pairs with its late exit, in the context it was verified in.
    assert b"2026-03-02,qd-metro,M1,2,400" in night2["corrections.csv"]


def test_a_new_terminal_must_start_its_chain_at_seq_1(world: World, tmp_path: Path) -> None:
    two_days(world)
    (world.batches / f"101-{DAY.isoformat()}.fcb").rename(tmp_path / "lost.fcb")
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        settle(world, tmp_path / "n1", ledger=ledger)  # 101 hands in nothing
        world.tap(101, 5, day_ms(8) + 86_400_000)  # its seq 2, on the next day
        world.export(NEXT)
        files = settle(world, tmp_path / "n2", day=NEXT, ledger=ledger)
    # The ledger never saw 101: its chain must start at seq 1, which is missing.
    gaps = [a for a in json.loads(files["anomalies.json"])["anomalies"] if a["kind"] == "seq_gap"]
    assert [(g["terminal_id"], g["seq"]) for g in gaps] == [(101, 1)]
    # On a ledger's first night (settling starts), the lowest batch starts the chain.
    with Ledger.open(tmp_path / "fresh.sqlite") as fresh:
        first = settle(world, tmp_path / "f1", day=NEXT, ledger=fresh)
    assert "seq_gap" not in first["anomalies.json"].decode()


def test_a_damaged_ledger_is_one_line_and_exit_2(world: World, tmp_path: Path) -> None:
    two_days(world)
    ledger = tmp_path / "ledger.sqlite"
    assert _run(_args(world, tmp_path, ledger=str(ledger))).returncode == 0
    db = sqlite3.connect(ledger)
    db.execute("UPDATE nights SET day='yesterday'")
    db.commit()
    db.close()
    r = _run(_args(world, tmp_path, ledger=str(ledger), day=NEXT.isoformat()))
    assert r.returncode == 2 and "is damaged" in r.stderr and "Traceback" not in r.stderr


def test_a_rerun_that_differs_writes_nothing(world: World, tmp_path: Path) -> None:
    two_days(world)
    ledger = tmp_path / "ledger.sqlite"
    args = _args(world, tmp_path, ledger=str(ledger))
    assert _run(args).returncode == 0
    before = {n: (tmp_path / "out" / n).read_bytes() for n in OUTPUTS}
    # Outputs that no longer match what the ledger recorded of the night.
    db = sqlite3.connect(ledger)
    db.execute("UPDATE nights SET outputs='{}'")
    db.commit()
    db.close()
    r = _run(args)
    assert r.returncode == 2 and "nothing was written" in r.stderr
    assert {n: (tmp_path / "out" / n).read_bytes() for n in OUTPUTS} == before


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ("[unpaired]", "[checks]\nclock_tolerance_s = -1\n[unpaired]", "clock_tolerance_s must be"),
        ("[unpaired]", "[checks]\nrevocation_max_age_s = 0\n[unpaired]", "revocation_max_age_s"),
        ("[unpaired]", "[checks]\nutc_offset_min = 900\n[unpaired]", "utc_offset_min must be"),
        (
            "[unpaired]",
            "[checks]\nclock_tolerence_s = 5\n[unpaired]",
            "did you mean 'clock_tolerance_s'",
        ),
        ("regions = [370200]\n", 'regions = "370200"\n', "regions must be an array"),
        ("regions = [370200]\n", "regions = []\n", "regions must not be empty"),
        (
            "regions = [370200]\n",
            "regions = [370200]\npassback_s = {tram = 5}\n",
            "unknown key 'tram'",
        ),
        ("regions = [370200]\n", 'regions = [370200]\npassback_scope = "city"\n', "passback_scope"),
        ("regions = [370200]\n", "regions = [370200]\ncategories = [256]\n", "categories must be"),
        ('entry = "max"', 'entry = "most"', "unpaired.entry must be"),
        ('entry = "max"', "entry = true", "unpaired.entry must be"),
        ("[unpaired]", "[unpaired]\n" + "x = [" * 2000, "nested deeper than 8"),
        ("[unpaired]", "[unpaired]\nx = [1\n", "not valid TOML"),
    ],
)
def test_a_bad_fares_file_is_one_line_and_exit_2(
    world: World, tmp_path: Path, old: str, new: str, says: str
) -> None:
    assert old in FARES
    world.export()
    bad = tmp_path / "bad.toml"
    bad.write_text(FARES.replace(old, new, 1))
    r = _run(_args(world, tmp_path, fares=str(bad)))
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_a_bad_revocation_table_argument_is_one_line(world: World, tmp_path: Path) -> None:
    world.export()
    for table in (tmp_path, tmp_path / "nope.frt"):
        r = _run(
            [
                *_args(world, tmp_path),
                "--revocation-table",
                str(table),
                "--revocation-signer",
                str(tmp_path / "x.pub"),
            ]
        )
        assert r.returncode == 2 and "is not a file" in r.stderr and "Traceback" not in r.stderr


def test_a_batch_in_another_time_zone_is_rejected(world: World, tmp_path: Path) -> None:
    from settle_world import terminal_key

    from farecore.journal.batch import export_batch

    world.tap(101, 1, day_ms(8))
    world.export()
    (world.batches / f"101-{DAY.isoformat()}.fcb").write_bytes(
        export_batch(world.root / "journal-101.sqlite", DAY, terminal_key(101), 0)
    )
    files = settle(world, tmp_path / "out")
    [a] = [
        a for a in json.loads(files["anomalies.json"])["anomalies"] if a["kind"] == "batch_rejected"
    ]
    assert a["terminal_id"] == 101 and "UTC+0 min" in a["detail"]
