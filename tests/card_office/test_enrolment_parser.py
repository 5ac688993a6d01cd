"""The enrolment CSV parser: good files parse, every bad one is one MalformedFile naming
its line, never a traceback (hypothesis), and duplicates are refused with both lines."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.enrolment import (
    ENROLMENT_HEADER,
    MAX_LINE_BYTES,
    check_against_issued,
    parse_enrolment,
    parse_utc,
)
from farecore.errors import MalformedFile

KEYS = [PrivateKey(Algorithm.ED25519, bytes([i]) * 32).public_bytes for i in range(1, 6)]
P256 = PrivateKey(Algorithm.P256, bytes([7]) * 32).public_bytes
# Each error names the file and a line, or is about the file as a whole.
ERROR = re.compile(r"^enrol\.csv( line [0-9]+: |: larger than)")


def row(card_id: int, key: bytes, alg: str = "ed25519", category: int = 1) -> str:
    return (
        f"{card_id},{category},370200,2026-01-01T00:00:00Z,2031-01-01T00:00:00Z,{alg},{key.hex()}"
    )


def good_file() -> bytes:
    rows = [row(10 + i, k) for i, k in enumerate(KEYS)] + [row(99, P256, "p256", 3)]
    return ("\n".join([ENROLMENT_HEADER, *rows]) + "\n").encode()


def test_a_good_file_parses() -> None:
    rows = parse_enrolment(good_file(), "enrol.csv")
    assert [r.card_id for r in rows] == [10, 11, 12, 13, 14, 99]
    assert [r.line for r in rows] == [2, 3, 4, 5, 6, 7]
    assert rows[0].valid_from == parse_utc("2026-01-01T00:00:00Z") == 1_767_225_600
    assert rows[-1].key_algorithm is Algorithm.P256 and rows[-1].category == 3


def test_crlf_lines_and_no_final_newline_parse() -> None:
    text = good_file().decode().rstrip("\n").replace("\n", "\r\n").encode()
    assert len(parse_enrolment(text, "enrol.csv")) == 6


def test_duplicate_card_id_names_both_lines() -> None:
    text = "\n".join([ENROLMENT_HEADER, row(3, KEYS[0]), row(4, KEYS[1]), row(3, KEYS[2])])
    with pytest.raises(MalformedFile) as err:
        parse_enrolment(text.encode(), "enrolment.csv")
    assert str(err.value) == "enrolment.csv line 4: card id 3 appears again (line 2)"


def test_duplicate_public_key_names_both_lines() -> None:
    text = "\n".join([ENROLMENT_HEADER, row(3, KEYS[0]), row(4, KEYS[0])])
    with pytest.raises(MalformedFile, match=r"^e line 3: public key .* card 3 \(line 2\)$"):
        parse_enrolment(text.encode(), "e")


def test_a_key_already_signed_is_refused() -> None:
    from farecore.card.credential import CredentialFields, build_credential

    issuer = PrivateKey(Algorithm.ED25519, bytes([9]) * 32)
    cred = build_credential(
        CredentialFields(Algorithm.ED25519, 1, 500, 1, 370200, 0, 10, Algorithm.ED25519, KEYS[2]),
        issuer,
    )
    rows = parse_enrolment(good_file(), "enrol.csv")
    with pytest.raises(MalformedFile, match=r"^enrol\.csv line 4: public key .* card 500 \(c:3\)"):
        check_against_issued(rows, [("c:3", cred)], "enrol.csv")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0,1,370200,2026-01-01T00:00:00Z,2031-01-01T00:00:00Z,ed25519,KEY", "card id 0 is not"),
        ("1,6,370200,2026-01-01T00:00:00Z,2031-01-01T00:00:00Z,ed25519,KEY", "category 6"),
        ("1,1,0,2026-01-01T00:00:00Z,2031-01-01T00:00:00Z,ed25519,KEY", "region 0"),
        ("1,1,370200,2026-01-01,2031-01-01T00:00:00Z,ed25519,KEY", "YYYY-MM-DDTHH:MM:SSZ"),
        ("1,1,370200,2026-02-30T00:00:00Z,2031-01-01T00:00:00Z,ed25519,KEY", "not a real"),
        ("1,1,370200,2031-01-01T00:00:00Z,2026-01-01T00:00:00Z,ed25519,KEY", "after valid_from"),
        ("1,1,370200,2026-01-01T00:00:00Z,2107-01-01T00:00:00Z,ed25519,KEY", "2106"),
        ("1,1,370200,2026-01-01T00:00:00Z,2031-01-01T00:00:00Z,rsa,KEY", "not one of"),
        ("1,1,370200,2026-01-01T00:00:00Z,2031-01-01T00:00:00Z,p256,KEY", "65 bytes, not 32"),
        ("1,1,370200,2026-01-01T00:00:00Z,2031-01-01T00:00:00Z,ed25519,zz", "not a key in hex"),
        ("1,1,370200,2026-01-01T00:00:00Z,2031-01-01T00:00:00Z,ed25519", "expected 7 fields"),
        ("", "empty line"),
        ("1,1,370200,2026-01-01T00:00:00Z,2031-01-01T00:00:00Z,ed25519,KEY,", "7 fields"),
        (" 1,1,370200,2026-01-01T00:00:00Z,2031-01-01T00:00:00Z,ed25519,KEY", "not a decimal"),
        ("1,1,370200,2026-01-01T00:00:00Z,2031-01-01T00:00:00Z,p256," + "05" * 65, "not a valid"),
    ],
)
def test_bad_rows_name_their_line(line: str, message: str) -> None:
    text = "\n".join([ENROLMENT_HEADER, row(5, KEYS[0]), line.replace("KEY", KEYS[1].hex())])
    with pytest.raises(MalformedFile) as err:
        parse_enrolment(text.encode() + b"\n", "enrol.csv")
    assert str(err.value).startswith("enrol.csv line 3: ")
    assert message in str(err.value)


def test_header_empty_file_and_size_bounds() -> None:
    with pytest.raises(MalformedFile, match="^enrol.csv line 1: the header must be"):
        parse_enrolment(b"card_id,category\n", "enrol.csv")
    with pytest.raises(MalformedFile, match="^enrol.csv line 1: empty file"):
        parse_enrolment(b"", "enrol.csv")
    with pytest.raises(MalformedFile, match="^enrol.csv line 2: no cards"):
        parse_enrolment(ENROLMENT_HEADER.encode() + b"\n", "enrol.csv")
    long = ENROLMENT_HEADER.encode() + b"\n" + b"1" * (MAX_LINE_BYTES + 1)
    with pytest.raises(MalformedFile, match="^enrol.csv line 2: longer than"):
        parse_enrolment(long, "enrol.csv")


def _check(data: bytes) -> None:
    try:
        rows = parse_enrolment(data, "enrol.csv")
    except MalformedFile as exc:
        assert ERROR.match(str(exc)), str(exc)
        assert "\n" not in str(exc)
    else:
        assert rows


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_one_error_naming_a_line(data: bytes) -> None:
    _check(data)
    _check(ENROLMENT_HEADER.encode() + b"\n" + data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_mutated_good_file_parses_or_names_its_line(data: st.DataObject) -> None:
    raw = bytearray(good_file())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["set", "delete", "insert"]))
        byte = data.draw(st.sampled_from(list(b",\n\r0189aAfFzT:Z- \x00\xff")))
        if action == "set":
            raw[at] = byte
        elif action == "delete":
            del raw[at]
        else:
            raw.insert(at, byte)
    _check(bytes(raw))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="0123456789,:-TZabcdef ", max_size=40), min_size=1, max_size=8))
def test_rows_of_plausible_fields_never_traceback(fields: list[str]) -> None:
    _check((ENROLMENT_HEADER + "\n" + ",".join(fields) + "\n").encode())
