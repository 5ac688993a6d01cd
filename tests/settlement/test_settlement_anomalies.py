"""Tampering, deletion, reordering, forgery, replays, clones: detected, named, never paid."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from settle_world import DAY, World, day_ms, terminal_key
from test_settlement_outputs import scripted_day, settle, totals

from farecore.card.proof import make_challenge
from farecore.cli import main
from farecore.decide.checks import InMemoryRevocation
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.journal.batch import encode_batch, verify_batch
from farecore.journal.terminal import (
    Journal,
    JournalReader,
    JournalRecord,
    decode_record,
    encode_record,
)
from farecore.settlement import find_batches, load_inputs, run_settlement
from sim.card import VirtualCard


def anomalies(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return list(json.loads(files["anomalies.json"])["anomalies"])


def kinds(files: dict[str, bytes]) -> set[str]:
    return {a["kind"] for a in anomalies(files)}


def amount(files: dict[str, bytes]) -> int:
    return int(json.loads(files["manifest.json"])["stats"]["amount_fen"])


def test_one_byte_tamper_rejects_the_batch(world: World, tmp_path: Path) -> None:
    scripted_day(world)
    target = world.batches / f"204-{DAY.isoformat()}.fcb"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x40
    target.write_bytes(bytes(data))
    files = settle(world, tmp_path / "out")
    [a] = [a for a in anomalies(files) if a["kind"] == "batch_rejected"]
    assert a["terminal_id"] == 204
    # Exit gate 204 handed in nothing valid: the metro entries whose exit could be on it
    # (card 2's trip, card 4's unpaired entry) are held, not paid.
    [missing] = [a for a in anomalies(files) if a["kind"] == "missing_batch"]
    assert missing["terminal_id"] == 204
    held = sorted(a["card_id"] for a in anomalies(files) if a["kind"] == "held")
    assert held == [2, 4]
    assert amount(files) == 1500 - 200 - 400


def _records(world: World, tid: int) -> tuple[list[JournalRecord], dict[bytes, bytes]]:
    with JournalReader(world.root / f"journal-{tid}.sqlite") as r:
        recs = list(r.records())
        creds = {c: r.credential(c) for c in {x.credential_sha256 for x in recs} if c}
    return recs, creds


def _resign(
    world: World, tid: int, recs: list[JournalRecord], creds: dict[bytes, bytes], first_seq: int = 1
) -> None:
    data = encode_batch(
        recs,
        creds,
        terminal_id=tid,
        day=DAY,
        utc_offset_min=480,
        first_seq=first_seq,
        prev_hash=recs[0].prev_hash,
        key=terminal_key(tid),
    )
    (world.batches / f"{tid}-{DAY.isoformat()}.fcb").write_bytes(data)


def test_deleted_or_reordered_record_rejects_the_batch(world: World, tmp_path: Path) -> None:
    for i in range(4):
        world.tap(101, 10 + i, day_ms(7 + i))
    world.tap(102, 20, day_ms(7))
    world.export()
    recs, creds = _records(world, 101)
    _resign(world, 101, [recs[0], recs[1], recs[3]], creds)  # record 3 deleted, re-signed
    files = settle(world, tmp_path / "a")
    assert "batch_rejected" in kinds(files)
    assert totals(files) == [["2026-03-02", "qd-bus", "2", "1", "100"]]
    _resign(world, 101, [recs[0], recs[2], recs[1], recs[3]], creds)  # reordered
    files = settle(world, tmp_path / "b")
    [a] = [a for a in anomalies(files) if a["kind"] == "batch_rejected"]
    assert "order" in a["detail"] or "chain" in a["detail"]
    assert amount(files) == 100


def test_forged_ride_without_card_key_is_named_and_not_paid(world: World, tmp_path: Path) -> None:
    world.tap(101, 1, day_ms(8))
    world.export()
    recs, creds = _records(world, 101)
    real = recs[0]
    t = day_ms(9)
    draft = JournalRecord(
        terminal_id=101,
        seq=2,
        time_ms=t,
        operator=real.operator,
        line=real.line,
        place=real.place,
        direction=real.direction,
        decision="ACCEPT",
        card_id=real.card_id,
        credential_sha256=real.credential_sha256,
        challenge=make_challenge(101, t, b"\x07" * 16),
        counter=(real.counter or 0) + 1,
        card_signature=os.urandom(64),
        prev_hash=real.hash,
    )
    forged = decode_record(encode_record(draft), real.hash)
    # A dishonest terminal signs the forged ride with its own (valid) key.
    _resign(world, 101, [real, forged], creds)
    files = settle(world, tmp_path / "out")
    [a] = anomalies(files)
    assert (a["kind"], a["terminal_id"], a["seq"]) == ("bad_proof", 101, 2)
    assert amount(files) == 200


def test_clone_with_extracted_key_reuses_counters(world: World, tmp_path: Path) -> None:
    world.tap(101, 7, day_ms(8))
    original = world.card(7)
    clone = VirtualCard(original.credential, original.key, counter=0)  # same counter again
    world.cards[7] = clone
    world.tap(102, 7, day_ms(8.5))
    world.export()
    files = settle(world, tmp_path / "out")
    reused = [a for a in anomalies(files) if a["kind"] == "reused_counter"]
    assert len(reused) == 2
    assert amount(files) == 200  # only the first use is paid


def test_impossible_travel_is_flagged(world: World, tmp_path: Path) -> None:
    world.tap(101, 3, day_ms(8))  # at x = 0
    world.tap(205, 3, day_ms(8) + 60_000)  # 12 km away one minute later
    world.export()
    files = settle(world, tmp_path / "out")
    [a] = [a for a in anomalies(files) if a["kind"] == "impossible_travel"]
    assert a["terminal_id"] == 205 and a["card_id"] == 3


def test_conflicting_records_for_one_seq_are_reported_not_paid(
    world: World, tmp_path: Path
) -> None:
    world.tap(101, 1, day_ms(8))
    world.export()
    # The terminal's journal is lost and restarted from seq 1: a different record 1.
    world.journals.pop(101).close()
    os.rename(world.root / "journal-101.sqlite", world.root / "old.sqlite")
    for suffix in ("-wal", "-shm"):
        if (world.root / f"journal-101.sqlite{suffix}").exists():
            os.remove(world.root / f"journal-101.sqlite{suffix}")
    world.tap(101, 2, day_ms(9))
    world.batches.joinpath(f"101-{DAY.isoformat()}.fcb").rename(world.batches / "first.fcb")
    world.export()
    files = settle(world, tmp_path / "out")
    forks = [a for a in anomalies(files) if a["kind"] == "chain_fork"]
    assert len(forks) == 2 and {(a["terminal_id"], a["seq"]) for a in forks} == {(101, 1)}
    assert amount(files) == 0


def test_sequence_gap_between_nights_holds_the_batch(world: World, tmp_path: Path) -> None:
    import datetime as dt

    from farecore.settlement import Ledger

    one_day = 86_400_000
    world.tap(101, 1, day_ms(8) - one_day)
    world.tap(101, 2, day_ms(8))
    world.tap(101, 3, day_ms(8) + one_day)
    before, after = DAY - dt.timedelta(days=1), DAY + dt.timedelta(days=1)
    for day in (before, after):
        world.export(day)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        first = settle(world, tmp_path / "night1", day=before, ledger=ledger)
        assert amount(first) == 200
        # DAY's batch never arrives: the next day's batch does not continue the chain.
        files = settle(world, tmp_path / "night2", day=after, ledger=ledger)
    [gap] = [a for a in anomalies(files) if a["kind"] == "seq_gap"]
    assert (gap["terminal_id"], gap["seq"], gap["day"]) == (101, 2, after.isoformat())
    assert "2..2 not settled" in gap["detail"]
    assert amount(files) == 0


def test_stale_table_and_revoked_rides_are_flagged(world: World, tmp_path: Path) -> None:
    world.journals[101] = Journal.open(world.root / "journal-101.sqlite", 101)
    world.validators[101] = Validator(
        TerminalPolicy(101, frozenset({370200}), revocation_max_age_s=60, stale_policy="open"),
        world.issuer.keyring(),
        InMemoryRevocation(generation=3, created_at=0),
    )
    world.tap(101, 1, day_ms(8))
    world.tap(101, 2, day_ms(9))
    world.export()
    revs = world.root / "revocations.csv"
    revs.write_text(f"card_id,revoked_at,reason\n2,{day_ms(8) // 1000},1\n")
    inputs = load_inputs(
        DAY,
        world.root / "terminals.csv",
        world.root / "keyring.json",
        world.root / "fares.toml",
        revs,
    )
    result = run_settlement(inputs, find_batches(world.batches), tmp_path / "out")
    got = sorted((a.kind, a.card_id) for a in result.anomalies)
    assert got == [("after_revocation", 2), ("stale_table", 1), ("stale_table", 2)]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "revocations_sha256" in manifest["inputs"]


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        ("9,soon,lost", "line 2: revoked_at 'soon' is not a non-negative decimal integer"),
        ("5,1,lost\n0,1,lost", "line 3: card id 0 is no card's id"),
        ("7,12,lost\n3,1,other\n7,13,fraud", "line 4: card id 7 already appears at line 2"),
    ],
)
def test_a_malformed_revocation_row_is_one_line_and_exit_2(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: str, says: str
) -> None:
    # The builder's strict reader: a file the gates' table could not be built from is
    # not half-used by the settlement either.
    world.tap(101, 1, day_ms(8))
    world.export()
    revs = world.root / "revocations.csv"
    revs.write_text(f"card_id,revoked_at,reason\n{rows}\n")
    out, ledger = tmp_path / "out", tmp_path / "ledger.sqlite"
    rc = main(
        ["settle", "--batches", str(world.batches), "--day", DAY.isoformat(),
         "--terminals", str(world.root / "terminals.csv"), "--keyring",
         str(world.root / "keyring.json"), "--fares", str(world.root / "fares.toml"),
         "--out", str(out), "--ledger", str(ledger), "--revocations", str(revs)]
    )  # fmt: skip
    _, err = capsys.readouterr()
    assert rc == 2
    [line] = err.splitlines()
    assert line.startswith(f"farecore: error: {revs}: {says}")
    assert not out.exists() and not ledger.exists()


def test_verify_rejects_batch_with_unknown_terminal(world: World, tmp_path: Path) -> None:
    world.tap(101, 1, day_ms(8))
    world.export()
    lines = (world.root / "terminals.csv").read_text().splitlines()
    (world.root / "terminals.csv").write_text(
        "\n".join(ln for ln in lines if not ln.startswith("101,")) + "\n"
    )
    files = settle(world, tmp_path / "out")
    assert kinds(files) == {"unknown_terminal"} and amount(files) == 0
    assert verify_batch(find_batches(world.batches)[0], None).terminal_id == 101


def test_signed_revocation_table_flags_rides_after_revoked_at(world: World, tmp_path: Path) -> None:
    import numpy as np

    from farecore.card.keys import SigningKey, save_signing_key
    from farecore.decide.revocation import build_table
    from sim.issuer import derive_key

    world.tap(101, 1, day_ms(8))
    world.tap(101, 2, day_ms(9))
    world.export()
    signer = SigningKey("revocation", 9, derive_key("settle-tests", "revocation"))
    _, pub = save_signing_key(signer, tmp_path / "rev")
    table = tmp_path / "rev.frt"
    build_table(
        np.array([2, 99], dtype=np.uint64),
        np.array([day_ms(8) // 1000, 1]),
        np.array([1, 1]),
        signer,
        5,
        day_ms(0) // 1000,
        table,
    )
    inputs = load_inputs(
        DAY,
        world.root / "terminals.csv",
        world.root / "keyring.json",
        world.root / "fares.toml",
        None,
        table,
        pub,
    )
    result = run_settlement(inputs, find_batches(world.batches), tmp_path / "out")
    assert [(a.kind, a.card_id) for a in result.anomalies] == [("after_revocation", 2)]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "revocation_table_generation_5_body_sha256" in manifest["inputs"]


def test_garbage_and_empty_files_are_rejected_not_fatal(world: World, tmp_path: Path) -> None:
    scripted_day(world)
    (world.batches / "garbage.fcb").write_bytes(os.urandom(3000))
    (world.batches / "empty.fcb").write_bytes(b"")
    files = settle(world, tmp_path / "out")
    rejected = [a for a in anomalies(files) if a["kind"] == "batch_rejected"]
    assert len(rejected) == 2
    assert amount(files) == 1500
