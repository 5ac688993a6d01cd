"""Venue gates: one free entry per card, per site, per service day (CARD-SPEC §7,
ALREADY_ENTERED).

The rule's state against a plain-Python oracle, its configuration, and real
``farecore gate`` processes at two entrances of one park sharing the site's state file.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.card.keys import SigningKey, save_signing_key
from farecore.decide.decision import Reason
from farecore.decide.revocation import build_table
from farecore.errors import ConfigError
from farecore.gate.config import load_gate_config
from farecore.journal.batch_header import day_bounds_ms, service_day
from farecore.journal.passback import PassbackRule, PassbackStore
from farecore.journal.record_bytes import MAX_DIRECTION
from farecore.journal.records import ROLE_DIRECTION, Direction
from farecore.journal.terminal import JournalReader
from sim.issuer import Issuer, derive_key

QINGDAO = 480
DAY = dt.date(2026, 10, 1)  # National Day: the parks are full
START, _ = day_bounds_ms(DAY, QINGDAO)
HOUR = 3_600_000


def _store(path: Path, site: str = "zhongshan-park", offset: int = QINGDAO) -> PassbackStore:
    return PassbackStore.open(
        path, PassbackRule.once_a_day(offset), site, boot="b", monotonic=lambda: 0
    )


def test_a_second_entry_the_same_service_day_is_refused(tmp_path: Path) -> None:
    south, east = _store(tmp_path / "s.sqlite"), _store(tmp_path / "s.sqlite")
    other_site = _store(tmp_path / "s.sqlite", "badaguan")
    try:
        assert south.reason is Reason.ALREADY_ENTERED
        assert not south.refuses(7, START + 9 * HOUR)
        south.record(7, START + 9 * HOUR)
        assert east.refuses(7, START + 23 * HOUR)  # the other entrance shares the state
        assert east.refuses(7, START)  # the day's first millisecond is the same day
        assert not east.refuses(8, START + 10 * HOUR)  # another card
        assert not other_site.refuses(7, START + 10 * HOUR)  # another site
        assert not east.refuses(7, START + 24 * HOUR)  # local midnight: a new day
    finally:
        for s in (south, east, other_site):
            s.close()


def test_the_service_day_is_local_not_utc(tmp_path: Path) -> None:
    """15:59 UTC and 16:01 UTC are two Qingdao days, though one UTC day."""
    store = _store(tmp_path / "s.sqlite")
    try:
        before_midnight = START + 24 * HOUR - 60_000
        store.record(3, before_midnight)
        utc = dt.datetime.fromtimestamp(before_midnight / 1000, dt.UTC)
        assert utc.hour == 15
        assert not store.refuses(3, before_midnight + 120_000)
    finally:
        store.close()


def test_pruning_forgets_only_entries_before_yesterday(tmp_path: Path) -> None:
    store = _store(tmp_path / "s.sqlite")
    try:
        store.record(1, START - 25 * HOUR)  # the day before yesterday, late evening
        store.record(2, START - HOUR)  # yesterday evening: kept, a day of margin
        for card in range(3, 1002):  # the 1,000th write prunes
            store.record(card, START + 8 * HOUR)
        db = sqlite3.connect(tmp_path / "s.sqlite")
        cards = {r[0] for r in db.execute("SELECT card_id FROM passback")}
        db.close()
        assert 1 not in cards and 2 in cards and len(cards) == 1000
        assert store.refuses(3, START + 20 * HOUR) and not store.refuses(2, START + 20 * HOUR)
    finally:
        store.close()


_taps = st.lists(
    st.tuples(
        st.integers(1, 4),  # card
        st.sampled_from(["a", "b"]),  # site
        st.integers(0, 3 * 24 * HOUR),  # ms after START, over three days
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(taps=_taps, offset=st.sampled_from([-300, 0, 330, 480, 840]))
def test_the_rule_matches_its_oracle(
    tmp_path_factory: pytest.TempPathFactory, taps: list[tuple[int, str, int]], offset: int
) -> None:
    """Tapped in time order, a tap is refused iff the card entered the site earlier on
    the same local day (a refused tap does not count as an entry)."""
    path = tmp_path_factory.mktemp("venue") / "s.sqlite"
    stores = {site: _store(path, site, offset) for site in ("a", "b")}
    entered: set[tuple[int, str, dt.date]] = set()
    try:
        for card, site, at in sorted(taps, key=lambda t: t[2]):
            now = START + at
            day = service_day(now, offset)
            expected = (card, site, day) in entered
            assert stores[site].refuses(card, now) == expected
            if not expected:
                stores[site].record(card, now)
                entered.add((card, site, day))
    finally:
        for s in stores.values():
            s.close()


# --- configuration -----------------------------------------------------------------

_BASE = """
[terminal]
id = 5001
operator = "qd-parks"
line = "zhongshan-park"
place = "south-gate"
role = "{role}"
[policy]
regions = [370200]
[keyring]
path = "keyring.json"
[revocation]
enabled = false
"""


@pytest.mark.parametrize(
    ("role", "extra", "message"),
    [
        ("venue", "", "role = venue needs [venue] store"),
        ("venue", '[passback]\nwindow_s = 60\nstore = "p.sqlite"\n', "not [passback]"),
        ("venue", '[venue]\nstore = "v.sqlite"\n[passback]\nwindow_s = 0\n', "not [passback]"),
        (
            "venue",
            '[venue]\nstore = "v.sqlite"\n[upload]\nto = "up"\ntz = "+00:00"\n',
            "venue.utc_offset and upload.tz",
        ),
        ("bus", '[venue]\nstore = "v.sqlite"\n', "terminal.role is 'bus', not venue"),
        ("venue", '[venue]\nstore = "v.sqlite"\nutc_offset = "+8"\n', "venue.utc_offset"),
        ("venue", '[venue]\nstore = ""\n', "venue.store"),
        ("venue", '[venue]\nstor = "v.sqlite"\n', "store"),
        ("museum", '[venue]\nstore = "v.sqlite"\n', "terminal.role must be one of"),
    ],
)
def test_venue_settings_are_checked(tmp_path: Path, role: str, extra: str, message: str) -> None:
    cfg = tmp_path / "gate.toml"
    cfg.write_text(_BASE.format(role=role) + extra)
    with pytest.raises(ConfigError) as err:
        load_gate_config(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_venue_config_loads(tmp_path: Path) -> None:
    cfg = tmp_path / "gate.toml"
    cfg.write_text(
        _BASE.format(role="venue") + '[venue]\nstore = "v.sqlite"\nutc_offset = "+09:00"\n'
    )
    loaded = load_gate_config(cfg)
    assert loaded.venue_store == tmp_path / "v.sqlite" and loaded.venue_utc_offset_min == 540


# --- two real gate processes at one park ---------------------------------------------


def _farecore(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farecore", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _park(tmp: Path) -> None:
    issuer = Issuer.from_seed("venue-gates")
    save_signing_key(issuer.key, tmp / "issuer")
    issuer.keyring().save(tmp / "keyring.json")
    signer = SigningKey("revocation", 5, derive_key("venue-gates", "revocation"))
    save_signing_key(signer, tmp / "revocation")
    # Card 43 is revoked: a revoked card is REVOKED, which outranks ALREADY_ENTERED.
    build_table([43], [1_767_225_600], [1], signer, 1, int(time.time()), tmp / "t.frt")
    for card in (42, 43, 44):
        r = _farecore(
            "card", "new", "--key", "issuer.key", "--id", str(card), "--category", "1",
            "--region", "370200", "--valid-from", "2026-01-01T00:00:00Z",
            "--out", f"c{card}.card", cwd=tmp,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    for tid, entrance in ((5001, "south-gate"), (5002, "east-gate")):
        (tmp / f"{entrance}.toml").write_text(
            f'[terminal]\nid = {tid}\noperator = "qd-parks"\nline = "zhongshan-park"\n'
            f'place = "{entrance}"\nrole = "venue"\n[policy]\nregions = [370200]\n'
            '[keyring]\npath = "keyring.json"\n[revocation]\ntable = "t.frt"\n'
            'signer = "revocation.pub"\n'
            f'[journal]\npath = "journal-{tid}.sqlite"\n[state]\ndir = "state-{tid}"\n'
            '[venue]\nstore = "zhongshan-park.sqlite"\n'
        )


def _gate(tmp: Path, entrance: str, cards: list[int]) -> list[str]:
    reader = "virtual:" + ",".join(f"c{c}.card" for c in cards)
    r = _farecore(
        "gate", "--reader", reader, "--config", f"{entrance}.toml",
        "--max-taps", str(len(cards)), cwd=tmp,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    return [d["reason"] or d["decision"] for d in lines]


def test_two_entrances_of_one_park_admit_a_card_once_a_day(tmp_path: Path) -> None:
    _park(tmp_path)
    south = _gate(tmp_path, "south-gate", [42, 42, 44, 43])
    assert south == ["ACCEPT", "ALREADY_ENTERED", "ACCEPT", "REVOKED"]
    # The east gate is another process on the same site file: 42 and 44 are known.
    east = _gate(tmp_path, "east-gate", [44, 42])
    assert east == ["ALREADY_ENTERED", "ALREADY_ENTERED"]
    # The journals hold each entry with its site and direction, for the settlement.
    with JournalReader(tmp_path / "journal-5002.sqlite") as journal:
        records = list(journal.records())
    assert [r.decision for r in records] == ["ALREADY_ENTERED", "ALREADY_ENTERED"]
    assert {(r.operator, r.line, r.place, r.direction) for r in records} == {
        ("qd-parks", "zhongshan-park", "east-gate", Direction.VISIT)
    }


def test_the_record_codec_knows_every_direction() -> None:
    assert max(Direction) == MAX_DIRECTION
    assert ROLE_DIRECTION["venue"] is Direction.VISIT
    assert Direction.CLAIM not in ROLE_DIRECTION.values()  # a till is not a gate


def test_a_fast_clock_at_one_entrance_does_not_prune_today(tmp_path: Path) -> None:
    """East's clock runs 4 min fast; its 1,000th write lands at 00:01 tomorrow on its
    clock. South's entry of today must still refuse a second entry at 23:58."""
    south, east = _store(tmp_path / "s.sqlite"), _store(tmp_path / "s.sqlite")
    end = START + 24 * HOUR
    try:
        south.record(7, START + 10 * HOUR)
        for card in range(1000, 1999):
            east.record(card, START + 20 * HOUR)
        east.record(1999, end + 60_000)  # the 1,000th write prunes
        assert south.refuses(7, end - 120_000)
    finally:
        south.close()
        east.close()


def test_an_earlier_day_entry_never_replaces_a_later_one(tmp_path: Path) -> None:
    """A clock stepped back across midnight (within its tolerance): the entry stamped
    00:01 tomorrow stays, so the card is refused tomorrow morning as it should be."""
    store = _store(tmp_path / "s.sqlite")
    end = START + 24 * HOUR
    try:
        store.record(5, end + 60_000)  # 00:01 tomorrow
        assert not store.refuses(5, end - 120_000)  # 23:58 today: another day
        store.record(5, end - 120_000)
        assert store.refuses(5, end + 9 * HOUR)  # 09:00 tomorrow: already entered
    finally:
        store.close()


def test_a_damaged_row_does_not_block_entry(tmp_path: Path) -> None:
    store = _store(tmp_path / "s.sqlite")
    try:
        store.record(6, START)
        db = sqlite3.connect(tmp_path / "s.sqlite")
        with db:
            db.execute("UPDATE passback SET wall_ms = ?", (2**62,))
        db.close()
        assert not store.refuses(6, START + HOUR)
    finally:
        store.close()
