"""The simulated card holders: who they are, and which of their cards are bad on purpose.

A population is a few numpy arrays (card id, holder category, kind), derived from the
seed alone, so 300,000 cards cost milliseconds. Keys and credentials are *not* made
here: :class:`CardFactory` derives a card's key and signs its credential the first time
it is asked for that card, and caches it. The simulator asks for every card before its
workers fork (``sim.deploy`` lists them for the issuer), so the workers find them made.

This module must never decide a tap: the expected decision of a tap is the workload's
ground truth, and the real decision is the engine's.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from farecore.card.crypto import Algorithm, PrivateKey, ed25519_backend
from farecore.card.keys import SigningKey
from sim.card import CardFaults, VirtualCard
from sim.issuer import CredentialOptions, Issuer, scalar_in_range

__all__ = [
    "CARD_KINDS",
    "CATEGORY_SHARES",
    "JINAN",
    "TAP_FAULTS",
    "CardFactory",
    "FraudMix",
    "Population",
]

JINAN = 370100  # another region's cards: denied WRONG_REGION in Qingdao

# Holder categories (CARD-SPEC §6) in rough proportion to a city's register.
CATEGORY_SHARES: tuple[tuple[int, float], ...] = (
    (1, 0.62),  # veteran
    (2, 0.13),  # family of serving military
    (3, 0.05),  # family of fallen or deceased service members
    (4, 0.08),  # disabled veteran
    (5, 0.12),  # serving military
)

# Card kinds; index 0 is a good card. The workload turns each into expected decisions.
CARD_KINDS = (
    "normal",
    "expired",
    "forged",
    "clone",
    "other_region",
    "revoked_before",
    "revoked_during",
)
# Faults of single taps rather than of cards.
TAP_FAULTS = ("passback", "pulled")

_DEFAULT_MIX = {
    "expired": 0.004,
    "forged": 0.002,
    "clone": 0.002,
    "other_region": 0.004,
    "revoked_before": 0.005,
    "revoked_during": 0.003,
    "passback": 0.015,
    "pulled": 0.01,
}


@dataclass(frozen=True, slots=True)
class FraudMix:
    """Shares of bad cards (per card) and of faulty taps (per tap), each in [0, 0.2]."""

    shares: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_MIX))

    def __post_init__(self) -> None:
        known = set(CARD_KINDS[1:]) | set(TAP_FAULTS)
        for name, value in self.shares.items():
            if name not in known:
                raise ValueError(f"unknown fraud kind {name!r}; known: {', '.join(sorted(known))}")
            if not 0.0 <= value <= 0.2:
                raise ValueError(f"fraud share {name}={value} must be between 0 and 0.2")

    @classmethod
    def parse(cls, text: str) -> FraudMix:
        """``"forged=0.01,pulled=0"``: override some defaults; ``"none"`` turns all off."""
        shares = dict(_DEFAULT_MIX)
        text = text.strip()
        if text == "none":
            return cls({k: 0.0 for k in shares})
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"--fraud-mix: expected NAME=SHARE, got {part!r}")
            try:
                shares[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"--fraud-mix: {value!r} is not a number") from None
        return cls(shares)

    def get(self, name: str) -> float:
        return self.shares.get(name, 0.0)


@dataclass(frozen=True, slots=True)
class Population:
    """Card ids, categories and kinds, as parallel arrays indexed by card number."""

    card_ids: npt.NDArray[np.uint64]
    categories: npt.NDArray[np.uint8]
    kinds: npt.NDArray[np.uint8]

    def __post_init__(self) -> None:
        n = len(self.card_ids)
        if n == 0 or len(self.categories) != n or len(self.kinds) != n:
            raise ValueError("a population needs at least one card and parallel arrays")

    def __len__(self) -> int:
        return len(self.card_ids)

    @classmethod
    def generate(cls, seed: int, cards: int, mix: FraudMix) -> Population:
        """Deterministic from ``seed``; every card kind with a share > 0 gets ≥ 2 cards."""
        if cards < 100:
            raise ValueError("--cards must be at least 100")
        rng = np.random.default_rng([seed, 1])
        codes = np.array([c for c, _ in CATEGORY_SHARES], dtype=np.uint8)
        weights = np.array([w for _, w in CATEGORY_SHARES])
        categories = rng.choice(codes, size=cards, p=weights / weights.sum()).astype(np.uint8)
        kinds = np.zeros(cards, dtype=np.uint8)
        order = rng.permutation(cards)
        start = 0
        for code, name in enumerate(CARD_KINDS):
            share = mix.get(name) if code else 0.0
            if share <= 0:
                continue
            count = max(2, round(share * cards))
            kinds[order[start : start + count]] = code
            start += count
        # Ids look like a register's: the region prefix, then a serial. Never 0.
        card_ids = np.uint64(3702_0000_0000_0000) + np.arange(1, cards + 1, dtype=np.uint64)
        return cls(card_ids, categories, kinds)

    def indices_of(self, kind: str) -> npt.NDArray[np.int64]:
        return np.flatnonzero(self.kinds == CARD_KINDS.index(kind))


class CardFactory:
    """Makes the virtual card for one tap, deriving keys and credentials lazily.

    The key of card ``i`` and its credential depend only on the seed and ``i``, so every
    worker process that meets the card makes the same bytes without talking to another.
    """

    def __init__(
        self,
        seed: int,
        population: Population,
        issuers: Issuer | list[Issuer],
        forgers: SigningKey | list[SigningKey],
        day_start_s: int,
        card_algorithms: tuple[Algorithm, ...] = (Algorithm.ED25519,),
    ) -> None:
        self._seed = seed.to_bytes(8, "big", signed=False)
        self._pop = population
        self._issuers = issuers if isinstance(issuers, list) else [issuers]
        self._forgers = forgers if isinstance(forgers, list) else [forgers]
        if len(self._issuers) != len(self._forgers) or not card_algorithms:
            raise ValueError("one forger per issuer, and at least one card algorithm")
        self._day_start_s = day_start_s
        self._algs = card_algorithms
        self._credentials: dict[int, bytes] = {}
        # The credentials made before ``forget_keys``, packed into one buffer that forked
        # workers share (see ``_pack_credentials``): card i's is
        # ``_packed[_packed_at[i]:_packed_at[i + 1]]``, empty where none was made.
        self._packed = b""
        self._packed_at = np.zeros(len(population.card_ids) + 1, dtype=np.int64)
        self._keys: dict[int, PrivateKey] = {}
        self._keep_keys = True  # every key; once forget_keys, the costly ones only
        # The public half of each genuine Ed25519 key made here, in one array that forked
        # workers share: a worker that meets the card makes its key from seed and public
        # without deriving the public again (see ``_genuine_key``). A row of zeros: none
        # kept (no Ed25519 key derives to y = 0, a point of small order).
        self._publics = np.zeros((len(population.card_ids), 32), dtype=np.uint8)

    def issuer_of(self, index: int) -> int:
        """Which issuer (0-based) signs card ``index``: with several card algorithms and
        issuers, the cards take every pairing in turn (index mod algorithms picks the
        card's key, the quotient the issuer)."""
        return (index // len(self._algs)) % len(self._issuers)

    def _secret(self, label: bytes) -> bytes:
        return hashlib.sha256(b"farecore-sim/card/" + self._seed + label).digest()

    def _key(self, label: bytes, algorithm: Algorithm) -> PrivateKey:
        secret = self._secret(label)
        if algorithm == Algorithm.ED25519:
            return PrivateKey(algorithm, secret)  # the bytes of every earlier release
        for counter in range(256):
            if scalar_in_range(algorithm, secret):
                return PrivateKey(algorithm, secret)
            secret = hashlib.sha256(secret + bytes([counter])).digest()
        raise AssertionError("no scalar in range in 256 tries")  # probability about 2^-8000

    def material(self, index: int) -> tuple[bytes, PrivateKey]:
        """(credential, the key the tapping card holds) for card ``index``."""
        credential = self._credentials.get(index) or self._packed_credential(index)
        key = self._keys.get(index)
        if credential is not None and key is not None:
            return credential, key
        card_id = int(self._pop.card_ids[index])
        kind = CARD_KINDS[int(self._pop.kinds[index])]
        alg = self._algs[index % len(self._algs)]
        if credential is None:
            genuine = self._key(card_id.to_bytes(8, "big"), alg)
            credential = self._credentials[index] = self._credential(index, card_id, genuine)
            if alg == Algorithm.ED25519:
                self._publics[index] = np.frombuffer(genuine.public_bytes, dtype=np.uint8)
            key = genuine
        quick = False  # made from seed and kept public key: cheaper to make than to keep
        if kind == "clone":
            # The genuine credential, copied onto a chip with a key the cloner made up.
            key = self._key(b"clone/" + card_id.to_bytes(8, "big"), alg)
        elif key is None:
            public = self._publics[index].tobytes()
            quick = public != _NO_PUBLIC and ed25519_backend() == "nacl"
            key = self._genuine_key(card_id, alg, public if quick else None)
        if self._keep_keys or not quick:
            self._keys[index] = key
        return credential, key

    def _genuine_key(self, card_id: int, alg: Algorithm, public: bytes | None) -> PrivateKey:
        """Card ``card_id``'s own key: from ``public``, the public half kept when it was
        first made, with libsodium (a signing key given a wrong public half is never
        built here: the array holds only what this factory derived from the same
        seed); else derived in full."""
        label = card_id.to_bytes(8, "big")
        if public is not None:
            return _nacl_ed25519(self._secret(label), public)
        return self._key(label, alg)

    def _credential(self, index: int, card_id: int, key: PrivateKey) -> bytes:
        kind = CARD_KINDS[int(self._pop.kinds[index])]
        issuer = self.issuer_of(index)
        options: CredentialOptions = {"category": int(self._pop.categories[index])}
        if kind == "expired":
            valid_until = self._day_start_s - 86_400 * (1 + index % 200)
            options["valid_until"] = valid_until
            options["valid_from"] = valid_until - 86_400 * 365 * 3
        elif kind == "forged":
            options["signer"] = self._forgers[issuer]  # same key id, wrong key: the signature fails
        elif kind == "other_region":
            options["region"] = JINAN
        return self._issuers[issuer].credential(card_id, key, **options)

    def forget_keys(self) -> None:
        """Drop the cards' key objects, keep their credentials. A process that forks
        workers which tap keeps the credentials (the issued list's, compact) for them to
        share, and leaves each worker to make the keys of the cards it meets: a key held
        here would be copied into every worker that touched it anyway (its reference
        count is written on each use).

        From now on, a key that libsodium makes from its seed and the kept public key
        (2 µs) is not kept: the worker keeps the card for the rest of its day (a
        driver's), and a year's worker meets nearly every card, so keeping every key
        grew it by about 0.8 kB a card met, about 240 MB by the year's end. A key
        derived in full (a scalar multiplication: OpenSSL, a cloned card's) is kept.

        The credentials move into one buffer (``_pack_credentials``)."""
        self._keys.clear()
        self._keep_keys = False
        self._pack_credentials()

    def _pack_credentials(self) -> None:
        """Move every credential made so far into one buffer with an offset array. A
        worker that reads a credential from a dict writes the reference counts of its
        ``bytes`` and of its key's ``int``, which copies their pages out of the parent:
        about 0.2 kB a card met, some 60 MB a year's worker. Slicing the shared buffer
        writes nothing of the parent's (the slice is the worker's own, freed after use)."""
        if not self._credentials:
            return
        lengths = np.zeros(len(self._packed_at) - 1, dtype=np.int64)
        pieces = []
        for index in range(len(lengths)):
            credential = self._credentials.get(index) or self._packed_credential(index) or b""
            lengths[index] = len(credential)
            pieces.append(credential)
        self._packed = b"".join(pieces)
        self._packed_at[1:] = np.cumsum(lengths)
        self._credentials = {}

    def _packed_credential(self, index: int) -> bytes | None:
        """Card ``index``'s credential from the packed buffer; None if none is there."""
        if not self._packed:
            return None
        start, end = self._packed_at[index : index + 2].tolist()
        return self._packed[start:end] if end > start else None

    def card(self, index: int, counter: int, pulled: bool = False) -> VirtualCard:
        credential, key = self.material(index)
        faults = _PULLED if pulled else _NO_FAULTS
        card_id = int(self._pop.card_ids[index])
        return VirtualCard(credential, key, counter=counter, faults=faults, card_id=card_id)

    @staticmethod
    def retap(card: VirtualCard, counter: int, pulled: bool = False) -> None:
        """Ready a card ``card`` made for its next tap: the counter the workload expects
        it to hold, and whether it is pulled this time. (A rider taps the same card
        all day; a driver that keeps the card between taps saves making it again.)"""
        card.counter = counter
        card.faults = _PULLED if pulled else _NO_FAULTS


def _nacl_ed25519(seed: bytes, public: bytes) -> PrivateKey:
    """An Ed25519 signing key from its seed and the public key derived from that seed
    before: libsodium signs with the two joined, so nothing is derived again. The same
    signatures as ``PrivateKey(Algorithm.ED25519, seed)`` (Ed25519 is deterministic)."""
    crypto_sign = _nacl_sign()
    expanded = seed + public
    key = PrivateKey.__new__(PrivateKey)
    key.algorithm, key.secret, key.public_bytes = Algorithm.ED25519, seed, public
    key.sign = lambda message: crypto_sign(message, expanded)[:64]
    return key


@functools.cache
def _nacl_sign() -> Callable[[bytes, bytes], bytes]:
    """PyNaCl's ``crypto_sign``, imported once (an import statement costs about a
    microsecond on every call, and a year's worker makes a key for most taps)."""
    from nacl.bindings import crypto_sign

    return crypto_sign


_NO_PUBLIC = bytes(32)  # a row of ``CardFactory._publics`` with no key kept

# Shared by the factory's cards, which never change their faults.
_NO_FAULTS = CardFaults()
_PULLED = CardFaults(remove_at="read")
