"""The settlement's rule file (fares.toml): fares, and what each operator accepts.

Example (money is integer fen, distances integer metres, times integer seconds)::

    [unpaired]
    entry = "min"        # a metro entry with no exit: "min" | "max" | "hold" | "zero" | fen
    exit = "min"         # a metro exit with no entry

    [checks]
    clock_tolerance_s = 300   # how far a ride's time may stray from its day and its chain
    revocation_max_age_s = 172800   # the gates' [revocation] max_age_s
    utc_offset_min = 480      # the service day's time zone (+08:00, Qingdao)

    [[operator]]
    id = "qd-metro"
    regions = [370200]            # regions whose cards this operator carries free
    categories = [1, 2, 3, 4, 5]  # optional; all five by default
    passback_scope = "place"      # "place" (default) or "terminal"
    [operator.passback_s]         # per gate role, as the gates are configured
    metro_entry = 600

    [[operator]]
    id = "qd-parks"
    kind = "venue"                # "transit" (default) or "venue": parks, scenic spots,
    regions = [370200]            # museums; one free entry per card, site and service day

    [[venue]]                     # a site's government-set ticket price
    operator = "qd-parks"
    site = "zhongshan-park"       # the site's gates carry it as their line
    ticket_fen = 1500
    effective_from = "2026-01-01"

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
Every table and key is checked: an unknown one is an error naming it and the nearest
valid name. This module must never use floats for money or distance.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from farecore.boundedinput import load_toml
from farecore.errors import MalformedFile
from farecore.journal.records import ROLE_DIRECTION, Direction
from farecore.strictkeys import check_keys

__all__ = [
    "DEFAULT_CLOCK_TOLERANCE_S",
    "OPERATOR_KINDS",
    "UNPAIRED_RULES",
    "BusFare",
    "FareTable",
    "MetroFare",
    "OperatorPolicy",
    "VenueFare",
    "parse_fares",
]

UNPAIRED_RULES = ("min", "max", "hold", "zero")
OPERATOR_KINDS = ("transit", "venue")
DEFAULT_CLOCK_TOLERANCE_S = 300
DEFAULT_REVOCATION_MAX_AGE_S = 172_800  # the gates' default (farecore.gate.config)
DEFAULT_UTC_OFFSET_MIN = 480
ALL_CATEGORIES = frozenset({1, 2, 3, 4, 5})
_MAX_FEN = 10**9
_MAX_WINDOW_S = 7 * 86_400
_MAX_TOLERANCE_S = 86_400
_MAX_TEXT = 1 << 20  # a fares file is a few kilobytes; refuse a huge one before parsing
_MAX_DEPTH = 8  # [[metro]] with its list of bands is four deep


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
class VenueFare:
    """A venue site's ticket price: what one free entry there is reimbursed at."""

    operator: str
    site: str
    ticket_fen: int
    effective_from: dt.date

    def __post_init__(self) -> None:
        if not 0 <= self.ticket_fen <= _MAX_FEN:
            raise ValueError(f"ticket price {self.ticket_fen} out of range")


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
class OperatorPolicy:
    """What one operator's gates accept, re-applied by the settlement to every ride.

    ``passback_s`` maps a terminal direction to its anti-passback window in seconds
    (a direction not in it has no rule); ``scope`` "place" shares the rule among the
    gates of one place, "terminal" keeps it per gate, as ``farecore.journal.passback`` does.
    A ``kind`` "venue" operator's entries follow the venue rule instead: one per card,
    site and service day (``daily``).
    """

    operator: str
    regions: frozenset[int]
    categories: frozenset[int] = ALL_CATEGORIES
    passback_s: tuple[tuple[Direction, int], ...] = ()
    passback_scope: str = "place"
    kind: str = "transit"

    def __post_init__(self) -> None:
        if not self.regions:
            raise ValueError(f"operator {self.operator}: regions must not be empty")
        if self.passback_scope not in ("place", "terminal"):
            raise ValueError(f"operator {self.operator}: passback_scope must be place|terminal")
        if self.kind not in OPERATOR_KINDS:
            raise ValueError(f"operator {self.operator}: kind must be transit|venue")
        if self.kind == "venue" and self.passback_s:
            raise ValueError(
                f"operator {self.operator}: a venue's rule is one entry per card, site and "
                "service day; it takes no passback_s"
            )

    def daily(self, direction: int) -> bool:
        """True when rides in ``direction`` follow the venue rule (one a service day)."""
        return self.kind == "venue" and direction == Direction.VISIT

    def window_s(self, direction: int) -> int:
        for d, window in self.passback_s:
            if d == direction:
                return window
        return 0


@dataclass(frozen=True, slots=True)
class FareTable:
    bus: tuple[BusFare, ...]
    metros: tuple[MetroFare, ...]
    unpaired_entry: str | int = "min"
    unpaired_exit: str | int = "min"
    operators: tuple[OperatorPolicy, ...] = field(default=())
    clock_tolerance_s: int = DEFAULT_CLOCK_TOLERANCE_S
    revocation_max_age_s: int = DEFAULT_REVOCATION_MAX_AGE_S
    utc_offset_min: int = DEFAULT_UTC_OFFSET_MIN
    venues: tuple[VenueFare, ...] = ()

    def __post_init__(self) -> None:
        for rule in (self.unpaired_entry, self.unpaired_exit):
            if isinstance(rule, bool) or not (
                rule in UNPAIRED_RULES or (isinstance(rule, int) and 0 <= rule <= _MAX_FEN)
            ):
                raise ValueError(
                    f"unpaired rule must be {'|'.join(UNPAIRED_RULES)} or fen, not {rule!r}"
                )
        if not 0 <= self.clock_tolerance_s <= _MAX_TOLERANCE_S:
            raise ValueError(f"checks.clock_tolerance_s must be 0..{_MAX_TOLERANCE_S}")
        names = [p.operator for p in self.operators]
        if len(set(names)) != len(names):
            raise ValueError("an [[operator]] is listed twice")
        venue_operators = {p.operator for p in self.operators if p.kind == "venue"}
        site_operator: dict[str, str] = {}
        for v in self.venues:
            # A site's gates share one state whoever runs them: one site, one operator.
            other = site_operator.setdefault(v.site, v.operator)
            if other != v.operator:
                raise ValueError(
                    f"[[venue]] site {v.site!r} is listed under two operators, {other!r} and "
                    f"{v.operator!r}"
                )
            if v.operator not in venue_operators:
                raise ValueError(
                    f"[[venue]] {v.site}: operator {v.operator!r} is not an [[operator]] "
                    'with kind = "venue"'
                )
        for f in self.bus:
            if f.operator in venue_operators:
                raise ValueError(f"[[bus]] line {f.line}: operator {f.operator!r} is a venue")
        for m in self.metros:
            if m.operator in venue_operators:
                raise ValueError(f"[[metro]]: operator {m.operator!r} is a venue")

    def policy(self, operator: str) -> OperatorPolicy | None:
        for p in self.operators:
            if p.operator == operator:
                return p
        return None

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

    def venue_fare(self, operator: str, site: str, day: dt.date) -> int | None:
        """The ticket price of ``site`` in force on ``day``, or None when none is."""
        best: VenueFare | None = None
        for f in self.venues:
            if (
                f.operator == operator
                and f.site == site
                and f.effective_from <= day
                and (best is None or f.effective_from > best.effective_from)
            ):
                best = f
        return None if best is None else best.ticket_fen

    def metro_for(self, operator: str, day: dt.date) -> MetroFare | None:
        best: MetroFare | None = None
        for f in self.metro_all(operator):
            if f.effective_from <= day and (best is None or f.effective_from > best.effective_from):
                best = f
        return best

    def metro_all(self, operator: str) -> tuple[MetroFare, ...]:
        return tuple(f for f in self.metros if f.operator == operator)

    def unpaired_rule(self, which: str) -> str | int:
        return self.unpaired_entry if which == "entry" else self.unpaired_exit

    def unpaired_fare(self, which: str, operator: str, day: dt.date) -> int | None:
        """The fen an unpaired tap is paid, or None without a metro table. ``hold`` is
        the caller's business (the tap is then not paid at all); here it prices 0."""
        rule = self.unpaired_rule(which)
        if isinstance(rule, int):
            return rule
        if rule in ("zero", "hold"):
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


def _int(value: Any, where: str, low: int = 0, high: int = _MAX_FEN) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{where} must be {low}..{high}, not {value}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where} must be a non-empty string")
    return value


def _table(value: Any, where: str, allowed: Iterable[str]) -> dict[str, Any]:
    """A TOML table whose keys are all in ``allowed`` (else: the nearest valid name)."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a table")
    check_keys(value, where, allowed)
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be an array")
    return value


def _rule(value: Any, where: str) -> str | int:
    if isinstance(value, str) and value in UNPAIRED_RULES:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_FEN:
        return value
    raise ValueError(f"{where} must be {'|'.join(UNPAIRED_RULES)} or fen, not {value!r}")


def _operator(raw: Any, where: str) -> OperatorPolicy:
    o = _table(raw, where, ("id", "kind", "regions", "categories", "passback_s", "passback_scope"))
    name = _str(o.get("id"), f"{where}.id")
    if "regions" not in o:
        raise ValueError(f"{where}.regions is required (the regions whose cards it carries)")
    regions = frozenset(
        _int(r, f"{where}.regions", 0, 0xFFFFFFFF) for r in _list(o["regions"], f"{where}.regions")
    )
    categories = ALL_CATEGORIES
    if "categories" in o:
        raw_c = _list(o["categories"], f"{where}.categories")
        categories = frozenset(_int(c, f"{where}.categories", 0, 255) for c in raw_c)
    transit_roles = [r for r, d in ROLE_DIRECTION.items() if d != Direction.VISIT]
    windows = _table(o.get("passback_s", {}), f"{where}.passback_s", transit_roles)
    passback = tuple(
        sorted(
            (ROLE_DIRECTION[role], _int(s, f"{where}.passback_s.{role}", 0, _MAX_WINDOW_S))
            for role, s in windows.items()
        )
    )
    scope = o.get("passback_scope", "place")
    if scope not in ("place", "terminal"):
        raise ValueError(f"{where}.passback_scope must be 'place' or 'terminal', not {scope!r}")
    kind = o.get("kind", "transit")
    if kind not in OPERATOR_KINDS:
        raise ValueError(f"{where}.kind must be 'transit' or 'venue', not {kind!r}")
    if kind == "venue" and passback:
        raise ValueError(
            f"{where}: a venue admits a card once per site and service day; remove passback_s"
        )
    return OperatorPolicy(name, regions, categories, passback, scope, kind)


def parse_fares(text: str, source: str = "fares.toml") -> FareTable:
    """Parse and check the fares file; raise MalformedFile naming the problem."""
    if len(text) > _MAX_TEXT:
        raise MalformedFile(f"{source}: larger than {_MAX_TEXT} bytes")
    doc = load_toml(text, _MAX_DEPTH, source, MalformedFile)
    try:
        check_keys(doc, "", ("unpaired", "checks", "operator", "bus", "metro", "venue"), "section")
        unpaired = _table(doc.get("unpaired", {}), "[unpaired]", ("entry", "exit"))
        tolerance, max_age, offset = _checks(doc.get("checks", {}))
        operators = tuple(
            _operator(o, f"operator[{i}]")
            for i, o in enumerate(_list(doc.get("operator", []), "[[operator]]"))
        )
        bus = [_bus(raw, f"bus[{i}]") for i, raw in enumerate(_list(doc.get("bus", []), "[[bus]]"))]
        metro = [
            _metro(raw, f"metro[{i}]")
            for i, raw in enumerate(_list(doc.get("metro", []), "[[metro]]"))
        ]
        venues = [
            _venue(raw, f"venue[{i}]")
            for i, raw in enumerate(_list(doc.get("venue", []), "[[venue]]"))
        ]
        keys = [(f.operator, f.line, f.effective_from) for f in bus]
        keys += [(f.operator, "", f.effective_from) for f in metro]
        if len(set(keys)) != len(keys):
            raise ValueError("two fares for the same operator/line take effect the same day")
        sites = [(v.operator, v.site, v.effective_from) for v in venues]
        if len(set(sites)) != len(sites):
            raise ValueError("two ticket prices for the same venue site take effect the same day")
        return FareTable(
            tuple(bus),
            tuple(metro),
            _rule(unpaired.get("entry", "min"), "unpaired.entry"),
            _rule(unpaired.get("exit", "min"), "unpaired.exit"),
            operators,
            tolerance,
            max_age,
            offset,
            tuple(venues),
        )
    except (ValueError, TypeError) as exc:
        raise MalformedFile(f"{source}: {exc}") from None


def _checks(raw: Any) -> tuple[int, int, int]:
    """[checks]: (clock tolerance s, revocation max age s, UTC offset min)."""
    checks = _table(
        raw, "[checks]", ("clock_tolerance_s", "revocation_max_age_s", "utc_offset_min")
    )
    tolerance = _int(
        checks.get("clock_tolerance_s", DEFAULT_CLOCK_TOLERANCE_S),
        "checks.clock_tolerance_s",
        0,
        _MAX_TOLERANCE_S,
    )
    max_age = _int(
        checks.get("revocation_max_age_s", DEFAULT_REVOCATION_MAX_AGE_S),
        "checks.revocation_max_age_s",
        1,
        10 * 365 * 86_400,
    )
    offset = _int(
        checks.get("utc_offset_min", DEFAULT_UTC_OFFSET_MIN),
        "checks.utc_offset_min",
        -14 * 60,
        14 * 60,
    )
    return tolerance, max_age, offset


def _bus(raw: Any, w: str) -> BusFare:
    b = _table(raw, w, ("operator", "line", "fare_fen", "effective_from"))
    return BusFare(
        _str(b.get("operator"), f"{w}.operator"),
        _str(b.get("line"), f"{w}.line"),
        _int(b.get("fare_fen"), f"{w}.fare_fen"),
        _date(b.get("effective_from"), w),
    )


def _venue(raw: Any, w: str) -> VenueFare:
    v = _table(raw, w, ("operator", "site", "ticket_fen", "effective_from"))
    site = _str(v.get("site"), f"{w}.site")
    if len(site.encode()) > 255:
        raise ValueError(f"{w}.site is longer than 255 bytes (a gate's line)")
    return VenueFare(
        _str(v.get("operator"), f"{w}.operator"),
        site,
        _int(v.get("ticket_fen"), f"{w}.ticket_fen"),
        _date(v.get("effective_from"), w),
    )


def _metro(raw: Any, w: str) -> MetroFare:
    m = _table(raw, w, ("operator", "effective_from", "bands", "stations"))
    bands = []
    for j, raw_band in enumerate(_list(m.get("bands"), f"{w}.bands")):
        band = _table(raw_band, f"{w}.bands[{j}]", ("up_to_m", "fare_fen"))
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
    return MetroFare(
        _str(m.get("operator"), f"{w}.operator"),
        _date(m.get("effective_from"), w),
        tuple(bands),
        tuple(
            sorted((str(k), _int(v, f"{w}.stations.{k}", -_MAX_FEN)) for k, v in stations.items())
        ),
    )
