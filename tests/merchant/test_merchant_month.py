"""The report's month: ``YYYY-MM`` strictly, its bounds in Qingdao time."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.errors import ConfigError
from farecore.merchant.report import Month


def test_a_month_and_its_bounds() -> None:
    m = Month.parse("2026-12")
    assert str(m) == "2026-12"
    start, end = m.bounds_ms(480)
    assert start == int(dt.datetime(2026, 11, 30, 16, tzinfo=dt.UTC).timestamp() * 1000)
    assert end == int(dt.datetime(2026, 12, 31, 16, tzinfo=dt.UTC).timestamp() * 1000)
    assert m.of(dt.date(2026, 11, 30)) == -1
    assert m.of(dt.date(2026, 12, 1)) == 0 and m.of(dt.date(2026, 12, 31)) == 0
    assert m.of(dt.date(2027, 1, 1)) == 1


@pytest.mark.parametrize(
    "text",
    ["2026-13", "2026-00", "2026-1", "26-12", "2026/12", " 2026-12", "２０２６-12", "", "9999-12"],
)
def test_what_is_not_a_month(text: str) -> None:
    with pytest.raises(ConfigError):
        Month.parse(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_any_text_is_a_month_only_in_the_one_spelling(text: str) -> None:
    m = re.fullmatch(r"([0-9]{4})-(0[1-9]|1[0-2])", text, re.ASCII)
    try:
        month = Month.parse(text)
    except ConfigError:
        assert m is None or not 1970 <= int(m[1]) <= 9998
        return
    assert m is not None and str(month) == text
