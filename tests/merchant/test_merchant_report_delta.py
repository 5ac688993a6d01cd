"""The monthly report judges claims decided under a delta's generation by base plus delta,
as the settlement judges rides (docs/settlement.md, "Inputs"), and refuses a delta it
cannot verify against a base given, with the settlement's words.

A till that held generation 7 accepted bob (card 50) and carol (card 51). The
programme's base generation 5 revokes carol; its delta to generation 7 revokes bob and
lifts carol's revocation. Given base and delta, bob's claim is one a till holding them
would have refused; given the base alone, carol's is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from merchant_world import World, farecore, make_world, month_of

from farecore.cli import main

Case = tuple[World, Path, str]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    w = make_world(tmp_path_factory.mktemp("delta"))
    cards = [w.card("bob", 50), w.card("carol", 51)]
    w.table("base-5", [51, 99], 5)
    w.table("till-7", [99], 7)  # what the till held: generation 7, listing neither card
    (w.root / "d7.csv").write_text(
        "card_id,revoked_at,reason\n50,1767225600,lost\n99,1767225600,lost\n"
    )
    assert main(["revocation", "delta", "--base", str(w.root / "base-5.frt"), "--csv",
                 str(w.root / "d7.csv"), "--key", str(w.root / "keys" / "revocation.key"),
                 "--generation", "7", "--out", str(w.root / "d7.frd")]) == 0  # fmt: skip
    w.till(6001, "laoshan-books", "till-1", table="till-7.frt", discount="percent = 10")
    w.register()
    r, claims = w.verify(6001, cards, ["100", "200"])
    assert r.returncode == 0, r.stderr
    assert [(c["decision"], c["revocation_generation"]) for c in claims] == [("ACCEPT", 7)] * 2
    batches = w.root / "batches"
    w.export(6001, claims, batches)
    return w, batches, month_of(claims[0]["time_ms"])


def _refused(findings: list[dict[str, Any]]) -> list[int]:
    return [f["card_id"] for f in findings if f["kind"] == "revoked_at_claim"]


def test_claims_under_a_delta_generation_are_judged_by_base_and_delta(
    case: Case, tmp_path: Path
) -> None:
    world, batches, month = case
    base, delta = world.root / "base-5.frt", world.root / "d7.frd"
    r, summary, findings = world.report(
        batches, tmp_path / "both", month, "--revocation-table", base,
        "--revocation-delta", delta, "--revocation-signer", world.signer,
    )  # fmt: skip
    assert r.returncode == 3, r.stdout + r.stderr
    assert _refused(findings) == [50]  # the delta revoked bob: a till holding it refused him
    (m,) = summary["merchants"]
    assert (m["claims"], m["verified"], m["amount_fen"]) == (2, 1, 20000)  # carol's counts
    assert summary["revocation"] == "checked against generation 5, 7 (a delta over 5)"
    assert "  revocation checked against generation 5, 7 (a delta over 5)\n" in r.stdout
    inputs = summary["inputs"]
    assert {"revocation_table_generation_5_body_sha256",
            "revocation_delta_generation_7_body_sha256"} <= set(inputs)  # fmt: skip
    # The base alone knows nothing of bob, and still holds carol.
    r, summary, findings = world.report(
        batches, tmp_path / "base", month, "--revocation-table", base,
        "--revocation-signer", world.signer,
    )  # fmt: skip
    assert r.returncode == 3 and _refused(findings) == [51]
    assert summary["merchants"][0]["amount_fen"] == 10000  # bob's counts
    assert summary["revocation"] == "checked against generation 5"


def test_a_delta_it_cannot_verify_against_a_base_given_exits_2(case: Case, tmp_path: Path) -> None:
    world, batches, month = case
    root, pub = world.root, world.signer
    base, delta = root / "base-5.frt", root / "d7.frd"
    other = world.table("other-5", [51], 5)  # generation 5, other contents
    damaged = tmp_path / "damaged.frd"
    damaged.write_bytes(delta.read_bytes()[:-1])
    rules = world.write_rules(tmp_path / "rules.csv")
    cases: list[tuple[list[str | Path], str]] = [
        (["--revocation-delta", delta, "--revocation-signer", pub],
         f"revocation delta {delta} is over a base of generation 5 that no "
         "--revocation-table given is"),
        (["--revocation-table", other, "--revocation-delta", delta, "--revocation-signer", pub],
         "over a base of generation 5 that no --revocation-table given is"),
        (["--revocation-delta", delta], "--revocation-delta needs --revocation-signer"),
        (["--revocation-table", base, "--revocation-delta", damaged, "--revocation-signer", pub],
         "truncated"),
        (["--revocation-table", base, "--revocation-delta", tmp_path, "--revocation-signer", pub],
         "is not a file"),
        (["--revocation-table", base, "--revocation-delta", delta, "--revocation-delta", delta,
          "--revocation-signer", pub], "of the same generation"),
        (["--revocation-table", base, "--revocation-table", root / "till-7.frt",
          "--revocation-delta", delta, "--revocation-signer", pub], "of the same generation"),
    ]  # fmt: skip
    for i, (more, says) in enumerate(cases):
        out = tmp_path / f"out{i}"
        r = farecore(
            "merchant", "report", "--month", month, "--batches", batches, "--register",
            root / "terminals.csv", "--keyring", world.keyring, "--merchants", rules,
            "--out", out, *more,
        )  # fmt: skip
        assert r.returncode == 2 and says in r.stderr, (more, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert not out.exists()
