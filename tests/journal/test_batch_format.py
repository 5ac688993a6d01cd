"""Signed daily batches: export, verify, day boundaries, and every kind of damage."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from journal_support import BASE_MS, CTX, TERMINAL_ID

from farecore.card.keys import SigningKey, save_signing_key
from farecore.cli import main
from farecore.decide.decision import Decision
from farecore.errors import BadSignature, JournalError, MalformedFile
from farecore.journal.batch import (
    BatchRejected,
    day_bounds_ms,
    encode_batch,
    export_batch,
    verify_batch,
)
from farecore.journal.terminal import Journal, JournalReader
from sim.issuer import derive_key

DAY = dt.date(2026, 3, 2)
HOUR = 3_600_000


def _fill(path: Path, tapper: Callable[[int, int], Decision], times: list[int]) -> None:
    with Journal.open(path, TERMINAL_ID) as j:
        for i, t in enumerate(times):
            j.append(tapper(i % 7 + 1, t), CTX)


@pytest.fixture
def day_batch(
    tmp_path: Path, tapper: Callable[[int, int], Decision], terminal_key: SigningKey
) -> bytes:
    path = tmp_path / "j.sqlite"
    _fill(path, tapper, [BASE_MS + i * 60_000 for i in range(12)])
    return export_batch(path, DAY, terminal_key)


def test_day_bounds_are_local_service_days() -> None:
    start, end = day_bounds_ms(DAY, 480)
    assert end - start == 24 * HOUR
    assert start == int(dt.datetime(2026, 3, 1, 16, tzinfo=dt.UTC).timestamp()) * 1000
    assert day_bounds_ms(DAY, 0)[0] - start == 8 * HOUR


def test_round_trip(day_batch: bytes, terminal_key: SigningKey) -> None:
    batch = verify_batch(day_batch, terminal_key.public())
    assert (batch.terminal_id, batch.day, batch.first_seq, batch.last_seq) == (
        TERMINAL_ID,
        DAY,
        1,
        12,
    )
    assert len(batch.credentials) == 7
    assert batch.records[-1].hash == batch.tail_hash


def test_days_tile_the_chain_even_when_the_clock_steps_back(
    tmp_path: Path, tapper: Callable[[int, int], Decision], terminal_key: SigningKey
) -> None:
    start, end = day_bounds_ms(DAY, 480)
    times = [start - HOUR, start + HOUR, end - 1000, start - 5 * HOUR, end + HOUR, end + 2 * HOUR]
    path = tmp_path / "j.sqlite"
    _fill(path, tapper, times)
    before = verify_batch(export_batch(path, DAY - dt.timedelta(days=1), terminal_key), None)
    today = verify_batch(export_batch(path, DAY, terminal_key), None)
    after = verify_batch(export_batch(path, DAY + dt.timedelta(days=1), terminal_key), None)
    # The record stamped yesterday after today's records stays in today's batch.
    assert (before.first_seq, before.last_seq) == (1, 1)
    assert (today.first_seq, today.last_seq) == (2, 4)
    assert (after.first_seq, after.last_seq) == (5, 6)
    assert today.prev_hash == before.tail_hash and after.prev_hash == today.tail_hash
    empty = verify_batch(export_batch(path, DAY + dt.timedelta(days=5), terminal_key), None)
    assert empty.records == () and empty.prev_hash == empty.tail_hash == after.tail_hash


def test_wrong_key_is_rejected(day_batch: bytes) -> None:
    other = SigningKey("terminal", 1, derive_key("x", "y"))
    with pytest.raises(BadSignature, match="terminal key"):
        verify_batch(day_batch, other.public())


def test_only_terminal_keys_sign(tmp_path: Path, tapper: Callable[[int, int], Decision]) -> None:
    path = tmp_path / "j.sqlite"
    _fill(path, tapper, [BASE_MS])
    with pytest.raises(JournalError, match="terminal key"):
        export_batch(path, DAY, SigningKey("issuer", 1, derive_key("x", "i")))


def test_deleted_and_reordered_records_are_rejected_even_if_resigned(
    tmp_path: Path, tapper: Callable[[int, int], Decision], terminal_key: SigningKey
) -> None:
    path = tmp_path / "j.sqlite"
    _fill(path, tapper, [BASE_MS + i for i in range(5)])
    with JournalReader(path) as r:
        recs = list(r.records())
        creds = {c: r.credential(c) for c in {x.credential_sha256 for x in recs} if c}
    kw = dict(
        terminal_id=TERMINAL_ID,
        day=DAY,
        utc_offset_min=480,
        prev_hash=recs[0].prev_hash,
        key=terminal_key,
    )
    dropped = encode_batch([recs[0], recs[2], recs[3], recs[4]], creds, first_seq=1, **kw)
    with pytest.raises(BatchRejected, match="order"):
        verify_batch(dropped, terminal_key.public())
    swapped = encode_batch([recs[0], recs[2], recs[1], recs[3], recs[4]], creds, first_seq=1, **kw)
    with pytest.raises(BatchRejected):
        verify_batch(swapped, terminal_key.public())


@settings(
    max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(data=st.data())
def test_every_single_byte_change_is_detected(
    day_batch: bytes, terminal_key: SigningKey, data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(day_batch) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(day_batch)
    damaged[i] ^= flip
    with pytest.raises((MalformedFile, BadSignature)):
        verify_batch(bytes(damaged), terminal_key.public())


@settings(
    max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(cut=st.integers(0, 10_000), junk=st.binary(max_size=8))
def test_truncation_and_trailing_bytes_are_rejected(
    day_batch: bytes, terminal_key: SigningKey, cut: int, junk: bytes
) -> None:
    damaged = day_batch[: cut % len(day_batch)] + junk
    with pytest.raises((MalformedFile, BadSignature)):
        verify_batch(damaged, terminal_key.public())


@given(st.binary(max_size=400))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    for payload in (data, b"FCBATCH1" + data):
        try:
            verify_batch(payload, None)
        except (MalformedFile, BadSignature):
            pass


def test_cli_export_and_verify(
    tmp_path: Path,
    tapper: Callable[[int, int], Decision],
    terminal_key: SigningKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "j.sqlite"
    _fill(path, tapper, [BASE_MS + i for i in range(3)])
    key_path, pub_path = save_signing_key(terminal_key, tmp_path / "term")
    out = tmp_path / "day.fcb"
    assert (
        main(
            [
                "journal",
                "export",
                "--journal",
                str(path),
                "--day",
                "2026-03-02",
                "--key",
                str(key_path),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert main(["journal", "verify", str(out), "--pub", str(pub_path)]) == 0
    assert "signature OK" in capsys.readouterr().out
    assert main(["journal", "check", str(path)]) == 0
    bad = bytearray(out.read_bytes())
    bad[-1] ^= 1
    out.write_bytes(bytes(bad))
    # Through the real entry point: one line on stderr, exit 2, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "farecore", "journal", "verify", str(out), "--pub", str(pub_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "signature does not verify" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "farecore",
            "journal",
            "export",
            "--journal",
            str(path),
            "--day",
            "2026-13-02",
            "--key",
            str(key_path),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "YYYY-MM-DD" in proc.stderr


def test_a_terminal_signs_only_its_own_batches(
    tmp_path: Path,
    tapper: Callable[[int, int], Decision],
    terminal_key: SigningKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "j.sqlite"
    _fill(path, tapper, [BASE_MS + i for i in range(3)])
    other = SigningKey("terminal", TERMINAL_ID + 1, derive_key("x", "another terminal"))
    with pytest.raises(JournalError, match="signed with its own key"):
        export_batch(path, DAY, other)
    # A batch signed by another terminal's key (by hand) verifies cryptographically with
    # that key, but `journal verify` refuses to call it this terminal's.
    with JournalReader(path) as reader:
        records = list(reader.records())
        creds = {c: reader.credential(c) for c in {r.credential_sha256 for r in records} if c}
    forged = encode_batch(
        records,
        creds,
        terminal_id=TERMINAL_ID,
        day=DAY,
        utc_offset_min=480,
        first_seq=1,
        prev_hash=records[0].prev_hash,
        key=other,
    )
    out = tmp_path / "forged.fcb"
    out.write_bytes(forged)
    _, pub = save_signing_key(other, tmp_path / "other")
    assert main(["journal", "verify", str(out), "--pub", str(pub)]) == 2
    assert f"terminal {TERMINAL_ID + 1}'s key" in capsys.readouterr().err
