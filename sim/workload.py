"""A day of taps with its ground truth: when, where, which card, and what must happen.

Trips follow a working day (a morning and an evening peak over a base load). A metro
trip is an entry at one station and an exit at another; a bus trip is one boarding.
On top come the faults of single taps: passback attempts (the same card again at the
same station or bus soon after) and cards pulled off the reader mid-transaction (the
rider then taps again). Bad cards come from the population.

The expected decision of every tap is computed here, independently of the engine, by
applying CARD-SPEC §7 to what the simulator knows: the card's kind, the revocation
table in force at the tap's time, and the passback state of the place. The expected
reimbursement is priced from the network with the pairing rule stated in
docs/simulator.md. This module must never call the engine or read a clock.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from farecore.decide.decision import Reason
from sim.network import METRO_BANDS, GatePlan, Network
from sim.population import CARD_KINDS, FraudMix, Population
from sim.venues import site_of, ticket_fen

__all__ = [
    "ACCEPT_CODE",
    "FAULT_NONE",
    "FAULT_PASSBACK",
    "FAULT_PULLED",
    "FAULT_REVISIT",
    "DayClock",
    "Workload",
    "boardings",
    "label_name",
    "reimburse",
]

ACCEPT_CODE = 0  # expected/got codes: 0 is ACCEPT, otherwise a Reason value
FAULT_NONE, FAULT_PASSBACK, FAULT_PULLED, FAULT_REVISIT = 0, 1, 2, 3
REVISIT_SHARE = 0.03  # of venue visits: the holder comes back to the site later that day
_QINGDAO_TZ = dt.timezone(dt.timedelta(hours=8))


def label_name(code: int) -> str:
    return "ACCEPT" if code == ACCEPT_CODE else Reason(code).name


@dataclass(frozen=True, slots=True)
class DayClock:
    """The simulated service day, in UTC Unix milliseconds (Qingdao is UTC+8)."""

    day: dt.date
    passback_metro_s: int = 600
    passback_bus_s: int = 300

    @property
    def start_ms(self) -> int:
        midnight = dt.datetime.combine(self.day, dt.time(0), tzinfo=_QINGDAO_TZ)
        return int(midnight.timestamp()) * 1000

    @property
    def revocation_gen1_ms(self) -> int:
        """Generation 1 is published the evening before and is in force from the start."""
        return self.start_ms - 4 * 3_600_000

    @property
    def revocation_gen2_ms(self) -> int:
        """Generation 2 (the cards revoked during the day) is in force from 13:00 local."""
        return self.start_ms + 13 * 3_600_000


@dataclass(frozen=True, slots=True)
class Workload:
    """Taps sorted by time, as parallel arrays; codes as in ``ACCEPT_CODE``/``Reason``."""

    time_ms: npt.NDArray[np.int64]
    card: npt.NDArray[np.int32]
    gate: npt.NDArray[np.int32]
    counter: npt.NDArray[np.uint32]
    fault: npt.NDArray[np.uint8]
    expected: npt.NDArray[np.uint8]

    def __post_init__(self) -> None:
        n = len(self.time_ms)
        for name in ("card", "gate", "counter", "fault", "expected"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"workload array {name} has the wrong length")

    def __len__(self) -> int:
        return len(self.time_ms)

    @classmethod
    def generate(
        cls,
        seed: int,
        taps: int,
        population: Population,
        gates: list[GatePlan],
        network: Network,
        clock: DayClock,
        mix: FraudMix,
        *,
        trips: int | None = None,
        metro_share: float = 0.58,
        stream: tuple[int, ...] = (),
        bus_weights: dict[int, float] | None = None,
        venue_visits: int = 0,
    ) -> Workload:
        """The day's taps. By default ``taps`` of them, with every bad card kind made to
        show up. With ``trips`` (a simulated year's day, ``sim.year_plan``): that many
        trips however many taps they make, bad cards riding only as often as any card,
        ``metro_share`` of the trips by metro, and ``stream`` (the day) added to the
        seed's random stream. ``bus_weights`` (gate index to weight): how a bus trip
        picks its bus; by default every bus alike. ``venue_visits``: visits to the venue
        gates' sites in opening hours, from a stream of their own (0 leaves the day's
        taps as they are), each card's never overlapping its trips."""
        if taps < 10:
            raise ValueError("--taps must be at least 10")
        if not 0.0 <= metro_share <= 1.0:
            raise ValueError(f"metro share {metro_share} must be between 0 and 1")
        rng = np.random.default_rng([seed, 2, *stream])
        places = _Places.of(gates, bus_weights)
        # ~1.6 taps a trip; trips overlapping one card's are dropped
        n_trips = 2 * taps + 100 if trips is None else 2 * trips + 100
        draws = _Draws.draw(
            rng, n_trips, len(places.stations), population, clock, metro_share, trips is None
        )
        busy: dict[int, list[tuple[int, int]]] = defaultdict(list)
        rows = _plan(rng, draws, places, network, mix, taps if trips is None else None, trips, busy)
        if venue_visits and places.venue:
            visits = np.random.default_rng([seed, 3, *stream])
            rows = sorted(rows + _visits(visits, venue_visits, places, population, clock, busy))
        arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
        time_ms = arr[:, 0].copy()
        card_arr = arr[:, 1].astype(np.int32)
        gate_arr = arr[:, 2].astype(np.int32)
        fault = arr[:, 3].astype(np.uint8)
        counter, expected = _ground_truth(
            time_ms, card_arr, gate_arr, fault, population, gates, clock
        )
        return cls(time_ms, card_arr, gate_arr, counter, fault, expected)


@dataclass(frozen=True, slots=True)
class _Places:
    """The gates by what they are: a station's entries and exits, the buses."""

    entry: dict[str, list[int]]
    exit: dict[str, list[int]]
    bus: list[int]
    stations: list[str]  # the metro stations, sorted
    bus_cum: npt.NDArray[np.float64] | None = None  # cumulative weights of ``bus``
    venue: dict[str, list[int]] = field(default_factory=dict)  # a site's entrance gates

    @classmethod
    def of(cls, gates: list[GatePlan], bus_weights: dict[int, float] | None = None) -> _Places:
        entry: dict[str, list[int]] = defaultdict(list)
        exit_: dict[str, list[int]] = defaultdict(list)
        bus: list[int] = []
        venue: dict[str, list[int]] = defaultdict(list)
        for g in gates:
            if g.role == "metro_entry":
                entry[g.place].append(g.index)
            elif g.role == "metro_exit":
                exit_[g.place].append(g.index)
            elif g.role == "venue":
                venue[g.line].append(g.index)
            else:
                bus.append(g.index)
        cum = None
        if bus_weights is not None:
            weights = np.array([bus_weights.get(g, 0.0) for g in bus])
            if len(weights) == 0 or weights.min() < 0 or weights.sum() <= 0:
                raise ValueError("bus weights must be non-negative with a positive sum")
            cum = np.cumsum(weights) / weights.sum()
        return cls(entry, exit_, bus, sorted(entry), cum, dict(venue))


@dataclass(frozen=True, slots=True)
class _Draws:
    """The random draws of every candidate trip, made up front in a fixed order."""

    starts: npt.NDArray[np.int64]
    cards: npt.NDArray[np.int64]
    is_metro: npt.NDArray[np.bool_]
    a_idx: npt.NDArray[np.int64]
    b_off: npt.NDArray[np.int64]
    pick: npt.NDArray[np.float64]

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        n_trips: int,
        stations: int,
        population: Population,
        clock: DayClock,
        metro_share: float = 0.58,
        show_bad: bool = True,
    ) -> _Draws:
        starts = _day_profile(rng, n_trips, clock.start_ms)
        cards = rng.integers(0, len(population), n_trips)
        # Make sure every bad card kind shows up even in a small day.
        bad = np.flatnonzero(population.kinds != 0)
        if len(bad) and show_bad:
            take = bad[: max(1, min(len(bad), n_trips // 8))]
            cards[rng.choice(n_trips, size=len(take), replace=False)] = take
        is_metro = rng.random(n_trips) < metro_share
        a_idx = rng.integers(0, stations, n_trips)
        b_off = rng.integers(1, max(2, stations), n_trips)
        return cls(starts, cards, is_metro, a_idx, b_off, rng.random((n_trips, 4)))


_Row = tuple[int, int, int, int]  # time, card, gate, fault
_GAP_MS = 90 * 60_000  # between a card's trips: every hop stays under the settlement's
# impossible-travel speed.


def _plan(
    rng: np.random.Generator,
    d: _Draws,
    places: _Places,
    network: Network,
    mix: FraudMix,
    taps: int | None,
    trips: int | None = None,
    busy: dict[int, list[tuple[int, int]]] | None = None,
) -> list[_Row]:
    """The day's taps, sorted by time. Trips of one card never overlap in time; trips
    are taken in random order (not time order) until the day has ``taps`` taps (or
    ``trips`` trips), so a small day still spans the whole service day with its two
    peaks."""
    rows: list[_Row] = []
    taken = 0
    busy = defaultdict(list) if busy is None else busy
    p_passback, p_pulled = mix.get("passback"), mix.get("pulled")
    cols = _Columns.of(d, places)
    for t in rng.permutation(len(d.starts)).tolist():
        planned = _trip(t, cols, places, network)
        if planned is None:
            continue
        trip, again, start, end = planned
        card = trip[0][1]
        if any(start < e + _GAP_MS and s0 < end + _GAP_MS for s0, e in busy[card]):
            continue
        busy[card].append((start, end))
        rows.extend(trip)
        u = rng.random(2)
        if u[0] < p_pulled:
            # Pulled off the reader mid-transaction; the rider taps again 2-6 s later.
            lost = trip[int(u[1] * len(trip)) % len(trip)]
            rows.append((lost[0] - 2000 - int(4000 * u[1]), card, lost[2], FAULT_PULLED))
        if u[1] < p_passback:
            rows.append((start + 20_000 + int(200_000 * u[0]), card, again, FAULT_PASSBACK))
        taken += 1
        if (taps is not None and len(rows) >= taps) or (trips is not None and taken >= trips):
            break
    rows.sort()
    return rows[:taps] if taps is not None else rows


def _visits(
    rng: np.random.Generator,
    n: int,
    places: _Places,
    population: Population,
    clock: DayClock,
    busy: dict[int, list[tuple[int, int]]],
) -> list[_Row]:
    """``n`` visits (or as many as fit) to the sites, 09:00 to 17:00, each an hour or
    three, at a random entrance; a share of holders come back through another entrance
    later the same day (``FAULT_REVISIT``). A card's visit never overlaps its trips."""
    sites = sorted(places.venue)
    rows: list[_Row] = []
    planned = 0
    draws = 3 * n + 20
    cards = rng.integers(0, len(population), draws)
    site_k = rng.integers(0, len(sites), draws)
    start = clock.start_ms + (rng.uniform(9.0, 16.5, draws) * 3_600_000).astype(np.int64)
    stay = (rng.uniform(60, 180, draws) * 60_000).astype(np.int64)
    pick = rng.random((draws, 3))
    for k in range(draws):
        if planned >= n:
            break
        card, t0 = int(cards[k]), int(start[k])
        t1 = t0 + int(stay[k])
        back = pick[k, 2] < REVISIT_SHARE
        end = t1 + (30 * 60_000 if back else 0)
        if any(t0 < e + _GAP_MS and s0 < end + _GAP_MS for s0, e in busy[card]):
            continue
        busy[card].append((t0, end))
        gates = places.venue[sites[int(site_k[k])]]
        rows.append((t0, card, gates[int(pick[k, 0] * len(gates))], FAULT_NONE))
        if back:
            rows.append((end, card, gates[int(pick[k, 1] * len(gates))], FAULT_REVISIT))
        planned += 1
    return rows


class _Columns:
    """The draws as plain Python values, one list a column: the planning loop reads a
    few per trip, and indexing numpy arrays one scalar at a time is slow. The same
    values, so the same day."""

    __slots__ = ("a_idx", "b_off", "bus_k", "cards", "is_metro", "pick", "starts")

    def __init__(self, d: _Draws, bus_k: list[int]) -> None:
        self.starts: list[int] = d.starts.tolist()
        self.cards: list[int] = d.cards.tolist()
        self.is_metro: list[bool] = d.is_metro.tolist()
        self.a_idx: list[int] = d.a_idx.tolist()
        self.b_off: list[int] = d.b_off.tolist()
        self.pick: list[float] = d.pick.ravel().tolist()  # trip t's at 4t .. 4t+3
        self.bus_k = bus_k  # each trip's bus, if it is one (an index into places.bus)

    @classmethod
    def of(cls, d: _Draws, places: _Places) -> _Columns:
        if places.bus_cum is None:
            k = (d.pick[:, 1] * len(places.bus)).astype(np.int64)
        else:
            k = np.searchsorted(places.bus_cum, d.pick[:, 1], side="right")
        return cls(d, np.minimum(k, max(len(places.bus) - 1, 0)).tolist())


def _trip(
    t: int, d: _Columns, places: _Places, network: Network
) -> tuple[list[_Row], int, int, int] | None:
    """Trip ``t``'s taps, the gate a passback attempt would use, its start and end; None
    if it goes nowhere (a metro trip to the station it starts from)."""
    start, card, p = d.starts[t], d.cards[t], 4 * t
    pick = d.pick
    stations = places.stations
    if d.is_metro[t] and len(stations) >= 2:
        a_idx = d.a_idx[t]
        a = stations[a_idx]
        b = stations[(a_idx + d.b_off[t]) % len(stations)]
        if a == b:
            return None
        km = network.distance_km(a, b)
        end = start + int((km / 0.55 + 4 + 6 * pick[p]) * 60_000)
        gin = places.entry[a][int(pick[p + 1] * len(places.entry[a]))]
        gout = places.exit[b][int(pick[p + 2] * len(places.exit[b]))]
        again = places.entry[a][int(pick[p + 3] * len(places.entry[a]))]
        return [(start, card, gin, FAULT_NONE), (end, card, gout, FAULT_NONE)], again, start, end
    gin = places.bus[d.bus_k[t]]
    end = start + int((8 + 30 * pick[p]) * 60_000)
    return [(start, card, gin, FAULT_NONE)], gin, start, end


def _day_profile(rng: np.random.Generator, n: int, day_start_ms: int) -> npt.NDArray[np.int64]:
    """Tap start times: peaks at 08:00 and 18:00 over a base load from 05:30 to 22:30."""
    which = rng.random(n)
    minutes = np.where(
        which < 0.33,
        rng.normal(8 * 60, 50, n),
        np.where(which < 0.63, rng.normal(18 * 60, 65, n), rng.uniform(5.5 * 60, 22.5 * 60, n)),
    )
    minutes = np.clip(minutes, 5.5 * 60, 22.5 * 60)
    return (day_start_ms + (minutes * 60_000).astype(np.int64)).astype(np.int64)


_KIND_REASON = {
    "forged": Reason.BAD_CREDENTIAL_SIGNATURE,
    "expired": Reason.EXPIRED,
    "other_region": Reason.WRONG_REGION,
    "revoked_before": Reason.REVOKED,
    "clone": Reason.CARD_AUTH_FAILED,
}


def _ground_truth(
    time_ms: npt.NDArray[np.int64],
    card: npt.NDArray[np.int32],
    gate: npt.NDArray[np.int32],
    fault: npt.NDArray[np.uint8],
    population: Population,
    gates: list[GatePlan],
    clock: DayClock,
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
    """Each tap's card counter before the tap and its expected decision (CARD-SPEC §7)."""
    n = len(time_ms)
    counter = np.zeros(n, dtype=np.uint32)
    expected = np.zeros(n, dtype=np.uint8)
    used: dict[int, int] = defaultdict(int)
    last_ok: dict[tuple[str, int], int] = {}
    kinds = population.kinds
    gen2 = clock.revocation_gen2_ms
    windows = {"metro_entry": clock.passback_metro_s * 1000, "bus": clock.passback_bus_s * 1000}
    entered: set[tuple[str, int]] = set()  # (site, card): one entry a service day
    for i in range(n):
        c, g, t = int(card[i]), gates[int(gate[i])], int(time_ms[i])
        counter[i] = used[c]
        if fault[i] == FAULT_PULLED:
            # Removed when READ CREDENTIAL arrives: no authentication, no counter step.
            expected[i] = Reason.UNREADABLE
            continue
        used[c] += 1
        kind = CARD_KINDS[int(kinds[c])]
        reason = _KIND_REASON.get(kind)
        if reason is None and kind == "revoked_during" and t >= gen2:
            reason = Reason.REVOKED
        if reason is None and g.role in windows:
            last = last_ok.get((g.place, c))
            if last is not None and t - last < windows[g.role]:
                reason = Reason.PASSBACK
        if reason is None and g.role == "venue" and (g.line, c) in entered:
            reason = Reason.ALREADY_ENTERED  # visits are in opening hours: one day
        if reason is None:
            if g.role in windows:
                last_ok[(g.place, c)] = t
            elif g.role == "venue":
                entered.add((g.line, c))
            expected[i] = ACCEPT_CODE
        else:
            expected[i] = int(reason)
    return counter, expected


def reimburse(
    time_ms: npt.NDArray[np.int64],
    card: npt.NDArray[np.int32],
    gate: npt.NDArray[np.int32],
    accepted: npt.NDArray[np.bool_],
    gates: list[GatePlan],
    network: Network,
    day: dt.date | None = None,
) -> dict[str, dict[str, int]]:
    """Fen owed per operator and line for the accepted taps, by the stated rule.

    A venue entry: its site's ticket price on ``day`` (``sim.venues``), counted on the site.

    Bus: the line's flat fare per boarding. Metro: each exit pairs with the card's latest
    still-open entry and pays the distance-band fare between the two stations, counted
    on the entry's line; an entry never closed and an exit with no open entry pay the
    lowest band (the fares file's ``[unpaired]`` rule, the settlement's default).
    """
    owed: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    open_entries: dict[int, list[GatePlan]] = defaultdict(list)
    lowest = min(fen for _, fen in METRO_BANDS)
    for i in np.flatnonzero(accepted):  # taps are in time order
        g, c = gates[int(gate[i])], int(card[i])
        if g.role == "bus":
            owed[g.operator][g.line] += network.bus_line(g.line).fare_fen
        elif g.role == "venue":
            if day is None:
                raise ValueError("pricing venue entries needs the day (their ticket prices)")
            owed[g.operator][g.line] += ticket_fen(site_of(g.line), day)
        elif g.role == "metro_entry":
            open_entries[c].append(g)
        elif open_entries[c]:
            entry = open_entries[c].pop()
            owed[entry.operator][entry.line] += network.metro_fare(entry.place, g.place)
        else:
            owed[g.operator][g.line] += lowest
    for entries in open_entries.values():
        for g in entries:
            owed[g.operator][g.line] += lowest
    return {op: dict(sorted(lines.items())) for op, lines in sorted(owed.items())}


def boardings(
    card: npt.NDArray[np.int32],
    gate: npt.NDArray[np.int32],
    accepted: npt.NDArray[np.bool_],
    gates: list[GatePlan],
) -> int:
    """Free rides as a city counts them: each bus boarding and each metro trip once.

    A metro exit that closes an open entry of its card is the same ride as that entry;
    an exit with no open entry (its entry was refused) is a ride of its own, as the
    settlement pays it (``reimburse``). Taps in time order."""
    roles = np.array([g.role for g in gates], dtype=object)[gate]
    rides = 0
    open_entries: dict[int, int] = defaultdict(int)
    for i in np.flatnonzero(accepted).tolist():
        role, c = roles[i], int(card[i])
        if role == "venue":
            continue  # a visit, not a ride
        if role == "metro_exit":
            if open_entries[c]:
                open_entries[c] -= 1
                continue
        elif role == "metro_entry":
            open_entries[c] += 1
        rides += 1
    return rides
