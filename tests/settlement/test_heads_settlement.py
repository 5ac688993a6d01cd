"""The settlement reads the gates' signed chain heads: a journal shortened or rewritten
after its gate signed a head is found and not paid; an honest gate passes; a bad head is
refused by name; and without ``--heads`` the outputs are the bytes they always were."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from settle_world import DAY, World, day_ms, terminal_key
from test_settlement_outputs import OUTPUTS, scripted_day

from farecore.cli import main
from farecore.errors import SettlementError
from farecore.journal.batch import encode_batch
from farecore.journal.heads import ChainHead, head_of_journal, sign_head
from farecore.journal.records import GENESIS_HASH, JournalRecord, chain_hash, encode_record
from farecore.journal.terminal import Direction, JournalReader
from farecore.settlement import (
    Ledger,
    Settlement,
    TerminalInfo,
    exit_status,
    find_batches,
    load_inputs,
)
from farecore.settlement import run_settlement as run
from farecore.settlement.heads import read_heads
from farecore.settlement.ledger_rows import signed_int

NEXT = DAY + dt.timedelta(days=1)
BUS = 101  # qd-bus line 1, 200 fen a boarding


def utc_name(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms // 1000, dt.UTC).date().isoformat() + ".json"


def head_now(world: World, tid: int, time_ms: int, pending: int = 0) -> ChainHead:
    j = world.journals[tid]
    return ChainHead(tid, j.last_seq, j.head_hash, time_ms, 7, 3, pending)


def publish(point: Path, head: ChainHead, name: str | None = None, tid: int | None = None) -> Path:
    where = point / "heads" / str(head.terminal if tid is None else tid)
    where.mkdir(parents=True, exist_ok=True)
    path = where / (name or utc_name(head.time_ms))
    path.write_bytes(sign_head(head, terminal_key(head.terminal)))
    return path


def bus_day(world: World, point: Path) -> dict[str, ChainHead]:
    """Five boardings on bus 101, heads published as its gate would, and a metro trip.

    Boardings at 01:00-03:00 local (the UTC day before) and 09:00-10:00 (the UTC day of
    DAY), so the two UTC day files each hold a head of the service day."""
    heads: dict[str, ChainHead] = {}
    for card, hour in ((1, 1), (2, 2), (3, 3)):
        assert world.tap(BUS, card, day_ms(hour))
    heads["seq3"] = head_now(world, BUS, day_ms(3.5), pending=3)
    for card, hour in ((4, 9), (5, 10)):
        assert world.tap(BUS, card, day_ms(hour))
    heads["seq5"] = head_of_journal(
        world.root / f"journal-{BUS}.sqlite",
        time_ms=day_ms(10.5),
        package_version=7,
        revocation_generation=3,
        records_pending=2,
    )
    assert heads["seq5"].seq == 5
    assert world.tap(201, 9, day_ms(9))  # A -> B on other gates: 200
    assert world.tap(204, 9, day_ms(9.4))
    heads["metro"] = head_now(world, 201, day_ms(9.2))
    publish(point, heads["seq3"])  # the UTC day before DAY's date
    publish(point, heads["seq5"])  # the UTC day of DAY's date
    publish(point, heads["metro"])
    # The newest head, signed the next morning: a later night's evidence, not tonight's.
    publish(point, head_now(world, BUS, day_ms(24 + 9)), "latest.json")
    assert utc_name(heads["seq3"].time_ms) != utc_name(heads["seq5"].time_ms)
    world.export()
    return heads


def settle(
    world: World,
    out: Path,
    heads: Path | None,
    day: dt.date = DAY,
    ledger: Ledger | None = None,
    jobs: int = 1,
) -> tuple[Settlement, dict[str, bytes]]:
    inputs = load_inputs(
        day, world.root / "terminals.csv", world.root / "keyring.json", world.root / "fares.toml"
    )
    result = run(inputs, find_batches(world.batches), out, ledger=ledger, heads=heads, jobs=jobs)
    return result, {name: (out / name).read_bytes() for name in OUTPUTS}


def kinds(files: dict[str, bytes]) -> list[tuple[str, int, int]]:
    doc = json.loads(files["anomalies.json"])
    return [(a["kind"], a.get("terminal_id", -1), a.get("seq", -1)) for a in doc["anomalies"]]


def bus_total(files: dict[str, bytes]) -> int:
    rows = files["totals.csv"].decode().splitlines()[1:]
    return sum(int(r.split(",")[4]) for r in rows if ",qd-bus,1," in r)


def records(world: World, tid: int) -> tuple[list[JournalRecord], dict[bytes, bytes]]:
    with JournalReader(world.root / f"journal-{tid}.sqlite") as reader:
        recs = list(reader.records(1))
        creds = reader.credentials(r.credential_sha256 for r in recs if r.credential_sha256)
    return recs, creds


def rechain(recs: list[JournalRecord]) -> list[JournalRecord]:
    """The records renumbered from 1 and chained again: what a rewritten journal holds."""
    out: list[JournalRecord] = []
    prev = GENESIS_HASH
    for i, r in enumerate(recs, 1):
        r = dataclasses.replace(r, seq=i, prev_hash=prev)
        prev = chain_hash(prev, encode_record(r))
        object.__setattr__(r, "hash", prev)
        out.append(r)
    return out


def hand_in(world: World, tid: int, recs: list[JournalRecord], creds: dict[bytes, bytes]) -> None:
    """Replace the terminal's batch of DAY with these records, signed with its key."""
    data = encode_batch(
        recs,
        {k: v for k, v in creds.items() if any(r.credential_sha256 == k for r in recs)},
        terminal_id=tid,
        day=DAY,
        utc_offset_min=480,
        first_seq=1,
        prev_hash=GENESIS_HASH,
        key=terminal_key(tid),
    )
    (world.batches / f"{tid}-{DAY.isoformat()}.fcb").write_bytes(data)


# -- an honest gate ------------------------------------------------------------------------


def test_an_honest_gate_passes_and_the_night_says_what_it_read(
    world: World, tmp_path: Path
) -> None:
    point = tmp_path / "point"
    bus_day(world, point)
    _, plain_files = settle(world, tmp_path / "plain", None)
    result, files = settle(world, tmp_path / "with", point)
    assert kinds(files) == kinds(plain_files) == []
    assert exit_status(result) == 0
    assert bus_total(files) == 5 * 200
    # Same rides, same totals; the manifest names the heads read and counts them.
    for name in ("totals.csv", "corrections.csv", "rides.parquet", "anomalies.json"):
        assert files[name] == plain_files[name]
    manifest = json.loads(files["manifest.json"])
    assert len(manifest["inputs"]["heads_sha256"]) == 64
    assert manifest["stats"]["heads_used"] == 3  # latest.json was signed after the day
    assert manifest["stats"]["heads_rejected"] == 0
    assert "heads_sha256" not in json.loads(plain_files["manifest.json"])["inputs"]
    # The point itself or its heads/ directory: the same night.
    _, again = settle(world, tmp_path / "again", point / "heads")
    assert again == files


def test_a_head_signed_the_next_morning_waits_for_its_own_night(
    world: World, tmp_path: Path
) -> None:
    """Rides after midnight are the next day's: a head beyond the day's batch, signed
    after the day ended, is no evidence against it."""
    point = tmp_path / "point"
    bus_day(world, point)
    assert world.tap(BUS, 8, day_ms(24 + 1))
    later = head_now(world, BUS, day_ms(24 + 1.5))
    assert later.seq == 6
    publish(point, later, "latest.json")
    result, files = settle(world, tmp_path / "out", point)
    assert kinds(files) == [] and exit_status(result) == 0


# -- a journal cut short -------------------------------------------------------------------


def test_a_batch_without_the_last_records_is_journal_shortened_and_held(
    world: World, tmp_path: Path
) -> None:
    point = tmp_path / "point"
    heads = bus_day(world, point)
    recs, creds = records(world, BUS)
    hand_in(world, BUS, recs[:3], creds)  # the two rides after 03:00 are gone
    _, plain = settle(world, tmp_path / "plain", None)
    assert kinds(plain) == [] and bus_total(plain) == 3 * 200  # it looks complete
    ledger_path = tmp_path / "ledger.sqlite"
    with Ledger.open(ledger_path) as ledger:
        result, files = settle(world, tmp_path / "out", point, ledger=ledger)
    found = kinds(files)
    assert ("journal_shortened", BUS, 5) in found
    assert ("missing_batch", BUS, -1) in found  # held: the day has no batch of it
    assert bus_total(files) == 0 and exit_status(result) == 3
    shortened = next(
        a
        for a in json.loads(files["anomalies.json"])["anomalies"]
        if a["kind"] == "journal_shortened"
    )
    name = f"{BUS}/{utc_name(heads['seq5'].time_ms)}"
    assert shortened["file"] == name
    assert shortened["detail"] == (
        f"head {name} (signed 2026-03-02T02:30:00Z) shows the journal at seq 5; "
        "its batches through 2026-03-02 end at seq 3"
    )
    # Held, not settled: the ledger keeps it for later nights and its chain does not move.
    db = sqlite3.connect(ledger_path)
    try:
        held = db.execute(
            "SELECT outcome FROM files f WHERE sha256 = ?",
            (bytes.fromhex(shortened["batch_sha256"]),),
        ).fetchall()
        moved = db.execute(
            "SELECT COUNT(*) FROM batches WHERE terminal_id = ?", (signed_int(BUS),)
        ).fetchone()
    finally:
        db.close()
    assert held == [("held",)] and moved == (0,)
    # The other gates are paid as ever.
    assert "qd-metro,M1,1,200" in files["totals.csv"].decode()


def test_the_held_batch_stays_held_on_the_next_night(world: World, tmp_path: Path) -> None:
    point = tmp_path / "point"
    bus_day(world, point)
    recs, creds = records(world, BUS)
    hand_in(world, BUS, recs[:3], creds)
    assert world.tap(BUS, 6, day_ms(24 + 9))
    world.export(NEXT)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        settle(world, tmp_path / "n1", point, ledger=ledger)
        result, files = settle(world, tmp_path / "n2", point, day=NEXT, ledger=ledger)
    found = kinds(files)
    assert ("journal_shortened", BUS, 5) in found  # DAY's batch, again
    # NEXT's batch starts at seq 6 of the real journal: it does not continue DAY's.
    assert ("seq_gap", BUS, 4) in found
    assert bus_total(files) == 0 and not result.corrections


# -- a journal rewritten -------------------------------------------------------------------


def test_a_resigned_rewritten_chain_is_journal_rewritten(world: World, tmp_path: Path) -> None:
    """Ride 2 deleted and the rest renumbered: every proof still verifies, the batch is
    signed by the terminal, and only the head signed at seq 3 tells."""
    point = tmp_path / "point"
    heads = bus_day(world, point)
    recs, creds = records(world, BUS)
    rewritten = rechain([recs[0], *recs[2:]])
    hand_in(world, BUS, rewritten, creds)
    _, plain = settle(world, tmp_path / "plain", None)
    assert kinds(plain) == [] and bus_total(plain) == 4 * 200
    result, files = settle(world, tmp_path / "out", point)
    # The units find the hash at the head's seq wherever they run: the same bytes.
    assert settle(world, tmp_path / "jobs", point, jobs=2)[1] == files
    found = kinds(files)
    assert ("journal_rewritten", BUS, 3) in found
    assert bus_total(files) == 0 and exit_status(result) == 3
    finding = next(
        a
        for a in json.loads(files["anomalies.json"])["anomalies"]
        if a["kind"] == "journal_rewritten"
    )
    assert heads["seq3"].hash.hex()[:16] in finding["detail"]
    assert rewritten[2].hash.hex()[:16] in finding["detail"]
    assert (
        finding["batch_sha256"]
        == hashlib.sha256((world.batches / f"{BUS}-{DAY.isoformat()}.fcb").read_bytes()).hexdigest()
    )


def test_two_heads_of_one_seq_with_two_hashes_are_journal_rewritten(
    world: World, tmp_path: Path
) -> None:
    point = tmp_path / "point"
    heads = bus_day(world, point)
    other = dataclasses.replace(heads["seq3"], hash=bytes(range(32)), time_ms=day_ms(3.6))
    publish(point, other, "conflict-0001.json")
    result, files = settle(world, tmp_path / "out", point)
    found = [k for k in kinds(files) if k[0] == "journal_rewritten"]
    # The forged hash also contradicts the batch itself: two findings at seq 3.
    assert found == [("journal_rewritten", BUS, 3)] * 2
    details = [
        a["detail"]
        for a in json.loads(files["anomalies.json"])["anomalies"]
        if a["kind"] == "journal_rewritten"
    ]
    assert any("sign seq 3 with two hashes" in d for d in details)
    assert bus_total(files) == 0 and exit_status(result) == 3


def test_a_head_contradicting_an_earlier_nights_batch_is_found_from_the_ledger(
    world: World, tmp_path: Path
) -> None:
    """The ledger keeps batch boundaries: a head at the end of DAY's settled batch with
    another hash is found on the next night."""
    point = tmp_path / "point"
    bus_day(world, point)
    assert world.tap(BUS, 6, day_ms(24 + 9))
    world.export(NEXT)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        _, n1 = settle(world, tmp_path / "n1", point, ledger=ledger)
        assert kinds(n1) == []
        # The bus hands in nothing for NEXT, and its one head read tonight signs seq 5,
        # the end of DAY's settled batch, with another hash: only the ledger can tell.
        (world.batches / f"{BUS}-{NEXT.isoformat()}.fcb").unlink()
        bus_dir = point / "heads" / str(BUS)
        for old in bus_dir.iterdir():
            old.unlink()
        forged = ChainHead(BUS, 5, b"\x55" * 32, day_ms(23.5), 7, 3, 0)
        publish(point, forged)
        result, n2 = settle(world, tmp_path / "n2", point, day=NEXT, ledger=ledger)
    found = json.loads(n2["anomalies.json"])["anomalies"]
    rewritten = [a for a in found if a["kind"] == "journal_rewritten"]
    assert [(a["terminal_id"], a["seq"]) for a in rewritten] == [(BUS, 5)]
    fifth = records(world, BUS)[0][4]
    assert fifth.seq == 5
    assert rewritten[0]["detail"].endswith(f"the chain handed in has {fifth.hash.hex()[:16]}…")
    assert exit_status(result) == 3


# -- heads that are not to be trusted --------------------------------------------------


def test_bad_heads_are_refused_by_name_and_the_night_settles(world: World, tmp_path: Path) -> None:
    point = tmp_path / "point"
    heads = bus_day(world, point)
    bus_dir = point / "heads" / str(BUS)
    (bus_dir / "conflict-garbage.json").write_bytes(b"\x00not json")
    (bus_dir / "conflict-big.json").write_bytes(b" " * 5000)
    # Signed by terminal 102's key, placed as 101's.
    stolen = sign_head(dataclasses.replace(heads["seq3"], terminal=102), terminal_key(102))
    (bus_dir / "conflict-other.json").write_bytes(stolen)
    # A head of 101 signed with 102's key (a key id that is not the terminal's).
    raw = json.loads(sign_head(dataclasses.replace(heads["seq3"], terminal=102), terminal_key(102)))
    raw["terminal"] = BUS
    (bus_dir / "conflict-forged.json").write_bytes(
        json.dumps(raw, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    )
    (bus_dir / "conflict-dir.json").mkdir()
    # A terminal the register does not know, and entries that are not terminals at all.
    publish(point, ChainHead(999, 0, GENESIS_HASH, day_ms(5), None, None, 0), "latest.json")
    (point / "heads" / "README").write_text("not a terminal")
    (bus_dir / "notes.txt").write_text("ignored: not a head file name")
    result, files = settle(world, tmp_path / "out", point)
    refused = {
        a["file"]: a["detail"]
        for a in json.loads(files["anomalies.json"])["anomalies"]
        if a["kind"] == "head_rejected"
    }
    assert set(refused) == {
        f"{BUS}/conflict-garbage.json",
        f"{BUS}/conflict-big.json",
        f"{BUS}/conflict-other.json",
        f"{BUS}/conflict-forged.json",
        f"{BUS}/conflict-dir.json",
        "999/",
    }
    assert refused[f"{BUS}/conflict-big.json"].endswith("larger than 4096 bytes")
    assert "not a chain head" in refused[f"{BUS}/conflict-garbage.json"]
    assert "key id 102" in refused[f"{BUS}/conflict-forged.json"]
    assert "names terminal 102" in refused[f"{BUS}/conflict-other.json"]
    assert "not a regular file" in refused[f"{BUS}/conflict-dir.json"]
    assert "not registered" in refused["999/"]
    # Refused heads are not trusted, and hold nothing: the rides are paid.
    assert bus_total(files) == 5 * 200
    assert exit_status(result) == 3  # but a clerk looks at them
    assert json.loads(files["manifest.json"])["stats"]["heads_rejected"] == 6


# -- the command line, and nights without --heads ------------------------------------------


def test_settle_reads_heads_from_the_command_line(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    point = tmp_path / "point"
    bus_day(world, point)
    recs, creds = records(world, BUS)
    hand_in(world, BUS, recs[:3], creds)
    base = [
        "settle",
        "--batches",
        str(world.batches),
        "--terminals",
        str(world.root / "terminals.csv"),
        "--keyring",
        str(world.root / "keyring.json"),
        "--fares",
        str(world.root / "fares.toml"),
        "--day",
        DAY.isoformat(),
        "--quiet",
    ]
    out = tmp_path / "out"
    assert main([*base, "--out", str(out), "--ledger", str(tmp_path / "l1.sqlite")]) == 0
    assert (
        main(
            [
                *base,
                "--out",
                str(tmp_path / "out2"),
                "--ledger",
                str(tmp_path / "l2.sqlite"),
                "--heads",
                str(point),
            ]
        )
        == 3
    )
    assert "journal_shortened" in (tmp_path / "out2" / "anomalies.json").read_text()
    capsys.readouterr()
    absent = tmp_path / "absent"
    assert (
        main(
            [
                *base,
                "--out",
                str(tmp_path / "out3"),
                "--ledger",
                str(tmp_path / "l3.sqlite"),
                "--heads",
                str(absent),
            ]
        )
        == 2
    )
    assert f"heads directory {absent} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "l3.sqlite").exists() and not (tmp_path / "out3").exists()


# The outputs of these nights, measured before chain heads existed: a night without
# --heads must still give exactly these bytes.
SCRIPTED_DAY = {
    "totals.csv": "16bd66b696d6a65291b05215ac0a39eb0a5390cdef2d6d7bc8f1eee51745eb98",
    "corrections.csv": "d093640b19311002fcbe53aa4d72a3472b445b34c7cf295936844a0f21e7bd98",
    "rides.parquet": "211be87f28edada216981475be90cf3c31a093bdaae45ec934d8c4b1fa7fcd83",
    "anomalies.json": "8662b06b0b1f9c53468e2bb64e1563fbda5bf200c449842d3483dae3e1d4952b",
    "manifest.json": "43dea57c09b99a70462a3d4588fda05fa25c6d21b411851d84a72b0838ec80ec",
}
LATE_BATCH_NIGHTS = {
    "n1": {
        "totals.csv": "a6104c2a7c5caaa7f7d14ecd12b7e24408a51ce5d4aa524939255023766a2189",
        "corrections.csv": "d093640b19311002fcbe53aa4d72a3472b445b34c7cf295936844a0f21e7bd98",
        "rides.parquet": "0481f0536877633c1c9410d737c5d032a15ad2d45b96d55b3186b1782cf485c0",
        "anomalies.json": "4c15247fb386d6a5e4d1535eb17feacc8db9c94bf03a9622a3758fcb84a3e97b",
        "manifest.json": "41264e95f9f8826365f4861c48091f21fcfb911024ed0163838afc87620efbc4",
    },
    "n2": {
        "totals.csv": "444e4cde13052754e58d3886d43c43202746bedc370aafa0460d61f2316801fa",
        "corrections.csv": "5e11bf799794061c4b9400e4ec3048a35d868d21308fdcb8ba772b8affa63b28",
        "rides.parquet": "4918c3c430881e91ed6cc4729d0f130d5191cd68c0eabe39b6aa4418c8ec5e08",
        "anomalies.json": "d3ffbccba24f5229003df0220b6b1678066441a0ff2afc966a078499f32dc337",
        "manifest.json": "1557583df779118593a974844475a335c0b958b6aaf8ceab0f5724ecfeb09283",
    },
}


def _digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_without_heads_a_night_is_the_bytes_it_always_was(world: World, tmp_path: Path) -> None:
    scripted_day(world)
    _, files = settle(world, tmp_path / "out", None)
    assert _digests(files) == SCRIPTED_DAY


def test_without_heads_two_nights_with_a_late_batch_are_the_bytes_they_always_were(
    world: World, tmp_path: Path
) -> None:
    from test_settlement_ledger import two_days

    two_days(world)
    late = world.batches / f"204-{DAY.isoformat()}.fcb"
    held_back = tmp_path / late.name
    late.rename(held_back)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        _, n1 = settle(world, tmp_path / "n1", None, ledger=ledger)
        held_back.rename(late)
        _, n2 = settle(world, tmp_path / "n2", None, day=NEXT, ledger=ledger)
    assert {"n1": _digests(n1), "n2": _digests(n2)} == LATE_BATCH_NIGHTS


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=600), name=st.sampled_from(["latest.json", "conflict-x.json"]))
def test_any_bytes_in_a_head_file_are_refused_by_name(data: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        where = Path(d) / str(BUS)
        where.mkdir()
        (where / name).write_bytes(data)
        for junk in ("\u00b2", "9" * 30, "9" * 20, "01", "77"):
            (Path(d) / junk).mkdir()
        (where / "\uff12\uff10\uff12\uff16-03-02.json").write_bytes(data)
        key = terminal_key(BUS)
        info = TerminalInfo(
            BUS, "qd-bus", "1", "V1", Direction.BOARD, key.algorithm, key.private.public_bytes, 0, 0
        )
        found = read_heads(
            Path(d), {BUS: info}, [DAY], until_ms=day_ms(24), utc_offset_min=480, tolerance_ms=0
        )
    assert found.heads == {}
    assert [(a.kind, a.file) for a in found.anomalies] == [
        ("head_rejected", f"{BUS}/{name}"),
        ("head_rejected", "77/"),
    ]


def test_a_rerun_reads_the_same_heads_and_gives_the_same_bytes(
    world: World, tmp_path: Path
) -> None:
    point = tmp_path / "point"
    bus_day(world, point)
    recs, creds = records(world, BUS)
    hand_in(world, BUS, recs[:3], creds)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        _, first = settle(world, tmp_path / "first", point, ledger=ledger)
        # The gate goes on signing: its newest head changes, but it was signed after the
        # settled day, so the night reads what it read before.
        publish(point, head_now(world, BUS, day_ms(24 + 11)), "latest.json")
        _, again = settle(world, tmp_path / "again", point, ledger=ledger)
        assert again == first
        # A head of the day that was not there before changes the inputs: refused.
        publish(point, head_now(world, BUS, day_ms(20)), "conflict-new.json")
        with pytest.raises(SettlementError, match="other inputs"):
            settle(world, tmp_path / "third", point, ledger=ledger)
