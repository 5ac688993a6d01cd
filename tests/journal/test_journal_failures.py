"""A tap the journal refuses, or a committer that dies, leaves nothing half-done.

A refused record must leave the chain and the credential cache as they were, or the
card's next ride is journaled without its credential and the day's batch cannot be
exported. A committer thread that stops on an error must fail every waiter, never
leave a gate waiting for a commit that will not come.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import SigningKey
from farecore.decide.decision import Decision, Reason
from farecore.errors import JournalError, MalformedFile
from farecore.journal.batch_sign import export_batch
from farecore.journal.committer import Committer, Ticket
from farecore.journal.reader import JournalReader
from farecore.journal.terminal import Direction, Journal, TapContext

CTX = TapContext("op", "L1", "P", Direction.ENTRY)
CREDENTIAL = b"C" * 120


def _deny(time_ms: int, flags: frozenset[str] = frozenset()) -> Decision:
    return Decision(
        False, Reason.REVOKED, 7, time_ms, b"\0" * 32, card_id=5, credential=CREDENTIAL, flags=flags
    )


def test_a_refused_record_leaves_the_credential_to_the_next_ride(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal.open(path, 7) as journal:
        # A flag with a comma cannot be written canonically: the record is refused.
        with pytest.raises(MalformedFile):
            journal.append(_deny(1000, frozenset({"b,a"})), CTX)
        assert journal.last_seq == 0
        record = journal.append(_deny(2000), CTX)
    assert record.seq == 1 and record.credential_sha256 is not None
    with JournalReader(path) as reader:
        assert reader.credential(record.credential_sha256) == CREDENTIAL
    key = SigningKey("terminal", 7, PrivateKey(Algorithm.ED25519, bytes(32)))
    assert export_batch(path, dt.date(1970, 1, 1), key, utc_offset_min=0)


def test_a_committer_that_dies_fails_every_waiter() -> None:
    def on_idle() -> None:
        raise MemoryError("the idle work failed")

    committer: Committer[int] = Committer(
        "t", lambda items: None, idle_s=lambda: 0.01, on_idle=on_idle
    )
    committer.submit(1, Ticket()).wait()
    deadline = time.monotonic() + 5
    while committer._thread is not None and committer._thread.is_alive():
        assert time.monotonic() < deadline, "the idle work never ran"
        time.sleep(0.01)
    ticket = committer.submit(2, Ticket())
    failed: list[BaseException] = []

    def wait() -> None:
        try:
            ticket.wait()
        except JournalError as exc:
            failed.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    waiter.join(5)
    assert not waiter.is_alive() and ticket.done
    assert failed and "the idle work failed" in str(failed[0])
