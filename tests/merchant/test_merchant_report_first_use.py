"""Where a reused counter was first used: a ``reused_counter`` finding on a use not
counted names the first use's batch file, SHA-256, till, day, seq, merchant and time, so
a clerk can find both claims; on the same day at another till, on the day across the
month's edge, and on a day long before. The first is the earliest by time (not the
lowest till), and the outputs are the same bytes whatever order the batches come in.
Each claim goes through the real tap, journal, export and report."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from merchant_world import World, export_claims, journal_claims, make_world

from farecore.merchant.report import Month, load_report_inputs, run_report
from farecore.merchant.report_outputs import write_report

Q = dt.timezone(dt.timedelta(hours=8))
MIN_MS = 60_000
JAN_5 = int(dt.datetime(2027, 1, 5, 10, tzinfo=Q).timestamp() * 1000)
NEWYEAR = int(dt.datetime(2027, 1, 1, tzinfo=Q).timestamp() * 1000)
DETAIL = "amount_fen=10000 discount_fen=1000 percent=10"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = make_world(tmp_path_factory.mktemp("first-use"))
    w.card("fay", 81)  # another holder's claims, so the first use is not seq 1
    return w


def _tills(world: World, *tills: tuple[int, str]) -> None:
    for tid, merchant in tills:
        world.till(tid, merchant, f"till-{tid}", discount="percent = 10")
    world.register({t: world.tills[t] for t in world.tills})


def _journal(world: World, tid: int, items: list[tuple[int, str]]) -> None:
    journal_claims(world, tid, [(at_ms, card, DETAIL) for at_ms, card in items])


def _at(batch: Path, tid: int, seq: int, merchant: str, time_ms: int) -> dict[str, Any]:
    """The ``first_use`` a finding must give for the claim ``tid``/``seq`` in ``batch``."""
    return {
        "file": batch.name,
        "batch_sha256": hashlib.sha256(batch.read_bytes()).hexdigest(),
        "terminal_id": tid,
        "day": batch.stem.split("-", 1)[1],
        "seq": seq,
        "merchant": merchant,
        "time_ms": time_ms,
    }


def _reuses(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in findings if f["kind"] == "reused_counter"]


def test_a_clone_on_the_same_day_names_the_earlier_use(world: World, tmp_path: Path) -> None:
    """Eve's card at till 8002 at 10:02 (its third claim of the day), her clone at till
    8001 at 11:00 (its first): the first use is 8002's, though 8001 is the lower till."""
    world.card("eve", 80)
    shutil.copy(world.root / "eve.card", world.root / "eve-clone.card")
    _tills(world, (8001, "laoshan-books"), (8002, "jimo-tea"))
    _journal(world, 8002, [(JAN_5, "fay"), (JAN_5 + MIN_MS, "fay"), (JAN_5 + 2 * MIN_MS, "eve")])
    _journal(world, 8001, [(JAN_5 + 60 * MIN_MS, "eve-clone")])
    batches = tmp_path / "batches"
    first = export_claims(world, 8002, "2027-01-05", batches)
    again = export_claims(world, 8001, "2027-01-05", batches)
    r, summary, findings = world.report(batches, tmp_path / "jan", "2027-01")
    assert r.returncode == 3, r.stdout + r.stderr
    sha = {b.name: hashlib.sha256(b.read_bytes()).hexdigest() for b in (first, again)}
    assert (
        _reuses(findings)
        == findings
        == [
            {
                "kind": "reused_counter",
                "terminal_id": 8001,
                "seq": 1,
                "card_id": 80,
                "merchant": "laoshan-books",
                "file": again.name,
                "batch_sha256": sha[again.name],
                "detail": "counter 1 used 2 times; not counted",
                "first_use": _at(first, 8002, 3, "jimo-tea", JAN_5 + 2 * MIN_MS),
            },
            {
                "kind": "reused_counter",
                "terminal_id": 8002,
                "seq": 3,
                "card_id": 80,
                "merchant": "jimo-tea",
                "file": first.name,
                "batch_sha256": sha[first.name],
                "detail": "counter 1 used 2 times; counted (first use)",
            },
        ]
    )
    assert summary["stats"]["verified"] == 3  # fay's two and eve's first


def test_a_clone_across_new_year_names_the_december_use(world: World, tmp_path: Path) -> None:
    """The first use at 23:00 on 31 December, the clone's at 01:00 on 1 January: January
    reads 31 December as its neighbour day and names that batch; December names none."""
    world.card("gus", 82)
    shutil.copy(world.root / "gus.card", world.root / "gus-clone.card")
    _tills(world, (8003, "laoshan-books"), (8004, "laoshan-books"))
    _journal(world, 8003, [(NEWYEAR - 90 * MIN_MS, "fay"), (NEWYEAR - 60 * MIN_MS, "gus")])
    _journal(world, 8004, [(NEWYEAR + 60 * MIN_MS, "gus-clone")])
    batches = tmp_path / "batches"
    first = export_claims(world, 8003, "2026-12-31", batches)
    export_claims(world, 8004, "2027-01-01", batches)
    r, _, findings = world.report(batches, tmp_path / "jan", "2027-01")
    assert r.returncode == 3, r.stdout + r.stderr
    (f,) = findings
    assert (f["terminal_id"], f["seq"], f["detail"]) == (
        8004,
        1,
        "counter 1 used 2 times; not counted",
    )
    assert f["first_use"] == _at(first, 8003, 2, "laoshan-books", NEWYEAR - 60 * MIN_MS)
    r, _, findings = world.report(batches, tmp_path / "dec", "2026-12")
    assert r.returncode == 3 and [(f["terminal_id"], f["seq"]) for f in findings] == [(8003, 2)]
    assert "first_use" not in findings[0] and findings[0]["file"] == first.name


def test_the_outputs_are_the_same_bytes_whatever_the_order(world: World, tmp_path: Path) -> None:
    """An earlier day's first use, read from a batch that is also there under a second
    name: the report names one of them (the one whose path sorts first), the same in
    every run and for every order of the paths."""
    world.card("hal", 83)
    shutil.copy(world.root / "hal.card", world.root / "hal-clone.card")
    _tills(world, (8005, "jimo-tea"), (8006, "jimo-tea"))
    _journal(world, 8005, [(JAN_5 - 20 * 86_400_000, "hal")])  # 16 December
    _journal(world, 8006, [(JAN_5, "fay"), (JAN_5 + MIN_MS, "hal-clone")])
    batches = tmp_path / "batches"
    first = export_claims(world, 8005, "2026-12-16", batches)
    export_claims(world, 8006, "2027-01-05", batches)
    shutil.copy(first, batches / "zz-copy.fcb")
    outs = []
    for n in range(2):
        r, _, findings = world.report(batches, tmp_path / f"cli-{n}", "2027-01")
        assert r.returncode == 3, r.stdout + r.stderr
        assert findings[0]["first_use"] == _at(first, 8005, 1, "jimo-tea", JAN_5 - 20 * 86_400_000)
        outs.append(tmp_path / f"cli-{n}")
    inputs = load_report_inputs(
        Month(2027, 1),
        world.root / "terminals.csv",
        world.keyring,
        rules=world.write_rules(tmp_path / "rules.csv"),
    )
    paths = sorted(str(p) for p in batches.iterdir())
    for n, order in enumerate([paths[::-1], random.Random(3).sample(paths, len(paths))]):
        write_report(run_report(inputs, order), tmp_path / f"lib-{n}")
        outs.append(tmp_path / f"lib-{n}")
    names = ("merchants.csv", "findings.json", "summary.json")
    contents = {tuple((out / name).read_bytes() for name in names) for out in outs}
    assert len(contents) == 1
