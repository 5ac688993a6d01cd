"""A simulated day with venue gates: every decision (second entries ALREADY_ENTERED)
and the venue operator's money at its sites' ticket prices equal the ground truth."""

from __future__ import annotations

import csv
from pathlib import Path

from sim_support import SMALL, run_sim

from sim.venues import VENUE_OPERATOR, VENUE_SITES, ticket_fen
from sim.world import SIM_DAY


def test_a_day_with_venue_visits(tmp_path: Path) -> None:
    run = run_sim(
        tmp_path / "v", "--seed", "5", *SMALL, "--venue-sites", "6", "--venue-visits", "400"
    )
    assert run.returncode == 0, run.stderr + run.stdout
    s = run.summary
    assert s["wrong_decisions"] == 0 and s["settlement_matches"] is True
    assert set(s["confusion"]["ALREADY_ENTERED"]) == {"ALREADY_ENTERED"}  # nothing else
    assert s["confusion"]["ALREADY_ENTERED"]["ALREADY_ENTERED"] > 0
    venue_fen = s["reimbursement_by_operator"][VENUE_OPERATOR]
    assert venue_fen == s["expected_reimbursement_by_operator"][VENUE_OPERATOR] > 0
    # Each site's paid entries times its ticket price of the day, in totals.csv.
    prices = {site.id: ticket_fen(site, SIM_DAY) for site in VENUE_SITES}
    [totals] = (run.out / "settlement").glob("totals*.csv")
    with totals.open() as f:
        rows = [r for r in csv.DictReader(f) if r["operator"] == VENUE_OPERATOR]
    assert rows and sum(int(r["amount_fen"]) for r in rows) == venue_fen
    for r in rows:
        assert int(r["amount_fen"]) == int(r["rides"]) * prices[r["line"]]


def test_venue_options_are_checked(tmp_path: Path) -> None:
    bad = run_sim(tmp_path / "b", *SMALL, "--venue-visits", "10")
    assert bad.returncode == 2 and "--venue-visits needs --venue-sites" in bad.stderr
    bad = run_sim(tmp_path / "c", *SMALL, "--venue-sites", "7")
    assert bad.returncode == 2 and "--venue-sites must be 0..6" in bad.stderr
