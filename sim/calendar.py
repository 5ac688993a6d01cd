"""Qingdao's 2026: which days are working days, weekends and public holidays, and how busy.

Each day of the year gets a transit weight (how many free rides it has, relative to an
ordinary working day in spring) and a venue weight (the same for visits to parks and
museums). The weights are the calibration's shape; ``sim.calibration`` scales them to
the year's totals. Where each figure comes from is in docs/calibration.md: the holiday
dates are the State Council's 2026 arrangement, the factors are stated assumptions.

Pure data and arithmetic: this module must never read a clock or the seed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

__all__ = [
    "HOLIDAYS",
    "MAKEUP_WORKDAYS",
    "YEAR",
    "CalendarDay",
    "year_calendar",
]

YEAR = 2026

# (name, first day off, last day off): the State Council General Office's arrangement
# of the 2026 public holidays, weekends moved into them included.
HOLIDAYS: tuple[tuple[str, dt.date, dt.date], ...] = (
    ("New Year", dt.date(2026, 1, 1), dt.date(2026, 1, 3)),
    ("Spring Festival", dt.date(2026, 2, 15), dt.date(2026, 2, 23)),
    ("Qingming", dt.date(2026, 4, 4), dt.date(2026, 4, 6)),
    ("Labour Day", dt.date(2026, 5, 1), dt.date(2026, 5, 5)),
    ("Dragon Boat", dt.date(2026, 6, 19), dt.date(2026, 6, 21)),
    ("Mid-Autumn", dt.date(2026, 9, 25), dt.date(2026, 9, 27)),
    ("National Day", dt.date(2026, 10, 1), dt.date(2026, 10, 7)),
)
# Weekend days worked instead (调休上班), of the same arrangement.
MAKEUP_WORKDAYS: tuple[dt.date, ...] = (
    dt.date(2026, 1, 4),
    dt.date(2026, 2, 14),
    dt.date(2026, 2, 28),
    dt.date(2026, 5, 9),
    dt.date(2026, 9, 20),
    dt.date(2026, 10, 10),
)

# Rides on a day of each kind, relative to a working day (assumptions, see the docs).
_TRANSIT_KIND = {"workday": 1.0, "weekend": 0.82, "holiday": 0.78}
# The first three days of the Spring Festival: the city is at home.
_SPRING_FESTIVAL_CORE = 0.6
# Month factors: a cold January and February, the summer tourist season in July and
# August (crowded buses to the beaches and the old town), a quieter end of the year.
_TRANSIT_MONTH = (0.92, 0.9, 0.97, 1.0, 1.02, 1.02, 1.08, 1.1, 1.03, 1.0, 0.95, 0.93)
# Visits to parks and museums: far more on days off and in the tourist season.
_VENUE_KIND = {"workday": 1.0, "weekend": 1.8, "holiday": 2.6}
_VENUE_MONTH = (0.45, 0.6, 0.8, 1.1, 1.3, 1.2, 1.7, 1.8, 1.2, 1.2, 0.7, 0.5)


@dataclass(frozen=True, slots=True)
class CalendarDay:
    """One service day: its kind, the holiday it belongs to, and its two weights."""

    date: dt.date
    kind: str  # workday | weekend | holiday (a makeup working day is a workday)
    holiday: str | None
    transit_weight: float
    venue_weight: float

    def __post_init__(self) -> None:
        if self.kind not in _TRANSIT_KIND:
            raise ValueError(f"unknown kind of day {self.kind!r}")
        if self.transit_weight <= 0 or self.venue_weight <= 0:
            raise ValueError("a day's weights must be positive")


def _holiday_of(day: dt.date) -> str | None:
    for name, first, last in HOLIDAYS:
        if first <= day <= last:
            return name
    return None


def _kind(day: dt.date, holiday: str | None) -> str:
    if holiday is not None:
        return "holiday"
    if day in MAKEUP_WORKDAYS or day.weekday() < 5:
        return "workday"
    return "weekend"


def year_calendar(year: int = YEAR) -> list[CalendarDay]:
    """Every day of ``year`` (only 2026 is described), with its kind and weights."""
    if year != YEAR:
        raise ValueError(f"the calendar describes {YEAR} only, not {year}")
    days = []
    day = dt.date(year, 1, 1)
    while day.year == year:
        holiday = _holiday_of(day)
        kind = _kind(day, holiday)
        transit = _TRANSIT_KIND[kind] * _TRANSIT_MONTH[day.month - 1]
        spring = HOLIDAYS[1][1]
        if holiday == "Spring Festival" and (day - spring).days in (1, 2, 3):
            transit = _SPRING_FESTIVAL_CORE * _TRANSIT_MONTH[day.month - 1]
        venue = _VENUE_KIND[kind] * _VENUE_MONTH[day.month - 1]
        days.append(CalendarDay(day, kind, holiday, round(transit, 4), round(venue, 4)))
        day += dt.timedelta(days=1)
    return days
