"""The till's money: the amount a cashier types, the discount rule, and the claim detail
a record carries, each parsed strictly; hypothesis for every parser of outside text."""

from __future__ import annotations

import decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.errors import MalformedInput
from farecore.merchant.claim import (
    MAX_AMOUNT_FEN,
    DiscountRule,
    claim_detail,
    parse_amount,
    parse_claim_detail,
)


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("128", 12800),
        ("128.5", 12850),
        ("128.50", 12850),
        ("0.01", 1),
        ("0.5", 50),
        ("  7.05\r\n", 705),
        ("12850fen", 12850),
        ("1fen", 1),
        ("1000000", MAX_AMOUNT_FEN),
    ],
)
def test_amounts_a_cashier_types(text: str, fen: int) -> None:
    assert parse_amount(text) == fen


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "0.00",
        "0fen",
        "-5",
        "+5",
        "1,000",
        "1.",
        ".5",
        "1.234",
        "01",
        "00.5",
        "1e3",
        "１２",  # full-width digits
        "12 fen",
        "12FEN",
        "¥12",
        "1000000.01",
        "nan",
        "1_000",
        "9" * 70,
    ],
)
def test_what_is_not_an_amount(text: str) -> None:
    with pytest.raises(MalformedInput):
        parse_amount(text)


def _reference(text: str) -> int | None:
    """What the amount grammar means, said another way (Decimal), or None."""
    s = text.strip(" \t\r\n")
    if s.endswith("fen"):
        digits = s[:-3]
        ok = digits.isascii() and digits.isdigit() and (digits == "0" or digits[0] != "0")
        value = int(digits) if ok else None
    else:
        whole, _, frac = s.partition(".")
        ok = (
            whole.isascii()
            and whole.isdigit()
            and (whole == "0" or whole[0] != "0")
            and ("." not in s or (1 <= len(frac) <= 2 and frac.isascii() and frac.isdigit()))
        )
        value = int(decimal.Decimal(s) * 100) if ok else None
    if value is None or not 1 <= value <= MAX_AMOUNT_FEN:
        return None
    return value


_AMOUNT_CHARS = st.text(alphabet="0123456789.fen -+,\t１", max_size=14)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_AMOUNT_CHARS, st.text(max_size=70)))
def test_any_text_is_an_amount_exactly_as_the_grammar_says(text: str) -> None:
    expected = _reference(text) if len(text) <= 64 else None
    try:
        got: int | None = parse_amount(text)
    except MalformedInput:
        got = None
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(st.integers(1, MAX_AMOUNT_FEN))
def test_every_fen_amount_round_trips_in_both_spellings(fen: int) -> None:
    assert parse_amount(f"{fen}fen") == fen
    assert parse_amount(f"{fen // 100}.{fen % 100:02d}") == fen


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 100), st.none() | st.integers(1, MAX_AMOUNT_FEN), st.integers(1, MAX_AMOUNT_FEN)
)
def test_the_discount_is_whole_fen_rounded_down_and_capped(
    percent: int, cap: int | None, amount: int
) -> None:
    got = DiscountRule(percent, cap).discount(amount)
    exact = decimal.Decimal(amount) * percent / 100
    assert got == min(int(exact), cap if cap is not None else amount)
    assert 0 <= got <= amount


@pytest.mark.parametrize(("percent", "cap"), [(0, None), (101, None), (10, 0), (True, None)])
def test_rules_out_of_range_are_refused(percent: int, cap: int | None) -> None:
    with pytest.raises(ValueError):
        DiscountRule(percent, cap)


_WHY = st.text(st.characters(exclude_categories=["Cs"]), max_size=1200)


@settings(max_examples=400, deadline=None)
@given(
    st.integers(1, MAX_AMOUNT_FEN),
    st.integers(1, 100),
    st.none() | st.integers(1, MAX_AMOUNT_FEN),
    st.booleans(),
    _WHY,
)
def test_a_claim_detail_reads_back_as_written(
    amount: int, percent: int, cap: int | None, accepted: bool, why: str
) -> None:
    rule = DiscountRule(percent, cap)
    text = claim_detail(amount, rule, accepted, why)
    assert len(text) <= 1000  # the journal keeps 1000 characters of a detail
    back = parse_claim_detail(text, accepted)
    assert (back.amount_fen, back.rule) == (amount, rule)
    assert back.discount_fen == (rule.discount(amount) if accepted else 0)
    assert back.why == ("" if accepted else back.why)
    assert claim_detail(amount, rule, accepted, back.why) == text


@settings(max_examples=400, deadline=None)
@given(st.integers(1, MAX_AMOUNT_FEN), st.integers(1, 100), st.data())
def test_every_change_to_an_accepted_detail_is_refused_or_means_another_claim(
    amount: int, percent: int, data: st.DataObject
) -> None:
    text = claim_detail(amount, DiscountRule(percent), True)
    i = data.draw(st.integers(0, len(text) - 1))
    c = data.draw(st.characters(min_codepoint=0, max_codepoint=0x7F))
    changed = text[:i] + c + text[i + 1 :]
    try:
        back = parse_claim_detail(changed, True)
    except MalformedInput:
        return
    # The only changes that parse are to another amount or rule whose discount agrees.
    assert claim_detail(back.amount_fen, back.rule, True) == changed


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        ("amount_fen=100 discount_fen=10 percent=10", False),  # a deny gives nothing
        ("amount_fen=100 discount_fen=11 percent=10", True),
        ("amount_fen=100 discount_fen=10 percent=10; why", True),
        ("amount_fen=0100 discount_fen=10 percent=10", True),
        ("amount_fen=100 discount_fen=10 percent=10 ", True),
        ("amount_fen=100 discount_fen=5 percent=10 cap_fen=0", True),
        ("amount_fen=100  discount_fen=10 percent=10", True),
        ("discount_fen=10 amount_fen=100 percent=10", True),
        ("amount_fen=100 discount_fen=0 percent=10;  why", False),
        ("amount_fen=100 discount_fen=0 percent=10; why\n", False),
        ("amount_fen=100 discount_fen=0 percent=101", False),
        ("amount_fen=100000001 discount_fen=0 percent=10", False),
        ("", False),
    ],
)
def test_details_no_till_writes_are_refused(text: str, accepted: bool) -> None:
    with pytest.raises(MalformedInput):
        parse_claim_detail(text, accepted)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200), st.booleans())
def test_random_detail_text_only_ever_parses_or_is_refused(text: str, accepted: bool) -> None:
    try:
        back = parse_claim_detail(text, accepted)
    except MalformedInput:
        return
    assert claim_detail(back.amount_fen, back.rule, accepted, back.why) == text
