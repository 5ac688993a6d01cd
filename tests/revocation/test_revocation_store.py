"""The gate's private verified copies: nothing done to the published file reaches a decision.

Each test publishes a table, puts it in force through a ``TableStore``, then attacks the
published file the ways a careless or hostile publisher could: in-place writes, a
truncation, a rename-over with a bad or older table. The table in force keeps answering
exactly as it did, and only a newer table that verifies is swapped in.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from farecore.card.keys import PublicKeyFile
from farecore.decide.revocation import HotRevocation, TableStore
from farecore.decide.revocation.table import TableChanged
from farecore.errors import TableRejected

REVOKED = [11, 12, 13, 2**64 - 1]


def _publish(writer: Callable[..., Any], path: Path, ids: list[int], generation: int) -> None:
    """Write a table next to ``path`` and rename it over ``path`` (how tables are published)."""
    tmp = path.with_suffix(".new")
    writer(tmp, ids, generation, created_at=1_790_000_000 + generation)
    os.replace(tmp, path)


def _answers(hot: HotRevocation) -> list[bool]:
    table = hot.snapshot()
    return [table.lookup(card) is not None for card in [*REVOKED, 14, 15]]


@pytest.fixture
def published(tmp_path: Path, writer: Callable[..., Any]) -> Path:
    path = tmp_path / "pub" / "revocation.frt"
    path.parent.mkdir()
    _publish(writer, path, REVOKED, 5)
    return path


@pytest.fixture
def store(tmp_path: Path) -> TableStore:
    return TableStore(tmp_path / "state" / "tables")


def test_the_table_in_force_is_a_read_only_copy_in_the_store(
    published: Path, store: TableStore, signer: PublicKeyFile
) -> None:
    table = store.adopt(published, signer)
    assert table.path.parent == store.directory and table.source == published
    assert not os.path.samefile(table.path, published)
    assert stat.S_IMODE(os.stat(table.path).st_mode) == 0o444
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    # A second gate on the host finds the copy: the same file, so one page-cache copy.
    again = TableStore(store.directory).adopt(published, signer)
    assert os.path.samefile(again.path, table.path)
    assert len(os.listdir(store.directory)) == 1


def test_writing_the_published_file_in_place_changes_no_decision(
    published: Path, store: TableStore, signer: PublicKeyFile
) -> None:
    with HotRevocation(published, signer, poll_interval_s=None, store=store) as hot:
        before = _answers(hot)
        assert before == [True] * 4 + [False, False]
        size = published.stat().st_size
        with open(published, "r+b") as fh:  # zero the whole body, keep the signed header
            fh.seek(256)
            fh.write(bytes(size - 256))
        assert _answers(hot) == before
        # The signed header is unchanged: the store already holds that table's true bytes.
        assert hot.poll() is False and hot.rejected == 0
        with open(published, "r+b") as fh:  # now the generation, which the signature covers
            fh.seek(32)
            fh.write((6).to_bytes(8, "little"))
        assert hot.poll() is False and "signature" in (hot.last_rejection or "")
        assert _answers(hot) == before and hot.generation == 5


def test_truncating_the_published_file_changes_nothing_and_kills_nothing(
    published: Path, store: TableStore, signer: PublicKeyFile
) -> None:
    with HotRevocation(published, signer, poll_interval_s=None, store=store) as hot:
        before = _answers(hot)
        os.truncate(published, 300)
        assert _answers(hot) == before  # a mapping of the published file would SIGBUS here
        assert hot.poll() is False and "truncated" in (hot.last_rejection or "")
        os.truncate(published, 0)
        assert hot.poll() is False
        assert _answers(hot) == before


def test_a_rename_over_swaps_only_a_newer_table_that_verifies(
    published: Path,
    store: TableStore,
    signer: PublicKeyFile,
    writer: Callable[..., Any],
    keys: dict[str, Any],
) -> None:
    with HotRevocation(published, signer, poll_interval_s=None, store=store) as hot:
        before = _answers(hot)
        forged = published.with_suffix(".forged")
        writer(forged, [], 9, key=keys["impostor"])
        os.replace(forged, published)
        assert hot.poll() is False and "signature" in (hot.last_rejection or "")
        _publish(writer, published, [], 4)  # older: a rollback
        assert hot.poll() is False and "rollback" in (hot.last_rejection or "")
        assert _answers(hot) == before
        _publish(writer, published, [14], 6)
        assert hot.poll() is True and hot.generation == 6
        assert _answers(hot) == [False] * 4 + [True, False]
    # Older copies go once a newer one is in force; the one in force stays.
    assert [n.split("-")[1] for n in os.listdir(store.directory)] == [f"g{6:020d}"]


def test_a_damaged_copy_in_the_store_is_made_again(
    published: Path, store: TableStore, signer: PublicKeyFile
) -> None:
    copy = store.adopt(published, signer).path
    os.chmod(copy, 0o644)
    with open(copy, "r+b") as fh:
        fh.seek(300)
        fh.write(b"\xff" * 8)
    table = store.adopt(published, signer)
    assert table.path == copy and [table.lookup(c) is not None for c in REVOKED] == [True] * 4
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o444


def test_a_store_that_others_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(TableRejected, match="writable by no one else"):
        TableStore(shared)
    (tmp_path / "file").write_text("")
    with pytest.raises(TableRejected, match="not a directory|cannot use"):
        TableStore(tmp_path / "file")


def test_at_start_an_older_published_table_is_refused_for_the_kept_copy(
    published: Path, store: TableStore, signer: PublicKeyFile, writer: Callable[..., Any]
) -> None:
    with HotRevocation(published, signer, poll_interval_s=None, store=store) as first:
        floor = (first.generation, first.snapshot().path.name)
        kept = _answers(first)
    _publish(writer, published, [], 4)  # an older generation, handed to a restarted gate
    with HotRevocation(published, signer, poll_interval_s=None, store=store, floor=floor) as hot:
        assert hot.generation == 5 and _answers(hot) == kept
        assert "older than generation 5" in (hot.last_rejection or "")
    _publish(writer, published, [], 5)  # the same generation, other contents
    with HotRevocation(published, signer, poll_interval_s=None, store=store, floor=floor) as hot:
        assert _answers(hot) == kept and "other contents" in (hot.last_rejection or "")
    published.unlink()  # gone altogether: the kept copy serves
    with HotRevocation(published, signer, poll_interval_s=None, store=store, floor=floor) as hot:
        assert _answers(hot) == kept
    for name in os.listdir(store.directory):
        (store.directory / name).unlink()
    with pytest.raises(TableRejected, match="no verified copy of generation 5"):
        HotRevocation(published, signer, poll_interval_s=None, store=store, floor=floor)


def test_a_newer_published_table_goes_past_the_floor(
    published: Path, store: TableStore, signer: PublicKeyFile, writer: Callable[..., Any]
) -> None:
    adopted: list[int] = []
    _publish(writer, published, [14], 8)
    with HotRevocation(
        published,
        signer,
        poll_interval_s=None,
        store=store,
        floor=(5, "g00000000000000000005-0.frt"),
        on_adopt=lambda table: adopted.append(table.generation),
    ) as hot:
        assert hot.generation == 8 and hot.rejected == 0 and adopted == [8]


def test_a_file_rewritten_under_the_copy_never_takes_the_newer_name(
    published: Path, store: TableStore, signer: PublicKeyFile, writer: Callable[..., Any]
) -> None:
    """The published file is rewritten in place, between the header the gate read and
    the bytes it copies, with an older signed table of the same size."""
    older = published.with_name("older.frt")
    writer(older, [21, 22, 23, 24], 4, created_at=1_790_000_004)
    _publish(writer, published, REVOKED, 6)
    assert older.stat().st_size == published.stat().st_size

    class Racing(TableStore):
        def _copy(self, fd: int, source: Path, name: str, size: int, signer: Any) -> Any:
            with open(source, "r+b") as fh:
                fh.write(older.read_bytes())
            return super()._copy(fd, source, name, size, signer)

    with pytest.raises(TableChanged, match="rewritten while it was being copied"):
        Racing(store.directory).adopt(published, signer)
    assert os.listdir(store.directory) == []  # nothing under generation 6's name
    with pytest.raises(TableRejected, match="no verified copy of generation 6"):
        store.open_copy(6, "k000000000000-g00000000000000000006-0.frt", signer)


def test_gates_of_other_signers_share_a_store_without_touching_each_other(
    published: Path,
    store: TableStore,
    signer: PublicKeyFile,
    writer: Callable[..., Any],
    keys: dict[str, Any],
) -> None:
    mine = store.adopt(published, signer)
    theirs_path = published.with_name("theirs.frt")
    writer(theirs_path, [999], 40, key=keys["other"])
    their_signer = keys["other"].public()
    theirs = store.adopt(theirs_path, their_signer)
    store.prune(theirs.path.name, their_signer)  # their newer generation removes none of mine
    assert mine.path.exists() and theirs.path.exists()
    again = store.open_copy(mine.generation, mine.path.name, signer)
    assert os.path.samefile(again.path, mine.path)
    os.unlink(mine.path)  # mine gone: theirs, of a later generation, is never taken instead
    with pytest.raises(TableRejected, match="no verified copy of generation 5"):
        store.open_copy(mine.generation, mine.path.name, signer)
    assert theirs.path.exists()


def test_a_store_that_cannot_be_written_is_tried_again(
    published: Path,
    store: TableStore,
    signer: PublicKeyFile,
    writer: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with HotRevocation(published, signer, poll_interval_s=None, store=store) as hot:
        _publish(writer, published, [14], 6)
        real_fsync = os.fsync

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
        assert hot.poll() is False and "No space left" in (hot.last_rejection or "")
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert hot.poll() is True and hot.generation == 6  # not written off as a bad file
    assert [n for n in os.listdir(store.directory) if n.startswith(".copy-")] == []


def test_a_fifo_at_the_published_path_is_refused_without_blocking(
    tmp_path: Path, store: TableStore, signer: PublicKeyFile
) -> None:
    fifo = tmp_path / "fifo.frt"
    os.mkfifo(fifo)
    with pytest.raises(TableRejected, match="not a regular file"):
        store.adopt(fifo, signer)
