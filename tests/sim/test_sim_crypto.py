"""``farecore sim --crypto``: a small SM2 day and a small mixed day, each ending OK.

SM2 everywhere (issuer, cards, terminals, revocation signer), then the mix: issuer key 1
Ed25519 and issuer key 2 SM2, each signing Ed25519 and SM2 cards, terminals of both
kinds, an SM2 revocation signer. Every fraud kind still gets its reason, and the money
equals the ground truth.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("gmssl_pyx", reason="the SM2 backend: pip install 'farecore[sm]'")

from sim_support import MIX, SimRun, run_sim

from farecore.card.credential import parse_unverified
from farecore.card.crypto import Algorithm
from farecore.card.keys import Keyring
from farecore.decide.issued import IssuedList
from farecore.gate.config import load_gate_config
from sim.population import CARD_KINDS, FraudMix
from sim.world import SimOptions, build_world

DAY = ["--seed", "11", "--cards", "600", "--taps", "1500", "--gates", "6", "--workers", "2"]
ARGS = [*DAY, "--fraud-mix", MIX, "--no-plots"]
SM2, ED = "SM2-SM3", "Ed25519"


@pytest.fixture(scope="module", params=["sm2", "mix"])
def crypto_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SimRun:
    out = tmp_path_factory.mktemp("sim-crypto") / request.param
    return run_sim(out, *ARGS, "--crypto", request.param)


def test_the_day_ends_ok(crypto_run: SimRun) -> None:
    assert crypto_run.returncode == 0, crypto_run.stderr + crypto_run.stdout
    s = crypto_run.summary
    assert s["crypto"] == crypto_run.out.name
    assert s["ok"] and s["wrong_decisions"] == 0 and s["settlement_matches"]
    assert "OK: 0 wrong decisions" in crypto_run.stdout
    for kind, row in s["scenarios"].items():
        assert row["wrong"] == 0, kind
        if kind != "normal":
            assert row["denied"] > 0, kind
    # Clones and forgeries fail SM2 verification inside the library; its C trace is
    # kept off stderr (docs/crypto-sm2.md).
    assert not re.search(r"\.c:\d+:\w+\(\):", crypto_run.stderr)


def test_the_keys_are_of_the_chosen_schemes(crypto_run: SimRun) -> None:
    out = crypto_run.out
    ring = Keyring.load(out / "keyring.json")
    issuers = {e.key_id: e.algorithm.label for e in ring}
    with (out / "terminals.csv").open() as f:
        terminals = Counter(row["algorithm"] for row in csv.DictReader(f))
    signer = (out / "keys" / "revocation-1.pub").read_text()
    if crypto_run.out.name == "sm2":
        assert issuers == {1: SM2}
        assert set(terminals) == {SM2}
    else:
        assert issuers == {1: ED, 2: SM2}
        assert terminals[ED] == terminals[SM2] == 3
    assert SM2 in signer
    # One issued list per issuer key, every gate loading them all.
    cfg = load_gate_config(next((out / "gates").glob("gate-*.toml")))
    assert [p.name for p in cfg.issued_lists] == [f"issued-{k}.fil" for k in sorted(issuers)]
    for path in cfg.issued_lists:
        assert IssuedList.open(path, ring).count > 0


def test_the_mix_has_every_pairing_of_issuer_and_card_scheme(tmp_path: Path) -> None:
    opts = SimOptions(
        out=tmp_path, seed=11, cards=600, taps=1500, gates=6, mix=FraudMix.parse(MIX), crypto="mix"
    )
    world = build_world(opts)
    pairs: Counter[tuple[Algorithm, Algorithm]] = Counter()
    for index in range(len(world.population)):
        if CARD_KINDS[int(world.population.kinds[index])] != "normal":
            continue
        credential, key = world.cards.material(index)
        fields = parse_unverified(credential).fields
        assert key.algorithm == fields.card_key_algorithm
        pairs[fields.issuer_algorithm, fields.card_key_algorithm] += 1
    both = (Algorithm.ED25519, Algorithm.SM2_SM3)
    assert set(pairs) == {(i, c) for i in both for c in both}
    assert min(pairs.values()) > 100
