"""The settlement judges rides decided under a delta's generation by base plus delta.

A gate that held base generation 5 with delta generation 7 over it records generation 7
on its rides. Given the base and the delta, the settlement judges those rides by what
the gate held: a card the delta added was refused (not paid), a card the delta removed
was not (paid). Given the base alone, the same rides are judged by the base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from settle_world import DAY, World, day_ms, settle_cli

from farecore.card.keys import SigningKey, save_signing_key
from farecore.decide.checks import InMemoryRevocation
from farecore.decide.revocation import RevocationTable, build_delta, build_table
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.journal.terminal import Journal
from farecore.settlement import find_batches, load_inputs, run_settlement
from sim.issuer import derive_key

SIGNER = SigningKey("revocation", 9, derive_key("settle-tests", "revocation"))


def _day_under_generation_7(world: World) -> None:
    """Cards 8 and 9 ride at a gate that says it decided under generation 7 (it accepted
    both), and card 1 at one that names generation 7 too."""
    world.journals[101] = Journal.open(world.root / "journal-101.sqlite", 101)
    world.validators[101] = Validator(
        TerminalPolicy(101, frozenset({370200})),
        world.issuer.keyring(),
        InMemoryRevocation([], generation=7),
    )
    for card, hour in ((8, 8), (9, 9), (1, 10)):
        assert world.tap(101, card, day_ms(hour))
    world.export()


def _files(tmp: Path) -> tuple[Path, Path, Path]:
    """Base generation 5 holds card 9; the delta to generation 7 adds card 8 and removes 9."""
    _, pub = save_signing_key(SIGNER, tmp / "rev")
    at = day_ms(0) // 1000 - 3600
    base = tmp / "base5.frt"
    build_table(np.array([9, 99], dtype=np.uint64), np.array([at, at]), np.array([1, 1]),
                SIGNER, 5, at, base)  # fmt: skip
    delta = tmp / "d7.frd"
    table = RevocationTable.open(base, SIGNER.public())
    build_delta(table, np.array([8, 99], dtype=np.uint64), np.array([at, at]), np.array([2, 1]),
                SIGNER, 7, at, delta)  # fmt: skip
    return base, delta, pub


def _inputs(world: World, base: Path, pub: Path, deltas: list[Path]) -> Any:
    return load_inputs(DAY, world.root / "terminals.csv", world.root / "keyring.json",
                       world.root / "fares.toml", None, [base], pub, deltas)  # fmt: skip


def _refused(result: Any) -> list[int]:
    return sorted(a.card_id for a in result.anomalies if a.kind == "revoked_at_ride")


def test_rides_under_a_delta_generation_are_judged_by_base_and_delta(
    world: World, tmp_path: Path
) -> None:
    _day_under_generation_7(world)
    base, delta, pub = _files(tmp_path)
    with_delta = run_settlement(
        _inputs(world, base, pub, [delta]), find_batches(world.batches), tmp_path / "a"
    )
    assert _refused(with_delta) == [8]  # added by the delta: the gate refused it
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert "revocation_delta_generation_7_body_sha256" in manifest["inputs"]
    base_only = run_settlement(
        _inputs(world, base, pub, []), find_batches(world.batches), tmp_path / "b"
    )
    assert _refused(base_only) == [9]  # the base held 9 and knew nothing of 8
    assert with_delta.stats["amount_fen"] == base_only.stats["amount_fen"]


def test_the_flag_and_its_refusals(world: World, tmp_path: Path) -> None:
    _day_under_generation_7(world)
    base, delta, pub = _files(tmp_path)
    r = settle_cli(world, tmp_path, "--revocation-table", base, "--revocation-delta", delta,
                    "--revocation-signer", pub)  # fmt: skip
    assert r.returncode == 3, r.stderr  # a refused ride to review
    anomalies = json.loads((tmp_path / "out" / "anomalies.json").read_text())["anomalies"]
    assert [a["card_id"] for a in anomalies if a["kind"] == "revoked_at_ride"] == [8]
    other = tmp_path / "other5.frt"
    build_table(np.array([9], dtype=np.uint64), np.array([1]), np.array([1]), SIGNER, 5, 1, other)
    damaged = tmp_path / "damaged.frd"
    damaged.write_bytes(delta.read_bytes()[:-1])
    cases = [
        (["--revocation-delta", delta, "--revocation-signer", pub], "that no --revocation-table"),
        (["--revocation-table", other, "--revocation-delta", delta, "--revocation-signer", pub],
         "that no --revocation-table given is"),
        (["--revocation-table", base, "--revocation-delta", delta], "needs --revocation-signer"),
        (["--revocation-table", base, "--revocation-delta", damaged, "--revocation-signer", pub],
         "truncated"),
        (["--revocation-table", base, "--revocation-delta", tmp_path, "--revocation-signer", pub],
         "is not a file"),
        (["--revocation-table", base, "--revocation-delta", delta, "--revocation-delta", delta,
          "--revocation-signer", pub], "of the same generation"),
    ]  # fmt: skip
    for i, (more, says) in enumerate(cases):
        r = settle_cli(world, tmp_path / f"bad{i}", *more)
        assert r.returncode == 2 and says in r.stderr, (more, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert not (tmp_path / f"bad{i}" / "out").exists()
