"""The simulated world: the options of a run and everything derived from them.

``World`` holds the city, its gates, the card population, the day's taps with their
ground truth, the issuer and the signers, and every card's key and credential. It is
built once in the parent from the options and the seed alone (so one seed, one world)
and handed to the worker processes as an argument; they inherit it by fork.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from farecore.card.crypto import Algorithm
from farecore.card.keys import Keyring, SigningKey
from farecore.decide.checks import RevocationEntry
from farecore.errors import FarecoreError
from sim.issuer import Issuer, derive_key
from sim.network import GatePlan, Network
from sim.population import CardFactory, FraudMix, Population
from sim.transport import TRANSPORTS
from sim.venues import VENUE_SITES, city_gates
from sim.workload import DayClock, Workload

__all__ = ["CRYPTO", "SIM_DAY", "SimError", "SimOptions", "World", "build_world"]

SIM_DAY = dt.date(2026, 3, 2)

#: ``--crypto``: the signature schemes of a day's issuers, cards, terminals and signer.
#: ``mix`` has two issuer keys (1 Ed25519, 2 SM2), each signing cards with Ed25519 and
#: with SM2 keys in equal shares, terminals alternating between the two, and an SM2
#: revocation signer.
CRYPTO = ("ed25519", "sm2", "mix")


class SimError(FarecoreError):
    """The simulation could not be set up or run (not: it found wrong decisions)."""


@dataclass(frozen=True, slots=True)
class SimOptions:
    out: Path
    seed: int = 1
    cards: int = 20_000
    taps: int = 40_000
    gates: int = 16
    reader: str = "virtual"
    mix: FraudMix = field(default_factory=FraudMix)
    workers: int | None = None  # None: one per CPU
    lanes: int = 1  # station controllers (threads) per worker, each with its own journal
    max_group: int = 32  # taps made durable by one commit of a station journal
    transport_taps: int = 20  # with --reader pcsc/pn532: this many taps go through it
    plots: bool = True
    ceiling_ops: int = 0  # >0: time the crypto ceiling in the workers around the tap phase
    crypto: str = "ed25519"  # one of CRYPTO
    # The workers write their gates' metrics here (farecore.fleet.metrics, multi-process
    # mode); the parent serves them. None: no metrics.
    metrics_dir: Path | None = None
    venue_sites: int = 0  # sites (parks, museums) with entrance gates (sim.venues)
    venue_visits: int = 0  # visits to them in the day

    def __post_init__(self) -> None:
        if self.cards < 100 or self.taps < 10 or self.gates < 5:
            raise ValueError("need --cards >= 100, --taps >= 10 and --gates >= 5")
        if not 0 <= self.seed < 1 << 64:
            raise ValueError(f"--seed must be 0..{(1 << 64) - 1}, not {self.seed}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be at least 1, not {self.workers}")
        if not 1 <= self.lanes <= 64:
            raise ValueError(f"--lanes must be between 1 and 64, not {self.lanes}")
        if not 1 <= self.max_group <= 1000:
            raise ValueError("--max-group must be between 1 and 1000")
        if self.reader not in ("virtual", *TRANSPORTS):
            raise ValueError(f"--reader {self.reader}: one of virtual, {', '.join(TRANSPORTS)}")
        if self.transport_taps < 1:
            raise ValueError("--transport-taps must be at least 1")
        if self.ceiling_ops < 0:
            raise ValueError("ceiling_ops must not be negative")
        if self.crypto not in CRYPTO:
            raise ValueError(f"--crypto {self.crypto}: one of {', '.join(CRYPTO)}")
        if not 0 <= self.venue_sites <= len(VENUE_SITES):
            raise ValueError(f"--venue-sites must be 0..{len(VENUE_SITES)}, not {self.venue_sites}")
        if self.venue_visits < 0 or (self.venue_visits and not self.venue_sites):
            raise ValueError("--venue-visits needs --venue-sites (and must not be negative)")

    def card_algorithms(self) -> tuple[Algorithm, ...]:
        """The card key algorithms of the day, in the order cards take them in turn."""
        return _CARD_ALGS[self.crypto]

    def terminal_algorithm(self, terminal_id: int) -> Algorithm:
        if self.crypto == "mix":
            return Algorithm.SM2_SM3 if terminal_id % 2 else Algorithm.ED25519
        return _CARD_ALGS[self.crypto][0]


_ED, _SM2 = Algorithm.ED25519, Algorithm.SM2_SM3
_CARD_ALGS = {"ed25519": (_ED,), "sm2": (_SM2,), "mix": (_ED, _SM2)}


@dataclass(frozen=True, slots=True)
class World:
    """Everything a run is made of, derived from its options; workers inherit it by fork."""

    opts: SimOptions
    network: Network
    gates: list[GatePlan]
    clock: DayClock
    population: Population
    workload: Workload
    issuers: list[Issuer]  # the first is key id 1; ``mix`` adds an SM2 issuer, key id 2
    forgers: list[SigningKey]  # per issuer: its key id, another key of its algorithm
    revocation_signer: SigningKey
    revoked_gen1: list[RevocationEntry]
    revoked_gen2: list[RevocationEntry]
    cards: CardFactory  # every card's key and credential, made before the workers fork

    @property
    def issuer(self) -> Issuer:
        return self.issuers[0]

    def keyring(self) -> Keyring:
        return Keyring([i.keyring_entry() for i in self.issuers])

    def terminal_key(self, terminal_id: int) -> SigningKey:
        alg = self.opts.terminal_algorithm(terminal_id)
        return SigningKey(
            "terminal", terminal_id, derive_key(self._seed(), f"terminal-{terminal_id}", alg)
        )

    def _seed(self) -> str:
        return f"farecore-sim/{self.opts.seed}"


def build_world(opts: SimOptions) -> World:
    """The world of ``opts``: the same seed always builds the same world."""
    seed = f"farecore-sim/{opts.seed}"
    network = Network()
    gates = city_gates(network, opts.gates, opts.venue_sites)
    clock = DayClock(SIM_DAY)
    population = Population.generate(opts.seed, opts.cards, opts.mix)
    workload = Workload.generate(
        opts.seed,
        opts.taps,
        population,
        gates,
        network,
        clock,
        opts.mix,
        venue_visits=opts.venue_visits,
    )
    # The default day's labels and derivations are those of every earlier release, so a
    # seed gives the same bytes as before; the others only add.
    algs = {"ed25519": [_ED], "sm2": [_SM2], "mix": [_ED, _SM2]}[opts.crypto]
    issuers = [Issuer.from_seed(seed, key_id=k + 1, algorithm=a) for k, a in enumerate(algs)]
    forgers = [
        SigningKey("issuer", k + 1, derive_key(seed, "forger" if k == 0 else f"forger-{k + 1}", a))
        for k, a in enumerate(algs)
    ]
    gen1, gen2 = [], []
    for i in population.indices_of("revoked_before"):
        at = clock.revocation_gen1_ms // 1000 - 86_400 * (1 + int(i) % 90)
        gen1.append(RevocationEntry(int(population.card_ids[i]), at, 1 + int(i) % 5))
    for i in population.indices_of("revoked_during"):
        at = clock.revocation_gen2_ms // 1000 - 60 * (5 + int(i) % 120)
        gen2.append(RevocationEntry(int(population.card_ids[i]), at, 2))
    signer_alg = _ED if opts.crypto == "ed25519" else _SM2
    signer = SigningKey("revocation", 1, derive_key(seed, "revocation-1", signer_alg))
    cards = CardFactory(
        opts.seed, population, issuers, forgers, clock.start_ms // 1000, opts.card_algorithms()
    )
    return World(
        opts,
        network,
        gates,
        clock,
        population,
        workload,
        issuers,
        forgers,
        signer,
        gen1,
        gen1 + gen2,
        cards,
    )
