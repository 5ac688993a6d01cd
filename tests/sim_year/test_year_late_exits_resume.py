"""A run killed after a day's taps keeps the day before's late exits on resuming.

The exits of a day's late trips come after midnight: the lanes journal them with that
day's taps, and the next night's batches hold them. A rerun of the next day does not
make them again, so the rollback must keep them. At 30,000 cards the first day has
some (the small test worlds have none); a rollback that trimmed to the ledger's heads
lost them, and with them the money of those rides.
"""

from __future__ import annotations

from pathlib import Path

from year_support import run_year_cli, settlement_files

ARGS = ["--days", "2", "--scale", "0.1"]


def test_a_resumed_run_keeps_the_late_exits_of_the_day_before(tmp_path: Path) -> None:
    whole = run_year_cli(tmp_path / "whole", *ARGS, timeout=600)
    assert whole.returncode == 0, whole.stderr
    assert whole.state["days"][0]["carry"]["taps"] > 0  # or the test proves nothing
    out = tmp_path / "killed"
    killed = run_year_cli(out, *ARGS, kill_at="taps:1", timeout=600)
    assert killed.returncode == 137
    again = run_year_cli(out, *ARGS, timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.summary["days_money_ok"] == 2, again.stdout
    assert settlement_files(out) == settlement_files(whole.out)
