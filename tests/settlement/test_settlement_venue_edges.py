"""The venue rule in the settlement at its edges: entries stamped across midnight within
the clock tolerance, late batches, and corrections settled on the night that pays the
next day. Each case is a second entry on one service day that must not be paid."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from settle_world import DAY, World, day_ms, terminal_key
from test_settlement_outputs import settle
from test_settlement_venues import VENUE_FARES, VENUE_LAYOUT, stats
from test_settlement_venues import anomalies as kinds

from farecore.journal.batch_sign import _sign_batch
from farecore.journal.terminal import JournalReader
from farecore.settlement import Ledger

NEXT = DAY + dt.timedelta(days=1)
MIN = 60_000


@pytest.fixture
def venues(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "world", layout=VENUE_LAYOUT, fares=VENUE_FARES)
    yield w
    w.close()


def amount(files: dict[str, bytes]) -> int:
    return stats(files)["amount_fen"]


def test_second_entry_in_next_days_batch_inside_clock_tolerance(
    venues: World, tmp_path: Path
) -> None:
    """Card 1 enters at 10:00 on DAY (paid night 1). Gate 302's clock steps back 2.5 min
    after midnight (inside the 300 s tolerance), so its NEXT batch (seq cut) carries a
    second DAY entry of card 1 stamped 23:58 DAY. Night 2 should name it already_entered."""
    assert venues.tap(301, 1, day_ms(10))
    assert venues.tap(302, 99, day_ms(24) + 30_000)  # 00:00:30 NEXT: the cut
    assert venues.tap(302, 1, day_ms(24) - 2 * MIN)  # 23:58 DAY, clock stepped back
    venues.export(DAY)
    venues.export(NEXT)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        n1 = settle(venues, tmp_path / "n1", ledger=ledger)
        n2 = settle(venues, tmp_path / "n2", day=NEXT, ledger=ledger)
    assert amount(n1) == 1500
    # Expected: card 99's entry only; card 1's DAY second entry refused.
    assert kinds(n2, "already_entered") == [(302, 2, 1)]
    assert amount(n2) == 1500


def test_same_night_correction_and_next_day(venues: World, tmp_path: Path) -> None:
    """Night settling NEXT receives DAY's late batch of gate 301 (10:00 DAY entry) and
    302's NEXT batch holding a 23:58 DAY entry of the same card (clock step back).
    The correction pays 10:00; the NEXT day's walk does not see tonight's DAY rides."""
    assert venues.tap(301, 1, day_ms(10))
    assert venues.tap(302, 99, day_ms(24) + 30_000)
    assert venues.tap(302, 1, day_ms(24) - 2 * MIN)
    venues.export(DAY)
    venues.export(NEXT)
    late = venues.batches / f"301-{DAY.isoformat()}.fcb"
    held = tmp_path / late.name
    shutil.move(late, held)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        n1 = settle(venues, tmp_path / "n1", ledger=ledger)
        assert amount(n1) == 0
        shutil.move(held, late)
        n2 = settle(venues, tmp_path / "n2", day=NEXT, ledger=ledger)
    assert kinds(n2, "already_entered") == [(302, 2, 1)]


def test_same_night_correction_isolated(venues: World, tmp_path: Path) -> None:
    """As above, with the DAY entry at 23:57 DAY, inside any context window: only the
    fact that tonight's correction is not context for tonight's next day matters."""
    assert venues.tap(301, 1, day_ms(24) - 3 * MIN)  # 23:57 DAY, handed in late
    assert venues.tap(302, 99, day_ms(24) + 30_000)
    assert venues.tap(302, 1, day_ms(24) - 2 * MIN)  # 23:58 DAY in 302's NEXT batch
    venues.export(DAY)
    venues.export(NEXT)
    late = venues.batches / f"301-{DAY.isoformat()}.fcb"
    held = tmp_path / late.name
    shutil.move(late, held)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        n1 = settle(venues, tmp_path / "n1", ledger=ledger)
        assert amount(n1) == 0
        shutil.move(held, late)
        n2 = settle(venues, tmp_path / "n2", day=NEXT, ledger=ledger)
    assert kinds(n2, "already_entered") == [(302, 2, 1)]


def test_control_same_when_both_on_one_night(venues: World, tmp_path: Path) -> None:
    """Control: the same rides, all handed in on time: the NEXT night sees 23:57 in its
    ledger context and refuses 23:58."""
    assert venues.tap(301, 1, day_ms(24) - 3 * MIN)
    assert venues.tap(302, 99, day_ms(24) + 30_000)
    assert venues.tap(302, 1, day_ms(24) - 2 * MIN)
    venues.export(DAY)
    venues.export(NEXT)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        settle(venues, tmp_path / "n1", ledger=ledger)
        n2 = settle(venues, tmp_path / "n2", day=NEXT, ledger=ledger)
    assert kinds(n2, "already_entered") == [(302, 2, 1)]


def _lying_batch(venues: World, tid: int, day: dt.date, first: int, last: int) -> None:
    """A gate's own signed batch of ``day`` holding seqs first..last (what a gate that
    lies about its day cut hands in; every byte is signed by the terminal's key)."""
    with JournalReader(venues.root / f"journal-{tid}.sqlite") as reader:
        prev = reader.hash_of(first - 1)
        chain = list(reader.rows(first, last))
        creds = reader.credentials(
            row.credential_sha256 for row, _ in chain if row.credential_sha256 is not None
        )
    data = _sign_batch(
        [b for _, b in chain], chain[-1][0].hash, creds, terminal_id=tid, day=day,
        utc_offset_min=480, first_seq=first, prev_hash=prev, key=terminal_key(tid),
    )  # fmt: skip
    (venues.batches / f"{tid}-{day.isoformat()}.fcb").write_bytes(data)


def test_late_batch_with_an_entry_stamped_just_after_midnight(
    venues: World, tmp_path: Path
) -> None:
    """Night 1 pays DAY; night 2 pays NEXT, including card 1's 10:00 NEXT entry at 301.
    Night 3 receives 302's late DAY batch, which carries card 1 at 00:02 NEXT (inside the
    tolerance): a second NEXT entry. The correction's context ends at end(DAY) + tol, so
    10:00 NEXT is not seen."""
    assert venues.tap(302, 99, day_ms(23))  # 302 seq 1, 23:00 DAY
    assert venues.tap(302, 1, day_ms(24) + 2 * MIN)  # 302 seq 2, 00:02 NEXT
    assert venues.tap(301, 1, day_ms(34))  # 10:00 NEXT
    venues.export(DAY)
    venues.export(NEXT)
    next_302 = venues.batches / f"302-{NEXT.isoformat()}.fcb"
    next_302.unlink()  # 302 hands in nothing for NEXT (its seq 2 went with DAY)
    _lying_batch(venues, 302, DAY, 1, 2)
    late = venues.batches / f"302-{DAY.isoformat()}.fcb"
    held = tmp_path / late.name
    shutil.move(late, held)
    day3 = NEXT + dt.timedelta(days=1)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        settle(venues, tmp_path / "n1", ledger=ledger)
        n2 = settle(venues, tmp_path / "n2", day=NEXT, ledger=ledger)
        assert amount(n2) == 1500
        shutil.move(held, late)
        venues.export(day3)
        n3 = settle(venues, tmp_path / "n3", day=day3, ledger=ledger)
    stats3 = json.loads(n3["manifest.json"])["stats"]
    # Expected: only card 99 (1500). Card 1 was paid for NEXT on night 2 (10:00), and
    # the correction pays its 00:02 NEXT entry too (3000 today).
    assert stats3["correction_amount_fen"] == 1500, stats3["correction_amount_fen"]
    assert kinds(n3, "already_entered") == [(302, 2, 1)]
