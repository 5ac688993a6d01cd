"""A cloned card that signs the same counter on days far apart across a month's edge: the
later month's report sees the earlier use in the verified till batches of earlier days
given to it, counts its own claim not, and counts and names none of the earlier claims;
a damaged earlier batch proves nothing. Each claim goes through the real tap, journal,
export and report."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from merchant_world import World, export_claims, journal_claims, make_world

Q = dt.timezone(dt.timedelta(hours=8))
DAY_MS = 86_400_000
JAN_5 = int(dt.datetime(2027, 1, 5, 12, tzinfo=Q).timestamp() * 1000)
FEB_19 = JAN_5 + 45 * DAY_MS  # 45 days later: far beyond February's neighbour day, 31 Jan
DETAIL = "amount_fen=10000 discount_fen=1000 percent=10"
TEN = "percent = 10"  # the rule of every till here: 10 %, no cap


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("far-reuse"))


def _clone(world: World, name: str, card_id: int) -> None:
    """A card and its clone: the same key and counter in two card files."""
    shutil.copy(world.card(name, card_id), world.root / f"{name}-clone.card")


def _tills(world: World, *tills: tuple[int, str]) -> None:
    for tid, merchant in tills:
        world.till(tid, merchant, f"till-{tid}", discount=TEN)
    world.register({tid: world.tills[tid] for tid, _ in tills})


def _journal(world: World, tid: int, card: str, items: list[tuple[int, str]]) -> None:
    journal_claims(world, tid, [(at_ms, card, detail) for at_ms, detail in items])


def _verified(summary: dict[str, Any]) -> int:
    return sum(m["verified"] for m in summary["merchants"])


def _seen(findings: list[dict[str, Any]]) -> list[tuple[str, int, int, int, str]]:
    return [
        (f["kind"], f["terminal_id"], f["seq"], f["card_id"], f["detail"])
        for f in findings
        if f["kind"] == "reused_counter"
    ]


def _not_counted(tid: int, card_id: int) -> list[tuple[str, int, int, int, str]]:
    """The one finding of a month whose claim (seq 1) reuses a counter first used before."""
    return [("reused_counter", tid, 1, card_id, "counter 1 used 2 times; not counted")]


def _far_reuse(world: World, card: str, card_id: int, early: int, late: int, out: Path) -> Path:
    """``card`` claims 100 yuan at till ``early`` on 5 January and its clone 100 yuan at
    till ``late`` on 19 February, both with counter 1; the two days' batches in ``out``."""
    _clone(world, card, card_id)
    _tills(world, (early, "laoshan-books"), (late, "jimo-tea"))
    _journal(world, early, card, [(JAN_5, DETAIL)])
    _journal(world, late, f"{card}-clone", [(FEB_19, DETAIL)])
    export_claims(world, late, "2027-02-19", out)
    return export_claims(world, early, "2027-01-05", out)


def test_a_counter_reused_45_days_apart_counts_once(world: World, tmp_path: Path) -> None:
    batches = tmp_path / "batches"
    early = _far_reuse(world, "ann", 60, 6001, 6002, batches)
    r, jan, findings = world.report(batches, tmp_path / "jan", "2027-01")
    assert r.returncode == 0 and findings == [], r.stdout + r.stderr
    assert _verified(jan) == 1  # January's first use; 19 Feb is beyond its read range
    r, feb, findings = world.report(batches, tmp_path / "feb", "2027-02")
    assert r.returncode == 3, r.stdout + r.stderr
    assert _seen(findings) == _not_counted(6002, 60) and len(findings) == 1
    assert findings[0]["merchant"] == "jimo-tea"
    # The clerk finds both claims: this one, and where the counter was used first.
    assert findings[0]["file"] == "6002-2027-02-19.fcb"
    assert findings[0]["first_use"] == {
        "file": early.name,
        "batch_sha256": hashlib.sha256(early.read_bytes()).hexdigest(),
        "terminal_id": 6001,
        "day": "2027-01-05",
        "seq": 1,
        "merchant": "laoshan-books",
        "time_ms": JAN_5,
    }
    assert [
        (m["merchant"], m["claims"], m["verified"], m["amount_fen"]) for m in feb["merchants"]
    ] == [("jimo-tea", 1, 0, 0)]
    assert feb["stats"]["batches_of_earlier_days"] == 1
    assert feb["review_kinds_found"] == ["reused_counter"]
    assert _verified(jan) + _verified(feb) == 1
    # The check sees only what --batches holds: without January's batch, February counts it.
    alone = tmp_path / "february-only"
    alone.mkdir()
    shutil.copy(batches / "6002-2027-02-19.fcb", alone)
    r, feb, findings = world.report(alone, tmp_path / "feb-alone", "2027-02")
    assert r.returncode == 0 and findings == [] and _verified(feb) == 1, r.stdout + r.stderr


def test_a_damaged_earlier_batch_proves_nothing(world: World, tmp_path: Path) -> None:
    """The earlier batch's till signature is broken, its records intact: it is rejected as
    any damaged file is, and its claims show no counter used."""
    batches = tmp_path / "batches"
    early = _far_reuse(world, "bea", 61, 6003, 6004, batches)
    data = bytearray(early.read_bytes())
    data[-1] ^= 0x01  # the signature's last byte
    early.write_bytes(bytes(data))
    r, feb, findings = world.report(batches, tmp_path / "feb", "2027-02")
    assert r.returncode == 3, r.stdout + r.stderr
    assert findings == [
        {
            "kind": "batch_rejected",
            "terminal_id": 6003,
            "merchant": "laoshan-books",
            "file": early.name,
            "batch_sha256": hashlib.sha256(data).hexdigest(),
            "detail": "batch signature does not verify with the terminal key",
        }
    ]
    assert [
        (m["merchant"], m["claims"], m["verified"], m["amount_fen"]) for m in feb["merchants"]
    ] == [("jimo-tea", 1, 1, 10000)]
    stats = feb["stats"]
    assert (stats["batches_rejected"], stats["batches_of_earlier_days"]) == (1, 0)


def test_an_earlier_days_claims_are_neither_counted_nor_named(world: World, tmp_path: Path) -> None:
    """Two claims of 5 January at one till of jimo-tea (counter 1, and counter 2 under a
    rule the alliance never gave), and the clone's counters 1 and 2 at another of its
    tills on 19 February. February counts only its own claims: not counter 1, used in
    January; counter 2, whose January claim fails its own checks (January's report names
    it and counts it not), once. No January claim is counted or named by February."""
    _clone(world, "cid", 62)
    _tills(world, (6005, "jimo-tea"), (6006, "jimo-tea"))
    _journal(
        world,
        6005,
        "cid",
        [(JAN_5, DETAIL), (JAN_5 + 1, "amount_fen=10000 discount_fen=10000 percent=100")],
    )
    _journal(
        world,
        6006,
        "cid-clone",
        [(FEB_19, DETAIL), (FEB_19 + 1, "amount_fen=30000 discount_fen=3000 percent=10")],
    )
    batches = tmp_path / "batches"
    export_claims(world, 6005, "2027-01-05", batches)
    export_claims(world, 6006, "2027-02-19", batches)
    r, feb, findings = world.report(batches, tmp_path / "feb", "2027-02")
    assert r.returncode == 3, r.stdout + r.stderr
    assert _seen(findings) == _not_counted(6006, 62) and len(findings) == 1
    first = findings[0]["first_use"]  # counter 1 of 5 January; its counter 2 proves nothing
    assert (first["file"], first["terminal_id"], first["seq"]) == ("6005-2027-01-05.fcb", 6005, 1)
    (m,) = feb["merchants"]
    got = (m["tills"], m["claims"], m["denied"], m["verified"], m["amount_fen"], m["discount_fen"])
    assert got == (1, 2, 0, 1, 30000, 3000)
    assert (feb["stats"]["claims"], feb["stats"]["findings"]) == (2, 1)
    r, jan, findings = world.report(batches, tmp_path / "jan", "2027-01")
    assert r.returncode == 3, r.stdout + r.stderr
    assert [(f["kind"], f["terminal_id"], f["seq"]) for f in findings] == [
        ("rule_mismatch", 6005, 2)
    ]
    assert _verified(jan) + _verified(feb) == 2  # counter 1 in January, counter 2 in February
