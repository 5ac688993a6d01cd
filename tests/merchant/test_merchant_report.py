"""``farecore merchant report`` on batches real tills journaled and ``farecore journal
export`` signed: a cloned card's reused counter, a card a till should have refused, a
tampered batch, a till registered elsewhere, a claim whose detail lies (a rogue till
holding its own key), and inputs so bad that nothing is written."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from merchant_world import World, farecore, make_world, month_of

from farecore.card.keys import Keyring
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import run_tap
from farecore.journal.records import Direction, TapContext
from farecore.journal.terminal import Journal
from farecore.merchant.config import ALLIANCE
from readers.virtual import FileCard, VirtualReader


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = make_world(tmp_path_factory.mktemp("alliance"))
    w.card("alice", 42)
    w.card("bob", 50)
    return w


def _kinds(findings: list[dict[str, Any]]) -> list[str]:
    return sorted(f["kind"] for f in findings)


def _run(world: World, tid: int, card: str, amounts: list[str], out: Path) -> list[dict[str, Any]]:
    r, claims = world.verify(tid, [world.root / f"{card}.card"] * len(amounts), amounts)
    assert r.returncode == 0, r.stderr
    world.export(tid, claims, out)
    return claims


def test_a_cloned_cards_reused_counter_counts_once(world: World, tmp_path: Path) -> None:
    world.till(3001, "laoshan-books", "till-1")
    world.till(3002, "laoshan-books", "till-2")
    world.register({t: world.tills[t] for t in (3001, 3002)})
    shutil.copy(world.root / "alice.card", world.root / "alice-clone.card")
    batches = tmp_path / "batches"
    claims = _run(world, 3001, "alice", ["100"], batches)
    claims += _run(world, 3002, "alice-clone", ["200"], batches)
    assert [(c["decision"], c["counter"]) for c in claims] == [("ACCEPT", 1), ("ACCEPT", 1)]
    r, summary, findings = world.report(batches, tmp_path / "out", month_of(claims[0]["time_ms"]))
    assert r.returncode == 3, r.stdout + r.stderr
    assert _kinds(findings) == ["reused_counter", "reused_counter"]
    assert {(f["terminal_id"], f["card_id"]) for f in findings} == {(3001, 42), (3002, 42)}
    assert sorted(f["detail"].rsplit("; ", 1)[1] for f in findings) == [
        "counted (first use)",
        "not counted",
    ]
    (m,) = summary["merchants"]
    assert (m["claims"], m["verified"], m["amount_fen"], m["discount_fen"]) == (2, 1, 10000, 1000)
    assert summary["exit_status"] == 3 and summary["review_kinds_found"] == ["reused_counter"]


def test_a_claim_under_a_generation_holding_the_card_is_not_counted(
    world: World, tmp_path: Path
) -> None:
    # The till holds a generation-2 table that does not list card 50; the programme's
    # generation 2, given to the report, does: the till should have refused the card.
    world.table("rogue-2", [99], 2)
    world.table("programme-2", [50, 99], 2)
    world.till(3003, "jimo-tea", "till-3", table="rogue-2.frt")
    world.register({3003: world.tills[3003]})
    batches = tmp_path / "batches"
    claims = _run(world, 3003, "bob", ["66"], batches)
    assert claims[0]["decision"] == "ACCEPT" and claims[0]["revocation_generation"] == 2
    month = month_of(claims[0]["time_ms"])
    table = ("--revocation-table", world.root / "programme-2.frt")
    r, summary, findings = world.report(
        batches, tmp_path / "out", month, *table, "--revocation-signer", world.signer
    )
    assert r.returncode == 3, r.stdout + r.stderr
    assert _kinds(findings) == ["revoked_at_claim"]
    assert findings[0]["card_id"] == 50 and findings[0]["merchant"] == "jimo-tea"
    assert summary["merchants"][0]["verified"] == 0
    # Without the programme's table the same batches are clean.
    r, summary, findings = world.report(batches, tmp_path / "out2", month)
    assert r.returncode == 0 and findings == [] and summary["merchants"][0]["verified"] == 1


def test_a_tampered_batch_is_rejected_and_nothing_of_it_counts(
    world: World, tmp_path: Path
) -> None:
    world.till(3004, "huangdao-shoes", "till-4")
    world.register({3004: world.tills[3004]})
    batches = tmp_path / "batches"
    claims = _run(world, 3004, "alice", ["300", "400"], batches)
    month = month_of(claims[0]["time_ms"])
    r, _, findings = world.report(batches, tmp_path / "clean", month)
    assert r.returncode == 0 and findings == []
    (batch,) = batches.iterdir()
    data = bytearray(batch.read_bytes())
    at = data.index(b"amount_fen=30000")
    data[at + 11] = ord("9")  # 90000 fen: a bigger purchase than the till saw
    batch.write_bytes(bytes(data))
    r, summary, findings = world.report(batches, tmp_path / "out", month)
    assert r.returncode == 3
    assert _kinds(findings) == ["batch_rejected"]
    assert "signature" in findings[0]["detail"] and findings[0]["terminal_id"] == 3004
    assert summary["stats"]["verified"] == 0 and summary["merchants"] == []


def test_a_till_registered_for_another_merchant_counts_nothing(
    world: World, tmp_path: Path
) -> None:
    world.till(3005, "laoshan-books", "till-5")
    batches = tmp_path / "batches"
    claims = _run(world, 3005, "alice", ["10"], batches)
    world.register({3005: ("jimo-tea", "till-5")})
    r, summary, findings = world.report(batches, tmp_path / "out", month_of(claims[0]["time_ms"]))
    assert r.returncode == 3
    assert _kinds(findings) == ["context_mismatch"]
    assert "laoshan-books" in findings[0]["detail"]
    assert summary["merchants"][0]["merchant"] == "jimo-tea"
    assert summary["merchants"][0]["claims"] == 0


def _rogue_claims(world: World, tid: int, claims: list[tuple[int, str]]) -> list[dict[str, Any]]:
    """Claims journaled by a till that holds its key but not to the rules: each at the
    time and with the detail given, in one journal, through the real tap and journal."""
    validator = Validator(TerminalPolicy(tid, frozenset({370200})), Keyring.load(world.keyring))
    reader = VirtualReader()
    merchant, till = world.tills[tid]
    ctx = TapContext(ALLIANCE, merchant, till, Direction.CLAIM)
    out = []
    with Journal.open(world.root / f"claims-{tid}.sqlite", tid) as journal:
        for at_ms, detail in claims:
            channel = reader.tap(FileCard(world.root / "bob.card"))
            decision = run_tap(channel, validator, at_ms, os.urandom(16))
            assert decision.accepted
            record = journal.append(replace(decision, detail=detail), ctx)
            out.append({"time_ms": record.time_ms})
    return out


def test_a_rogue_tills_lying_detail_is_a_malformed_claim(world: World, tmp_path: Path) -> None:
    """A till that holds its key can sign anything; what it signs must still be a claim
    the rule gives: a discount above the rule's is named, and not counted."""
    world.till(3006, "jimo-tea", "till-6", discount="percent = 10")
    world.register({3006: world.tills[3006]})
    now = time.time_ns() // 1_000_000
    claims = _rogue_claims(
        world,
        3006,
        [
            (now, "amount_fen=10000 discount_fen=1000 percent=10"),
            (now + 1, "amount_fen=10000 discount_fen=9000 percent=10"),
            (now + 2, "amount_fen=10000 discount_fen=1000"),
        ],
    )
    batches = tmp_path / "batches"
    world.export(3006, claims, batches)
    r, summary, findings = world.report(batches, tmp_path / "out", month_of(now))
    assert r.returncode == 3
    assert _kinds(findings) == ["malformed_claim", "malformed_claim"]
    assert [f["seq"] for f in findings] == [2, 3]
    assert "rule gives 1000 fen" in findings[0]["detail"]
    assert summary["merchants"][0]["verified"] == 1


def test_a_claim_timed_in_another_month_is_outside_it(world: World, tmp_path: Path) -> None:
    """A clock stepped back 60 days between two claims: the batch of the day keeps the
    record (batches cut by seq), and the report sets it aside by its time."""
    world.till(3008, "jimo-tea", "till-8", discount="percent = 10")
    world.register({3008: world.tills[3008]})
    now = time.time_ns() // 1_000_000
    detail = "amount_fen=500 discount_fen=50 percent=10"
    claims = _rogue_claims(
        world, 3008, [(now, detail), (now - 60 * 86_400_000, detail), (now + 1, detail)]
    )
    batches = tmp_path / "batches"
    world.export(3008, claims[:1], batches)
    r, summary, findings = world.report(batches, tmp_path / "out", month_of(now))
    assert r.returncode == 3
    assert _kinds(findings) == ["outside_month"] and findings[0]["seq"] == 2
    (m,) = summary["merchants"]
    assert (m["claims"], m["verified"], m["amount_fen"], m["discount_fen"]) == (2, 2, 1000, 100)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--month", "2026-13"], "YYYY-MM"),
        (["--month", "26-12"], "YYYY-MM"),
        (["--batches", "missing"], "does not exist"),
        (["--keyring", "terminals.csv"], "keyring"),
        (["--register", "keyring.json"], "header"),
        (["--revocation-table", "revocation.frt"], "--revocation-signer"),
        (["--merchants", "rules-bad.csv"], "rules-bad.csv line 3: percent '0' must be 1..100"),
        (["--merchants", "missing.csv"], "missing.csv"),
        (["--clock-tolerance-s", "86401"], "clock tolerance must be 0..86400"),
    ],
)
def test_bad_inputs_exit_2_and_write_nothing(
    world: World, tmp_path: Path, args: list[str], words: str
) -> None:
    world.till(3007, "jimo-tea", "till-7")
    world.register({3007: world.tills[3007]})
    (tmp_path / "batches").mkdir()
    (world.root / "rules-bad.csv").write_text(
        "merchant,percent,cap_fen,effective_from\njimo-tea,10,,2026-01-01\njimo-tea,0,,2026-06-01\n"
    )
    given = {
        "--month": "2026-12",
        "--batches": str(tmp_path / "batches"),
        "--register": str(world.root / "terminals.csv"),
        "--keyring": str(world.keyring),
        "--merchants": str(world.write_rules(tmp_path / "rules.csv")),
    }
    for flag, value in zip(args[::2], args[1::2], strict=True):
        plain = flag in ("--month", "--clock-tolerance-s")
        given[flag] = value if plain else str(world.root / value)
    argv = [a for kv in given.items() for a in kv]
    r = farecore("merchant", "report", *argv, "--out", tmp_path / "out")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_day_is_a_seq_gap_and_the_days_after_it_do_not_count(
    world: World, tmp_path: Path
) -> None:
    world.till(3009, "jimo-tea", "till-9", discount="percent = 10")
    world.register({3009: world.tills[3009]})
    now = time.time_ns() // 1_000_000
    detail = "amount_fen=700 discount_fen=70 percent=10"
    days = [now - 2 * 86_400_000, now - 86_400_000, now]
    claims = _rogue_claims(world, 3009, [(t, detail) for t in days])
    batches = tmp_path / "batches"
    world.export(3009, [claims[0], claims[2]], batches)  # the middle day never handed in
    r, summary, findings = world.report(batches, tmp_path / "out", month_of(now))
    assert r.returncode == 3
    assert _kinds(findings) == ["seq_gap"]
    assert findings[0]["seq"] == 2 and findings[0]["merchant"] == "jimo-tea"
    counted = 1 if month_of(days[0]) == month_of(now) else 0
    assert summary["merchants"][0]["verified"] == counted
    # With the middle day's batch, the chain links and every claim of the month counts.
    world.export(3009, [claims[1]], batches)
    r, summary, findings = world.report(batches, tmp_path / "out", month_of(now))
    assert r.returncode == 0 and findings == []
    assert summary["merchants"][0]["verified"] == sum(month_of(t) == month_of(now) for t in days)
