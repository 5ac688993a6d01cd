"""``[policy]`` regions and categories, in a till's till.toml and a gate's gate.toml: a
non-empty list of region codes (uint32, 1..4294967295) and a non-empty subset of the
categories 1..5; anything else is one ConfigError line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farecore.errors import ConfigError
from farecore.gate.config import load_gate_config
from farecore.merchant.config import load_till_config

TILL = (
    '[terminal]\nid = 2001\nkey = "k.key"\nmerchant = "m"\ntill = "t"\n'
    "[discount]\npercent = 10\n"
    '[keyring]\npath = "keyring.json"\n'
    '[revocation]\ntable = "r.frt"\nsigner = "r.pub"\n'
    '[journal]\npath = "j.sqlite"\n'
)
GATE = (
    '[terminal]\nid = 77\noperator = "qd"\nline = "1"\nplace = "p"\nrole = "bus"\n'
    '[keyring]\npath = "keyring.json"\n[revocation]\nenabled = false\n'
)
BAD = [
    ("regions = []", "policy.regions must list at least one region, each 1..4294967295"),
    ("regions = [-5]", "policy.regions"),
    ("regions = [0]", "policy.regions"),
    ("regions = [99999999999]", "policy.regions"),
    ("regions = [4294967296]", "policy.regions"),
    ("regions = [true]", "policy.regions"),
    ('regions = ["370200"]', "policy.regions"),
    ("regions = [370200]\ncategories = []", "policy.categories must list at least one category"),
    ("regions = [370200]\ncategories = [99]", "each 1..5"),
    ("regions = [370200]\ncategories = [0, 1]", "policy.categories"),
    ("regions = [370200]\ncategories = [1, 6]", "policy.categories"),
    ("regions = [370200]\ncategories = [1.0]", "policy.categories"),
]


def _load(tmp_path: Path, kind: str, policy: str) -> object:
    if kind == "till":
        (tmp_path / "till.toml").write_text(TILL + "[policy]\n" + policy + "\n")
        return load_till_config(tmp_path / "till.toml")
    (tmp_path / "gate.toml").write_text(GATE + "[policy]\n" + policy + "\n")
    return load_gate_config(tmp_path / "gate.toml")


@pytest.mark.parametrize("kind", ["till", "gate"])
@pytest.mark.parametrize(("policy", "says"), BAD)
def test_a_bad_policy_list_is_one_line_naming_its_key(
    tmp_path: Path, kind: str, policy: str, says: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, kind, policy)
    assert says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["till", "gate"])
def test_the_edges_of_a_good_policy(tmp_path: Path, kind: str) -> None:
    cfg = _load(tmp_path, kind, "regions = [1, 4294967295]\ncategories = [5]")
    assert getattr(cfg, "regions") == frozenset({1, 0xFFFFFFFF})  # noqa: B009
    assert getattr(cfg, "categories") == frozenset({5})  # noqa: B009


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.integers(-(2**40), 2**40), max_size=4),
    st.lists(st.integers(-3, 8), max_size=6),
)
def test_any_integer_lists_load_only_in_range(
    tmp_path: Path, regions: list[int], categories: list[int]
) -> None:
    policy = f"regions = {regions}\ncategories = {categories}"
    ok = bool(regions) and all(1 <= r <= 0xFFFFFFFF for r in regions)
    ok = ok and bool(categories) and all(1 <= c <= 5 for c in categories)
    for kind in ("till", "gate"):
        try:
            cfg = _load(tmp_path, kind, policy)
        except ConfigError as exc:
            assert not ok and "policy." in str(exc), exc
            continue
        assert ok and getattr(cfg, "regions") == frozenset(regions)  # noqa: B009
