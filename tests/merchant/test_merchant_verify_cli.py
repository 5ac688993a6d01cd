"""``farecore verify`` end to end in real processes on the virtual reader with card files:
accepted, revoked, expired and wrong-region cards; each claim journaled with its amounts;
a clean stop at end of input, on SIGINT and SIGTERM; the journal exported and reported."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from merchant_world import World, env, make_world, month_of, service_day

from farecore.journal.batch import verify_batch
from farecore.journal.terminal import Journal
from farecore.merchant.claim import parse_claim_detail


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = make_world(tmp_path_factory.mktemp("alliance"))
    w.card("alice", 42)
    w.card("bob", 43)  # revoked by the table in force
    w.card("carol", 44, region=110000)
    w.card("dave", 45, valid_from="2020-01-01T00:00:00Z", valid_until="2021-01-01T00:00:00Z")
    return w


def test_a_till_accepts_denies_journals_and_its_month_reports_clean(
    world: World, tmp_path: Path
) -> None:
    cfg = world.till(2001)
    world.register()
    cards = [world.root / f"{n}.card" for n in ("alice", "bob", "carol", "dave")]
    r, claims = world.verify(2001, cards, ["128.50", "1000", "20", "12345fen"])
    assert r.returncode == 0, r.stderr
    assert "journal closed" in r.stderr
    got = [(c["card_id"], c["decision"], c["reason"]) for c in claims]
    assert got == [
        (42, "ACCEPT", None),
        (43, "DENY", "REVOKED"),
        (44, "DENY", "WRONG_REGION"),
        (45, "DENY", "EXPIRED"),
    ]
    assert [(c["amount_fen"], c["discount_fen"], c["pay_fen"]) for c in claims] == [
        (12850, 1285, 11565),
        (100000, 0, 100000),
        (2000, 0, 2000),
        (12345, 0, 12345),
    ]
    assert {(c["merchant"], c["till"], c["terminal_id"]) for c in claims} == {
        ("laoshan-books", "till-1", 2001)
    }
    assert [c["seq"] for c in claims] == [1, 2, 3, 4]

    batches = world.export(2001, claims, tmp_path / "batches")
    records = [rec for b in batches for rec in verify_batch(b, None).records]
    assert [rec.direction.name for rec in records] == ["CLAIM"] * 4
    assert {(rec.operator, rec.line, rec.place) for rec in records} == {
        (
            "rongjun-alliance",
            "laoshan-books",
            "till-1",
        )
    }
    accepted = records[0]
    assert accepted.detail == "amount_fen=12850 discount_fen=1285 percent=10 cap_fen=5000"
    assert accepted.card_signature is not None and accepted.counter == 1
    assert records[1].detail.startswith("amount_fen=100000 discount_fen=0 percent=10 ")
    assert parse_claim_detail(records[1].detail, accepted=False).why.startswith("revoked at")

    rep, summary, findings = world.report(
        tmp_path / "batches",
        tmp_path / "report",
        month_of(claims[0]["time_ms"]),
        "--revocation-table",
        world.root / "revocation.frt",
        "--revocation-signer",
        world.signer,
    )
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert findings == []
    assert summary["merchants"] == [
        {
            "merchant": "laoshan-books",
            "tills": 1,
            "claims": 4,
            "denied": 3,
            "verified": 1,
            "amount_fen": 12850,
            "discount_fen": 1285,
            "findings": 0,
        }
    ]
    csv = (tmp_path / "report" / "merchants.csv").read_text().splitlines()
    assert csv[1] == "laoshan-books,1,4,3,1,12850,1285,0"
    assert cfg.exists()


def test_a_cap_bounds_the_discount_and_bad_lines_read_no_card(world: World) -> None:
    world.till(2003, "jimo-tea", "till-3", discount="percent = 20\ncap_fen = 1000")
    card = world.card("erin", 46)
    r, claims = world.verify(2003, [card, card], ["1,000", "-5", "100.001", "800", "0.05"])
    assert r.returncode == 0, r.stderr
    # 20% of 800.00 yuan is 160.00, capped at 10.00; 20% of 5 fen rounds down to 1 fen.
    assert [(c["amount_fen"], c["discount_fen"]) for c in claims] == [(80000, 1000), (5, 1)]
    assert [c["counter"] for c in claims] == [1, 2]
    assert re.findall(r"line (\d+) refused, no card read", r.stderr) == ["1", "2", "3"]


def test_merchant_must_be_the_configured_one(world: World) -> None:
    world.till(2004, "huangdao-shoes", "till-4")
    r = subprocess.run(
        [sys.executable, "-m", "farecore", "verify", "--config",
         str(world.root / "till-2004.toml"), "--reader", "virtual:", "--merchant", "other"],
        input="", capture_output=True, text=True, timeout=60, env=env(),
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "huangdao-shoes" in r.stderr, r.stderr
    assert not (world.root / "claims-2004.sqlite").exists()


def test_a_tap_that_does_not_come_abandons_the_purchase(world: World) -> None:
    world.till(2005, "huangdao-shoes", "till-5")
    r, claims = world.verify(2005, [], ["12"], "--tap-timeout", "0.2")
    assert r.returncode == 0, r.stderr
    assert claims == []
    assert "no card within" in r.stderr and "0 claims" in r.stderr


def _start(world: World, terminal_id: int, reader: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "farecore", "verify", "--config",
         str(world.root / f"till-{terminal_id}.toml"), "--reader", reader, "--merchant",
         world.tills[terminal_id][0]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env(),
    )  # fmt: skip


def test_sigint_at_the_prompt_stops_with_the_journal_closed(world: World, tmp_path: Path) -> None:
    world.till(2006, "jimo-tea", "till-6")
    card = world.card("frank", 47)
    proc = _start(world, 2006, f"virtual:{card}")
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("55.5\n")
    proc.stdin.flush()
    claim = json.loads(proc.stdout.readline())  # journaled: now idle, waiting for a line
    assert claim["decision"] == "ACCEPT" and claim["discount_fen"] == 555
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped after 1 claims" in err and "journal closed" in err
    assert "Traceback" not in err
    (batch,) = world.export(2006, [claim], tmp_path)
    assert len(verify_batch(batch, None).records) == 1


def test_sigterm_while_waiting_for_a_card_stops_cleanly(world: World) -> None:
    world.till(2007, "jimo-tea", "till-7")
    proc = _start(world, 2007, "virtual:")  # an empty reader: no card ever comes
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write("10\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while "ready on" not in proc.stderr.readline():
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == "" and "stopped after 0 claims" in err and "Traceback" not in err


def test_another_tills_journal_is_refused_at_start(world: World) -> None:
    world.till(2008, "jimo-tea", "till-8")
    Journal.open(world.root / "claims-2008.sqlite", 2001).close()  # another till's file
    r, claims = world.verify(2008, [], ["1"])
    assert r.returncode == 2 and claims == []
    last = r.stderr.splitlines()[-1]
    assert last.startswith("farecore: error: ") and "journal of terminal 2001" in last
    assert "Traceback" not in r.stderr


def test_service_day_helper_is_qingdao_time() -> None:
    assert service_day(1796659199000) == "2026-12-07"  # 23:59:59 +08:00
    assert service_day(1796659200000) == "2026-12-08"
