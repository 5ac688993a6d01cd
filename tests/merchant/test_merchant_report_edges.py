"""The monthly report at the month's edges and against a till that holds its key but not
to the rules: a claim counts in the month of its own time, once, whatever batch carries
it; the same batch under two names is one batch; a damaged header never hides a batch;
the discount rule is the alliance's, not the till's; the report says when it checked no
revocation. Each claim goes through the real tap, journal, export and report."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from merchant_world import World, export_claims, make_world

from farecore.card.keys import Keyring
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import Decision, run_tap
from farecore.journal.records import Direction, TapContext
from farecore.journal.terminal import Journal
from farecore.merchant.config import ALLIANCE
from readers.virtual import FileCard, VirtualReader

Q = dt.timezone(dt.timedelta(hours=8))
NEWYEAR_MS = int(dt.datetime(2027, 1, 1, tzinfo=Q).timestamp() * 1000)
DAY_MS = 86_400_000
DETAIL = "amount_fen=10000 discount_fen=1000 percent=10"
TEN = "percent = 10"  # the rule of every till here: 10 %, no cap


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = make_world(tmp_path_factory.mktemp("edges"))
    w.card("bob", 50)
    w.card("rev", 43)  # revoked in the generation-1 table
    return w


def _till(world: World, tid: int, merchant: str = "jimo-tea") -> TapContext:
    world.till(tid, merchant, f"till-{tid}", discount=TEN)
    world.register({tid: world.tills[tid]})
    return TapContext(ALLIANCE, merchant, f"till-{tid}", Direction.CLAIM)


def _decide(world: World, tid: int, at_ms: int, card: str = "bob") -> Decision:
    validator = Validator(TerminalPolicy(tid, frozenset({370200})), Keyring.load(world.keyring))
    channel = VirtualReader().tap(FileCard(world.root / f"{card}.card"))
    d = run_tap(channel, validator, at_ms, os.urandom(16))
    assert d.accepted, d
    return replace(d, detail=DETAIL)


def _journal(
    world: World, tid: int, items: list[tuple[int, str]], card: str = "bob", gen: int | None = -1
) -> None:
    """Claims at the times and with the details given, journaled by a till holding its key."""
    merchant, till = world.tills[tid]
    ctx = TapContext(ALLIANCE, merchant, till, Direction.CLAIM)
    with Journal.open(world.root / f"claims-{tid}.sqlite", tid) as j:
        for at, detail in items:
            d = replace(_decide(world, tid, at, card), detail=detail)
            if gen != -1:
                d = replace(d, revocation_generation=gen)
            j.append(d, ctx)


def _verified(summary: dict[str, Any]) -> int:
    return sum(m["verified"] for m in summary.get("merchants", []))


def _kinds(findings: list[dict[str, Any]]) -> list[str]:
    return sorted(f["kind"] for f in findings)


def test_one_tap_journaled_twice_across_new_year_counts_once(world: World, tmp_path: Path) -> None:
    """One tap at 23:58 on 31 Dec journaled again after a claim of 1 Jan (so the copy is
    cut into the 1 Jan batch): December counts it once and names the reuse; January,
    which reads the 31 Dec batch as a neighbour, counts only its own claim."""
    ctx = _till(world, 4001)
    a = _decide(world, 4001, NEWYEAR_MS - 120_000)
    b = _decide(world, 4001, NEWYEAR_MS + 30_000)
    with Journal.open(world.root / "claims-4001.sqlite", 4001) as j:
        j.append(a, ctx)
        j.append(b, ctx)
        j.append(a, ctx)  # the same proof of tap, journaled again
    batches = tmp_path / "batches"
    export_claims(world, 4001, "2026-12-31", batches)
    export_claims(world, 4001, "2027-01-01", batches)
    r, dec, findings = world.report(batches, tmp_path / "dec", "2026-12")
    assert r.returncode == 3, r.stdout + r.stderr
    assert _kinds(findings) == ["reused_counter", "reused_counter"]
    assert sorted(f["seq"] for f in findings) == [1, 3]
    # The copy (seq 3, in the 1 Jan batch) names the tap it copies (seq 1, 31 Dec).
    assert "first_use" not in findings[0]
    assert (findings[1]["file"], findings[1]["first_use"]["file"]) == (
        "4001-2027-01-01.fcb",
        "4001-2026-12-31.fcb",
    )
    assert findings[1]["first_use"]["seq"] == 1
    assert (dec["merchants"][0]["claims"], _verified(dec)) == (2, 1)
    assert dec["stats"]["batches_of_neighbour_days"] == 1
    r, jan, findings = world.report(batches, tmp_path / "jan", "2027-01")
    assert r.returncode == 0 and findings == [], r.stdout + r.stderr
    assert (jan["merchants"][0]["claims"], _verified(jan)) == (1, 1)


def test_a_clone_across_the_edge_counts_once(world: World, tmp_path: Path) -> None:
    """A cloned card signs counter N at one till on 31 Dec and at another on 1 Jan: each
    month's report reads the other's edge day, and only the first use counts."""
    _till(world, 4011)
    _till(world, 4012)
    world.register({t: world.tills[t] for t in (4011, 4012)})
    shutil.copy(world.root / "bob.card", world.root / "bob-clone.card")
    _journal(world, 4011, [(NEWYEAR_MS - 3_600_000, DETAIL)])
    _journal(world, 4012, [(NEWYEAR_MS + 3_600_000, DETAIL)], card="bob-clone")
    batches = tmp_path / "batches"
    export_claims(world, 4011, "2026-12-31", batches)
    export_claims(world, 4012, "2027-01-01", batches)
    (world.root / "bob-clone.card").unlink()
    r, dec, findings = world.report(batches, tmp_path / "dec", "2026-12")
    assert r.returncode == 3 and [(f["kind"], f["terminal_id"]) for f in findings] == [
        ("reused_counter", 4011)
    ]
    assert findings[0]["detail"].endswith("counted (first use)") and _verified(dec) == 1
    r, jan, findings = world.report(batches, tmp_path / "jan", "2027-01")
    assert r.returncode == 3 and [(f["kind"], f["terminal_id"]) for f in findings] == [
        ("reused_counter", 4012)
    ]
    assert findings[0]["detail"].endswith("not counted") and _verified(jan) == 0
    first = findings[0]["first_use"]  # read from December's last day, January's neighbour
    assert (first["file"], first["terminal_id"], first["day"], first["seq"]) == (
        "4011-2026-12-31.fcb",
        4011,
        "2026-12-31",
        1,
    )


def test_the_same_batch_under_two_names_is_one_batch(world: World, tmp_path: Path) -> None:
    _till(world, 4002)
    _journal(world, 4002, [(NEWYEAR_MS - 3 * DAY_MS + 3_600_000, DETAIL)])
    batches = tmp_path / "batches"
    b = export_claims(world, 4002, "2026-12-29", batches)
    shutil.copy(b, batches / "copy.fcb")
    r, summary, findings = world.report(batches, tmp_path / "out", "2026-12")
    assert r.returncode == 0 and findings == [], r.stdout + r.stderr
    m = summary["merchants"][0]
    assert (m["claims"], m["verified"], m["tills"]) == (1, 1, 1)
    assert summary["stats"]["files_duplicate"] == 1 and summary["stats"]["batches"] == 1


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        (b'"day":"2026-12-27"', b'"day":"2026-11-27"', "batch_rejected"),  # an earlier month
        (b'"day":"2026-12-27"', b'"day":"2027-03-27"', "batch_rejected"),  # a later month
        (b'"terminal_id":4003', b'"terminal_id":4001', "batch_rejected"),  # another till
        (b'"terminal_id":4003', b'"terminal_id":4999', "unknown_terminal"),  # no terminal
        (b'"format":"farecore-batch/1"', b'"format":"farecore-batch/9"', "batch_rejected"),
    ],
)
def test_a_damaged_header_never_hides_a_batch(
    world: World, tmp_path: Path, old: bytes, new: bytes, kind: str
) -> None:
    _till(world, 4003)
    world.till(4001, "jimo-tea", "till-4001", discount=TEN)
    world.register({t: world.tills[t] for t in (4001, 4003)})
    if not (world.root / "claims-4003.sqlite").exists():
        _journal(world, 4003, [(NEWYEAR_MS - 5 * DAY_MS, DETAIL)])
    batches = tmp_path / "batches"
    b = export_claims(world, 4003, "2026-12-27", batches)
    data = b.read_bytes()
    assert old in data
    b.write_bytes(data.replace(old, new, 1))
    r, summary, findings = world.report(batches, tmp_path / "out", "2026-12")
    assert r.returncode == 3, r.stdout + r.stderr
    assert _kinds(findings) == [kind] and findings[0]["file"] == b.name
    assert _verified(summary) == 0


def test_the_rule_is_the_alliances_not_the_tills(world: World, tmp_path: Path) -> None:
    """A till of a 10 % merchant signs 100 % claims, and claims under the old rule after
    the alliance changed it: neither counts; a merchant with no rule counts nothing."""
    _till(world, 4005)
    t = NEWYEAR_MS - 20 * DAY_MS  # 12 Dec
    _journal(
        world,
        4005,
        [
            (t, "amount_fen=100000000 discount_fen=100000000 percent=100"),
            (t + 1, DETAIL),  # 10 %: the rule until 14 Dec
            (t + 3 * DAY_MS, DETAIL),  # 15 Dec: the rule is 20 % with a cap now
            (t + 3 * DAY_MS + 1, "amount_fen=10000 discount_fen=2000 percent=20 cap_fen=3000"),
        ],
    )
    batches = tmp_path / "batches"
    export_claims(world, 4005, "2026-12-12", batches)
    export_claims(world, 4005, "2026-12-15", batches)
    rules = tmp_path / "rules.csv"
    rules.write_text(
        "merchant,percent,cap_fen,effective_from\n"
        "jimo-tea,20,3000,2026-12-15\njimo-tea,10,,2026-01-01\n"
    )
    r, summary, findings = world.report(batches, tmp_path / "out", "2026-12", "--merchants", rules)
    assert r.returncode == 3
    assert [(f["kind"], f["seq"]) for f in findings] == [("rule_mismatch", 1), ("rule_mismatch", 3)]
    assert "100 % (no cap)" in findings[0]["detail"] and "10 % (no cap)" in findings[0]["detail"]
    assert "2026-12-15 is 20 % (cap 3000 fen)" in findings[1]["detail"]
    (m,) = summary["merchants"]
    assert (m["claims"], m["verified"], m["discount_fen"]) == (2, 2, 3000)
    rules.write_text("merchant,percent,cap_fen,effective_from\nother,10,,2026-01-01\n")
    r, summary, findings = world.report(batches, tmp_path / "out2", "2026-12", "--merchants", rules)
    assert r.returncode == 3 and _kinds(findings) == ["rule_mismatch"] * 4
    assert "no alliance rule for jimo-tea in force on 2026-12-12" in findings[0]["detail"]
    assert _verified(summary) == 0


@pytest.mark.parametrize("gen", [None, 999])
def test_a_revoked_card_under_any_label_is_not_counted(
    world: World, tmp_path: Path, gen: int | None
) -> None:
    tid = 4006 if gen is None else 4007
    _till(world, tid)
    _journal(world, tid, [(NEWYEAR_MS - 2 * DAY_MS, DETAIL)], card="rev", gen=gen)
    batches = tmp_path / "batches"
    export_claims(world, tid, "2026-12-30", batches)
    table = ("--revocation-table", world.root / "revocation.frt")
    r, summary, findings = world.report(
        batches, tmp_path / "out", "2026-12", *table, "--revocation-signer", world.signer
    )
    assert r.returncode == 3 and _kinds(findings) == ["revoked_at_claim"]
    assert summary["merchants"][0]["verified"] == 0
    assert summary["revocation"] == "checked against generation 1"
    assert "revocation checked against generation 1" in r.stdout


def test_without_a_table_the_report_says_revocation_was_not_checked(
    world: World, tmp_path: Path
) -> None:
    _till(world, 4009)
    _journal(world, 4009, [(NEWYEAR_MS - 2 * DAY_MS, DETAIL)], card="rev")
    batches = tmp_path / "batches"
    export_claims(world, 4009, "2026-12-30", batches)
    r, summary, findings = world.report(batches, tmp_path / "out", "2026-12")
    assert r.returncode == 0 and findings == [] and _verified(summary) == 1
    assert summary["revocation"] == "not checked: no table given"
    assert "revocation not checked: no table given" in r.stdout


@pytest.mark.parametrize(("tolerance", "counted"), [(None, 1), ("600", 2)])
def test_a_clock_corrected_back_across_new_year(
    world: World, tmp_path: Path, tolerance: str | None, counted: int
) -> None:
    """A till whose clock.tolerance_s is 600 is set back 400 s just after New Year: the
    claim timed 23:53:30 on 31 Dec is cut into the 1 Jan batch. With the report's
    tolerance at least the till's, December counts it (reading 1 Jan as a neighbour);
    with 300 s it is named outside_month by January alone and counted in no month."""
    tid = 4008 if tolerance is None else 4010
    _till(world, tid)
    _journal(world, tid, [(NEWYEAR_MS + 10_000, DETAIL), (NEWYEAR_MS - 390_000, DETAIL)])
    batches = tmp_path / "batches"
    export_claims(world, tid, "2026-12-31", batches)
    export_claims(world, tid, "2027-01-01", batches)
    extra = () if tolerance is None else ("--clock-tolerance-s", tolerance)
    dec = world.report(batches, tmp_path / "dec", "2026-12", *extra)
    jan = world.report(batches, tmp_path / "jan", "2027-01", *extra)
    assert _verified(dec[1]) + _verified(jan[1]) == counted
    assert dec[0].returncode == 0 and dec[2] == []
    if tolerance is None:
        assert jan[0].returncode == 3 and _kinds(jan[2]) == ["outside_month"]
        assert jan[2][0]["seq"] == 2 and "more than 300 s" in jan[2][0]["detail"]
    else:
        assert jan[0].returncode == 0 and jan[2] == []
        assert dec[1]["inputs"]["clock_tolerance_s"] == "600"


def test_the_last_month_of_the_calendar_is_refused(world: World, tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    _till(world, 4004)
    r, *_ = world.report(tmp_path / "b", tmp_path / "out", "9999-12")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "9998" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
