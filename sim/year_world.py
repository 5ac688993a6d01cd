"""A simulated year's world: the year's cards and gates once, and each day's part of it.

The base world (``build_base``) is what stays all year: the network and its gates, the
card population and every card's key and credential, the issuers and signers. A day's
world (``day_world``) adds that day's clock, its taps with their ground truth, and the
revocation state of the day: a ``revoked_during`` card is revoked on one day of the
year (drawn from the seed), rides normally before it, is refused from 13:00 that day
(generation 2 of the day) and on every later day. Everything derives from the options
and the seed, so a worker process (or a Dask worker) that builds the base world itself
builds the same one.

This module must never read a clock or call the engine.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from farecore.card.keys import SigningKey
from farecore.decide.checks import RevocationEntry
from sim.calendar import YEAR
from sim.calibration import DayAim, bus_weights
from sim.deploy import revocations_csv, sign_table
from sim.issuer import Issuer, derive_key
from sim.network import Network
from sim.population import CARD_KINDS, CardFactory, FraudMix, Population
from sim.venues import VENUE_SITES, city_gates
from sim.workload import DayClock, Workload
from sim.world import SimError, SimOptions, World

__all__ = [
    "COUNTER_RANGE",
    "YearOptions",
    "build_base",
    "day_tables",
    "day_world",
    "revocation_days",
    "write_day_tables",
    "year_day",
]

_ED_ONLY = "ed25519"
COUNTER_RANGE = 256  # card counters of day i are (i+1)·256 + the taps before on that day
_REVOKED_DURING = CARD_KINDS.index("revoked_during")
_REVOKED_BEFORE = CARD_KINDS.index("revoked_before")


@dataclass(frozen=True, slots=True)
class YearOptions:
    """The options of ``farecore sim --year`` / ``--days N``."""

    out: Path
    seed: int = 1
    days: int = 365
    scale: float = 1.0
    gates: int = 40
    venue_sites: int = len(VENUE_SITES)  # parks and museums with gates (sim.venues)
    mix: FraudMix = field(default_factory=FraudMix)
    workers: int = 2  # local worker processes, and the number of lanes' groups
    lanes: int = 1  # station controllers per worker
    max_group: int = 32
    crypto: str = "ed25519"
    scheduler: str | None = None  # a Dask scheduler's address: lanes and units run there

    def __post_init__(self) -> None:
        if not 1 <= self.days <= 365:
            raise ValueError(f"--days must be 1..365, not {self.days}")
        if not 0 < self.scale <= 1:
            raise ValueError(f"--scale must be in (0, 1], not {self.scale}")
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, not {self.workers}")
        # The rest is checked by the day's options, built from these.
        self.sim_options(100)
        places = len({g.place for g in Network().plan_gates(self.gates)})
        if self.lane_count > places:
            raise ValueError(
                f"{self.lane_count} lanes (--workers x --lanes) but {self.gates} gates stand "
                f"at only {places} places; use fewer lanes or more --gates"
            )

    @property
    def lane_count(self) -> int:
        return self.workers * self.lanes

    def sim_options(self, cards: int) -> SimOptions:
        """The day's options every day of the year shares (no plots, virtual reader)."""
        return SimOptions(
            out=self.out,
            seed=self.seed,
            cards=cards,
            taps=10,
            gates=self.gates,
            mix=self.mix,
            workers=self.workers,
            venue_sites=self.venue_sites,
            lanes=self.lanes,
            max_group=self.max_group,
            plots=False,
            crypto=self.crypto,
        )

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues."""
        return {
            "seed": self.seed,
            "days": self.days,
            "scale": self.scale,
            "gates": self.gates,
            "venue_sites": self.venue_sites,
            "fraud_mix": dict(sorted(self.mix.shares.items())),
            "workers": self.workers,
            "lanes": self.lanes,
            "max_group": self.max_group,
            "crypto": self.crypto,
        }


def year_day(index: int) -> dt.date:
    return dt.date(YEAR, 1, 1) + dt.timedelta(days=index)


def build_base(opts: YearOptions, cards: int) -> World:
    """The year's network, gates, cards and keys; the clock of its first day, no taps.
    The same labels as ``sim.world.build_world``, so one seed gives the same keys."""
    sim = opts.sim_options(cards)
    seed = f"farecore-sim/{opts.seed}"
    network = Network()
    gates = city_gates(network, opts.gates, opts.venue_sites)
    clock = DayClock(year_day(0))
    population = Population.generate(opts.seed, cards, opts.mix)
    algs = sim.card_algorithms()
    issuer_algs = list(algs)  # mix: key 1 Ed25519, key 2 SM2
    issuers = [Issuer.from_seed(seed, key_id=k + 1, algorithm=a) for k, a in enumerate(issuer_algs)]
    forgers = [
        SigningKey("issuer", k + 1, derive_key(seed, "forger" if k == 0 else f"forger-{k + 1}", a))
        for k, a in enumerate(issuer_algs)
    ]
    signer_alg = algs[0] if opts.crypto == _ED_ONLY else algs[-1]
    signer = SigningKey("revocation", 1, derive_key(seed, "revocation-1", signer_alg))
    factory = CardFactory(opts.seed, population, issuers, forgers, clock.start_ms // 1000, algs)
    empty = Workload(
        np.zeros(0, dtype=np.int64),
        np.zeros(0, dtype=np.int32),
        np.zeros(0, dtype=np.int32),
        np.zeros(0, dtype=np.uint32),
        np.zeros(0, dtype=np.uint8),
        np.zeros(0, dtype=np.uint8),
    )
    return World(
        sim, network, gates, clock, population, empty, issuers, forgers, signer, [], [], factory
    )


def revocation_days(base: World) -> npt.NDArray[np.int64]:
    """The day of the year (0-based) each card of kind ``revoked_during`` is revoked on;
    -1 for every other card. From the seed alone."""
    pop = base.population
    rng = np.random.default_rng([base.opts.seed, 5])
    days = np.full(len(pop), -1, dtype=np.int64)
    during = pop.indices_of("revoked_during")
    days[during] = rng.integers(0, 365, len(during))
    return days


def _population_of(base: World, index: int, revoked_on: npt.NDArray[np.int64]) -> Population:
    """The day's view of the cards: revoked on an earlier day counts as revoked before,
    on a later day as a normal card."""
    kinds = base.population.kinds.copy()
    during = kinds == _REVOKED_DURING
    kinds[during & (revoked_on < index)] = _REVOKED_BEFORE
    kinds[during & (revoked_on > index)] = 0
    pop = base.population
    return Population(pop.card_ids, pop.categories, kinds)


def _revoked(
    base: World, index: int, revoked_on: npt.NDArray[np.int64]
) -> tuple[list[RevocationEntry], list[RevocationEntry]]:
    """The revocation tables' entries of day ``index``: generation 1 (in force from the
    start of the day) and generation 2 (from 13:00: generation 1 and the cards revoked
    during the day)."""
    pop, first = base.population, DayClock(year_day(0))
    gen1 = []
    for i in pop.indices_of("revoked_before").tolist():
        at = first.revocation_gen1_ms // 1000 - 86_400 * (1 + i % 90)
        gen1.append(RevocationEntry(int(pop.card_ids[i]), at, 1 + i % 5))
    today: list[RevocationEntry] = []
    for i in pop.indices_of("revoked_during").tolist():
        day = int(revoked_on[i])
        if day > index:
            continue
        at = DayClock(year_day(day)).revocation_gen2_ms // 1000 - 60 * (5 + i % 120)
        (gen1 if day < index else today).append(RevocationEntry(int(pop.card_ids[i]), at, 2))
    return gen1, gen1 + today


def day_world(base: World, index: int, aim: DayAim, revoked_on: npt.NDArray[np.int64]) -> World:
    """Day ``index`` of the year: its clock, cards' states, taps and revocation lists."""
    clock = DayClock(year_day(index))
    population = _population_of(base, index, revoked_on)
    workload = Workload.generate(
        base.opts.seed,
        10,
        population,
        base.gates,
        base.network,
        clock,
        base.opts.mix,
        # Today's good cards: a card revoked on a later day still rides today.
        trips=aim.trips(float(np.count_nonzero(population.kinds == 0)) / len(population)),
        metro_share=aim.metro_share,
        stream=(YEAR, index),
        bus_weights=bus_weights(base.network, base.gates),
        venue_visits=aim.venue_visits,
    )
    # Each day has its own range of card counters (a card taps well under
    # COUNTER_RANGE times a day), so counters grow all year without the days sharing
    # state, and the ledger never sees a counter twice.
    if len(workload) and int(workload.counter.max()) + 1 >= COUNTER_RANGE:
        raise SimError(f"day {index}: a card taps {COUNTER_RANGE} times; counters would overlap")
    workload = dataclasses.replace(
        workload, counter=workload.counter + np.uint32(COUNTER_RANGE * (index + 1))
    )
    gen1, gen2 = _revoked(base, index, revoked_on)
    return dataclasses.replace(
        base,
        clock=clock,
        population=population,
        workload=workload,
        revoked_gen1=gen1,
        revoked_gen2=gen2,
    )


def day_tables(out: Path, index: int) -> tuple[Path, Path, Path]:
    """Day ``index``'s two signed tables and the CSV of every card revoked by its end."""
    where = out / "revocation" / "days" / year_day(index).isoformat()
    return where / "gen1.frt", where / "gen2.frt", where / "revoked-gen2.csv"


def write_day_tables(world: World, out: Path, index: int) -> tuple[Path, Path, Path]:
    """Sign the day's tables: generations 2·index+1 (published the evening before) and
    2·index+2 (13:00), so generations grow all year as a gate's marks require."""
    gen1_path, gen2_path, csv = day_tables(out, index)
    gen1_path.parent.mkdir(parents=True, exist_ok=True)
    clock = world.clock
    for gen, entries, at_ms, path in (
        (2 * index + 1, world.revoked_gen1, clock.revocation_gen1_ms, gen1_path),
        (2 * index + 2, world.revoked_gen2, clock.revocation_gen2_ms, gen2_path),
    ):
        sign_table(world, entries, gen, at_ms, path)
    csv.write_text(revocations_csv(world.revoked_gen2))
    return gen1_path, gen2_path, csv
