"""A small seeded day end to end through the real `farecore sim` CLI in a subprocess."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from sim_support import MIX, SMALL, SimRun, run_sim

from farecore.card.keys import Keyring
from farecore.decide.issued import IssuedList
from farecore.gate.config import load_gate_config
from sim.population import FraudMix, Population

FRAUD_KINDS = {
    "expired": "EXPIRED",
    "forged": "BAD_CREDENTIAL_SIGNATURE",
    "clone": "CARD_AUTH_FAILED",
    "other_region": "WRONG_REGION",
    "revoked_before": "REVOKED",
    "revoked_during": "REVOKED",
    "passback": "PASSBACK",
    "pulled": "UNREADABLE",
}


def test_run_succeeds_and_writes_summary(small_run: SimRun) -> None:
    assert small_run.returncode == 0, small_run.stderr + small_run.stdout
    s = small_run.summary
    for key in (
        "taps",
        "wrong_decisions",
        "decisions_by_reason",
        "reimbursement_by_operator",
        "expected_reimbursement_by_operator",
        "taps_per_second",
        "latency_us",
    ):
        assert key in s, key
    assert s["taps"] == 2500
    assert s["wrong_decisions"] == 0
    assert sum(s["decisions_by_reason"].values()) == s["taps"]
    assert 0 < s["latency_us"]["p50"] <= s["latency_us"]["p99"]
    assert s["taps_per_second"] > 0
    assert "OK: 0 wrong decisions" in small_run.stdout
    for name in (
        "keyring.json",
        "fares.toml",
        "terminals.csv",
        "revocation/gen1.frt",
        "revocation/gen2.frt",
        "keys/issuer-1.pub",
        "settlement",
    ):
        assert (small_run.out / name).exists(), name
    assert len(list((small_run.out / "batches").glob("*.fcb"))) == 8
    assert len(list((small_run.out / "gates").glob("gate-*.toml"))) == 8


def test_the_issuers_list_spares_the_issuer_checks_of_its_cards(small_run: SimRun) -> None:
    engine = small_run.summary["engine"]
    # Only forged credentials (every tap) and the other region's cards (once per
    # controller) are not on the Qingdao issuer's list.
    scenarios = small_run.summary["scenarios"]
    unlisted = scenarios["forged"]["taps"] + scenarios["other_region"]["taps"]
    taps = small_run.summary["taps"]
    assert 0 < engine["issuer_checks_per_tap"] <= round(unlisted / taps, 3) + 0.001  # rounded
    assert engine["issuer_listed_per_tap"] > 0
    # Where the taps' time went: the controllers' threads decide (two signatures a tap
    # at least), their committer threads write the groups.
    cpu = engine["cpu_us_per_tap"]
    assert cpu["controller"] > cpu["committer"] > 0
    assert engine["commit_wait_s"] > 0  # the last group at least is committed and waited for
    # The rows wait in the recent tables through the day; closing each station file
    # after the day moves them all to their terminals' tables.
    assert engine["journal_close_s"] > 0
    stations = sorted((small_run.out / "work" / "journals").glob("station-*.sqlite"))
    assert stations
    for path in stations:
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT COUNT(*) FROM recent_records").fetchone() == (0,)
            moved = db.execute("SELECT COUNT(*) FROM credentials").fetchone()[0]
            assert moved > 0
    assert "CPU per tap:" in small_run.stdout
    cfg = load_gate_config(next((small_run.out / "gates").glob("gate-*.toml")))
    (path,) = cfg.issued_lists
    listed = IssuedList.open(path, Keyring.load(cfg.keyring))
    pop = Population.generate(7, 1000, FraudMix.parse(MIX))
    not_issued = len(pop.indices_of("forged")) + len(pop.indices_of("other_region"))
    assert listed.count == 1000 - not_issued


def test_the_gates_are_wired_as_real_ones_on_the_simulated_clock(small_run: SimRun) -> None:
    """Each gate is built from its gate.toml by the real wiring: it keeps durable marks
    (the table generation in force, the issued list, the latest time seen) in the run's
    state directory, and its clock guard ran on the simulated day without a fault."""
    from farecore.gate.marks import GateMarks
    from sim.workload import DayClock
    from sim.world import SIM_DAY

    start = DayClock(SIM_DAY).start_ms
    for path in sorted((small_run.out / "gates").glob("gate-*.toml")):
        cfg = load_gate_config(path)
        assert cfg.marks.parent.resolve() == (small_run.out / "work" / "state").resolve()
        marks = GateMarks.load(cfg.marks, cfg.terminal_id)
        assert marks.revocation is not None and marks.revocation[0] == 2
        assert set(marks.issued) == {1}
        assert start < marks.time_ms < start + 2 * 86_400_000
    assert "CLOCK FAULT" not in small_run.stderr


def test_confusion_table_catches_every_fraud_kind(small_run: SimRun) -> None:
    s = small_run.summary
    # Only the diagonal: every expected label was exactly what the engine decided.
    for expected, row in s["confusion"].items():
        assert set(row) == {expected}, (expected, row)
    scenarios = s["scenarios"]
    for kind, reason in FRAUD_KINDS.items():
        sc = scenarios.get(kind)
        assert sc is not None and sc["taps"] > 0, f"no {kind} taps in the day"
        assert sc["wrong"] == 0
        assert s["confusion"].get(reason, {}).get(reason, 0) > 0, reason
        if kind == "revoked_during":
            # Accepted before generation 2 is in force at 13:00, refused after it.
            assert 0 < sc["denied"] <= sc["taps"]
        else:
            assert sc["denied"] == sc["taps"], kind
    assert scenarios["normal"]["denied"] <= scenarios["normal"]["taps"] // 50
    assert s["decisions_by_reason"]["ACCEPT"] > s["taps"] * 0.7


def test_settlement_equals_ground_truth(small_run: SimRun) -> None:
    s = small_run.summary
    assert s["settlement_matches"] is True
    assert s["reimbursement_by_operator"] == s["expected_reimbursement_by_operator"]
    assert set(s["reimbursement_by_operator"]) >= {"qingdao-metro", "qingdao-bus"}
    assert all(v > 0 for v in s["reimbursement_by_operator"].values())
    # The settlement's own totals file says the same, line by line.
    totals = list((small_run.out / "settlement").glob("*.csv"))
    assert totals, "settlement wrote no CSV"
    paid: dict[str, int] = {}
    with totals[0].open() as f:
        for row in csv.DictReader(f):
            paid[row["operator"]] = paid.get(row["operator"], 0) + int(row["amount_fen"])
    assert paid == s["expected_reimbursement_by_operator"]


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_settlement(
    small_run: SimRun, small_run_again: SimRun
) -> None:
    assert small_run_again.returncode == 0, small_run_again.stderr
    a, b = small_run.out, small_run_again.out
    assert _digests(a / "settlement") == _digests(b / "settlement")
    assert _digests(a / "batches") == _digests(b / "batches")
    sa, sb = small_run.summary, small_run_again.summary
    assert sa["decisions_by_reason"] == sb["decisions_by_reason"]
    assert sa["confusion"] == sb["confusion"]


def test_group_size_and_controller_layout_change_no_byte(small_run: SimRun, tmp_path: Path) -> None:
    # A commit per tap, one worker split into two station controllers: other groups,
    # other station files, yet the same decisions and the same batches and settlement.
    other = run_sim(
        tmp_path / "run-g",
        "--seed",
        "7",
        *SMALL,
        "--max-group",
        "1",
        "--workers",
        "1",
        "--lanes",
        "2",
    )
    assert other.returncode == 0, other.stderr + other.stdout
    assert other.summary["engine"]["taps_per_commit"] == 1.0
    assert small_run.summary["engine"]["taps_per_commit"] > 4
    assert _digests(small_run.out / "batches") == _digests(other.out / "batches")
    assert _digests(small_run.out / "settlement") == _digests(other.out / "settlement")
    assert small_run.summary["confusion"] == other.summary["confusion"]


def test_another_seed_gives_another_day(small_run: SimRun, tmp_path: Path) -> None:
    other = run_sim(tmp_path / "run-c", "--seed", "8", *SMALL, "--measure-ceiling")
    assert other.returncode == 0, other.stderr
    assert _digests(small_run.out / "settlement") != _digests(other.out / "settlement")
    # The crypto ceiling, timed in both workers before and after the taps.
    ceiling = other.summary["engine"]["ceiling"]
    assert len(ceiling["crypto_us_per_tap"]) == 2
    assert all(before > 0 and after > 0 for before, after in ceiling["crypto_us_per_tap"])
    rate = other.summary["taps_per_second"]
    assert ceiling["ratio"] == pytest.approx(rate / ceiling["taps_per_second"], abs=0.002)
    assert "crypto ceiling" in other.stdout
    assert "ceiling" not in small_run.summary["engine"]


def test_refuses_a_used_run_directory(small_run: SimRun) -> None:
    again = run_sim(small_run.out, "--seed", "7", *SMALL)
    assert again.returncode == 2
    assert "not empty" in again.stderr
    assert "Traceback" not in again.stderr


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    for args in (
        ["--fraud-mix", "forged=lots"],
        ["--fraud-mix", "ghosts=0.1"],
        ["--gates", "2"],
        ["--cards", "5"],
        ["--fraud-mix", "forged=0.9"],
    ):
        r = run_sim(tmp_path / "x", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("farecore: error:"), r.stderr
        assert "Traceback" not in r.stderr
        assert not (tmp_path / "x").exists()


def test_summary_is_plain_json(small_run: SimRun) -> None:
    text = (small_run.out / "summary.json").read_text()
    assert json.loads(text)["ok"] is True


def test_a_share_of_taps_goes_through_a_real_pcscd(tmp_path: Path) -> None:
    # A relative --out: pcscd must still find its configuration under the run directory.
    r = run_sim(
        tmp_path / "pcsc",
        "--seed",
        "3",
        *SMALL,
        "--reader",
        "pcsc",
        "--transport-taps",
        "8",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr + r.stdout
    s = r.summary
    assert s["wrong_decisions"] == 0 and s["settlement_matches"]
    transport = s["engine"]["transport"]
    assert transport["reader"] == "pcsc" and transport["taps"] == 8
    # A tap through pcscd + vpcd costs real socket round trips, unlike the virtual reader.
    assert transport["latency_p50_us"] > s["latency_us"]["p50"]
    assert "8 taps through pcsc" in r.stdout


def test_a_journal_that_cannot_commit_stops_the_day_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # The disk refuses every commit: no gate may open, the workers stop with the
    # engine's own words, and the run fails as a run (not with a traceback).
    import io
    import sqlite3

    from farecore.journal.station import StationJournal
    from sim.run import SimError, SimOptions, run_simulation

    def refuse(self: StationJournal, group: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(StationJournal, "_write", refuse)
    opts = SimOptions(out=tmp_path / "run", cards=300, taps=400, gates=5, workers=1, plots=False)
    with pytest.raises(SimError, match="failed"):
        run_simulation(opts, stream=io.StringIO())
    err = capfd.readouterr().err
    assert "cannot commit the station journal: disk I/O error" in err
    assert "Traceback" not in err


def test_a_failed_worker_does_not_leave_the_others_waiting_to_time_the_ceiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # Worker 0's disk refuses its commits; worker 1 finishes its day and must not wait
    # at the ceiling probe for a worker that will never come.
    import io
    import sqlite3

    from farecore.journal.station import StationJournal
    from sim.run import SimError, SimOptions, run_simulation

    real_write = StationJournal._write

    def refuse_on_worker_0(self: StationJournal, group: object) -> None:
        if self.path.name.startswith("station-0-"):
            raise sqlite3.OperationalError("disk I/O error")
        real_write(self, group)  # type: ignore[arg-type]

    monkeypatch.setattr(StationJournal, "_write", refuse_on_worker_0)
    opts = SimOptions(
        out=tmp_path / "run", cards=300, taps=400, gates=6, workers=2, plots=False, ceiling_ops=50
    )
    with pytest.raises(SimError, match=r"worker\(s\) \[0\] failed"):
        run_simulation(opts, stream=io.StringIO())
    err = capfd.readouterr().err
    assert "worker 0: " in err and "Traceback" not in err


def test_a_lane_leaves_no_card_to_the_cycle_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A year's lane meets tens of thousands of cards a day. The lane's objects form
    # reference cycles; cards still held by them when the day ends wait for the cycle
    # collector, which must then walk every one. The collector is off for the day here,
    # so every card the lane did not free itself is counted.
    import gc
    import io

    import sim.workers
    from sim.card import VirtualCard
    from sim.lane import LaneJob, LaneResult
    from sim.run import SimOptions, run_simulation

    real_run_lane = sim.workers.run_lane

    def counted(job: LaneJob, out: LaneResult) -> None:  # in the forked worker
        gc.disable()
        real_run_lane(job, out)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = sum(isinstance(o, VirtualCard) for o in gc.garbage)
        (tmp_path / f"left-{job.lane_id}").write_text(str(left))
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()

    monkeypatch.setattr(sim.workers, "run_lane", counted)
    opts = SimOptions(out=tmp_path / "run", cards=300, taps=400, gates=5, workers=1, plots=False)
    run_simulation(opts, stream=io.StringIO())
    left = {p.name: int(p.read_text()) for p in tmp_path.glob("left-*")}
    assert left and set(left.values()) == {0}, left
