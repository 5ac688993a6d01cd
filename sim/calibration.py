"""The calibration of a simulated year: Qingdao's figures, and how each day is sized to hit them.

Qingdao's report on the Rongjun card: close to 300,000 cards, more than 27 million free
rides worth more than 45 million yuan (about 1.67 yuan a ride). The simulator takes
those as one year at ``scale`` 1 and as ``scale`` times them for a smaller run
(docs/calibration.md says how and why).

The year holds them by construction, day by day. Each day's share of the rides is its
calendar weight (``sim.calendar``). Before a day is generated, the rides and the fen
still owed up to the end of that day (the targets so far, minus what the ground truth
of the earlier days came to) give the day's rides and the average fare they must have;
the metro share follows from the average bus fare and the average metro fare of the
network's gates. Random draws then move a day off its aim a little, and the next day
makes up for it, so the year ends within a fraction of a percent whatever the scale.

Pure arithmetic on the targets and the network: never a clock, never the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sim.calendar import CalendarDay
from sim.network import GatePlan, Network

__all__ = [
    "BUS_FARE_SHARES",
    "TARGET_CARDS",
    "TARGET_FEN",
    "TARGET_RIDES",
    "TARGET_VENUE_VISITS",
    "DayAim",
    "Targets",
    "bus_weights",
    "fare_means",
    "spread",
]

TARGET_CARDS = 300_000
TARGET_RIDES = 27_000_000
TARGET_FEN = 4_500_000_000  # 45 million yuan
# Visits to government-priced parks and museums: not in Qingdao's report; an
# assumption (about four a card a year), see docs/calibration.md.
TARGET_VENUE_VISITS = 1_200_000
# Bus boardings by flat fare (fen): most of the card holders' rides are on the city's
# ordinary 1-yuan lines, a quarter on 2-yuan lines, a few on 3-yuan suburban lines
# (an assumption, see docs/calibration.md).
BUS_FARE_SHARES = {100: 0.70, 200: 0.26, 300: 0.04}
# The metro share may not leave these bounds, whatever a day must make up.
_SHARE_MIN, _SHARE_MAX = 0.02, 0.9


def spread(total: int, weights: list[float]) -> list[int]:
    """``total`` split over ``weights`` in whole units, summing exactly to ``total``
    (largest remainders; ties to the earlier day)."""
    if total < 0 or not weights or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError("need a non-negative total and positive weights")
    whole = sum(weights)
    raw = [total * w / whole for w in weights]
    out = [math.floor(r) for r in raw]
    rest = total - sum(out)
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[:rest]:
        out[i] += 1
    return out


def bus_weights(network: Network, gates: list[GatePlan]) -> dict[int, float]:
    """How likely a bus trip boards each bus gate: each fare class its share of the
    boardings (``BUS_FARE_SHARES``, renormalised over the classes that have gates),
    split evenly over that class's gates."""
    by_fare: dict[int, list[int]] = {}
    for g in gates:
        if g.role == "bus":
            by_fare.setdefault(network.bus_line(g.line).fare_fen, []).append(g.index)
    present = {fare: BUS_FARE_SHARES.get(fare, 0.0) for fare in by_fare}
    whole = sum(present.values())
    if whole <= 0:
        raise ValueError("the year needs bus gates of a fare class with a share")
    return {
        g: present[fare] / whole / len(members)
        for fare, members in by_fare.items()
        for g in members
    }


def fare_means(network: Network, gates: list[GatePlan]) -> tuple[float, float]:
    """(average bus fare, average metro fare) in fen of a trip as the workload draws
    them: a bus trip boards a bus gate by ``bus_weights``, a metro trip goes between
    two different gated stations, every ordered pair alike."""
    weights = bus_weights(network, gates)
    stations = sorted({g.place for g in gates if g.role == "metro_entry"})
    if len(stations) < 2:
        raise ValueError("the year needs at least two gated stations")
    bus = sum(w * network.bus_line(gates[g].line).fare_fen for g, w in weights.items())
    pairs = [network.metro_fare(a, b) for a in stations for b in stations if a != b]
    return bus, sum(pairs) / len(pairs)


@dataclass(frozen=True, slots=True)
class DayAim:
    """What one day is generated to: its rides and the share of them by metro."""

    rides: int  # rides the day should have (the targets so far minus the days before)
    metro_share: float
    venue_visits: int = 0  # visits to the venue sites: their own figure, not rides

    def trips(self, good: float) -> int:
        """Trips to draw when a share ``good`` of the cards ride (the others' trips are
        refused): rides over that share."""
        return math.ceil(self.rides / max(good, 0.05))


@dataclass(frozen=True, slots=True)
class Targets:
    """The year's targets at ``scale``, spread over the calendar."""

    scale: float
    calendar: tuple[CalendarDay, ...]
    rides: tuple[int, ...]  # per day of the year
    venue_visits: tuple[int, ...]  # per day: visits to the venue sites

    @classmethod
    def of(cls, calendar: list[CalendarDay], scale: float) -> Targets:
        if not 0 < scale <= 1:
            raise ValueError(f"--scale must be in (0, 1], not {scale}")
        rides = spread(round(TARGET_RIDES * scale), [d.transit_weight for d in calendar])
        venues = spread(round(TARGET_VENUE_VISITS * scale), [d.venue_weight for d in calendar])
        return cls(scale, tuple(calendar), tuple(rides), tuple(venues))

    @property
    def cards(self) -> int:
        return max(100, round(TARGET_CARDS * self.scale))

    def rides_through(self, day_index: int) -> int:
        """Target rides from the first day of the year to ``day_index`` inclusive."""
        return sum(self.rides[: day_index + 1])

    def fen_through(self, day_index: int) -> int:
        """Target fen to ``day_index`` inclusive: the year's yuan in proportion to rides."""
        year = sum(self.rides)
        return round(TARGET_FEN * self.scale) * self.rides_through(day_index) // max(year, 1)

    def aim(
        self,
        day_index: int,
        rides_so_far: int,
        fen_so_far: int,
        means: tuple[float, float],
    ) -> DayAim:
        """Day ``day_index``'s trips and metro share, making up what the days before it
        (their ground truth: ``rides_so_far``, ``fen_so_far``) fell short or over."""
        rides = max(1, self.rides_through(day_index) - rides_so_far)
        fen = self.fen_through(day_index) - fen_so_far
        bus, metro = means
        share = (fen / rides - bus) / (metro - bus) if metro > bus else _SHARE_MIN
        share = min(_SHARE_MAX, max(_SHARE_MIN, share))
        return DayAim(rides, round(share, 6), self.venue_visits[day_index])
