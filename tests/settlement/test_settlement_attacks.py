"""Every way a batch could be made to pay for a ride that never happened, tried and paid 0.

Withheld and shortened batches, a day replayed on the next night, a clock set back, and
denied taps relabelled ACCEPT by a terminal that holds its own key: each ends with no fen
paid for anything that is not a real ride, and is named in the anomalies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from settle_world import DAY, FARES, World, day_ms, random_day, terminal_key
from test_settlement_outputs import scripted_day, settle

from farecore.card.keys import SigningKey, save_signing_key
from farecore.decide.checks import InMemoryRevocation, RevocationEntry
from farecore.decide.revocation import build_table
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.journal.batch import BATCH_MAGIC, encode_batch
from farecore.journal.terminal import JournalReader, JournalRecord, decode_record, encode_record
from farecore.settlement import Ledger, find_batches, load_inputs, run_settlement
from sim.issuer import derive_key

NEXT = DAY + dt.timedelta(days=1)


def found(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return list(json.loads(files["anomalies.json"])["anomalies"])


def kinds(files: dict[str, bytes]) -> set[str]:
    return {a["kind"] for a in found(files)}


def paid(files: dict[str, bytes]) -> int:
    return int(json.loads(files["manifest.json"])["stats"]["amount_fen"])


def records(world: World, tid: int) -> tuple[list[JournalRecord], dict[bytes, bytes]]:
    with JournalReader(world.root / f"journal-{tid}.sqlite") as r:
        recs = list(r.records())
        creds = {c: r.credential(c) for c in {x.credential_sha256 for x in recs} if c}
    return recs, creds


def rechain(recs: list[JournalRecord], first_seq: int, prev: bytes) -> list[JournalRecord]:
    """The records renumbered from ``first_seq`` and hashed again from ``prev``: what a
    terminal holding its own key can make of its journal."""
    out = []
    for i, r in enumerate(recs):
        body = encode_record(dataclasses.replace(r, seq=first_seq + i))
        r2 = decode_record(body, prev)
        out.append(r2)
        prev = r2.hash
    return out


def resign(
    world: World,
    tid: int,
    recs: list[JournalRecord],
    creds: dict[bytes, bytes],
    *,
    day: dt.date = DAY,
    first_seq: int = 1,
    prev: bytes | None = None,
    name: str | None = None,
) -> Path:
    prev = recs[0].prev_hash if prev is None and recs else (prev or b"\0" * 32)
    chained = rechain(recs, first_seq, prev)
    data = encode_batch(
        chained,
        creds,
        terminal_id=tid,
        day=day,
        utc_offset_min=480,
        first_seq=first_seq,
        prev_hash=prev,
        key=terminal_key(tid),
    )
    path = world.batches / (name or f"{tid}-{day.isoformat()}.fcb")
    path.write_bytes(data)
    return path


def relabel(world: World, tid: int, seqs: set[int]) -> None:
    """Re-sign ``tid``'s batch with the taps at ``seqs`` relabelled ACCEPT."""
    recs, creds = records(world, tid)
    for r in recs:
        if r.seq in seqs:
            assert r.decision != "ACCEPT" and r.card_signature is not None
    changed = [dataclasses.replace(r, decision="ACCEPT") if r.seq in seqs else r for r in recs]
    resign(world, tid, changed, creds)


# -- withheld and shortened batches -----------------------------------------------------


@pytest.fixture
def honest(world: World, tmp_path: Path) -> tuple[World, int]:
    # The default unpaired rule: a tap without its other half is paid the lowest fare,
    # which no real trip undercuts.
    (world.root / "fares.toml").write_text(FARES.replace('entry = "max"', 'entry = "min"'))
    random_day(world, 12, 60, seed=3)
    world.export()
    files = settle(world, tmp_path / "honest")
    assert kinds(files) <= {"impossible_travel"}
    return world, paid(files)


def test_withheld_exit_batches_pay_no_more_than_the_truth(
    honest: tuple[World, int], tmp_path: Path
) -> None:
    world, truth = honest
    for tid in (202, 204, 206):
        (world.batches / f"{tid}-{DAY.isoformat()}.fcb").unlink()
    files = settle(world, tmp_path / "out")
    assert paid(files) <= truth
    assert {a["terminal_id"] for a in found(files) if a["kind"] == "missing_batch"} == {
        202,
        204,
        206,
    }
    assert "held" in kinds(files)  # the entries wait for their exits


def test_a_shortened_or_renumbered_exit_batch_pays_no_more_than_the_truth(
    honest: tuple[World, int], tmp_path: Path
) -> None:
    world, truth = honest
    recs, creds = records(world, 204)
    assert len(recs) > 3
    resign(world, 204, recs[:-3], creds)  # the last three exits dropped, re-signed
    assert paid(settle(world, tmp_path / "a")) <= truth
    resign(world, 204, recs[:1] + recs[2:], creds)  # one deleted, the rest renumbered
    assert paid(settle(world, tmp_path / "b")) <= truth


# -- the same ride on two nights -------------------------------------------------------


def _two_nights(world: World, tmp_path: Path, tamper: Any) -> dict[str, bytes]:
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        first = settle(world, tmp_path / "n1", ledger=ledger)
        assert paid(first) == 200
        world.export(NEXT)  # every terminal's (empty) batch of the next day
        tamper()
        return settle(world, tmp_path / "n2", day=NEXT, ledger=ledger)


def test_a_day_relabelled_to_the_next_day_pays_nothing(world: World, tmp_path: Path) -> None:
    world.tap(101, 1, day_ms(8))

    def tamper() -> None:
        recs, creds = records(world, 101)
        resign(world, 101, recs, creds, day=NEXT, name="relabelled.fcb")

    world.export()
    files = _two_nights(world, tmp_path, tamper)
    assert paid(files) == 0
    assert "chain_conflict" in kinds(files)


def test_yesterdays_records_copied_into_a_continuing_batch_pay_nothing(
    world: World, tmp_path: Path
) -> None:
    world.tap(101, 1, day_ms(8))
    world.tap(101, 2, day_ms(24) - 60_000)  # 23:59, close enough to the next day
    world.export()

    def tamper() -> None:
        recs, creds = records(world, 101)
        # Seqs 3 and 4, linked to the settled head: copies of rides already paid.
        resign(world, 101, recs, creds, day=NEXT, first_seq=3, prev=recs[-1].hash)

    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        first = settle(world, tmp_path / "n1", ledger=ledger)
        assert paid(first) == 400
        world.export(NEXT)
        tamper()
        files = settle(world, tmp_path / "n2", day=NEXT, ledger=ledger)
    assert paid(files) == 0
    got = {(a["kind"], a["seq"]) for a in found(files) if a["terminal_id"] == 101}
    assert ("outside_day", 3) in got  # 08:00 yesterday is not on the next day
    assert ("already_paid", 4) in got  # 23:59 is within the tolerance, but was paid


def test_rides_stamped_by_a_clock_set_back_to_2022_pay_nothing(
    world: World, tmp_path: Path
) -> None:
    world.tap(101, 1, day_ms(8))
    world.cards.clear()
    long_ago = int(dt.datetime(2022, 3, 2, 9, tzinfo=dt.UTC).timestamp() * 1000)
    world.cards[2] = world.issuer.card(2, valid_from=long_ago // 1000 - 86_400)
    world.tap(101, 2, long_ago)  # the gate's clock says 2022
    world.tap(101, 3, day_ms(9))
    world.export()
    files = settle(world, tmp_path / "out")
    assert paid(files) == 400
    [a] = [a for a in found(files) if a["kind"] == "outside_day"]
    assert (a["seq"], a["card_id"]) == (2, 2)


def test_a_clock_stepped_back_within_the_day_is_not_paid(world: World, tmp_path: Path) -> None:
    world.tap(101, 1, day_ms(10))
    world.tap(101, 2, day_ms(9))  # an hour behind the record before it
    world.tap(101, 3, day_ms(10.01))
    world.export()
    files = settle(world, tmp_path / "out")
    assert paid(files) == 400
    [a] = [a for a in found(files) if a["kind"] == "clock_behind"]
    assert a["seq"] == 2


# -- denied taps relabelled ACCEPT -----------------------------------------------------


def _fares_with_passback(world: World) -> None:
    text = FARES.replace(
        'id = "qd-metro"\nregions = [370200]\n',
        'id = "qd-metro"\nregions = [370200]\npassback_s = {metro_entry = 600}\n',
    )
    assert text != FARES
    (world.root / "fares.toml").write_text(text)


def test_relabelled_passback_pays_nothing(world: World, tmp_path: Path) -> None:
    _fares_with_passback(world)
    world.tap(201, 1, day_ms(8))  # entry at A
    world.tap(202, 1, day_ms(8.1))  # exit at A (a 0-distance trip: 200)
    # The gate refused a second entry at A within 10 minutes; its terminal says ACCEPT.
    world.journals[201].close()
    del world.journals[201]
    world.tap(201, 1, day_ms(8.15))
    world.export()
    files = settle(world, tmp_path / "out")
    [a] = [a for a in found(files) if a["kind"] == "passback"]
    assert (a["terminal_id"], a["seq"], a["card_id"]) == (201, 2, 1)
    assert paid(files) == 200  # the one real trip
    # Half an hour later the same entry is a new ride again (unpaired: max in this file).
    world.tap(201, 1, day_ms(8.7))
    world.export()
    assert paid(settle(world, tmp_path / "later")) == 200 + 400


def test_relabelled_expired_and_wrong_region_pay_nothing(world: World, tmp_path: Path) -> None:
    world.cards[5] = world.issuer.card(5, valid_until=day_ms(7) // 1000)
    world.cards[6] = world.issuer.card(6, region=110000)
    assert not world.tap(101, 5, day_ms(8))
    assert not world.tap(101, 6, day_ms(8.5))
    assert world.tap(101, 7, day_ms(9))
    world.export()
    relabel(world, 101, {1, 2})
    files = settle(world, tmp_path / "out")
    got = {(a["kind"], a["card_id"]) for a in found(files)}
    assert {("expired", 5), ("wrong_region", 6)} <= got
    assert paid(files) == 200


def test_relabelled_revoked_pays_nothing_with_the_table_in_force(
    world: World, tmp_path: Path
) -> None:
    revoked_at = day_ms(0) // 1000
    world.journals[101] = world.journals.get(101) or _journal(world, 101)
    world.validators[101] = Validator(
        TerminalPolicy(101, frozenset({370200})),
        world.issuer.keyring(),
        InMemoryRevocation([RevocationEntry(8, revoked_at, 1)], generation=7),
    )
    assert not world.tap(101, 8, day_ms(8))
    assert world.tap(101, 9, day_ms(9))
    world.export()
    relabel(world, 101, {1})
    signer = SigningKey("revocation", 9, derive_key("settle-tests", "revocation"))
    _, pub = save_signing_key(signer, tmp_path / "rev")
    table = tmp_path / "gen7.frt"
    build_table(
        np.array([8], dtype=np.uint64),
        np.array([revoked_at]),
        np.array([1]),
        signer,
        7,
        revoked_at,
        table,
    )
    inputs = load_inputs(
        DAY,
        world.root / "terminals.csv",
        world.root / "keyring.json",
        world.root / "fares.toml",
        None,
        [table],
        pub,
    )
    result = run_settlement(inputs, find_batches(world.batches), tmp_path / "out")
    assert [(a.kind, a.card_id) for a in result.anomalies if a.kind != "after_revocation"] == [
        ("revoked_at_ride", 8)
    ]
    assert result.stats["amount_fen"] == 200


def _journal(world: World, tid: int) -> Any:
    from farecore.journal.terminal import Journal

    return Journal.open(world.root / f"journal-{tid}.sqlite", tid)


def test_a_ride_before_the_gate_could_know_is_paid_and_flagged(
    world: World, tmp_path: Path
) -> None:
    # Revoked at 07:00 in generation 8, but the gate still held generation 7: it could
    # not know, so the ride is paid, and flagged for the card office.
    world.journals[101] = _journal(world, 101)
    world.validators[101] = Validator(
        TerminalPolicy(101, frozenset({370200})),
        world.issuer.keyring(),
        InMemoryRevocation([], generation=7),
    )
    assert world.tap(101, 8, day_ms(8))
    world.export()
    signer = SigningKey("revocation", 9, derive_key("settle-tests", "revocation"))
    _, pub = save_signing_key(signer, tmp_path / "rev")
    tables = []
    for gen, ids in ((7, []), (8, [8])):
        path = tmp_path / f"gen{gen}.frt"
        build_table(
            np.array(ids, dtype=np.uint64),
            np.array([day_ms(7) // 1000] * len(ids), dtype=np.int64),
            np.array([1] * len(ids), dtype=np.uint8),
            signer,
            gen,
            day_ms(0) // 1000,
            path,
        )
        tables.append(path)
    inputs = load_inputs(
        DAY,
        world.root / "terminals.csv",
        world.root / "keyring.json",
        world.root / "fares.toml",
        None,
        tables,
        pub,
    )
    result = run_settlement(inputs, find_batches(world.batches), tmp_path / "out")
    assert [(a.kind, a.card_id) for a in result.anomalies] == [("after_revocation", 8)]
    assert result.stats["amount_fen"] == 200


# -- hostile files ---------------------------------------------------------------------


def _hostile_header(header: bytes) -> bytes:
    return BATCH_MAGIC + struct.pack(">I", len(header)) + header + b"\0" * 16


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("deep.fcb", _hostile_header(b"[" * 5000 + b"]" * 5000), "nested deeper"),
        ("digits.fcb", _hostile_header(b'{"terminal_id":' + b"7" * 5000 + b"}"), "digits"),
        ("magic.fcb", b"NOTABATCH" + b"\0" * 64, "magic"),
        ("truncated.fcb", None, "truncated"),
    ],
)
def test_a_hostile_file_is_named_and_the_night_settles(
    world: World, tmp_path: Path, name: str, data: bytes | None, why: str
) -> None:
    scripted_day(world)
    if data is None:
        whole = (world.batches / f"101-{DAY.isoformat()}.fcb").read_bytes()
        data = whole[: len(whole) // 2]
        (world.batches / f"101-{DAY.isoformat()}.fcb").unlink()
    (world.batches / name).write_bytes(data)
    files = settle(world, tmp_path / "out")
    [a] = [a for a in found(files) if a["kind"] == "batch_rejected"]
    assert a["file"] == name and why in a["detail"]
    assert paid(files) == (1300 if why == "truncated" else 1500)


def test_a_directory_named_like_a_batch_is_rejected_by_name(world: World, tmp_path: Path) -> None:
    scripted_day(world)
    (world.batches / "odd.fcb").mkdir()
    files = settle(world, tmp_path / "out")
    [a] = [a for a in found(files) if a["kind"] == "batch_rejected"]
    assert a["file"] == "odd.fcb" and "not a regular file" in a["detail"]
    assert paid(files) == 1500


# -- found by review: what a terminal's own word can and cannot excuse -------------------


def test_an_empty_batch_then_the_real_one_for_the_same_day_pays_no_more(
    world: World, tmp_path: Path
) -> None:
    (world.root / "fares.toml").write_text(FARES.replace('entry = "max"', 'entry = "min"'))
    world.tap(201, 1, day_ms(8))  # A -> D: 400
    world.tap(206, 1, day_ms(9))
    world.export()
    real = world.batches / f"206-{DAY.isoformat()}.fcb"
    kept = real.read_bytes()
    recs, creds = records(world, 206)
    # Exit gate 206 first hands in an empty batch for the day (so nothing is held) ...
    resign(world, 206, [], creds, prev=recs[0].prev_hash)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        first = settle(world, tmp_path / "n1", ledger=ledger)
        assert paid(first) == 200  # the entry, unpaired: the lowest fare
        real.write_bytes(kept)  # ... then the real one, for the same day
        world.export(NEXT)
        (world.batches / f"206-{NEXT.isoformat()}.fcb").unlink()  # its place in the chain
        real.rename(world.batches / "206-again.fcb")
        second = settle(world, tmp_path / "n2", day=NEXT, ledger=ledger)
    assert paid(second) == 0 and second["corrections.csv"].count(b"\n") == 1
    assert ("second_batch", 206) in {(a["kind"], a["terminal_id"]) for a in found(second)}


def _gate_with_table(world: World, generation: int) -> None:
    world.journals[101] = _journal(world, 101)
    world.validators[101] = Validator(
        TerminalPolicy(101, frozenset({370200})),
        world.issuer.keyring(),
        InMemoryRevocation([], generation=generation),
    )


def _table_inputs(world: World, tmp_path: Path, generation: int, created_at: int) -> Any:
    signer = SigningKey("revocation", 9, derive_key("settle-tests", "revocation"))
    _, pub = save_signing_key(signer, tmp_path / "rev")
    path = tmp_path / f"gen{generation}.frt"
    build_table(
        np.array([8], dtype=np.uint64),
        np.array([created_at]),
        np.array([1]),
        signer,
        generation,
        created_at,
        path,
    )
    return load_inputs(
        DAY,
        world.root / "terminals.csv",
        world.root / "keyring.json",
        world.root / "fares.toml",
        None,
        [path],
        pub,
    )


def test_an_old_generation_named_long_after_the_table_excuses_nothing(
    world: World, tmp_path: Path
) -> None:
    # Generation 8 held card 8 three days before the ride: no gate may decide on a table
    # older than two days, so whatever generation the ride names, its gate refused it.
    _gate_with_table(world, 3)
    assert world.tap(101, 8, day_ms(8))
    world.export()
    inputs = _table_inputs(world, tmp_path, 8, day_ms(8) // 1000 - 3 * 86_400)
    result = run_settlement(inputs, find_batches(world.batches), tmp_path / "out")
    [a] = [a for a in result.anomalies if a.kind == "revoked_at_ride"]
    assert a.card_id == 8 and "names generation 3" in a.detail
    assert result.stats["amount_fen"] == 0


def test_a_ride_naming_no_generation_is_not_excused(world: World, tmp_path: Path) -> None:
    world.tap(101, 8, day_ms(8))
    world.export()
    recs, creds = records(world, 101)
    resign(world, 101, [dataclasses.replace(recs[0], revocation_generation=None)], creds)
    inputs = _table_inputs(world, tmp_path, 8, day_ms(7) // 1000)
    result = run_settlement(inputs, find_batches(world.batches), tmp_path / "out")
    assert [a.kind for a in result.anomalies] == ["revoked_at_ride"]
    assert result.stats["amount_fen"] == 0


def test_out_of_range_numbers_in_signed_records_are_answered(world: World, tmp_path: Path) -> None:
    world.tap(101, 1, day_ms(8))
    world.export()
    recs, creds = records(world, 101)
    resign(world, 101, [dataclasses.replace(recs[0], revocation_generation=2**64 - 1)], creds)
    assert paid(settle(world, tmp_path / "a")) == 200  # a generation is only a number
    resign(world, 101, recs, creds, first_seq=2**63, prev=recs[0].prev_hash)
    files = settle(world, tmp_path / "b")
    assert any("2^63" in a["detail"] for a in found(files) if a["kind"] == "batch_rejected")
