"""The alliance's rules file (``merchants.csv``): read strictly, one line naming the file's
line for any fault, and the rule in force on a day is the latest that took effect."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.errors import ConfigError
from farecore.merchant.claim import DiscountRule
from farecore.merchant.rules import HEADER, parse_rules


def test_the_rule_in_force_on_a_day() -> None:
    rules = parse_rules(
        f"{HEADER}\r\njimo-tea,20,3000,2026-12-15\r\njimo-tea,10,,2026-01-01\r\nbooks,5,,2026-06-01\n"
    )
    at = rules.in_force
    assert at("jimo-tea", dt.date(2025, 12, 31)) is None
    assert at("jimo-tea", dt.date(2026, 1, 1)) == DiscountRule(10)
    assert at("jimo-tea", dt.date(2026, 12, 14)) == DiscountRule(10)
    assert at("jimo-tea", dt.date(2026, 12, 15)) == DiscountRule(20, 3000)
    assert at("books", dt.date(2027, 1, 1)) == DiscountRule(5)
    assert at("nobody", dt.date(2027, 1, 1)) is None
    assert parse_rules(HEADER).rules == {}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "line 1: the header must be"),
        ("merchant,percent,cap_fen\n", "line 1: the header must be"),
        (f"{HEADER}\na,10,,2026-01-01,x\n", "line 2: 5 fields, not 4"),
        (f"{HEADER}\na,0,,2026-01-01\n", "line 2: percent '0' must be 1..100"),
        (f"{HEADER}\na,101,,2026-01-01\n", "line 2: percent '101'"),
        (f"{HEADER}\na,010,,2026-01-01\n", "line 2: percent '010'"),
        (f"{HEADER}\na,+5,,2026-01-01\n", "line 2: percent '+5'"),
        (f"{HEADER}\na,10,0,2026-01-01\n", "line 2: cap_fen '0'"),
        (f"{HEADER}\na,10,100000001,2026-01-01\n", "line 2: cap_fen '100000001'"),
        (f"{HEADER}\na,10, 5,2026-01-01\n", "line 2: cap_fen ' 5'"),
        (f"{HEADER}\na,10,,2026-1-01\n", "line 2: effective_from"),
        (f"{HEADER}\na,10,,2026-02-30\n", "line 2: effective_from"),
        (f"{HEADER}\na,10,,\n", "line 2: effective_from"),
        (f"{HEADER}\n-a,10,,2026-01-01\n", "line 2: merchant"),
        (f"{HEADER}\n崂山书店,10,,2026-01-01\n", "line 2: merchant"),
        (f"{HEADER}\n\n", "line 2: 1 fields, not 4"),
        (f"{HEADER}\na,10,,2026-01-01\nb,5,,2026-01-01\na,20,,2026-01-01\n", "line 4: a second"),
    ],
)
def test_a_bad_rules_file_is_one_line_naming_its_line(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_rules(text, "m.csv")
    assert words in str(err.value) and str(err.value).startswith("m.csv")
    assert "\n" not in str(err.value)


_ROW = st.tuples(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    st.integers(1, 100),
    st.one_of(st.none(), st.integers(1, 100_000_000)),
    st.dates(dt.date(1970, 1, 1), dt.date(9999, 12, 31)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ROW, max_size=8, unique_by=lambda r: (r[0], r[3])))
def test_rules_round_trip(rows: list[tuple[str, int, int | None, dt.date]]) -> None:
    text = HEADER + "\n" + "".join(f"{m},{p},{c or ''},{d}\n" for m, p, c, d in rows)
    rules = parse_rules(text)
    for m, p, c, d in rows:
        assert rules.in_force(m, d) == DiscountRule(p, c)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200), st.booleans())
def test_any_text_is_rules_or_one_error_line(body: str, header: bool) -> None:
    text = (HEADER + "\n" + body) if header else body
    try:
        rules = parse_rules(text, "m.csv")
    except ConfigError as exc:
        assert str(exc).startswith("m.csv") and "\n" not in str(exc)
        return
    for merchant, days in rules.rules.items():
        assert merchant.isascii() and days
        assert all(1 <= r.percent <= 100 for _, r in days)
