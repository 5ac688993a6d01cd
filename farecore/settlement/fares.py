"""The fares file (TOML): flat bus fares per line, metro fares by distance band.

Example (money is integer fen, distances integer metres)::

    [unpaired]
    entry = "max"        # an entry with no exit: "zero" | "min" | "max" | fen
    exit = "min"         # an exit with no entry

    [[bus]]
    operator = "qd-bus"
    line = "1"
    fare_fen = 200
    effective_from = "2026-01-01"

    [[metro]]
    operator = "qd-metro"
    effective_from = "2026-01-01"
    bands = [{up_to_m = 6000, fare_fen = 200}, {up_to_m = 16000, fare_fen = 300},
             {fare_fen = 400}]
    [metro.stations]     # chainage of each station along the network, metres
    wusi-square = 0

The entry in force on a day is the one with the latest ``effective_from`` not after it.
This module must never use floats for money or distance.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass
from typing import Any

from farecore.errors import MalformedFile

__all__ = ["UNPAIRED_RULES", "BusFare", "FareTable", "MetroFare", "parse_fares"]

UNPAIRED_RULES = ("zero", "min", "max")
_MAX_FEN = 10**9


@dataclass(frozen=True, slots=True)
class BusFare:
    operator: str
    line: str
    fare_fen: int
    effective_from: dt.date

    def __post_init__(self) -> None:
        if not 0 <= self.fare_fen <= _MAX_FEN:
            raise ValueError(f"bus fare {self.fare_fen} out of range")


@dataclass(frozen=True, slots=True)
class MetroFare:
    """Bands are (up_to_m or None for the last band, fare_fen), strictly increasing."""

    operator: str
    effective_from: dt.date
    bands: tuple[tuple[int | None, int], ...]
    stations: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not self.bands or self.bands[-1][0] is not None:
            raise ValueError("metro bands must end with an open band (no up_to_m)")
        last = -1
        for up_to, _fen in self.bands[:-1]:
            if up_to is None or up_to <= last:
                raise ValueError("metro band limits must be increasing integers")
            last = up_to
        for _, fen in self.bands:
            if not 0 <= fen <= _MAX_FEN:
                raise ValueError(f"metro fare {fen} out of range")

    def fare_for(self, distance_m: int) -> int:
        for up_to, fen in self.bands:
            if up_to is None or distance_m <= up_to:
                return fen
        raise AssertionError("unreachable: the last band is open")

    def station_m(self, place: str) -> int | None:
        for name, m in self.stations:
            if name == place:
                return m
        return None

    @property
    def min_fen(self) -> int:
        return min(f for _, f in self.bands)

    @property
    def max_fen(self) -> int:
        return max(f for _, f in self.bands)


@dataclass(frozen=True, slots=True)
class FareTable:
    bus: tuple[BusFare, ...]
    metros: tuple[MetroFare, ...]
    unpaired_entry: str | int = "max"
    unpaired_exit: str | int = "min"

    def __post_init__(self) -> None:
        for rule in (self.unpaired_entry, self.unpaired_exit):
            if isinstance(rule, bool) or not (
                rule in UNPAIRED_RULES or (isinstance(rule, int) and 0 <= rule <= _MAX_FEN)
            ):
                raise ValueError(f"unpaired rule must be zero|min|max or fen, not {rule!r}")

    def bus_fare(self, operator: str, line: str, day: dt.date) -> int | None:
        best: BusFare | None = None
        for f in self.bus:
            if (
                f.operator == operator
                and f.line == line
                and f.effective_from <= day
                and (best is None or f.effective_from > best.effective_from)
            ):
                best = f
        return None if best is None else best.fare_fen

    def metro_for(self, operator: str, day: dt.date) -> MetroFare | None:
        best: MetroFare | None = None
        for f in self.metro_all(operator):
            if f.effective_from <= day and (best is None or f.effective_from > best.effective_from):
                best = f
        return best

    def metro_all(self, operator: str) -> tuple[MetroFare, ...]:
        return tuple(f for f in self.metros if f.operator == operator)

    def unpaired_fare(self, which: str, operator: str, day: dt.date) -> int | None:
        rule = self.unpaired_entry if which == "entry" else self.unpaired_exit
        if isinstance(rule, int):
            return rule
        if rule == "zero":
            return 0
        table = self.metro_for(operator, day)
        if table is None:
            return None
        return int(table.min_fen if rule == "min" else table.max_fen)


def _date(value: Any, where: str) -> dt.date:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{where}: effective_from must be a date YYYY-MM-DD")


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer (fen or metres), not {value!r}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where} must be a non-empty string")
    return value


def parse_fares(text: str, source: str = "fares.toml") -> FareTable:
    """Parse and check the fares file; raise MalformedFile naming the problem."""
    try:
        doc = tomllib.loads(text)
        unpaired = doc.get("unpaired", {})
        if not isinstance(unpaired, dict):
            raise ValueError("[unpaired] must be a table")
        bus = []
        for i, b in enumerate(doc.get("bus", [])):
            w = f"bus[{i}]"
            if not isinstance(b, dict):
                raise ValueError(f"{w} must be a table")
            bus.append(
                BusFare(
                    _str(b.get("operator"), f"{w}.operator"),
                    _str(b.get("line"), f"{w}.line"),
                    _int(b.get("fare_fen"), f"{w}.fare_fen"),
                    _date(b.get("effective_from"), w),
                )
            )
        metro = []
        for i, m in enumerate(doc.get("metro", [])):
            w = f"metro[{i}]"
            if not isinstance(m, dict) or not isinstance(m.get("bands"), list):
                raise ValueError(f"{w} must be a table with a bands list")
            bands = []
            for j, band in enumerate(m["bands"]):
                if not isinstance(band, dict):
                    raise ValueError(f"{w}.bands[{j}] must be a table")
                up = band.get("up_to_m")
                bands.append(
                    (
                        None if up is None else _int(up, f"{w}.bands[{j}].up_to_m"),
                        _int(band.get("fare_fen"), f"{w}.bands[{j}].fare_fen"),
                    )
                )
            stations = m.get("stations", {})
            if not isinstance(stations, dict):
                raise ValueError(f"{w}.stations must be a table")
            metro.append(
                MetroFare(
                    _str(m.get("operator"), f"{w}.operator"),
                    _date(m.get("effective_from"), w),
                    tuple(bands),
                    tuple(
                        sorted((str(k), _int(v, f"{w}.stations.{k}")) for k, v in stations.items())
                    ),
                )
            )
        keys = [(f.operator, f.line, f.effective_from) for f in bus]
        keys += [(f.operator, "", f.effective_from) for f in metro]
        if len(set(keys)) != len(keys):
            raise ValueError("two fares for the same operator/line take effect the same day")
        return FareTable(
            tuple(bus), tuple(metro), unpaired.get("entry", "max"), unpaired.get("exit", "min")
        )
    except tomllib.TOMLDecodeError as exc:
        raise MalformedFile(f"{source}: not valid TOML: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise MalformedFile(f"{source}: {exc}") from None
