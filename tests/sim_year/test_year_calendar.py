"""The calendar of 2026 and the calibration: the year's shape, and its totals by construction."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.calendar import HOLIDAYS, MAKEUP_WORKDAYS, year_calendar
from sim.calibration import TARGET_FEN, TARGET_RIDES, Targets, fare_means, spread
from sim.network import Network
from sim.population import FraudMix
from sim.year import plan_year
from sim.year_world import YearOptions


def test_the_calendar_has_every_day_and_the_official_holidays() -> None:
    days = year_calendar()
    assert len(days) == 365
    assert [d.date for d in days] == [
        dt.date(2026, 1, 1) + dt.timedelta(days=k) for k in range(365)
    ]
    holidays = [d for d in days if d.kind == "holiday"]
    assert len(holidays) == sum((last - first).days + 1 for _, first, last in HOLIDAYS) == 33
    by_date = {d.date: d for d in days}
    assert by_date[dt.date(2026, 2, 17)].holiday == "Spring Festival"  # the New Year's day
    assert by_date[dt.date(2026, 10, 1)].holiday == "National Day"
    for makeup in MAKEUP_WORKDAYS:  # weekend days worked instead
        assert makeup.weekday() >= 5
        assert by_date[makeup].kind == "workday"
    assert {d.kind for d in days if d.date.weekday() < 5 and d.holiday is None} == {"workday"}


def test_the_weights_follow_weekends_holidays_and_seasons() -> None:
    by_date = {d.date: d for d in year_calendar()}
    monday, saturday = by_date[dt.date(2026, 3, 9)], by_date[dt.date(2026, 3, 14)]
    assert saturday.transit_weight < monday.transit_weight
    assert saturday.venue_weight > monday.venue_weight
    eve = by_date[dt.date(2026, 2, 16)]
    assert eve.transit_weight < by_date[dt.date(2026, 2, 22)].transit_weight
    # The summer tourist season: more rides, far more venue visits than in winter.
    july, january = by_date[dt.date(2026, 7, 15)], by_date[dt.date(2026, 1, 14)]
    assert july.transit_weight > january.transit_weight
    assert july.venue_weight > 3 * january.venue_weight


@given(
    st.integers(min_value=0, max_value=10**9),
    st.lists(st.floats(min_value=0.01, max_value=100.0), min_size=1, max_size=400),
)
def test_spread_sums_exactly_and_stays_within_one_of_each_share(
    total: int, weights: list[float]
) -> None:
    parts = spread(total, weights)
    assert sum(parts) == total
    whole = sum(weights)
    assert all(abs(p - total * w / whole) < 1 + 1e-6 for p, w in zip(parts, weights, strict=True))


def test_the_targets_are_qingdaos_figures_times_the_scale() -> None:
    t = Targets.of(year_calendar(), 0.01)
    assert t.cards == 3000
    assert sum(t.rides) == TARGET_RIDES // 100
    assert t.fen_through(364) == TARGET_FEN // 100
    with pytest.raises(ValueError, match="scale"):
        Targets.of(year_calendar(), 0.0)


def test_the_bus_and_metro_averages_bracket_the_target_fare() -> None:
    network = Network()
    for gates in (10, 16, 40, 100):
        bus, metro = fare_means(network, network.plan_gates(gates))
        assert bus < TARGET_FEN / TARGET_RIDES < metro


@pytest.mark.parametrize(("seed", "mix"), [(1, ""), (9, "none")])
def test_a_scaled_year_lands_within_a_fraction_of_a_percent(seed: int, mix: str) -> None:
    """The whole year at scale 0.001 (27,000 rides), generated and priced as a run
    would (the run's nights settle exactly these figures): within 2 % by construction,
    in fact within 0.5 %."""
    opts = YearOptions(out=Path("unused"), seed=seed, scale=0.001, mix=FraudMix.parse(mix))
    plan = plan_year(opts)
    assert len(plan["days"]) == 365
    assert plan["target_rides"] == 27_000 and plan["target_fen"] == 4_500_000
    assert abs(plan["rides_deviation_pct"]) < 0.5
    assert abs(plan["fen_deviation_pct"]) < 0.5
    # Busier in the summer season than in the Spring Festival's core days.
    taps = {d["day"]: d["taps"] for d in plan["days"]}
    assert taps["2026-08-12"] > taps["2026-02-17"]
