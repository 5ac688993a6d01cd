"""The journal: durable appends, gap-free seq, hash chain, reopen, group commit."""

from __future__ import annotations

import datetime as dt
import itertools
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from journal_support import BASE_MS, CTX, TERMINAL_ID

from farecore.card.keys import SigningKey
from farecore.decide.decision import Decision
from farecore.errors import JournalError, MalformedFile
from farecore.journal.batch import export_batch
from farecore.journal.terminal import (
    GENESIS_HASH,
    Direction,
    Journal,
    JournalReader,
    JournalRecord,
    TapContext,
    chain_hash,
    decode_record,
    encode_record,
)
from sim.issuer import derive_key


def test_appends_chain_and_reopen_continues(
    tmp_path: Path, tapper: Callable[[int, int], Decision]
) -> None:
    path = tmp_path / "j.sqlite"
    with Journal.open(path, TERMINAL_ID) as j:
        recs = [j.append(tapper(i + 1, BASE_MS + i), CTX) for i in range(5)]
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0].prev_hash == GENESIS_HASH
    for a, b in itertools.pairwise(recs):
        assert b.prev_hash == a.hash
    with Journal.open(path, TERMINAL_ID) as j:
        assert j.last_seq == 5 and j.head_hash == recs[-1].hash
        nxt = j.append(tapper(9, BASE_MS + 10), CTX)
    assert nxt.seq == 6 and nxt.prev_hash == recs[-1].hash
    with JournalReader(path) as r:
        assert r.verify_chain() == 6
        stored = list(r.records())
    assert stored[:5] == recs


def test_denied_taps_are_journaled_without_proof(
    journal: Journal, tapper: Callable[[int, int], Decision], issuer: object
) -> None:
    from farecore.decide.decision import Reason

    denied = Decision(False, Reason.UNREADABLE, TERMINAL_ID, BASE_MS, b"\x01" * 32)
    rec = journal.append(denied, CTX)
    assert rec.decision == "UNREADABLE" and rec.card_id is None and rec.card_signature is None
    ok = journal.append(tapper(3, BASE_MS + 5), CTX)
    assert ok.accepted and ok.seq == 2


def test_wrong_terminal_is_refused(tmp_path: Path, tapper: Callable[[int, int], Decision]) -> None:
    path = tmp_path / "j.sqlite"
    Journal.open(path, TERMINAL_ID).close()
    with pytest.raises(JournalError, match="journal of terminal 4242"):
        Journal.open(path, 7)
    with Journal.open(path, TERMINAL_ID) as j, pytest.raises(JournalError):
        d = tapper(1, BASE_MS)
        object.__setattr__(d, "terminal_id", 99)
        j.append(d, CTX)


def test_tampered_journal_is_detected(
    tmp_path: Path, tapper: Callable[[int, int], Decision]
) -> None:
    path = tmp_path / "j.sqlite"
    with Journal.open(path, TERMINAL_ID) as j:
        for i in range(4):
            j.append(tapper(i + 1, BASE_MS + i), CTX)
    db = sqlite3.connect(path)
    body = bytearray(db.execute("SELECT body FROM records WHERE seq=2").fetchone()[0])
    body[20] ^= 1
    with db:
        db.execute("UPDATE records SET body=? WHERE seq=2", (bytes(body),))
    with JournalReader(path) as r, pytest.raises(JournalError, match="record 2"):
        r.verify_chain()
    # The export reads the same chain by its faster path and refuses it the same way,
    # whether the damage still parses or not.
    key = SigningKey("terminal", TERMINAL_ID, derive_key("journal-tests", "terminal"))
    day = dt.date(2026, 3, 2)
    with pytest.raises(JournalError, match="record 2 breaks the hash chain"):
        export_batch(path, day, key)
    with db:
        db.execute("UPDATE records SET body=? WHERE seq=2", (bytes(body[:-3]),))
    with pytest.raises(JournalError, match="record 2"):
        export_batch(path, day, key)
    with db:
        db.execute("DELETE FROM records WHERE seq=3")
    with JournalReader(path) as r, pytest.raises(JournalError):
        r.verify_chain()
    db.close()


def test_group_commit_from_threads_is_gap_free(
    tmp_path: Path, tapper: Callable[[int, int], Decision]
) -> None:
    path = tmp_path / "g.sqlite"
    decisions = [tapper(i + 1, BASE_MS + i) for i in range(40)]
    seqs: list[int] = []
    lock = threading.Lock()
    with Journal.open(path, TERMINAL_ID, group_commit_ms=5) as j:

        def worker(part: list[Decision]) -> None:
            for d in part:
                rec = j.append(d, CTX)
                with lock:
                    seqs.append(rec.seq)

        threads = [threading.Thread(target=worker, args=(decisions[k::4],)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(seqs) == list(range(1, 41))
    with JournalReader(path) as r:
        assert r.verify_chain() == 40


def test_append_after_close_raises(
    journal: Journal, tapper: Callable[[int, int], Decision]
) -> None:
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.append(tapper(1, BASE_MS), CTX)


def test_context_validates() -> None:
    with pytest.raises(ValueError):
        TapContext("", "L", "P", Direction.BOARD)
    assert TapContext("o", "l", "p", 3).direction is Direction.EXIT  # type: ignore[arg-type]


records = st.builds(
    JournalRecord,
    terminal_id=st.integers(0, 2**64 - 1),
    seq=st.integers(1, 2**64 - 1),
    time_ms=st.integers(-(2**63), 2**63 - 1),
    operator=st.text(min_size=1, max_size=20),
    line=st.text(min_size=1, max_size=20),
    place=st.text(min_size=1, max_size=20),
    direction=st.sampled_from(list(Direction)),
    decision=st.sampled_from(["PASSBACK", "UNREADABLE", "REVOKED"]),
    card_id=st.none() | st.integers(1, 2**64 - 1),
    challenge=st.binary(min_size=32, max_size=32),
    counter=st.none() | st.integers(0, 2**32 - 1),
    revocation_generation=st.none() | st.integers(0, 2**64 - 1),
    flags=st.lists(st.sampled_from(["revocation_stale", "x"]), max_size=2).map(tuple),
    detail=st.text(max_size=40),
)


@given(records)
def test_record_encoding_round_trips(rec: JournalRecord) -> None:
    body = encode_record(rec)
    back = decode_record(body, GENESIS_HASH)
    assert encode_record(back) == body
    assert back.hash == chain_hash(GENESIS_HASH, body)


@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        decode_record(data)
    except MalformedFile:
        pass


@given(records, st.data())
def test_any_byte_flip_changes_the_hash_or_fails(rec: JournalRecord, data: st.DataObject) -> None:
    body = bytearray(encode_record(rec))
    i = data.draw(st.integers(0, len(body) - 1))
    body[i] ^= data.draw(st.integers(1, 255))
    try:
        back = decode_record(bytes(body))
    except MalformedFile:
        return
    assert back.hash != chain_hash(GENESIS_HASH, encode_record(rec))


def test_corrupt_journal_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match="garbage.sqlite"):
        Journal.open(path, TERMINAL_ID)
    with pytest.raises(JournalError, match="garbage.sqlite"):
        JournalReader(path)
    with pytest.raises(JournalError, match="no such journal"):
        JournalReader(tmp_path / "missing.sqlite")
