"""The collection point's request parser, and the courier's reply parser, under hypothesis.

Every parser of outside bytes raises only ``UploadRefused`` (with an HTTP status), and
whatever it accepts has exactly one spelling: the canonical form of what it returned
is the text it was given.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from farecore.fleet.collect_protocol import (
    MAX_BATCH_BYTES,
    Ack,
    BatchName,
    Partial,
    UploadRefused,
    UploadStatus,
    parse_batch_name,
    parse_content_length,
    parse_content_range,
    parse_path,
    parse_reply,
    parse_sha256,
    parse_status,
    parse_time_header,
)
from farecore.journal.layout import MAX_SEQ

pytestmark = pytest.mark.fuzz
FUZZ = settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
U64 = (1 << 64) - 1

names = st.builds(
    BatchName,
    st.integers(0, U64),
    st.dates(dt.date(1970, 1, 2), dt.date(9999, 12, 30)),
    st.none() | st.integers(1, MAX_SEQ),
)
# Text near the grammar: its own characters, and a few that break it.
path_text = st.text(alphabet="/v1batchesd0123456789-+.fcb%?#\\:\x00é ", max_size=80)


@FUZZ
@given(names)
def test_a_name_round_trips(name: BatchName) -> None:
    assert parse_batch_name(name.text) == name
    assert parse_path(f"/v1/batches/{name.terminal}/{name.text}") == (
        "batches",
        name.terminal,
        name,
    )


@FUZZ
@given(
    st.one_of(
        path_text, st.text(max_size=120), names.map(lambda n: f"/v1/batches/{n.terminal}/{n.text}")
    )
)
@example("/v1/batches/1/../1-2026-03-02.fcb")
@example("/v1/batches/1/1-2026-03-02.fcb/")
@example("/v1/batches/1/1-2026-03-02.fcb?x")
@example("/v1/batches/01/1-2026-03-02.fcb")
@example("/v1/batches/18446744073709551616/18446744073709551616-2026-03-02.fcb")
@example("/v1/batches/1/1-2026-3-02.fcb")
@example("/v1/batches/1/1-2026-03-02+09223372036854775808.fcb")
@example("/v1/heads/1/")
def test_paths_parse_to_their_one_spelling_or_are_refused(path: str) -> None:
    try:
        kind, terminal, name = parse_path(path)
    except UploadRefused as exc:
        assert 400 <= exc.status < 500
        return
    if kind == "heads":
        assert name is None and path == f"/v1/heads/{terminal}"
    else:
        assert name is not None and path == f"/v1/batches/{terminal}/{name.text}"
        assert ".." not in path and "//" not in path


ranges = st.tuples(
    st.integers(0, MAX_BATCH_BYTES),
    st.integers(0, MAX_BATCH_BYTES),
    st.integers(0, MAX_BATCH_BYTES + 10),
)


@FUZZ
@given(
    st.one_of(
        ranges.map(lambda r: f"bytes {r[0]}-{r[1]}/{r[2]}"),
        st.text(max_size=60),
        st.text(alphabet="bytes 0123456789-/*", max_size=40),
    )
)
@example("bytes 0-0/1")
@example("bytes 0-9/10 ")
@example("bytes  0-9/10")
@example("bytes -1-9/10")
@example("bytes 0-9/*")
@example("bytes */10")
@example("bytes 0-99999999999999999999/1")
def test_content_ranges_parse_to_their_one_spelling_or_are_refused(text: str) -> None:
    try:
        first, last, total = parse_content_range(text)
    except UploadRefused as exc:
        assert exc.status in (400, 413, 416)
        return
    assert 0 <= first <= last < total <= MAX_BATCH_BYTES
    assert text == f"bytes {first}-{last}/{total}"


@FUZZ
@given(st.none() | st.text(max_size=30), st.integers(0, 1 << 40))
@example("0", 0)
@example("007", 10)
@example("+7", 10)
@example(" 7", 10)
@example("7" * 50, 10)
def test_lengths(text: str | None, limit: int) -> None:
    try:
        value = parse_content_length(text, limit)
    except UploadRefused as exc:
        assert exc.status in (400, 411, 413)
        return
    assert text == str(value) and value <= limit


@FUZZ
@given(st.none() | st.text(max_size=70))
def test_sha256_headers_and_time_headers(text: str | None) -> None:
    try:
        assert parse_sha256(text).hex() == text
    except UploadRefused:
        pass
    value = parse_time_header(text)
    assert value is None or str(value) == text


def _status() -> UploadStatus:
    ack = Ack(
        7,
        "7-2026-03-02.fcb",
        dt.date(2026, 3, 2),
        b"\x01" * 32,
        100,
        3,
        1,
        3,
        b"\x02" * 32,
        b"\x03" * 32,
    )
    return UploadStatus(7, ack.name, ack, Partial(10, 100, b"\x04" * 32), None)


def _mutations(doc: object) -> st.SearchStrategy[object]:
    """Documents that differ from ``doc`` at one place."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(1 << 70), 1 << 70),
        st.text(max_size=70),
        st.floats(allow_nan=False),
    )

    def change(draw: st.DrawFn) -> object:
        value = json.loads(json.dumps(doc))
        where = value
        keys: list[str] = []
        while isinstance(where, dict) and where:
            key = draw(st.sampled_from(sorted(where)))
            keys.append(key)
            if not isinstance(where[key], dict) or draw(st.booleans()):
                break
            where = where[key]
        action = draw(st.sampled_from(["set", "drop", "add"]))
        if action == "set" and keys:
            where[keys[-1]] = draw(leaves)
        elif action == "drop" and keys:
            del where[keys[-1]]
        else:
            where[draw(st.text(max_size=8))] = draw(leaves)
        return value

    return st.composite(change)()


@FUZZ
@given(_mutations(_status().to_json()))
def test_replies_are_parsed_strictly(doc: object) -> None:
    raw = json.dumps(doc).encode()
    try:
        parsed = parse_status(parse_reply(raw))
    except UploadRefused:
        return
    assert parsed.to_json() == doc  # only a document it would have sent itself


@FUZZ
@given(st.binary(max_size=300))
@example(b"[" * 5000)
@example(b'{"a": ' + b"9" * 5000 + b"}")
@example(b"\xff\xfe")
def test_reply_bytes_never_escape(data: bytes) -> None:
    try:
        parse_status(parse_reply(data))
    except UploadRefused:
        pass


def test_a_status_round_trips() -> None:
    status = _status()
    assert parse_status(parse_reply(json.dumps(status.to_json()).encode())) == status
