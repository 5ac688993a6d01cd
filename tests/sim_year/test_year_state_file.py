"""The year's state file is outside bytes: whatever it holds, a clear ValueError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.year import parse_state

GOOD_DAY: dict[str, Any] = {
    "day": "2026-01-01",
    "taps": 10,
    "rides": 9,
    "expected_fen": 1500,
    "settled_fen": 1500,
    "money_ok": True,
    "taps_ok": True,
    "anomalies": {},
    "carry": {"taps": 0, "by_operator": {}},
    "venue_visits_planned": 3,
    "venue_entries": 3,
    "venue_fen": 4500,
    "settled_venue_fen": 4500,
    "wrong_decisions": 0,
}
GOOD = {"format": "farecore-sim-year/1", "options": {"seed": 1}, "days": [GOOD_DAY]}


def test_a_good_state_parses() -> None:
    assert parse_state(json.dumps(GOOD).encode()) == GOOD


@given(st.binary(max_size=300))
def test_random_bytes_are_refused(data: bytes) -> None:
    try:
        parse_state(data)
    except ValueError:
        return
    pytest.fail("random bytes parsed as a state")  # pragma: no cover


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(st.sampled_from(sorted(GOOD_DAY)), _json)
def test_a_day_field_of_any_other_value_is_refused_or_kept(key: str, value: Any) -> None:
    day = dict(GOOD_DAY, **{key: value})
    data = json.dumps(dict(GOOD, days=[day])).encode()
    try:
        state = parse_state(data)
    except ValueError:
        return
    assert state["days"][0][key] == value  # only a value of the right kind gets through


def test_a_day_out_of_order_is_refused() -> None:
    day = dict(GOOD_DAY, day="2026-01-02")
    with pytest.raises(ValueError, match="not 2026-01-01"):
        parse_state(json.dumps(dict(GOOD, days=[day])).encode())
