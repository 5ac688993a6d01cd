"""Venues in the settlement: each first entry of a service day paid at its site's ticket
price, a second entry (from a gate that let it through) named and not paid, a merchant's
claims refused, and venues reported alongside the transit operators."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from settle_world import DAY, FARES, LAYOUT, World, day_ms
from test_settlement_outputs import settle, totals

from farecore.errors import MalformedFile
from farecore.journal.terminal import Direction
from farecore.settlement import Ledger
from farecore.settlement.fares import parse_fares

NEXT = DAY + dt.timedelta(days=1)
ONE_DAY = 86_400_000

VENUE_FARES = (
    FARES
    + """
[[operator]]
id = "qd-parks"
kind = "venue"
regions = [370200]

[[venue]]
operator = "qd-parks"
site = "zhongshan-park"
ticket_fen = 1000
effective_from = "2026-01-01"

[[venue]]
operator = "qd-parks"
site = "zhongshan-park"
ticket_fen = 1500
effective_from = "2026-03-02"

[[venue]]
operator = "qd-parks"
site = "badaguan"
ticket_fen = 2000
effective_from = "2026-01-01"
"""
)

VENUE_LAYOUT = dict(LAYOUT) | {
    301: ("qd-parks", "zhongshan-park", "south-gate", Direction.VISIT, 0, 0),
    302: ("qd-parks", "zhongshan-park", "east-gate", Direction.VISIT, 500, 0),
    303: ("qd-parks", "badaguan", "main", Direction.VISIT, 2000, 0),
    304: ("qd-parks", "no-price-park", "main", Direction.VISIT, 2000, 0),
    401: ("rongjun-alliance", "m-1001", "till-1", Direction.CLAIM, 0, 0),
}


@pytest.fixture
def venues(tmp_path: Path) -> Any:
    w = World(tmp_path / "world", layout=VENUE_LAYOUT, fares=VENUE_FARES)
    yield w
    w.close()


def anomalies(files: dict[str, bytes], kind: str) -> list[tuple[int, int, int]]:
    return sorted(
        (a["terminal_id"], a["seq"], a["card_id"])
        for a in json.loads(files["anomalies.json"])["anomalies"]
        if a["kind"] == kind
    )


def stats(files: dict[str, bytes]) -> dict[str, int]:
    return dict(json.loads(files["manifest.json"])["stats"])


def test_first_entries_are_paid_at_the_ticket_price_and_a_second_is_not(
    venues: World, tmp_path: Path
) -> None:
    # The world's gates apply no venue rule: they stand for gates that lie.
    assert venues.tap(301, 1, day_ms(0.1))  # 00:06 local: Zhongshan Park, 1500
    assert venues.tap(303, 1, day_ms(10))  # Badaguan the same day: another site, 2000
    assert venues.tap(302, 1, day_ms(23.9))  # Zhongshan again, other entrance: refused
    assert venues.tap(301, 2, day_ms(10))  # another card: 1500
    assert venues.tap(101, 1, day_ms(9))  # a bus ride the same day: 200
    venues.export()
    files = settle(venues, tmp_path / "out")
    assert totals(files) == [
        ["2026-03-02", "qd-bus", "1", "1", "200"],
        ["2026-03-02", "qd-parks", "badaguan", "1", "2000"],
        ["2026-03-02", "qd-parks", "zhongshan-park", "2", "3000"],
    ]
    assert anomalies(files, "already_entered") == [(302, 1, 1)]
    assert stats(files)["amount_fen"] == 5200
    rides = json.loads(files["manifest.json"])
    assert rides["stats"]["rides_paid"] == 4


def test_a_site_without_a_ticket_price_is_named(venues: World, tmp_path: Path) -> None:
    assert venues.tap(304, 7, day_ms(10))
    venues.export()
    files = settle(venues, tmp_path / "out")
    assert anomalies(files, "no_fare") == [(304, 1, 7)]
    assert stats(files)["amount_fen"] == 0


def test_a_merchant_claim_is_not_a_ride(venues: World, tmp_path: Path) -> None:
    assert venues.tap(401, 5, day_ms(12))
    assert venues.tap(301, 5, day_ms(13))
    venues.export()
    files = settle(venues, tmp_path / "out")
    assert anomalies(files, "not_a_ride") == [(401, 1, 5)]
    assert stats(files)["amount_fen"] == 1500
    assert [r[1] for r in totals(files)] == ["qd-parks"]


def test_the_service_day_ends_at_local_midnight_across_nights(
    venues: World, tmp_path: Path
) -> None:
    """An entry a minute after local midnight is the next day's first; a late batch of
    the first day is checked against the entry the first night already paid."""
    assert venues.tap(301, 3, day_ms(9))
    assert venues.tap(302, 3, day_ms(15))  # same day, other entrance: handed in late
    assert venues.tap(301, 3, day_ms(24) + 60_000)  # 00:01 the next day: a new day
    venues.export(DAY)
    venues.export(NEXT)
    late = venues.batches / f"302-{DAY.isoformat()}.fcb"
    held_back = tmp_path / late.name
    shutil.move(late, held_back)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        night1 = settle(venues, tmp_path / "n1", ledger=ledger)
        assert stats(night1)["amount_fen"] == 1500
        shutil.move(held_back, late)
        night2 = settle(venues, tmp_path / "n2", day=NEXT, ledger=ledger)
    assert stats(night2)["amount_fen"] == 1500  # the next day's entry
    assert anomalies(night2, "already_entered") == [(302, 1, 3)]
    # The correction's site line says it paid nothing (as a transit line would).
    assert night2["corrections.csv"].decode().splitlines()[1:] == [
        "2026-03-02,qd-parks,zhongshan-park,0,0"
    ]


def test_entries_on_consecutive_days_are_all_paid(venues: World, tmp_path: Path) -> None:
    for k in range(2):
        assert venues.tap(301, 9, day_ms(10) + k * ONE_DAY)
    venues.export(DAY)
    venues.export(NEXT)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        one = settle(venues, tmp_path / "n1", ledger=ledger)
        two = settle(venues, tmp_path / "n2", day=NEXT, ledger=ledger)
    assert stats(one)["amount_fen"] == stats(two)["amount_fen"] == 1500
    assert not anomalies(two, "already_entered")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            '[[venue]]\noperator = "qd-parks"\nsite = "x"\nticket_fen = 100\n'
            'effective_from = "2026-01-01"\n',
            "is not an [[operator]] with kind",
        ),
        ('[[operator]]\nid = "p"\nkind = "museum"\nregions = [1]\n', "kind must be"),
        (
            '[[operator]]\nid = "p"\nkind = "venue"\nregions = [1]\n'
            "[operator.passback_s]\nbus = 60\n",
            "remove passback_s",
        ),
        (
            '[[operator]]\nid = "p"\nregions = [1]\n[operator.passback_s]\nvenue = 60\n',
            "passback_s",
        ),
        (
            '[[operator]]\nid = "p"\nkind = "venue"\nregions = [1]\n'
            '[[venue]]\noperator = "p"\nsite = "s"\nticket_fen = -1\neffective_from = "2026-01-01"\n',
            "ticket_fen",
        ),
        (
            '[[operator]]\nid = "p"\nkind = "venue"\nregions = [1]\n'
            '[[venue]]\noperator = "p"\nsite = "s"\nticket = 1\neffective_from = "2026-01-01"\n',
            "ticket_fen",
        ),
        (
            '[[operator]]\nid = "p"\nkind = "venue"\nregions = [1]\n'
            '[[venue]]\noperator = "p"\nsite = "s"\nticket_fen = 1\neffective_from = "2026-01-01"\n'
            '[[venue]]\noperator = "p"\nsite = "s"\nticket_fen = 2\neffective_from = "2026-01-01"\n',
            "same venue site",
        ),
        (
            '[[operator]]\nid = "p"\nkind = "venue"\nregions = [1]\n'
            '[[bus]]\noperator = "p"\nline = "1"\nfare_fen = 1\neffective_from = "2026-01-01"\n',
            "is a venue",
        ),
        ('[[venu]]\noperator = "p"\n', "venue"),
        (
            '[[operator]]\nid = "p"\nkind = "venue"\nregions = [1]\n'
            '[[operator]]\nid = "q"\nkind = "venue"\nregions = [1]\n'
            '[[venue]]\noperator = "p"\nsite = "s"\nticket_fen = 1\neffective_from = "2026-01-01"\n'
            '[[venue]]\noperator = "q"\nsite = "s"\nticket_fen = 1\neffective_from = "2026-01-01"\n',
            "listed under two operators",
        ),
    ],
)
def test_bad_venue_fares_are_named(text: str, needle: str) -> None:
    with pytest.raises(MalformedFile) as err:
        parse_fares(text)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_the_ticket_price_in_force_is_the_latest_not_after_the_day() -> None:
    fares = parse_fares(VENUE_FARES)
    assert fares.venue_fare("qd-parks", "zhongshan-park", DAY - dt.timedelta(days=1)) == 1000
    assert fares.venue_fare("qd-parks", "zhongshan-park", DAY) == 1500
    assert fares.venue_fare("qd-parks", "zhongshan-park", dt.date(2025, 12, 31)) is None
    assert fares.venue_fare("qd-parks", "badaguan", DAY) == 2000
    assert fares.venue_fare("qd-bus", "badaguan", DAY) is None
    policy = fares.policy("qd-parks")
    assert policy is not None and policy.kind == "venue"
    assert policy.daily(Direction.VISIT) and not policy.daily(Direction.BOARD)
