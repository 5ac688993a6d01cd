"""The simulator's pieces: fraud-mix parsing, network and fares, population, workload truth."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.card.crypto import set_ed25519_backend
from farecore.decide.decision import Reason
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import run_tap
from readers.virtual import VirtualReader
from sim.issuer import QINGDAO, Issuer
from sim.network import METRO_BANDS, Network, band_fare
from sim.population import CARD_KINDS, CardFactory, FraudMix, Population
from sim.workload import ACCEPT_CODE, FAULT_PASSBACK, FAULT_PULLED, DayClock, Workload, reimburse
from sim.world import SIM_DAY

NET = Network()


@given(st.text(max_size=80))
def test_fraud_mix_parse_never_crashes(text: str) -> None:
    try:
        mix = FraudMix.parse(text)
    except ValueError:
        return
    assert all(0.0 <= v <= 0.2 for v in mix.shares.values())


@given(st.dictionaries(st.sampled_from(sorted(FraudMix().shares)), st.floats(0, 0.2), max_size=8))
def test_fraud_mix_round_trips(shares: dict[str, float]) -> None:
    text = ",".join(f"{k}={v!r}" for k, v in shares.items())
    mix = FraudMix.parse(text)
    for k, v in shares.items():
        assert mix.get(k) == v


def test_fraud_mix_none_turns_everything_off() -> None:
    assert all(v == 0 for v in FraudMix.parse("none").shares.values())


@given(st.integers(0, 200_000), st.integers(0, 200_000))
def test_band_fare_is_monotone(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert band_fare(lo) <= band_fare(hi)
    assert min(f for _, f in METRO_BANDS) <= band_fare(hi) <= max(f for _, f in METRO_BANDS)


@given(st.sampled_from(NET.stations), st.sampled_from(NET.stations))
def test_metro_fare_is_symmetric_and_banded(a: str, b: str) -> None:
    assert NET.metro_fare(a, b) == NET.metro_fare(b, a)
    assert NET.metro_fare(a, a) == METRO_BANDS[0][1]
    assert NET.distance_km(a, b) == NET.distance_km(b, a)


def test_chainage_is_exact_along_one_branch() -> None:
    # Along M2 from the origin outwards the fare distance equals the track distance.
    assert NET.chainage_m("May Fourth Square") == 0
    d = abs(NET.chainage_m("Liaoyang East Rd") - NET.chainage_m("Fushansuo"))
    assert d == round(NET.distance_km("Liaoyang East Rd", "Fushansuo") * 1000)
    assert NET.chainage_m("Dongjiakou") < 0 < NET.chainage_m("Aoshan Bay")


@settings(max_examples=40, deadline=None)
@given(st.integers(5, 120))
def test_gate_plan_layout(n: int) -> None:
    plans = NET.plan_gates(n)
    assert len(plans) == n
    assert len({p.terminal_id for p in plans}) == n
    assert [p.index for p in plans] == list(range(n))
    roles = defaultdict(set)
    for p in plans:
        roles[p.place].add(p.role)
    metro = [r for r in roles.values() if r != {"bus"}]
    assert len(metro) >= 2 and all(r == {"metro_entry", "metro_exit"} for r in metro)
    assert any(r == {"bus"} for r in roles.values())


def test_gate_plan_refuses_too_few() -> None:
    with pytest.raises(ValueError):
        NET.plan_gates(4)


def test_population_is_deterministic_and_has_every_kind() -> None:
    mix = FraudMix()
    a, b = Population.generate(3, 5000, mix), Population.generate(3, 5000, mix)
    assert np.array_equal(a.kinds, b.kinds) and np.array_equal(a.categories, b.categories)
    assert len(np.unique(a.card_ids)) == 5000 and int(a.card_ids.min()) > 0
    for kind in CARD_KINDS:
        assert len(a.indices_of(kind)) >= 2, kind
    c = Population.generate(4, 5000, mix)
    assert not np.array_equal(a.kinds, c.kinds)


def _day(seed: int, taps: int = 3000) -> tuple[Workload, Population, list]:  # type: ignore[type-arg]
    mix = FraudMix.parse("passback=0.05,pulled=0.05")
    pop = Population.generate(seed, 800, mix)
    gates = NET.plan_gates(10)
    wl = Workload.generate(seed, taps, pop, gates, NET, DayClock(SIM_DAY), mix)
    return wl, pop, gates


def test_workload_ground_truth_invariants() -> None:
    wl, pop, _gates = _day(5)
    assert len(wl) == 3000
    assert np.all(np.diff(wl.time_ms) >= 0)
    # Per card, the counter before each tap strictly grows on taps that authenticate.
    last: dict[int, int] = {}
    for i in range(len(wl)):
        c = int(wl.card[i])
        if wl.fault[i] == FAULT_PULLED:
            assert wl.expected[i] == Reason.UNREADABLE
            continue
        assert int(wl.counter[i]) == last.get(c, -1) + 1
        last[c] = int(wl.counter[i])
    kinds = np.array(CARD_KINDS)[pop.kinds[wl.card]]
    normal = (kinds == "normal") & (wl.fault == 0)
    assert np.count_nonzero(wl.expected[normal] == ACCEPT_CODE) > 0.95 * normal.sum()
    assert np.all(wl.expected[kinds == "forged"] == Reason.BAD_CREDENTIAL_SIGNATURE) or np.all(
        wl.fault[kinds == "forged"][
            wl.expected[kinds == "forged"] != Reason.BAD_CREDENTIAL_SIGNATURE
        ]
        == FAULT_PULLED
    )
    passback = (wl.fault == FAULT_PASSBACK) & (kinds == "normal")
    assert np.all(wl.expected[passback] == Reason.PASSBACK)
    hours = (wl.time_ms - DayClock(SIM_DAY).start_ms) // 3_600_000
    counts = np.bincount(hours, minlength=24)
    assert counts[8] > counts[11] and counts[18] > counts[14]  # two peaks


def test_workload_is_reproducible() -> None:
    a, _, _ = _day(9)
    b, _, _ = _day(9)
    c, _, _ = _day(10)
    for name in ("time_ms", "card", "gate", "counter", "fault", "expected"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.time_ms, c.time_ms)


def test_reimburse_pairs_exits_with_the_latest_entry() -> None:
    gates = NET.plan_gates(8)
    entry = [g for g in gates if g.role == "metro_entry"]
    exit_ = [g for g in gates if g.role == "metro_exit"]
    bus = next(g for g in gates if g.role == "bus")
    a_in, b_out = entry[0], next(g for g in exit_ if g.place != entry[0].place)
    # card 0: entry, exit, bus; card 1: entry only; card 2: exit only
    taps = [(0, a_in), (0, b_out), (0, bus), (1, a_in), (2, b_out)]
    time_ms = np.arange(len(taps), dtype=np.int64) * 60_000
    card = np.array([c for c, _ in taps], dtype=np.int32)
    gate = np.array([g.index for _, g in taps], dtype=np.int32)
    owed = reimburse(time_ms, card, gate, np.ones(len(taps), bool), gates, NET)
    trip = NET.metro_fare(a_in.place, b_out.place)
    fares = [f for _, f in METRO_BANDS]
    assert sum(owed["qingdao-metro"].values()) == trip + min(fares) + min(fares)  # unpaired: min
    assert owed[bus.operator][bus.line] == NET.bus_line(bus.line).fare_fen
    none = reimburse(time_ms, card, gate, np.zeros(len(taps), bool), gates, NET)
    assert none == {}


def test_a_card_kept_between_taps_taps_as_a_new_one_would() -> None:
    # The simulator keeps a rider's card from one tap to the next (CardFactory.retap):
    # a pulled tap must not leave the card pulled, and the counter is the workload's.
    pop = Population.generate(3, 200, FraudMix())
    issuer = Issuer.from_seed("sim-parts")
    factory = CardFactory(3, pop, issuer, issuer.key, 1_772_400_000)
    index = int(pop.indices_of("normal")[0])
    validator = Validator(TerminalPolicy(1, frozenset({QINGDAO})), issuer.keyring())
    reader = VirtualReader()
    kept = factory.card(index, 10, pulled=True)
    for counter, pulled in ((10, True), (11, False), (12, True), (13, False)):
        factory.retap(kept, counter, pulled)
        fresh = factory.card(index, counter, pulled)
        got = []
        for card in (kept, fresh):
            decision = run_tap(reader.tap(card), validator, 1_772_450_000_000, bytes(16))
            reader.remove()
            got.append((decision.reason, decision.counter, decision.card_signature))
        assert got[0] == got[1]
        assert (got[0][0] is Reason.UNREADABLE) == pulled
        assert pulled or got[0][1] == counter + 1


@pytest.mark.parametrize("backend", ["nacl", "cryptography"])
def test_a_worker_s_card_key_is_the_one_the_parent_made(backend: str) -> None:
    # A forked worker remakes a card's key from the public half the parent kept: the
    # same public key and the same signatures as the key the parent derived in full.
    pop = Population.generate(5, 300, FraudMix())
    issuer = Issuer.from_seed("sim-parts")
    factory = CardFactory(5, pop, issuer, issuer.key, 1_772_400_000)
    made = {i: factory.material(i)[1] for i in range(len(pop.card_ids))}
    factory.forget_keys()
    set_ed25519_backend(backend)
    try:
        for i, key in made.items():
            again = factory.material(i)[1]
            assert again is not key and again.public_bytes == key.public_bytes
            message = b"challenge %d" % i
            assert again.sign(message) == key.sign(message)
            key.public_key().verify(again.sign(message), message)
    finally:
        set_ed25519_backend("auto")


@pytest.mark.parametrize("backend", ["nacl", "cryptography"])
def test_a_factory_that_forgot_its_keys_keeps_only_the_costly_ones(backend: str) -> None:
    # A year's worker meets nearly every card: it must not hold a key per card for the
    # rest of the year (about 240 MB), only make the same one again when it needs it,
    # where that is cheap (libsodium, from seed and kept public key). A key derived in
    # full (OpenSSL, or a clone's made-up key) is kept.
    pop = Population.generate(6, 300, FraudMix())
    issuer = Issuer.from_seed("sim-parts")
    factory = CardFactory(6, pop, issuer, issuer.key, 1_772_400_000)
    n = len(pop.card_ids)
    # What a factory that never forgets makes: every card's credential and key.
    reference = CardFactory(6, pop, issuer, issuer.key, 1_772_400_000)
    made = {i: reference.material(i) for i in range(n)}
    # Every card but the last few, so that cards are made after the forgetting too.
    for i in range(n - 3):
        factory.material(i)
    assert len(factory._keys) == n - 3  # before: every key, as a one-day run wants
    clones = set(pop.indices_of("clone").tolist())
    assert clones and len(clones) < n

    def same(cards: range) -> None:
        for i in cards:
            credential, key = made[i]
            assert factory.material(i)[0] == credential
            assert factory.material(i)[1].public_bytes == key.public_bytes
            assert factory.card(i, 0).key.public_bytes == key.public_bytes

    set_ed25519_backend(backend)
    try:
        factory.forget_keys()
        # The credentials, too, are no longer one object per card (each would be copied
        # into a worker that reads it), but one shared buffer.
        assert not factory._credentials
        same(range(n))  # the last three made now, after the forgetting
        factory.forget_keys()  # packs the buffer's credentials with the three new ones
        assert not factory._credentials
        same(range(n))
        same(range(n))  # the keys made again, as each day's worker does
        assert not factory._credentials  # every one read from the buffer, none made again
    finally:
        set_ed25519_backend("auto")
    assert set(factory._keys) == (clones if backend == "nacl" else set(range(n)))
