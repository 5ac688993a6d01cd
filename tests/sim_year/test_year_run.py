"""A few days of the calibrated year through the real CLI: checked, settled, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from year_support import SMALL, YearRun, run_year_cli, settlement_files

DAYS = ["--days", "3"]


@pytest.fixture(scope="module")
def three_days(tmp_path_factory: pytest.TempPathFactory) -> YearRun:
    return run_year_cli(tmp_path_factory.mktemp("year") / "a", *DAYS, *SMALL)


def test_three_days_are_right_to_the_decision_and_the_fen(three_days: YearRun) -> None:
    run = three_days
    assert run.returncode == 0, run.stderr
    s = run.summary
    assert s["ok"] and s["days"] == 3 and s["wrong_decisions"] == 0
    assert s["days_money_ok"] == 3 and s["days_unchecked"] == 0
    for day in run.state["days"]:
        assert day["settled_by_operator"] == day["expected_by_operator"]
        assert day["settled_taps"] == day["expected_taps_paid"]
        assert day["settled_fen"] == day["expected_fen"] > 0
    # Only the anomaly a revocation during a day must cause, if any.
    assert set(s["anomalies"]) <= {"after_revocation"}


def test_the_days_follow_the_calendar_and_the_targets(three_days: YearRun) -> None:
    days = three_days.state["days"]
    assert [d["day"] for d in days] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert {d["kind"] for d in days} == {"holiday"}  # New Year
    s = three_days.summary
    assert s["target_rides"] == sum(d["rides_target"] for d in days)
    # Three days of about 250 rides: a day's fares vary by a few per cent; the full
    # year's 2 % is test_year_calendar's.
    assert abs(s["rides_deviation_pct"]) < 5 and abs(s["fen_deviation_pct"]) < 5


def test_the_comparison_and_the_progress_are_printed(three_days: YearRun) -> None:
    out, err = three_days.stdout, three_days.stderr
    assert "deviation" in out and "rides" in out and "yuan" in out
    assert "free entries of" in out and "OK: 0 wrong decisions" in out
    lines = [ln for ln in err.splitlines() if ln.startswith("farecore sim: day ")]
    assert [ln.split()[3] for ln in lines] == ["1/3", "2/3", "3/3"]
    assert all("taps/s" in ln and "left about" in ln for ln in lines)


def test_honest_traffic_settles_with_no_anomaly(tmp_path: Path) -> None:
    run = run_year_cli(tmp_path / "honest", "--days", "2", *SMALL, "--fraud-mix", "none")
    assert run.returncode == 0, run.stderr
    assert run.summary["ok"] and run.summary["anomalies"] == {}
    for day in run.state["days"]:
        assert day["anomalies"] == {}


@pytest.mark.parametrize("kill_at", ["taps:1", "night:1", "taps:2"])
def test_a_killed_run_resumes_to_the_same_bytes(
    three_days: YearRun, tmp_path: Path, kill_at: str
) -> None:
    """Killed after a day's taps (the journals hold an unsettled day, and the next
    day's taps may have begun) or after a night reached the ledger (its record not yet
    written, the next day's taps running): the rerun continues and every batch and
    settlement output equals the uninterrupted run's."""
    out = tmp_path / "b"
    killed = run_year_cli(out, *DAYS, *SMALL, kill_at=kill_at)
    assert killed.returncode == 137
    done = int(kill_at.split(":")[1])
    assert len(json.loads((out / "year-state.json").read_text())["days"]) == done
    again = run_year_cli(out, *DAYS, *SMALL)
    assert again.returncode == 0, again.stderr
    assert "continuing" in again.stdout
    assert settlement_files(out) == settlement_files(three_days.out)
    s = again.summary
    assert s["taps"] == three_days.summary["taps"]
    assert s["settled_fen"] == three_days.summary["settled_fen"]
    assert s["days_unchecked"] == (1 if kill_at.startswith("night") else 0)


def test_a_finished_run_rerun_changes_nothing(three_days: YearRun) -> None:
    before = settlement_files(three_days.out)
    again = run_year_cli(three_days.out, *DAYS, *SMALL)
    assert again.returncode == 0, again.stderr
    assert settlement_files(three_days.out) == before
    assert again.summary == three_days.summary


def test_continuing_with_other_options_is_refused(three_days: YearRun) -> None:
    state = (three_days.out / "year-state.json").read_bytes()
    run = run_year_cli(three_days.out, "--days", "4", *SMALL)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "other options (days)" in run.stderr
    assert (three_days.out / "year-state.json").read_bytes() == state


def test_a_garbled_state_file_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "garbled"
    out.mkdir()
    (out / "year-state.json").write_bytes(b'{"format": "farecore-sim-year/1", "days": 7}')
    run = run_year_cli(out, *DAYS, *SMALL)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "cannot continue from it" in run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--days", "0"], "--days must be 1..365"),
        (["--days", "366"], "--days must be 1..365"),
        (["--year", "--scale", "0"], "--scale must be in (0, 1]"),
        (["--year", "--scale", "1.5"], "--scale must be in (0, 1]"),
        (["--year", "--days", "5"], "not both"),
        (["--year", "--cards", "500"], "--cards not with --year/--days"),
        (["--days", "2", "--reader", "pcsc"], "--reader not with --year/--days"),
        (["--scale", "0.5"], "go with --year or --days"),
        (["--scheduler", "tcp://127.0.0.1:1"], "go with --year or --days"),
        (["--days", "2", "--fraud-mix", "forged=0.5"], "must be between 0 and 0.2"),
        (["--days", "2", "--gates", "5", "--workers", "4"], "but 5 gates stand at only 3"),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "never"
    run = run_year_cli(out, *args)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and message in run.stderr, run.stderr
    assert not out.exists()


def test_a_used_directory_that_is_not_a_year_is_refused(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    run = run_year_cli(tmp_path, *DAYS, *SMALL)
    assert run.returncode == 2 and "not a simulated year" in run.stderr
