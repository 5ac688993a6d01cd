"""The journal's and the passback store's WAL is reserved at open, so commits never grow it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from journal_support import BASE_MS, CTX, TERMINAL_ID

from farecore.decide.decision import Decision
from farecore.journal.passback import PassbackRule, PassbackStore
from farecore.journal.terminal import Journal, JournalReader
from farecore.journal.walfile import WAL_CHECKPOINT_PAGES, reserve_wal, wal_reserve_bytes


def _wal_size(path: Path) -> int:
    return Path(f"{path}-wal").stat().st_size


def test_fresh_journal_starts_with_a_full_size_wal(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal.open(path, TERMINAL_ID):
        assert _wal_size(path) >= wal_reserve_bytes(1024)


def test_appends_past_a_checkpoint_wrap_instead_of_growing_the_wal(
    tmp_path: Path, tapper: Callable[[int, int], Decision]
) -> None:
    path = tmp_path / "j.sqlite"
    decisions = [tapper(1 + i % 50, BASE_MS + i) for i in range(60)]
    with Journal.open(path, TERMINAL_ID) as j:
        reserved = _wal_size(path)
        # More frames than one checkpoint cycle: the WAL must have wrapped at least once.
        for i in range(WAL_CHECKPOINT_PAGES + 300):
            j.append(decisions[i % len(decisions)], CTX)
        assert _wal_size(path) == reserved
        assert j.last_seq == WAL_CHECKPOINT_PAGES + 300
    with JournalReader(path) as r:
        assert r.verify_chain() == WAL_CHECKPOINT_PAGES + 300
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT COUNT(*) FROM wal_reserve").fetchone()[0] == 0
    finally:
        db.close()


def test_reserve_is_a_no_op_on_a_large_wal(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite"
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        reserve_wal(db, path)
        size = _wal_size(path)
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        reserve_wal(db, path)
        assert _wal_size(path) == size
        assert db.execute("PRAGMA page_count").fetchone()[0] == pages
    finally:
        db.close()


def test_passback_store_reserves_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "station.sqlite"
    with PassbackStore.open(path, PassbackRule(600), "wusi-square"):
        db = sqlite3.connect(path)
        try:
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
        finally:
            db.close()
        assert _wal_size(path) >= wal_reserve_bytes(page_size)
