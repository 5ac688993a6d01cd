"""A small transit network modelled on Qingdao: metro lines, bus lines, operators, fares.

The simulator needs somewhere for riders to tap: metro stations with entry and exit
gates, buses with a validator on board, an operator that gets paid for each, and the
fare rules the city reimburses by (metro by distance band, bus flat per line). Station
names and rough spacing follow the real lines; the numbers are plausible, not official.

Everything here is pure data and arithmetic. It must never read a clock, touch the
disk, or depend on the random seed: the network is the same in every run, and only the
choice of which stations get gates depends on ``--gates``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

__all__ = [
    "BUS_LINES",
    "METRO_BANDS",
    "METRO_LINES",
    "OPERATORS",
    "BusLine",
    "GatePlan",
    "MetroLine",
    "Network",
    "Operator",
    "band_fare",
]


@dataclass(frozen=True, slots=True)
class Operator:
    """A transit company the city reimburses."""

    id: str
    name: str

    def __post_init__(self) -> None:
        if not self.id or not self.id.replace("-", "").isalnum():
            raise ValueError(f"operator id must be alphanumeric with dashes, not {self.id!r}")


@dataclass(frozen=True, slots=True)
class MetroLine:
    """A metro line: station names and the km between consecutive stations."""

    id: str
    operator: str
    stations: tuple[str, ...]
    gaps_km: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.stations) < 2 or len(self.gaps_km) != len(self.stations) - 1:
            raise ValueError(f"line {self.id}: need n stations and n-1 gaps")
        if any(g <= 0 for g in self.gaps_km):
            raise ValueError(f"line {self.id}: gaps must be positive")


@dataclass(frozen=True, slots=True)
class BusLine:
    """A bus line: a flat fare in fen and how many vehicles carry a validator."""

    id: str
    operator: str
    fare_fen: int
    vehicles: int

    def __post_init__(self) -> None:
        if self.fare_fen <= 0 or self.vehicles <= 0:
            raise ValueError(f"bus line {self.id}: fare and vehicles must be positive")


OPERATORS = (
    Operator("qingdao-metro", "Qingdao Metro Group (青岛地铁集团)"),
    Operator("qingdao-bus", "Qingdao Public Transport Group (青岛公交集团)"),
    Operator("zhenqing-bus", "Qingdao Zhenqing Bus Group (真情巴士集团)"),
)

_M = "qingdao-metro"
METRO_LINES = (
    MetroLine(
        "M1",
        _M,
        (
            "Jinggangshan Rd",
            "Wangjiagang",
            "Qingdao Railway Station",
            "Zhongshan Rd",
            "Xiaocunzhuang",
            "Ruichang Rd",
            "Shengli Bridge",
            "Qingdao North Station",
            "Liuting",
            "Dongguozhuang",
        ),
        (7.9, 3.1, 1.4, 2.2, 1.9, 2.0, 3.4, 4.6, 5.2),
    ),
    MetroLine(
        "M2",
        _M,
        (
            "Miaoling Rd",
            "Zhiquan Rd",
            "May Fourth Square",
            "Fushansuo",
            "Haixin Bridge",
            "Liaoyang East Rd",
            "Licun Park",
            "Licun",
            "Zaoshan Rd",
        ),
        (2.1, 1.8, 1.3, 1.6, 1.5, 2.4, 1.3, 1.1),
    ),
    MetroLine(
        "M3",
        _M,
        (
            "Qingdao Railway Station",
            "Renmin Hall",
            "Zhongshan Park",
            "Yan'an 3rd Rd",
            "May Fourth Square",
            "Ningxia Rd",
            "Dunhua Rd",
            "Shuangshan",
            "Licun",
            "Junfeng Rd",
            "Qingdao North Station",
        ),
        (1.3, 1.5, 1.9, 1.4, 1.6, 1.5, 1.7, 2.3, 1.8, 2.6),
    ),
    MetroLine(
        "M11",
        _M,
        ("Miaoling Rd", "Shilaoren Beach", "Shazikou", "Beizhai", "Aoshanwei", "Aoshan Bay"),
        (4.2, 8.1, 9.6, 12.4, 6.3),
    ),
    MetroLine(
        "M13",
        _M,
        (
            "Jinggangshan Rd",
            "Jimiya",
            "Lingshanwei",
            "Fenghuang Island",
            "Wangge Zhuang",
            "Dongjiakou",
        ),
        (3.8, 4.4, 5.1, 9.7, 11.2),
    ),
)

BUS_LINES = (
    BusLine("B1", "qingdao-bus", 100, 6),
    BusLine("B2", "qingdao-bus", 100, 5),
    BusLine("B26", "qingdao-bus", 200, 8),
    BusLine("B104", "qingdao-bus", 200, 4),
    BusLine("B301", "zhenqing-bus", 200, 5),
    BusLine("B321", "zhenqing-bus", 200, 4),
    BusLine("B501", "zhenqing-bus", 300, 3),
)

# (up to metres inclusive, fare in fen); None: the open last band.
METRO_BANDS: tuple[tuple[int | None, int], ...] = (
    (6_000, 200),
    (11_000, 300),
    (16_000, 400),
    (23_000, 500),
    (30_000, 600),
    (40_000, 700),
    (50_000, 800),
    (None, 900),
)
CHAINAGE_ORIGIN = "May Fourth Square"
_WEST = "Qingdao Railway Station"  # stations reached through here get negative chainage


def band_fare(distance_m: int, bands: tuple[tuple[int | None, int], ...] = METRO_BANDS) -> int:
    """The fare in fen of a metro ride of ``distance_m`` metres."""
    for limit, fare in bands:
        if limit is None or distance_m <= limit:
            return fare
    return bands[-1][1]


@dataclass(frozen=True, slots=True)
class GatePlan:
    """One validator: where it stands and what it does."""

    index: int
    terminal_id: int
    operator: str
    line: str
    place: str
    role: str  # bus | metro_entry | metro_exit


class Network:
    """Stations joined by lines (shared names are interchanges) and distances between them."""

    def __init__(
        self,
        metro: tuple[MetroLine, ...] = METRO_LINES,
        buses: tuple[BusLine, ...] = BUS_LINES,
    ) -> None:
        self.metro = metro
        self.buses = buses
        self.stations: list[str] = []
        self.station_line: dict[str, str] = {}
        edges: dict[str, list[tuple[str, float]]] = {}
        for line in metro:
            for name in line.stations:
                if name not in edges:
                    edges[name] = []
                    self.stations.append(name)
                    self.station_line[name] = line.id
            for a, b, km in zip(line.stations[:-1], line.stations[1:], line.gaps_km, strict=True):
                edges[a].append((b, km))
                edges[b].append((a, km))
        self._edges = edges
        self._dist: dict[str, dict[str, float]] = {s: self._dijkstra(s) for s in self.stations}

    def _dijkstra(self, source: str) -> dict[str, float]:
        dist = {source: 0.0}
        heap = [(0.0, source)]
        while heap:
            d, node = heapq.heappop(heap)
            if d > dist[node]:
                continue
            for nxt, km in self._edges[node]:
                nd = d + km
                if nd < dist.get(nxt, float("inf")):
                    dist[nxt] = nd
                    heapq.heappush(heap, (nd, nxt))
        return dist

    def distance_km(self, a: str, b: str) -> float:
        """Shortest distance along the network, rounded to 0.1 km (for travel times)."""
        try:
            return round(self._dist[a][b], 1)
        except KeyError:
            raise ValueError(f"no metro route between {a!r} and {b!r}") from None

    def chainage_m(self, station: str) -> int:
        """The station's position for fares: metres from May Fourth Square along the
        network, negative on the western branches (through Qingdao Railway Station).

        The fares file prices a trip by the difference of two chainages, which is exact
        along one branch and an approximation between two branches on the same side.
        """
        d = self._dist[CHAINAGE_ORIGIN][station]
        west = self._dist[CHAINAGE_ORIGIN][_WEST] + self._dist[_WEST][station]
        sign = -1 if station != CHAINAGE_ORIGIN and abs(west - d) < 1e-9 else 1
        return sign * round(d * 1000)

    def metro_fare(self, a: str, b: str) -> int:
        return band_fare(abs(self.chainage_m(a) - self.chainage_m(b)))

    def bus_line(self, line_id: str) -> BusLine:
        for line in self.buses:
            if line.id == line_id:
                return line
        raise ValueError(f"unknown bus line {line_id!r}")

    def plan_gates(self, gates: int, first_terminal_id: int = 1001) -> list[GatePlan]:
        """Lay out ``gates`` validators: about 60 % in metro stations, the rest on buses.

        Each station with gates gets at least one entry and one exit gate; stations are
        spread over all lines. The layout depends only on ``gates``.
        """
        if gates < 5:
            raise ValueError(
                "--gates must be at least 5 (two stations with entry and exit, one bus)"
            )
        metro_gates = max(4, round(gates * 0.6))
        metro_gates -= metro_gates % 2
        if gates - metro_gates < 1:
            metro_gates -= 2
        stations = self._spread_stations(min(metro_gates // 2, len(self.stations)))
        plans: list[GatePlan] = []
        pairs = metro_gates // 2
        for k in range(pairs):
            station = stations[k % len(stations)]
            line_id = self.station_line[station]
            for role in ("metro_entry", "metro_exit"):
                plans.append(
                    GatePlan(len(plans), first_terminal_id + len(plans), _M, line_id, station, role)
                )
        vehicles = [
            (line, f"{line.id}-V{v + 1:02d}")
            for v in range(max(b.vehicles for b in self.buses))
            for line in self.buses
            if v < line.vehicles
        ]
        for k in range(gates - metro_gates):
            line, vehicle = vehicles[k % len(vehicles)]
            place = vehicle if k < len(vehicles) else f"{vehicle}-{k // len(vehicles)}"
            plans.append(
                GatePlan(
                    len(plans), first_terminal_id + len(plans), line.operator, line.id, place, "bus"
                )
            )
        return plans

    def _spread_stations(self, count: int) -> list[str]:
        # Round-robin over the lines, each from its ends inwards, so that even a small
        # run has short and long trips (every fare band).
        columns = []
        for line in self.metro:
            st = list(line.stations)
            columns.append([st[i // 2] if i % 2 == 0 else st[-1 - i // 2] for i in range(len(st))])
        order: list[str] = []
        for i in range(max(len(c) for c in columns)):
            for col in columns:
                if i < len(col) and col[i] not in order:
                    order.append(col[i])
        return order[:count]
