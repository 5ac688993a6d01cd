"""Golden bytes: a record's encoding, the chain hash and a signed batch, pinned.

Every terminal's journal, every batch in the field and every ledger chain head depend on
these bytes and tags; a change to any of them (the chain tag, the batch signing tag, a
field's layout) must fail here rather than make new batches that old settlements refuse.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import SigningKey
from farecore.journal.batch import encode_batch, verify_batch
from farecore.journal.records import (
    GENESIS_HASH,
    Direction,
    JournalRecord,
    chain_hash,
    encode_record,
)

CREDENTIAL = bytes(range(100))


def _records() -> list[JournalRecord]:
    r1 = JournalRecord(
        terminal_id=1001,
        seq=1,
        time_ms=1_772_400_000_000,
        operator="qd-metro",
        line="L2",
        place="S07",
        direction=Direction.ENTRY,
        decision="ACCEPT",
        card_id=2**64 - 3,
        credential_sha256=hashlib.sha256(CREDENTIAL).digest(),
        challenge=bytes(range(32)),
        counter=7,
        card_signature=bytes(range(64)),
        revocation_generation=2,
        flags=("late",),
    )
    h1 = chain_hash(GENESIS_HASH, encode_record(r1))
    object.__setattr__(r1, "hash", h1)
    r2 = JournalRecord(
        terminal_id=1001,
        seq=2,
        time_ms=1_772_400_001_000,
        operator="qd-metro",
        line="L2",
        place="S07",
        direction=Direction.ENTRY,
        decision="REVOKED",
        card_id=5,
        challenge=bytes(32),
        detail="revoked",
        prev_hash=h1,
    )
    object.__setattr__(r2, "hash", chain_hash(h1, encode_record(r2)))
    return [r1, r2]


def test_record_bytes_and_chain_hashes_are_the_published_ones() -> None:
    r1, r2 = _records()
    body = encode_record(r1)
    assert hashlib.sha256(body).hexdigest() == (
        "cb09775fdde0f18d1b553b10499c4b0bb2b4a32863a2932bd4fd2eabd61fd93e"
    )
    assert r1.hash.hex() == "c7be724226d76f16c03bf7e35f641e035440364e40e10fff3679538a5197fd49"
    assert r2.hash.hex() == "ea772ea879367472d8991eb308e72942375e91ce8715c18f7e5733466abf1728"


def test_a_signed_batch_is_byte_for_byte_the_published_one() -> None:
    key = SigningKey("terminal", 1001, PrivateKey(Algorithm.ED25519, bytes([7]) * 32))
    data = encode_batch(
        _records(),
        {hashlib.sha256(CREDENTIAL).digest(): CREDENTIAL},
        terminal_id=1001,
        day=dt.date(2026, 3, 2),
        utc_offset_min=480,
        first_seq=1,
        prev_hash=GENESIS_HASH,
        key=key,
    )
    assert hashlib.sha256(data).hexdigest() == (
        "f682b6503e7a779019ba7812ab7cc9c70a8bd3abd4ac9e4594cb313a1aecbbdc"
    )
    assert len(verify_batch(data, key.public()).records) == 2
