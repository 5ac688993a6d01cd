"""The collection point directory's own rules, without HTTP: what it keeps, what it
refuses, and the bounds on what a client can make it store."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from pathlib import Path

import pytest
from test_collect_support import DAY, TID, TZ, batch_of, day_ms, tapper, terminal_key

from farecore.errors import BadSignature, BatchRejected, ConfigError
from farecore.fleet.collect import CollectionPoint, Conflict, Interrupted
from farecore.fleet.collect_protocol import BatchName, UploadRefused
from farecore.journal.heads import ChainHead, sign_head

NAME = BatchName(TID, DAY, None)


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("j") / "j.sqlite"
    with tapper(path) as t:
        t.day(DAY, 20)
    return batch_of(path, DAY)


def point(root: Path, **kw: object) -> CollectionPoint:
    root.mkdir(exist_ok=True)
    return CollectionPoint(root, TZ, clock_ms=lambda: day_ms(DAY, 30), **kw)  # type: ignore[arg-type]


KEY = terminal_key().public().key()


def test_a_verified_copy_is_never_replaced(tmp_path: Path, batch: bytes) -> None:
    p = point(tmp_path / "p")
    ack, new = p.place(NAME, batch, KEY)
    assert new and ack.sha256 == hashlib.sha256(batch).digest()
    again, new = p.place(NAME, batch, KEY)
    assert again == ack and not new
    with tapper(tmp_path / "other.sqlite") as t:
        t.day(DAY, 5, seed=3)
    other = batch_of(tmp_path / "other.sqlite", DAY)
    with pytest.raises(Conflict) as conflict:
        p.place(NAME, other, KEY)
    assert conflict.value.existing == ack and conflict.value.status == 409
    assert p.batch_path(NAME).read_bytes() == batch
    assert p.verified(NAME) == ack
    assert sorted(os.listdir(p.batch_path(NAME).parent)) == [NAME.text]  # nothing beside it


def test_what_a_batch_must_agree_with(tmp_path: Path, batch: bytes) -> None:
    p = point(tmp_path / "p")
    with pytest.raises(BatchRejected, match="day"):
        p.place(BatchName(TID, DAY + dt.timedelta(days=1), None), batch, KEY)
    with pytest.raises(BatchRejected, match="starts at seq 1"):
        p.place(BatchName(TID, DAY, 5), batch, KEY)
    with pytest.raises(BatchRejected, match="terminal"):
        p.place(BatchName(TID + 1, DAY, None), batch, KEY)
    with pytest.raises(BadSignature):
        p.place(NAME, batch, terminal_key(TID + 1).public().key())
    utc = CollectionPoint(tmp_path / "p", 0)
    with pytest.raises(BatchRejected, match="UTC"):
        utc.place(NAME, batch, KEY)
    assert not (tmp_path / "p" / "batches").exists() or not any(
        (tmp_path / "p" / "batches").rglob("*.fcb")
    )
    with pytest.raises(ConfigError):
        CollectionPoint(tmp_path / "absent", TZ)


def test_a_damaged_copy_is_reported_not_served(tmp_path: Path, batch: bytes) -> None:
    p = point(tmp_path / "p")
    p.place(NAME, batch, KEY)
    path = p.batch_path(NAME)
    path.write_bytes(b"FCBATCH1\xff\xff\xff\xff")
    with pytest.raises(UploadRefused) as refused:
        p.verified(NAME)
    assert refused.value.status == 500 and "damaged" in str(refused.value)


def test_uploads_in_progress_are_bounded(tmp_path: Path, batch: bytes) -> None:
    p = point(tmp_path / "p", max_partials=2, max_incoming_bytes=3 * len(batch))
    sha = hashlib.sha256(batch).digest()
    names = [BatchName(TID, DAY - dt.timedelta(days=i), None) for i in range(4)]
    p.start_partial(names[0], sha, len(batch))
    p.start_partial(names[1], sha, len(batch))
    with pytest.raises(UploadRefused) as full:
        p.start_partial(names[2], sha, len(batch))
    assert full.value.status == 507
    other = BatchName(TID + 1, DAY, None)  # another terminal's count is its own
    p.start_partial(other, sha, len(batch))
    with pytest.raises(UploadRefused, match="more would pass"):
        p.start_partial(BatchName(TID + 2, DAY, None), sha, len(batch))
    # Restarting one already held does not count twice.
    p.start_partial(names[1], sha, len(batch))


def test_a_body_that_stops_keeps_what_came(tmp_path: Path, batch: bytes) -> None:
    p = point(tmp_path / "p")
    sha = hashlib.sha256(batch).digest()
    held = p.start_partial(NAME, sha, len(batch))
    pieces = [batch[:1000], b""]
    with pytest.raises(Interrupted) as stopped:
        p.append(NAME, held, 0, 5000, lambda n: pieces.pop(0))
    assert stopped.value.offset == 1000
    held = p.partial(NAME)
    assert held is not None and held.offset == 1000

    def reset(n: int) -> bytes:
        raise ConnectionResetError

    with pytest.raises(Interrupted):
        p.append(NAME, held, 1000, 10, reset)
    with pytest.raises(UploadRefused) as wrong:
        p.append(NAME, held, 999, 10, lambda n: b"x" * n)
    assert wrong.value.status == 416
    rest = [batch[1000:]]
    offset = p.append(NAME, held, 1000, len(batch) - 1000, lambda n: rest.pop(0) if rest else b"")
    assert offset == len(batch)
    ack, new = p.complete(NAME, p.partial(NAME), KEY)  # type: ignore[arg-type]
    assert new and ack.sha256 == sha and p.partial(NAME) is None


def test_stale_uploads_expire(tmp_path: Path, batch: bytes) -> None:
    now = {"ms": day_ms(DAY, 30)}
    p = CollectionPoint(tmp_path, TZ, clock_ms=lambda: now["ms"], partial_ttl_s=3600)
    sha = hashlib.sha256(batch).digest()
    old, fresh = NAME, BatchName(TID, DAY - dt.timedelta(days=1), None)
    p.start_partial(old, sha, len(batch))
    p.start_partial(fresh, sha, len(batch))
    touched = (now["ms"] - 2 * 3600 * 1000) / 1000
    for suffix in (".part", ".json"):
        os.utime(tmp_path / "incoming" / str(TID) / f"{old.text}{suffix}", (touched, touched))
    recent = (now["ms"] - 60_000) / 1000
    for suffix in (".part", ".json"):
        os.utime(tmp_path / "incoming" / str(TID) / f"{fresh.text}{suffix}", (recent, recent))
    assert p.expire() == 1
    assert p.partial(old) is None and p.partial(fresh) is not None


def test_rejected_files_are_bounded(tmp_path: Path, batch: bytes) -> None:
    p = point(tmp_path / "p", max_rejected=3)
    for i in range(6):
        p.reject(NAME, batch + bytes([i]), f"reason {i}")
    kept = sorted((tmp_path / "p" / "rejected" / str(TID)).iterdir())
    assert len(kept) == 6  # three .bad, three .why
    reasons = sorted(path.read_text().strip() for path in kept if path.suffix == ".why")
    assert reasons == ["reason 3", "reason 4", "reason 5"]
    assert not any(path.name.endswith(".fcb") for path in kept)  # the settlement never takes them


def test_an_unfinished_day_is_refused(tmp_path: Path) -> None:
    p = CollectionPoint(tmp_path, TZ, clock_ms=lambda: day_ms(DAY, 20))
    with pytest.raises(UploadRefused) as early:
        p.check_day(NAME)
    assert early.value.status == 425
    p.check_day(BatchName(TID, DAY - dt.timedelta(days=1), None))
    CollectionPoint(tmp_path, TZ, clock_ms=lambda: day_ms(DAY, 23.5)).check_day(
        NAME
    )  # an hour's slack


def test_a_damaged_head_file_gives_way_to_a_good_head(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = point(tmp_path / "p")
    heads = tmp_path / "p" / "heads" / str(TID)
    heads.mkdir(parents=True)
    (heads / "latest.json").write_bytes(b"not a head")
    head = sign_head(ChainHead(TID, 3, b"\x03" * 32, day_ms(DAY, 1), 4, 5, 0), terminal_key())
    with caplog.at_level(logging.ERROR):
        stored = p.accept_head(TID, head, KEY, "test")
    assert stored.latest and (heads / "latest.json").read_bytes() == head
    assert "not a chain head" in caplog.text
    with pytest.raises(BadSignature):
        p.accept_head(TID + 1, head, KEY, "test")


def test_expiry_spares_what_is_being_received(tmp_path: Path, batch: bytes) -> None:
    now = day_ms(DAY, 30)
    p = CollectionPoint(tmp_path, TZ, clock_ms=lambda: now, partial_ttl_s=3600)
    sha = hashlib.sha256(batch).digest()
    p.start_partial(NAME, sha, len(batch))
    old = (now - 2 * 3600 * 1000) / 1000
    for suffix in (".part", ".json"):
        os.utime(tmp_path / "incoming" / str(TID) / f"{NAME.text}{suffix}", (old, old))
    assert p.expire(busy={NAME.text}) == 0 and p.partial(NAME) is not None
    # An upload whose announcement is fresh is not stale, whatever its bytes say.
    (tmp_path / "incoming" / str(TID) / f"{NAME.text}.part").unlink()
    os.utime(tmp_path / "incoming" / str(TID) / f"{NAME.text}.json", (now / 1000, now / 1000))
    assert p.expire() == 0
    assert p.expire() == 0 and (tmp_path / "incoming" / str(TID) / f"{NAME.text}.json").exists()
