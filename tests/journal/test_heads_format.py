"""Signed chain heads: the format, its strict parser, the signature, and a journal's head."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from journal_support import BASE_MS, CTX, TERMINAL_ID

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import SigningKey
from farecore.decide.decision import Decision
from farecore.errors import BadSignature, JournalError, MalformedFile
from farecore.journal.batch import export_batch, verify_batch
from farecore.journal.heads import (
    HEAD_SIGNING_TAG,
    MAX_HEAD_BYTES,
    ChainHead,
    head_of_journal,
    journal_head,
    parse_head,
    sign_head,
    verify_head,
)
from farecore.journal.records import GENESIS_HASH
from farecore.journal.station import StationJournal
from farecore.journal.terminal import Journal
from sim.issuer import derive_key

DAY = dt.date(2026, 3, 2)


def _head(**changes: object) -> ChainHead:
    fields: dict[str, object] = {
        "terminal": TERMINAL_ID,
        "seq": 17,
        "hash": bytes(range(32)),
        "time_ms": BASE_MS,
        "package_version": 3,
        "revocation_generation": 12,
        "records_pending": 5,
    }
    fields.update(changes)
    return ChainHead(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def signed_bytes() -> bytes:
    key = SigningKey("terminal", TERMINAL_ID, derive_key("journal-tests", "terminal"))
    return sign_head(_head(), key)


def test_round_trip(terminal_key: SigningKey) -> None:
    for head in (
        _head(),
        _head(seq=0, hash=GENESIS_HASH, package_version=None, revocation_generation=None),
        _head(revocation_generation=2**64 - 1, records_pending=0),
    ):
        data = sign_head(head, terminal_key)
        assert len(data) <= MAX_HEAD_BYTES and data.endswith(b"}\n")
        signed = parse_head(data, "h.json")
        assert signed.key_id == TERMINAL_ID and signed.algorithm == terminal_key.algorithm
        assert verify_head(signed, terminal_key.public()) == head
        assert verify_head(signed, terminal_key.public().key()) == head


def test_the_signature_covers_the_tag_and_every_other_field(terminal_key: SigningKey) -> None:
    data = sign_head(_head(), terminal_key)
    doc = json.loads(data)
    signature = bytes.fromhex(doc.pop("signature"))
    message = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    terminal_key.public().key().verify(signature, HEAD_SIGNING_TAG + message)
    assert sorted(doc) == [
        "algorithm",
        "format",
        "hash",
        "key_id",
        "package_version",
        "records_pending",
        "revocation_generation",
        "seq",
        "terminal",
        "time_ms",
    ]
    assert doc["format"] == "farecore-head/1" and doc["algorithm"] == "Ed25519"


def test_a_signed_head_is_byte_for_byte_the_published_one() -> None:
    """Ed25519 is deterministic: the same head and key give these bytes forever."""
    key = SigningKey("terminal", 1001, PrivateKey(Algorithm.ED25519, bytes([7]) * 32))
    head = ChainHead(
        terminal=1001,
        seq=2,
        hash=bytes.fromhex("ea772ea879367472d8991eb308e72942375e91ce8715c18f7e5733466abf1728"),
        time_ms=1_772_400_060_000,
        package_version=4,
        revocation_generation=2,
        records_pending=2,
    )
    data = sign_head(head, key)
    assert data.startswith(
        b'{"algorithm":"Ed25519","format":"farecore-head/1","hash":"ea772ea879367472d8991eb3'
        b'08e72942375e91ce8715c18f7e5733466abf1728","key_id":1001,"package_version":4,'
        b'"records_pending":2,"revocation_generation":2,"seq":2,"signature":"'
    )
    assert hashlib.sha256(data).hexdigest() == (
        "2e01a96c5208daeec2824506b372d114c528846f16f971e909aaf1ba0d431823"
    )
    assert verify_head(parse_head(data, "golden"), key.public()) == head


def test_only_the_terminals_own_key_signs(terminal_key: SigningKey) -> None:
    other = SigningKey("terminal", TERMINAL_ID + 1, derive_key("journal-tests", "other"))
    with pytest.raises(ValueError, match="own key"):
        sign_head(_head(), other)
    with pytest.raises(ValueError, match="terminal key"):
        sign_head(_head(), SigningKey("issuer", TERMINAL_ID, terminal_key.private))
    # Signed by another terminal's key under its own id: refused whatever key checks it.
    forged = sign_head(_head(terminal=TERMINAL_ID + 1), other)
    doc = json.loads(forged)
    doc["terminal"] = TERMINAL_ID
    relabelled = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    with pytest.raises(BadSignature, match="key id"):
        verify_head(parse_head(relabelled, "h"), terminal_key.public())
    good = parse_head(sign_head(_head(), terminal_key), "h")
    with pytest.raises(BadSignature, match="not the terminal's"):
        verify_head(good, other.public())
    with pytest.raises(BadSignature, match="does not verify"):
        verify_head(good, other.public().key())


def test_a_register_entry_verifies(terminal_key: SigningKey) -> None:
    class Entry:  # the shape of the settlement register's TerminalInfo
        def __init__(self, terminal_id: int, key: SigningKey) -> None:
            self.terminal_id = terminal_id
            self._key = key

        def key(self):  # type: ignore[no-untyped-def]
            return self._key.public().key()

    signed = parse_head(sign_head(_head(), terminal_key), "h")
    assert verify_head(signed, Entry(TERMINAL_ID, terminal_key)) == _head()
    with pytest.raises(BadSignature, match="terminal 4243's key"):
        verify_head(signed, Entry(TERMINAL_ID + 1, terminal_key))


def test_an_algorithm_the_key_does_not_have_is_refused(terminal_key: SigningKey) -> None:
    p256 = SigningKey("terminal", TERMINAL_ID, derive_key("t", "p", Algorithm.P256))
    signed = parse_head(sign_head(_head(), p256), "h")
    assert signed.algorithm == Algorithm.P256
    assert verify_head(signed, p256.public()) == _head()
    with pytest.raises(BadSignature, match="ECDSA-P256"):
        verify_head(signed, terminal_key.public())


def _respell(data: bytes, **changes: object) -> bytes:
    doc = json.loads(data)
    doc.update(changes)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"seq": -1}, "seq"),
        ({"seq": 2**63}, "seq"),
        ({"seq": True}, "seq"),
        ({"seq": 1.5}, "seq"),
        ({"terminal": 2**64}, "terminal"),
        ({"terminal": "4242"}, "terminal"),
        ({"time_ms": -5}, "time_ms"),
        ({"package_version": "3"}, "package_version"),
        ({"revocation_generation": -1}, "revocation_generation"),
        ({"records_pending": None}, "records_pending"),
        ({"key_id": 2**32}, "key_id"),
        ({"hash": "AB" * 32}, "hash"),
        ({"hash": "ab" * 31}, "hash"),
        ({"hash": None}, "hash"),
        ({"signature": "00" * 63}, "signature"),
        ({"signature": "0g" * 64}, "signature"),
        ({"algorithm": "ed25519"}, "algorithm"),
        ({"algorithm": "RSA"}, "algorithm"),
        ({"extra": 1}, "extra"),
    ],
)
def test_every_field_is_checked_and_named(
    signed_bytes: bytes, changes: dict[str, object], field: str
) -> None:
    with pytest.raises(MalformedFile, match=rf"^heads/x\.json: .*'{field}'"):
        parse_head(_respell(signed_bytes, **changes), "heads/x.json")


def test_missing_fields_and_other_documents(signed_bytes: bytes) -> None:
    doc = json.loads(signed_bytes)
    del doc["records_pending"]
    short = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    with pytest.raises(MalformedFile, match="'records_pending' is missing"):
        parse_head(short, "h")
    with pytest.raises(MalformedFile, match="format"):
        parse_head(_respell(signed_bytes, format="farecore-head/2"), "h")
    with pytest.raises(MalformedFile, match="genesis"):
        parse_head(_respell(signed_bytes, seq=0), "h")
    for other in (b"[]", b"null", b"{}", b'"x"', b"", b"\xff\xfe"):
        with pytest.raises(MalformedFile, match="^h: "):
            parse_head(other, "h")
    with pytest.raises(MalformedFile, match="larger than 4096"):
        parse_head(b" " * 4097, "h")
    with pytest.raises(MalformedFile, match="nested"):
        parse_head(b'{"a":{"b":1}}', "h")
    with pytest.raises(MalformedFile, match="twice"):
        parse_head(b'{"seq":1,"seq":2}', "h")
    with pytest.raises(MalformedFile, match="digits"):
        parse_head(b'{"seq":' + b"9" * 30 + b"}", "h")


def test_only_the_canonical_spelling_is_accepted(signed_bytes: bytes) -> None:
    doc = json.loads(signed_bytes)
    for other in (
        signed_bytes[:-1],  # no newline
        signed_bytes + b"\n",
        b" " + signed_bytes,
        json.dumps(doc, sort_keys=True).encode() + b"\n",  # spaces
        json.dumps(dict(reversed(doc.items())), separators=(",", ":")).encode() + b"\n",
        signed_bytes.replace(b'"seq":17', b'"seq":1.7e1'),
        signed_bytes.replace(b'"seq":17', b'"seq":017'),
    ):
        with pytest.raises(MalformedFile):
            parse_head(other, "h")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_single_byte_change_is_refused(signed_bytes: bytes, data: st.DataObject) -> None:
    key = SigningKey("terminal", TERMINAL_ID, derive_key("journal-tests", "terminal"))
    i = data.draw(st.integers(0, len(signed_bytes) - 1))
    damaged = bytearray(signed_bytes)
    damaged[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises((MalformedFile, BadSignature)):
        verify_head(parse_head(bytes(damaged), "h"), key.public())


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(0, 400), junk=st.binary(max_size=8))
def test_cuts_and_trailing_bytes_are_refused(signed_bytes: bytes, cut: int, junk: bytes) -> None:
    damaged = signed_bytes[: cut % len(signed_bytes)] + junk
    with pytest.raises(MalformedFile):
        parse_head(damaged, "h")


@given(st.binary(max_size=600))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    for payload in (data, b'{"format":"farecore-head/1",' + data):
        try:
            parse_head(payload, "h")
        except MalformedFile as exc:
            assert str(exc).startswith("h: ")


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70) | st.floats(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from(["seq", "hash", "terminal", "key_id", "signature", "algorithm", "time_ms"]),
        _JSON_VALUES,
        max_size=3,
    )
)
def test_any_json_in_any_field_is_refused_or_parsed(
    signed_bytes: bytes, changes: dict[str, object]
) -> None:
    try:
        payload = _respell(signed_bytes, **changes)
    except ValueError:  # NaN in JSON is not allowed to be written, let alone read
        return
    try:
        parse_head(payload, "h")
    except MalformedFile:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seq=st.integers(0, 2**63 - 1),
    pending=st.integers(0, 2**63 - 1),
    package=st.none() | st.integers(0, 2**63 - 1),
    generation=st.none() | st.integers(0, 2**64 - 1),
    time_ms=st.integers(0, 2**63 - 1),
    chain=st.binary(min_size=32, max_size=32),
)
def test_round_trip_of_any_head(
    seq: int,
    pending: int,
    package: int | None,
    generation: int | None,
    time_ms: int,
    chain: bytes,
) -> None:
    key = SigningKey("terminal", TERMINAL_ID, derive_key("journal-tests", "terminal"))
    head = ChainHead(
        TERMINAL_ID, seq, chain if seq else GENESIS_HASH, time_ms, package, generation, pending
    )
    assert verify_head(parse_head(sign_head(head, key), "h"), key.public()) == head


# -- the head of a real journal -------------------------------------------------------


def test_a_journals_head_is_its_batchs_tail(
    tmp_path: Path, tapper: Callable[[int, int], Decision], terminal_key: SigningKey
) -> None:
    path = tmp_path / "j.sqlite"
    Journal.open(path, TERMINAL_ID).close()
    assert journal_head(path) == (TERMINAL_ID, 0, GENESIS_HASH)
    with Journal.open(path, TERMINAL_ID) as j:
        for i in range(9):
            j.append(tapper(i % 3 + 1, BASE_MS + i * 60_000), CTX)
        live = (TERMINAL_ID, j.last_seq, j.head_hash)
    assert journal_head(path) == live
    batch = verify_batch(export_batch(path, DAY, terminal_key), terminal_key.public())
    head = head_of_journal(
        path,
        time_ms=BASE_MS + 10 * 60_000,
        package_version=None,
        revocation_generation=1,
        records_pending=9,
    )
    assert (head.seq, head.hash) == (batch.last_seq, batch.tail_hash) == (9, live[2])
    signed = parse_head(sign_head(head, terminal_key), "h")
    assert verify_head(signed, terminal_key.public()) == head


def test_a_station_journals_head_per_terminal(
    tmp_path: Path, tapper: Callable[[int, int], Decision]
) -> None:
    path = tmp_path / "station.sqlite"
    with StationJournal.open(path, [TERMINAL_ID, TERMINAL_ID + 1]) as station:
        gate = station.terminal(TERMINAL_ID)
        for i in range(4):
            gate.append(tapper(i + 1, BASE_MS + i * 1000), CTX)
        want = station.head(TERMINAL_ID)
    assert journal_head(path, TERMINAL_ID) == (TERMINAL_ID, *want)
    assert journal_head(path, TERMINAL_ID + 1) == (TERMINAL_ID + 1, 0, GENESIS_HASH)
    with pytest.raises(JournalError, match="station journal"):
        journal_head(path)


def test_no_journal_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no such journal"):
        journal_head(tmp_path / "absent.sqlite")
