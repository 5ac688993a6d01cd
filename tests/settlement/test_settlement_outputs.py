"""Settlement end to end: exact totals, outputs and manifest, byte-identical reruns."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from settle_world import DAY, World, day_ms

from farecore.cli import main
from farecore.settlement import Ledger, find_batches, load_inputs, run_settlement
from farecore.settlement.outputs import rides_parquet_bytes

OUTPUTS = ("totals.csv", "corrections.csv", "rides.parquet", "anomalies.json", "manifest.json")


def scripted_day(w: World) -> None:
    assert w.tap(101, 1, day_ms(8))  # bus line 1: 200
    assert w.tap(201, 2, day_ms(8))  # metro A -> B, 5 km: 200 on M1
    assert w.tap(204, 2, day_ms(8.3))
    assert w.tap(205, 3, day_ms(9))  # metro C -> D, 18 km: 400 on M2
    assert w.tap(206, 3, day_ms(9.6))
    assert w.tap(203, 4, day_ms(10))  # entry, never exits: unpaired entry, max 400
    assert w.tap(202, 5, day_ms(11))  # exit with no entry: unpaired exit, min 200
    assert w.tap(102, 6, day_ms(12))  # bus line 2: 100
    w.export()


def settle(
    w: World, out: Path, jobs: int = 1, day: dt.date = DAY, ledger: Ledger | None = None
) -> dict[str, bytes]:
    inputs = load_inputs(
        day, w.root / "terminals.csv", w.root / "keyring.json", w.root / "fares.toml"
    )
    run_settlement(inputs, find_batches(w.batches), out, jobs=jobs, ledger=ledger)
    return {name: (out / name).read_bytes() for name in OUTPUTS}


def totals(files: dict[str, bytes]) -> list[list[str]]:
    return list(csv.reader(files["totals.csv"].decode().splitlines()))[1:]


def test_scripted_day_totals(world: World, tmp_path: Path) -> None:
    scripted_day(world)
    files = settle(world, tmp_path / "out")
    assert totals(files) == [
        ["2026-03-02", "qd-bus", "1", "1", "200"],
        ["2026-03-02", "qd-bus", "2", "1", "100"],
        ["2026-03-02", "qd-metro", "M1", "3", "800"],
        ["2026-03-02", "qd-metro", "M2", "1", "400"],
    ]
    manifest = json.loads(files["manifest.json"])
    for name in OUTPUTS[:4]:
        assert manifest["outputs"][name] == hashlib.sha256(files[name]).hexdigest()
    assert manifest["stats"]["amount_fen"] == 1500
    table = pq.read_table(tmp_path / "out" / "rides.parquet")
    assert table.num_rows == 8
    assert sum(table.column("fare_fen").to_pylist()) == 1500
    assert json.loads(files["anomalies.json"])["anomalies"] == []


def test_outputs_are_byte_identical_across_runs_jobs_and_duplicates(
    world: World, tmp_path: Path
) -> None:
    scripted_day(world)
    a = settle(world, tmp_path / "a")
    b = settle(world, tmp_path / "b", jobs=2)
    assert a == b
    # Ingesting a batch twice (a copy under another name) changes nothing.
    first = find_batches(world.batches)[0]
    shutil.copy(first, world.batches / "again.fcb")
    c = settle(world, tmp_path / "c")
    assert a == c


def test_parquet_bytes_are_deterministic(world: World, tmp_path: Path) -> None:
    scripted_day(world)
    inputs = load_inputs(
        DAY, world.root / "terminals.csv", world.root / "keyring.json", world.root / "fares.toml"
    )
    result = run_settlement(inputs, find_batches(world.batches), None)
    assert rides_parquet_bytes(result) == rides_parquet_bytes(result)


def test_cli_settle_summary_and_errors(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted_day(world)
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
        "2026-03-02",
        "--out",
        str(tmp_path / "out"),
        "--ledger",
        str(tmp_path / "ledger.sqlite"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "15.00 yuan" in out and "anomalies: none" in out and "nothing to review" in out
    first = {name: (tmp_path / "out" / name).read_bytes() for name in OUTPUTS}
    assert main(args) == 0  # the same night again: same bytes, the ledger unchanged
    assert "a re-run" in capsys.readouterr().out
    assert {name: (tmp_path / "out" / name).read_bytes() for name in OUTPUTS} == first
    bad = [a if a != str(world.batches) else str(tmp_path / "nope") for a in args]
    proc = subprocess.run([sys.executable, "-m", "farecore", *bad], capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    (world.root / "fares.toml").write_text("[[bus]]\noperator = 1\n")
    proc = subprocess.run([sys.executable, "-m", "farecore", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and "fares.toml" in proc.stderr


def test_the_cycle_collector_is_back_as_it_was_after_a_run(world: World, tmp_path: Path) -> None:
    # The settlement pauses Python's cycle collector and freezes partials while it runs
    # (pipeline._without_cycle_collector); a run, even a failed one, must undo both.
    import gc

    from farecore.errors import SettlementError

    scripted_day(world)
    inputs = load_inputs(
        DAY, world.root / "terminals.csv", world.root / "keyring.json", world.root / "fares.toml"
    )
    assert gc.isenabled()
    run_settlement(inputs, find_batches(world.batches), tmp_path / "out")
    assert gc.isenabled() and gc.get_freeze_count() == 0
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        run_settlement(inputs, find_batches(world.batches), tmp_path / "n1", ledger=ledger)
        earlier = load_inputs(
            dt.date(2026, 3, 1),
            world.root / "terminals.csv",
            world.root / "keyring.json",
            world.root / "fares.toml",
        )
        with pytest.raises(SettlementError, match="cannot be settled after them"):
            run_settlement(earlier, find_batches(world.batches), tmp_path / "n0", ledger=ledger)
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        run_settlement(inputs, find_batches(world.batches), None)
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()
