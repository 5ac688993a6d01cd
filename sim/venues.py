"""Qingdao's government-priced parks, scenic spots and museums, as the simulator's venues.

The Rongjun card gives free entry to government-priced sites (政府定价的公园、景区、
博物馆); the city reimburses each entry at the site's ticket price. The sites and prices
here are plausible, not official: peak-season prices from April to October and lower
ones from November to March, as Qingdao's priced parks charge, entered without access to
the price bureau's list (docs/calibration.md says so). Free sites (the Qingdao Museum,
Badaguan, Zhanqiao Pier) need no card and are left out.

Pure data: this module must never read a clock, touch the disk or use the seed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sim.network import GatePlan, Network

__all__ = [
    "VENUE_OPERATOR",
    "VENUE_SITES",
    "Site",
    "city_gates",
    "site_of",
    "ticket_fen",
    "venue_fares_toml",
]

VENUE_OPERATOR = "qingdao-parks"


@dataclass(frozen=True, slots=True)
class Site:
    """A priced site: its id (the gates' line), name, prices and entrances."""

    id: str
    name: str
    peak_fen: int  # April to October
    off_peak_fen: int  # November to March
    entrances: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 0 < self.off_peak_fen <= self.peak_fen or not self.entrances:
            raise ValueError(f"site {self.id}: prices and entrances must be positive")


VENUE_SITES = (
    Site("xiaoyushan-park", "Xiaoyushan Park (小鱼山公园)", 1500, 1000, ("south", "north")),
    Site("xinhaoshan-park", "Signal Hill Park (信号山公园)", 1500, 1000, ("main",)),
    Site(
        "governors-residence",
        "Former Governor's Residence (德国总督楼旧址博物馆)",
        2000,
        1500,
        ("main",),
    ),
    Site("huashi-villa", "Huashi Villa (花石楼)", 850, 600, ("main",)),
    Site("zhanshan-temple", "Zhanshan Temple (湛山寺)", 1000, 1000, ("main",)),
    Site(
        "laoshan-taiqing", "Laoshan Scenic Area, Taiqing (崂山太清)", 9500, 6500, ("east", "west")
    ),
)

# The price seasons, as fares.toml takes effect dates: off-peak, peak, off-peak.
_SEASONS = ((1, 1, False), (4, 1, True), (11, 1, False))


def ticket_fen(site: Site, day: dt.date) -> int:
    """The site's ticket price in force on ``day`` (the fares file says the same)."""
    peak = dt.date(day.year, 4, 1) <= day < dt.date(day.year, 11, 1)
    return site.peak_fen if peak else site.off_peak_fen


def venue_fares_toml(year: int, regions: tuple[int, ...]) -> str:
    """The venue operator and its sites' prices, as fares.toml tables."""
    out = [
        "[[operator]]",
        f'id = "{VENUE_OPERATOR}"',
        'kind = "venue"',
        f"regions = [{', '.join(str(r) for r in regions)}]",
        "",
    ]
    for site in VENUE_SITES:
        for month, day, peak in _SEASONS:
            out += [
                "[[venue]]",
                f'operator = "{VENUE_OPERATOR}"',
                f'site = "{site.id}"',
                f"ticket_fen = {site.peak_fen if peak else site.off_peak_fen}",
                f'effective_from = "{dt.date(year, month, day).isoformat()}"',
                "",
            ]
    return "\n".join(out)


def city_gates(network: Network, gates: int, venue_sites: int) -> list[GatePlan]:
    """The transit gates ``Network.plan_gates`` lays out, then one gate per entrance of the
    first ``venue_sites`` sites, numbered after them. A venue gate's line is its site and
    so is its place: a site's entrances share one lane, as they share one state."""
    if not 0 <= venue_sites <= len(VENUE_SITES):
        raise ValueError(f"--venue-sites must be 0..{len(VENUE_SITES)}, not {venue_sites}")
    plans = network.plan_gates(gates)
    transit, first_id = len(plans), plans[-1].terminal_id + 1
    for site in VENUE_SITES[:venue_sites]:
        for _entrance in site.entrances:
            index = len(plans)
            tid = first_id + index - transit
            plans.append(GatePlan(index, tid, VENUE_OPERATOR, site.id, site.id, "venue"))
    return plans


def site_of(site_id: str) -> Site:
    for site in VENUE_SITES:
        if site.id == site_id:
            return site
    raise ValueError(f"unknown venue site {site_id!r}")
