"""HotRevocation: newer tables are swapped in; every bad one is refused, the old one kept."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from farecore.card.keys import PublicKeyFile, SigningKey
from farecore.decide.revocation import HotRevocation
from farecore.decide.revocation.format import HEADER_SIZE
from farecore.errors import TableRejected

OLD_IDS = [10, 20, 30]
NEW_IDS = [10, 40]


def publish(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` the way a publisher should: by rename."""
    tmp = path.with_name(path.name + ".incoming")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture
def hot(tmp_path: Path, writer: Callable[..., Any], signer: PublicKeyFile) -> HotRevocation:
    path = tmp_path / "in-force.frt"
    writer(path, OLD_IDS, 5)
    source = HotRevocation(path, signer, poll_interval_s=None)
    yield source
    source.close()


def test_newer_generation_is_swapped_in(
    hot: HotRevocation, tmp_path: Path, writer: Callable[..., Any]
) -> None:
    old = hot.snapshot()
    assert hot.generation == 5 and old.lookup(30) is not None
    assert hot.poll() is False  # nothing changed: no swap, no refusal
    writer(hot.path, NEW_IDS, 6)
    assert hot.poll() is True
    new = hot.snapshot()
    assert new is not old and new.generation == 6
    assert new.lookup(30) is None and new.lookup(40) is not None
    # A tap holding the old snapshot still reads the old table consistently.
    assert old.lookup(30) is not None and old.generation == 5
    assert (hot.swaps, hot.rejected) == (1, 0)


def _damaged(
    kind: str, tmp: Path, writer: Callable[..., Any], keys: dict[str, SigningKey]
) -> bytes:
    scratch = tmp / f"scratch-{kind}.frt"
    if kind == "wrong signer":
        writer(scratch, NEW_IDS, 9, key=keys["impostor"])
        return scratch.read_bytes()
    if kind == "other signer key id":
        writer(scratch, NEW_IDS, 9, key=keys["other"])
        return scratch.read_bytes()
    generation = {"older generation": 4, "same generation": 5}.get(kind, 9)
    writer(scratch, NEW_IDS, generation)
    data = scratch.read_bytes()
    if kind == "tampered body":
        return data[:HEADER_SIZE] + bytes([data[HEADER_SIZE] ^ 0x40]) + data[HEADER_SIZE + 1 :]
    if kind == "tampered header":
        return data[:40] + bytes([data[40] ^ 1]) + data[41:]  # the entry count
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "zero-length":
        return b""
    if kind == "garbage":
        return os.urandom(len(data))
    return data


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("tampered body", "body SHA-256"),
        ("tampered header", "signature"),
        ("wrong signer", "signature"),
        ("other signer key id", "key id 22"),
        ("truncated", "truncated"),
        ("zero-length", "empty file"),
        ("garbage", "not a farecore revocation table"),
        ("older generation", "rollback"),
        ("same generation", "rollback"),
    ],
)
def test_bad_table_is_refused_and_old_one_kept(
    hot: HotRevocation,
    tmp_path: Path,
    writer: Callable[..., Any],
    keys: dict[str, SigningKey],
    caplog: pytest.LogCaptureFixture,
    kind: str,
    message: str,
) -> None:
    old = hot.snapshot()
    publish(hot.path, _damaged(kind, tmp_path, writer, keys))
    with caplog.at_level(logging.WARNING, logger="farecore.decide.revocation"):
        assert hot.poll() is False
        assert hot.poll() is False  # the same refused file is not re-verified or re-logged
    assert hot.snapshot() is old and hot.generation == 5
    assert old.lookup(20) is not None and old.lookup(40) is None
    assert hot.rejected == 1 and hot.last_rejection is not None
    assert message in hot.last_rejection
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "generation 5 stays in force" in refusals[0].getMessage()
    # The next good table still gets in.
    writer(hot.path, NEW_IDS, 10)
    assert hot.poll() is True and hot.generation == 10


def test_missing_file_keeps_the_old_table(hot: HotRevocation) -> None:
    old = hot.snapshot()
    hot.path.unlink()
    assert hot.poll() is False
    assert hot.snapshot() is old


def test_replaced_mid_read_is_refused(
    tmp_path: Path, writer: Callable[..., Any], signer: PublicKeyFile
) -> None:
    path = tmp_path / "in-force.frt"
    writer(path, OLD_IDS, 5)
    # Big enough that verifying takes milliseconds, while a rename takes microseconds.
    sources = []
    for generation in (6, 7):
        src = tmp_path / f"g{generation}.frt"
        writer(src, range(generation, 4_000_000, 7), generation)
        sources.append(src)
    stop = threading.Event()

    def renamer() -> None:
        i = 0
        while not stop.is_set():
            link = tmp_path / f"link-{i}"
            os.link(sources[i % 2], link)
            os.replace(link, path)
            i += 1
            time.sleep(0.0005)

    with HotRevocation(path, signer, poll_interval_s=None) as hot:
        old = hot.snapshot()
        thread = threading.Thread(target=renamer)
        thread.start()
        try:
            seen_mid_read = False
            deadline = time.monotonic() + 20
            while not seen_mid_read and time.monotonic() < deadline:
                before = hot.generation
                swapped = hot.poll()
                assert hot.generation >= before
                if (
                    not swapped
                    and hot.last_rejection
                    and "while it was being read" in hot.last_rejection
                ):
                    seen_mid_read = True
                    assert hot.generation == before
        finally:
            stop.set()
            thread.join()
        assert seen_mid_read
        # Whatever is in force verified completely and answers for its own generation.
        table = hot.snapshot()
        if table is old:
            assert table.lookup(20) is not None
        else:
            assert table.generation in (6, 7)
            assert table.lookup(table.generation) is not None  # ids g, g+7, g+14, ...
            assert table.lookup(table.generation + 1) is None


def test_background_thread_swaps_and_stops(
    tmp_path: Path, writer: Callable[..., Any], signer: PublicKeyFile
) -> None:
    path = tmp_path / "in-force.frt"
    writer(path, OLD_IDS, 1)
    with HotRevocation(path, signer, poll_interval_s=0.01) as hot:
        assert hot.running
        for generation in (2, 3):
            writer(path, NEW_IDS, generation)
            deadline = time.monotonic() + 10
            while hot.generation != generation and time.monotonic() < deadline:
                time.sleep(0.005)
            assert hot.generation == generation
    assert not hot.running
    assert not [t for t in threading.enumerate() if t.name.startswith("revocation-reload")]


def test_a_gate_does_not_start_without_a_valid_table(tmp_path: Path, signer: PublicKeyFile) -> None:
    path = tmp_path / "empty.frt"
    path.write_bytes(b"")
    before = threading.active_count()
    with pytest.raises(TableRejected, match="empty file"):
        HotRevocation(path, signer, poll_interval_s=0.01)
    assert threading.active_count() == before
