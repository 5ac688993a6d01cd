"""The till configuration: what it holds, and every mistake one line naming the key (an
unknown key names the nearest valid one); hostile TOML never gets past the loader with
anything but a ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farecore.decide.clockguard import DEFAULT_TOLERANCE_S
from farecore.errors import ConfigError
from farecore.journal.records import Direction
from farecore.merchant.claim import DiscountRule
from farecore.merchant.config import ALLIANCE, load_till_config

GOOD = """\
[terminal]
id = 2001
key = "keys/till-2001.key"
merchant = "laoshan-books"
till = "till-1"

[discount]
percent = 10
cap_fen = 5000

[policy]
regions = [370200]

[keyring]
path = "keyring.json"
issued = ["issued-1.fil"]

[revocation]
table = "revocation.frt"
signer = "keys/revocation.pub"

[journal]
path = "claims.sqlite"
"""


def _write(tmp: Path, text: str) -> Path:
    p = tmp / "till.toml"
    p.write_text(text)
    return p


def test_a_till_configuration_and_its_defaults(tmp_path: Path) -> None:
    cfg = load_till_config(_write(tmp_path, GOOD))
    assert (cfg.terminal_id, cfg.merchant, cfg.till) == (2001, "laoshan-books", "till-1")
    assert cfg.terminal_key == tmp_path / "keys/till-2001.key"
    assert cfg.discount == DiscountRule(10, 5000)
    assert cfg.regions == frozenset({370200}) and cfg.categories == frozenset({1, 2, 3, 4, 5})
    assert cfg.issued_lists == (tmp_path / "issued-1.fil",)
    assert cfg.revocation_max_age_s == 172_800 and cfg.stale_policy == "closed"
    assert cfg.revocation_store == tmp_path / "state" / "tables"
    assert cfg.journal == tmp_path / "claims.sqlite"
    assert cfg.clock_tolerance_s == DEFAULT_TOLERANCE_S and cfg.register is None
    assert cfg.marks == tmp_path / "state" / "marks-2001.json"
    ctx = cfg.context
    assert (ctx.operator, ctx.line, ctx.place, ctx.direction) == (
        ALLIANCE,
        "laoshan-books",
        "till-1",
        Direction.CLAIM,
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("percent = 10", "precent = 10"), "did you mean 'percent'"),
        (("[discount]", "[discont]"), "did you mean 'discount'"),
        (("till = ", "place = "), "unknown key 'place'"),
        (("cap_fen = 5000", "cap_fen = 0"), "discount.cap_fen must be 1.."),
        (("percent = 10", "percent = 10.5"), "discount.percent must be an integer"),
        (("percent = 10", "percent = 0"), "discount.percent must be 1..100"),
        (("percent = 10\n", ""), "discount.percent is required"),
        (('"laoshan-books"', '"laoshan books"'), "terminal.merchant"),
        (('"till-1"', '""'), "terminal.till must be a non-empty string"),
        (('"till-1"', '"-till"'), "terminal.till"),
        (("id = 2001", "id = -1"), "terminal.id must be a uint64"),
        (('path = "claims.sqlite"\n', ""), "journal.path is required"),
        (('table = "revocation.frt"\n', ""), "revocation.table is required"),
        (("[revocation]\n", '[revocation]\nenabled = false\n'), "unknown key 'enabled'"),
        (("regions = [370200]", "regions = []"), "at least one region"),
        (("[policy]\n", '[policy]\nwindow_s = 600\n'), "unknown key 'window_s'"),
        (("[journal]", "[passback]\nwindow_s = 600\n\n[journal]"), "unknown section 'passback'"),
        (('signer = "keys/revocation.pub"', 'signer = "keys/revocation.pub"\nstale_policy = "ajar"'), "stale_policy"),
        (('signer = "keys/revocation.pub"', 'signer = "keys/revocation.pub"\nmax_age_s = 0'), "revocation.max_age_s must be 1.."),
    ],
)  # fmt: skip
def test_mistakes_are_one_error_naming_the_key(
    tmp_path: Path, change: tuple[str, str], words: str
) -> None:
    assert change[0] in GOOD
    path = _write(tmp_path, GOOD.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError) as err:
        load_till_config(path)
    message = str(err.value)
    assert words in message and "\n" not in message
    assert message.startswith(str(path))


def test_a_missing_or_directory_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_till_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_till_config(tmp_path)


_VALUES = st.one_of(
    st.integers(-(2**70), 2**70),
    st.text(max_size=20),
    st.booleans(),
    st.lists(st.integers(-5, 400000), max_size=3),
    st.floats(allow_nan=True),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(
        [
            "id",
            "merchant",
            "till",
            "percent",
            "cap_fen",
            "regions",
            "max_age_s",
            "tolerance_s",
            "path",
        ]
    ),
    _VALUES,
)
def test_hostile_values_give_a_config_or_a_config_error(
    tmp_path: Path, key: str, value: object
) -> None:
    section = {
        "id": "terminal", "merchant": "terminal", "till": "terminal", "percent": "discount",
        "cap_fen": "discount", "regions": "policy", "max_age_s": "revocation",
        "tolerance_s": "clock", "path": "journal",
    }[key]  # fmt: skip
    text = GOOD + "\n[clock]\n" if section == "clock" else GOOD
    lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
    at = lines.index(f"[{section}]") + 1
    rendered = repr(value).lower() if isinstance(value, bool) else _toml(value)
    lines.insert(at, f"{key} = {rendered}")
    path = _write(tmp_path, "\n".join(lines) + "\n")
    try:
        load_till_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc)


def _toml(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, float):
        return (
            "nan"
            if value != value
            else ("inf" if value > 0 else "-inf")
            if abs(value) == float("inf")
            else repr(value)
        )
    return repr(value)
