"""The alliance's policy per merchant (the optional ``regions`` and ``categories`` columns
of ``merchants.csv``): read strictly, one line naming the line and column of a fault, and
applied by the monthly report to claims real tills journaled: a card whose region or
category the merchant's policy does not accept is a finding and is not counted; a
merchant without a policy is left as it was."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from merchant_world import World, farecore, make_world, month_of, service_day

from farecore.errors import ConfigError
from farecore.merchant.claim import DiscountRule
from farecore.merchant.report_inputs import MerchantPolicy, parse_merchants
from farecore.merchant.rules import HEADER, parse_rules

FULL = HEADER + ",regions,categories"

# --- the parser ---------------------------------------------------------------------


def test_without_policy_columns_the_rules_are_read_as_before() -> None:
    text = f"{HEADER}\njimo-tea,10,,2026-01-01\n"
    rules, policies = parse_merchants(text, "m.csv")
    assert rules == parse_rules(text, "m.csv")
    assert policies.columns == () and policies.policies == {}


def test_each_rules_policy_is_in_force_with_it() -> None:
    rules, policies = parse_merchants(
        f"{FULL}\r\n"
        "jimo-tea,10,,2026-01-01,370200;110000,1;4\r\n"
        "jimo-tea,20,3000,2026-12-15,,\r\n"
        "books,5,,2026-06-01,370200,\n"
    )
    at = policies.in_force
    assert at("jimo-tea", dt.date(2025, 12, 31)) is None
    assert at("jimo-tea", dt.date(2026, 12, 14)) == MerchantPolicy(
        frozenset({370200, 110000}), frozenset({1, 4})
    )
    assert at("jimo-tea", dt.date(2026, 12, 15)) == MerchantPolicy(None, None)
    assert at("books", dt.date(2027, 1, 1)) == MerchantPolicy(frozenset({370200}), None)
    assert at("nobody", dt.date(2027, 1, 1)) is None
    assert rules.in_force("jimo-tea", dt.date(2026, 12, 15)) == DiscountRule(20, 3000)
    assert policies.columns == ("regions", "categories")


def test_one_column_in_either_order() -> None:
    _, only = parse_merchants(f"{HEADER},categories\na,10,,2026-01-01,2;3\n")
    assert only.in_force("a", dt.date(2026, 1, 1)) == MerchantPolicy(None, frozenset({2, 3}))
    _, swapped = parse_merchants(f"{HEADER},categories,regions\na,10,,2026-01-01,5,4294967295\n")
    assert swapped.in_force("a", dt.date(2026, 1, 1)) == MerchantPolicy(
        frozenset({4294967295}), frozenset({5})
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (f"{HEADER},region\n", "line 1: unknown column 'region'; did you mean 'regions'?"),
        (f"{HEADER},regions,regions\n", "line 1: a column named twice"),
        (f"{HEADER},\n", "line 1: unknown column ''"),
        ("merchant,percent,cap,effective_from,regions\n", "line 1: the header must be"),
        (f"{FULL}\na,10,,2026-01-01,370200\n", "line 2: 5 fields, not 6"),
        (f"{FULL}\na,10,,2026-01-01,370200,1,\n", "line 2: 7 fields, not 6"),
        (f"{FULL}\na,0,,2026-01-01,370200,1\n", "line 2: percent '0' must be 1..100"),
        (f"{FULL}\na,10,,2026-01-01,0,1\n", "line 2 column regions: '0' is not one of region"),
        (f"{FULL}\na,10,,2026-01-01,0370200,1\n", "line 2 column regions: '0370200'"),
        (f"{FULL}\na,10,,2026-01-01,4294967296,1\n", "line 2 column regions: '4294967296'"),
        (f"{FULL}\na,10,,2026-01-01,370200 ,1\n", "line 2 column regions: '370200 '"),
        (f"{FULL}\na,10,,2026-01-01,370200;,1\n", "line 2 column regions: ''"),
        (f"{FULL}\na,10,,2026-01-01,;,1\n", "line 2 column regions: ''"),
        (f"{FULL}\na,10,,2026-01-01,370200 110000,1\n", "line 2 column regions"),
        (f"{FULL}\na,10,,2026-01-01,+370200,1\n", "line 2 column regions"),
        (f"{FULL}\na,10,,2026-01-01,３70200,1\n", "line 2 column regions"),
        (f"{FULL}\na,10,,2026-01-01,1;2;1,1\n", "line 2 column regions: 1 is listed twice"),
        (
            f"{FULL}\na,10,,2026-01-01,1,0\n",
            "line 2 column categories: '0' is not one of categories 1..5",
        ),
        (f"{FULL}\na,10,,2026-01-01,1,6\n", "line 2 column categories: '6'"),
        (f"{FULL}\na,10,,2026-01-01,1,1;1\n", "line 2 column categories: 1 is listed twice"),
        (f"{FULL}\na,10,,2026-01-01,1,1\nb,10,,2026-01-01,1,x\n", "line 3 column categories"),
        (f"{FULL}\na,10,,2026-01-01,1,1\na,10,,2026-01-01,1,1\n", "line 3: a second rule"),
    ],
)
def test_a_bad_policy_is_one_line_naming_its_line_and_column(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_merchants(text, "m.csv")
    assert words in str(err.value) and str(err.value).startswith("m.csv line ")
    assert "\n" not in str(err.value)


_CODES = {"regions": (1, 0xFFFFFFFF), "categories": (1, 5)}


def _oracle(column: str, cell: str) -> tuple[bool, frozenset[int] | None]:
    """What a policy cell means, written plainly: (well formed, its values or None)."""
    if cell == "":
        return True, None
    items = cell.split(";")
    low, high = _CODES[column]
    for item in items:
        if not (item and item.isascii() and item.isdigit() and item[0] != "0"):
            return False, None
        if not low <= int(item) <= high:
            return False, None
    return len(set(items)) == len(items), frozenset(map(int, items))


# Any text of one cell (no field or line separator), digits and ';', lists of numbers, and
# small numbers with a leading zero, blank or sign.
_CELL = st.one_of(
    st.text(st.characters(blacklist_characters=",\r\n"), max_size=30),
    st.text(alphabet="0123456789;", max_size=30),
    st.lists(st.integers(0, 1 << 33), max_size=6).map(lambda v: ";".join(map(str, v))),
    st.lists(st.tuples(st.sampled_from(["", "0", " ", "+"]), st.integers(0, 9)), max_size=4).map(
        lambda v: ";".join(f"{pad}{i}" for pad, i in v)
    ),
)


@settings(max_examples=500, deadline=None)
@given(_CELL, _CELL)
def test_any_policy_cells_are_a_policy_or_one_error_line(regions: str, categories: str) -> None:
    text = f"{FULL}\njimo-tea,10,,2026-01-01,{regions},{categories}\n"
    (r_ok, r_want), (c_ok, c_want) = _oracle("regions", regions), _oracle("categories", categories)
    try:
        _, policies = parse_merchants(text, "m.csv")
    except ConfigError as exc:
        assert str(exc).startswith("m.csv line 2 column ") and "\n" not in str(exc)
        assert not (r_ok and c_ok), exc
        return
    assert r_ok and c_ok
    assert policies.in_force("jimo-tea", dt.date(2026, 1, 1)) == MerchantPolicy(r_want, c_want)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["regions", "categories", "regions,categories"]))
def test_any_text_under_a_policy_header_is_read_or_one_error_line(body: str, cols: str) -> None:
    try:
        rules, policies = parse_merchants(f"{HEADER},{cols}\n{body}", "m.csv")
    except ConfigError as exc:
        assert str(exc).startswith("m.csv") and "\n" not in str(exc)
        return
    assert set(policies.policies) == set(rules.rules)
    for days in policies.policies.values():
        for _, p in days:
            assert p.regions is None or (p.regions and all(0 < r < 1 << 32 for r in p.regions))
            assert p.categories is None or (p.categories and p.categories <= {1, 2, 3, 4, 5})


_POLICY_ROW = st.tuples(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    st.dates(dt.date(1970, 1, 1), dt.date(9999, 12, 31)),
    st.one_of(st.none(), st.frozensets(st.integers(1, 0xFFFFFFFF), min_size=1, max_size=5)),
    st.one_of(st.none(), st.frozensets(st.integers(1, 5), min_size=1)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_POLICY_ROW, max_size=8, unique_by=lambda r: (r[0], r[1])), st.booleans())
def test_policies_round_trip(
    rows: list[tuple[str, dt.date, frozenset[int] | None, frozenset[int] | None]], swap: bool
) -> None:
    def cell(values: frozenset[int] | None) -> str:
        return ";".join(map(str, sorted(values, reverse=swap))) if values else ""

    head = f"{HEADER},categories,regions" if swap else FULL
    text = head + "\n"
    for m, d, r, c in rows:
        cells = (cell(c), cell(r)) if swap else (cell(r), cell(c))
        text += f"{m},10,,{d},{cells[0]},{cells[1]}\n"
    _, policies = parse_merchants(text)
    for m, d, r, c in rows:
        assert policies.in_force(m, d) == MerchantPolicy(r, c)


# --- the report, on claims real tills journaled ---------------------------------------


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, Path, str, int]:
    """Till 5101 at laoshan-books accepts cards of Qingdao and Beijing, every category:
    alice (Qingdao, veteran), far (Beijing, veteran), fam (Qingdao, military family).
    Till 5102 at jimo-tea takes far's card too. Returns the world, the batches, the month
    and the service day of the claims."""
    w = make_world(tmp_path_factory.mktemp("policy"))
    cards = [w.card("alice", 42), w.card("far", 60, region=110000), w.card("fam", 61, category=2)]
    both = "regions = [370200, 110000]"
    w.till(5101, "laoshan-books", "till-1", discount="percent = 10", policy=both)
    w.till(5102, "jimo-tea", "till-2", discount="percent = 10", policy=both)
    w.register()
    batches = w.root / "batches"
    r, claims = w.verify(5101, cards, ["100", "200", "300"])
    assert r.returncode == 0, r.stderr
    assert [c["decision"] for c in claims] == ["ACCEPT"] * 3
    w.export(5101, claims, batches)
    r, more = w.verify(5102, [cards[1]], ["50"])
    assert r.returncode == 0 and more[0]["decision"] == "ACCEPT", r.stderr
    w.export(5102, more, batches)
    day = service_day(claims[0]["time_ms"])
    assert {service_day(c["time_ms"]) for c in claims + more} == {day}  # run near midnight?
    return w, batches, month_of(claims[0]["time_ms"]), int(day[8:])


def _rules(world: World, path: Path, head: str, rows: dict[str, str]) -> Path:
    """merchants.csv: both merchants at 10 % from 2026-01-01, with policy cells ``rows``."""
    lines, none = [head], "2026-01-01" + "," * (head.count(",") - 3)
    for merchant in ("jimo-tea", "laoshan-books"):
        lines += [f"{merchant},10,,{r}" for r in rows.get(merchant, none).split("|")]
    path.write_text("\n".join(lines) + "\n")
    return path


def _by(summary: dict[str, Any]) -> dict[str, tuple[int, int, int, int]]:
    return {
        m["merchant"]: (m["claims"], m["verified"], m["amount_fen"], m["findings"])
        for m in summary["merchants"]
    }


def test_a_card_outside_the_merchants_policy_is_a_finding_and_not_counted(
    month: tuple[World, Path, str, int], tmp_path: Path
) -> None:
    world, batches, when, _ = month
    rules = _rules(world, tmp_path / "m.csv", FULL, {"laoshan-books": "2026-01-01,370200,1"})
    r, summary, findings = world.report(batches, tmp_path / "out", when, "--merchants", rules)
    assert r.returncode == 3, r.stdout + r.stderr
    got = sorted((f["kind"], f["card_id"], f["merchant"], f["detail"]) for f in findings)
    assert got == [
        ("category_not_accepted", 61, "laoshan-books",
         "category 2: not one the alliance accepts at laoshan-books"),
        ("wrong_region", 60, "laoshan-books",
         "region 110000: not one the alliance accepts at laoshan-books"),
    ]  # fmt: skip
    # Only alice's claim counts at laoshan-books; jimo-tea has no policy: far counts there.
    assert _by(summary) == {"laoshan-books": (1, 1, 10000, 2), "jimo-tea": (1, 1, 5000, 0)}
    assert summary["review_kinds_found"] == ["category_not_accepted", "wrong_region"]
    assert summary["policy"] == "region checked for 1 of 2 merchants, category for 1"
    assert summary["policy_by_merchant"] == {
        "jimo-tea": "region not checked, category not checked",
        "laoshan-books": "region checked, category checked",
    }
    assert "  policy: region checked for 1 of 2 merchants, category for 1\n" in r.stdout


def test_every_merchant_checked_and_one_column_alone(
    month: tuple[World, Path, str, int], tmp_path: Path
) -> None:
    world, batches, when, _ = month
    both = {"laoshan-books": "2026-01-01,370200;110000,1;2", "jimo-tea": "2026-01-01,110000,1"}
    rules = _rules(world, tmp_path / "m.csv", FULL, both)
    r, summary, findings = world.report(batches, tmp_path / "out", when, "--merchants", rules)
    assert r.returncode == 0 and findings == [], r.stdout + r.stderr
    assert _by(summary) == {"laoshan-books": (3, 3, 60000, 0), "jimo-tea": (1, 1, 5000, 0)}
    assert summary["policy"] == "region and category checked for every merchant"
    # A categories column alone: the region is not checked, far's card counts.
    only = _rules(
        world, tmp_path / "c.csv", f"{HEADER},categories", {"laoshan-books": "2026-01-01,1"}
    )
    r, summary, findings = world.report(batches, tmp_path / "out2", when, "--merchants", only)
    assert r.returncode == 3
    assert [(f["kind"], f["card_id"]) for f in findings] == [("category_not_accepted", 61)]
    assert summary["policy_by_merchant"]["laoshan-books"] == "region not checked, category checked"


def test_without_a_policy_nothing_changes(
    month: tuple[World, Path, str, int], tmp_path: Path
) -> None:
    world, batches, when, _ = month
    plain = world.write_rules(tmp_path / "plain.csv")
    empty = _rules(world, tmp_path / "empty.csv", FULL, {})
    r1, s1, f1 = world.report(batches, tmp_path / "plain", when, "--merchants", plain)
    r2, s2, f2 = world.report(batches, tmp_path / "empty", when, "--merchants", empty)
    assert r1.returncode == r2.returncode == 0 and f1 == f2 == []
    assert _by(s1) == _by(s2) == {"laoshan-books": (3, 3, 60000, 0), "jimo-tea": (1, 1, 5000, 0)}
    assert "policy" not in s1 and "policy_by_merchant" not in s1 and "  policy:" not in r1.stdout
    assert s2["policy"] == "region checked for 0 of 2 merchants, category for 0"
    assert set(s2["policy_by_merchant"].values()) == {"region not checked, category not checked"}
    # The same outputs but the rules file's hash and the policy words.
    for s in (s1, s2):
        for key in ("inputs", "outputs_sha256", "policy", "policy_by_merchant"):
            s.pop(key, None)
    assert s1 == s2
    assert (tmp_path / "plain" / "merchants.csv").read_bytes() == (
        tmp_path / "empty" / "merchants.csv"
    ).read_bytes()


def test_a_policy_in_force_from_mid_month_checks_the_claims_of_its_days(
    month: tuple[World, Path, str, int], tmp_path: Path
) -> None:
    """laoshan-books's policy (Qingdao, veterans) ends with the rule of the 15th."""
    world, batches, when, day = month
    rows = {"laoshan-books": f"2026-01-01,370200,1|{when}-15,,"}
    rules = _rules(world, tmp_path / "m.csv", FULL, rows)
    r, summary, findings = world.report(batches, tmp_path / "out", when, "--merchants", rules)
    days = (dt.date(int(when[:4]) + int(when[5:]) // 12, int(when[5:]) % 12 + 1, 1)
            - dt.date(int(when[:4]), int(when[5:]), 1)).days  # fmt: skip
    assert summary["policy_by_merchant"]["laoshan-books"] == (
        f"region checked on 14 of {days} days, category checked on 14 of {days} days"
    )
    checked = day < 15  # the claims' day was under the first rule
    assert r.returncode == (3 if checked else 0)
    assert sorted(f["kind"] for f in findings) == (
        ["category_not_accepted", "wrong_region"] if checked else []
    )


@pytest.mark.parametrize(
    ("head", "row", "words"),
    [
        (FULL, "2026-01-01,370200,9", "line 3 column categories: '9' is not one of categories"),
        (FULL, "2026-01-01,370200;;110000,1", "line 3 column regions: '' is not one of"),
        (FULL, "2026-01-01,370200", "line 3: 5 fields, not 6"),
        (f"{HEADER},regions,category", "2026-01-01,1,1", "unknown column 'category'; did you"),
    ],
)
def test_a_bad_policy_exits_2_and_writes_nothing(
    month: tuple[World, Path, str, int], tmp_path: Path, head: str, row: str, words: str
) -> None:
    world, batches, when, _ = month
    rules = _rules(world, tmp_path / "bad.csv", head, {"laoshan-books": row})
    r = farecore(
        "merchant", "report", "--month", when, "--batches", batches, "--register",
        world.root / "terminals.csv", "--keyring", world.keyring, "--merchants", rules,
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and re.search(r"bad\.csv line [0-9]", r.stderr), r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
