"""Fuzz the text files an operator writes: the gate configuration, fares.toml, and the
terminal register.

``load_gate_config`` promises ConfigError, ``parse_fares`` and ``parse_terminals``
MalformedFile, each in one line naming the problem. Byte mutations of a valid file test
the syntax; documents rebuilt with any TOML value in any place (integers beyond 64 bits,
NaN, dates, nested tables, unknown keys) test the checks behind the parser.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fuzz_support import attempt, fuzz_settings, mutated, mutated_text
from hypothesis import example, given
from hypothesis import strategies as st

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.errors import ConfigError, MalformedFile
from farecore.gate.config import load_gate_config
from farecore.journal.records import Direction
from farecore.settlement.fares import parse_fares
from farecore.settlement.terminals import TerminalInfo, format_terminals, parse_terminals

pytestmark = pytest.mark.fuzz

GATE: dict[str, dict[str, Any]] = {
    "terminal": {
        "id": 1001,
        "key": "keys/terminal-1001.key",
        "operator": "qingdao-metro",
        "line": "M3",
        "place": "wusi-square",
        "role": "metro_entry",
    },
    "policy": {"regions": [370200], "categories": [1, 2, 3, 4, 5]},
    "keyring": {"path": "keyring.json", "issued": ["issued-1.fil"]},
    "revocation": {
        "table": "revocation.frt",
        "signer": "keys/revocation.pub",
        "max_age_s": 172800,
        "stale_policy": "closed",
    },
    "journal": {"path": "journal-1001.sqlite", "group_commit_ms": 0},
    "passback": {"window_s": 600, "store": "station.sqlite"},
    "actuator": {"command": ["gpioset", "gpiochip0", "17=1"]},
}
FARES: dict[str, Any] = {
    "unpaired": {"entry": "min", "exit": 150},
    "checks": {"clock_tolerance_s": 300, "revocation_max_age_s": 172800, "utc_offset_min": 480},
    "operator": [
        {
            "id": "qd-metro",
            "regions": [370200],
            "categories": [1, 2, 3],
            "passback_scope": "place",
            "passback_s": {"metro_entry": 600},
        },
        {"id": "qd-bus", "regions": [370200]},
    ],
    "bus": [{"operator": "qd-bus", "line": "1", "fare_fen": 200, "effective_from": "2026-01-01"}],
    "metro": [
        {
            "operator": "qd-metro",
            "effective_from": "2026-01-01",
            "bands": [{"up_to_m": 6000, "fare_fen": 200}, {"fare_fen": 400}],
            "stations": {"wusi-square": 0, "licun": 9000},
        }
    ],
}


class Raw(str):
    """TOML text to emit as it is (an integer too long for Python's int-to-str)."""


# TOML's integers are 64-bit; Python's parser takes any length, and some are longer
# than int() and str() will convert (4300 digits).
_EDGE_NUMBERS = [
    Raw("9223372036854775808"),
    Raw("-9223372036854775809"),
    Raw("1" * 400),
    Raw("0x" + "f" * 400),
    Raw("0x" + "f" * 5000),
    Raw("1" * 5000),
    Raw("1e309"),
    Raw("nan"),
    Raw("-inf"),
    Raw("1979-05-27"),
    Raw("1979-05-27T07:32:00Z"),
    Raw("07:32:00"),
]
_scalars = st.one_of(
    st.sampled_from(_EDGE_NUMBERS),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["", "min", "hold", "open", "closed", "bus", "metro_entry", "2026-01-01"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _toml(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return hex(value) if value >= 0 else str(value)
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


def _document(doc: dict[str, Any]) -> str:
    """A TOML document: a table per section, an array of tables per list of tables."""
    out = []
    for name, section in doc.items():
        tables = section if isinstance(section, list) else [section]
        if not all(isinstance(t, dict) for t in tables):
            out.append(f"{json.dumps(name)} = {_toml(section)}")
            continue
        for table in tables:
            out.append(
                f"[[{json.dumps(name)}]]" if isinstance(section, list) else f"[{json.dumps(name)}]"
            )
            out += [f"{json.dumps(k)} = {_toml(v)}" for k, v in table.items()]
    return "\n".join(out) + "\n"


@st.composite
def edited(draw: st.DrawFn, base: dict[str, Any]) -> str:
    """``base`` with a few values replaced, keys added or removed, as TOML text."""
    doc = json.loads(json.dumps(base))  # a deep copy
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(doc)))
        section = doc[name]
        table = draw(st.sampled_from(section)) if isinstance(section, list) and section else section
        if not isinstance(table, dict):
            doc[name] = draw(_values)
            continue
        action = draw(st.sampled_from(["replace", "replace", "add", "drop", "section"]))
        if action == "section":
            doc[name] = draw(_values)
        elif action == "add" or not table:
            table[draw(st.text(max_size=8))] = draw(_values)
        else:
            key = draw(st.sampled_from(sorted(table)))
            if action == "drop":
                del table[key]
            else:
                table[key] = draw(_values)
    return _document(doc)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as tmp:
        yield Path(tmp)


def _load_gate(workdir: Path, text: str | bytes) -> None:
    path = workdir / "gate.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    error = attempt(lambda: load_gate_config(path), ConfigError)
    if isinstance(error, ConfigError):
        assert "\n" not in str(error), error  # one line, naming the problem


def test_the_base_files_are_valid(workdir: Path) -> None:
    path = workdir / "gate.toml"
    path.write_text(_document(GATE))
    assert load_gate_config(path).terminal_id == 1001
    assert len(parse_fares(_document(FARES)).operators) == 2


@fuzz_settings()
@given(text=mutated(_document(GATE).encode()))
def test_gate_config_bytes(workdir: Path, text: bytes) -> None:
    _load_gate(workdir, text)


@fuzz_settings(2.0)
@given(text=edited(GATE))
@example(text=_document(GATE).replace('"id" = 0x3e9', '"id" = ' + "1" * 5000))
@example(
    text=_document(GATE).replace('"group_commit_ms" = 0x0', '"group_commit_ms" = 0x' + "f" * 300)
)
@example(
    text=_document(GATE).replace('"key" = "keys/terminal-1001.key"', '"key" = 0x' + "f" * 5000)
)
def test_gate_config_values(workdir: Path, text: str) -> None:
    _load_gate(workdir, text)


def _parse_fares(text: str) -> None:
    attempt(lambda: parse_fares(text), MalformedFile)


@fuzz_settings()
@given(text=mutated_text(_document(FARES)))
def test_fares_bytes(text: str) -> None:
    _parse_fares(text)


@fuzz_settings(2.0)
@given(text=edited(FARES))
@example(text=_document(FARES).replace('"fare_fen" = 0xc8', '"fare_fen" = ' + "1" * 5000))
def test_fares_values(text: str) -> None:
    _parse_fares(text)


# --- the terminal register --------------------------------------------------------

_KEYS = {alg: PrivateKey(alg, bytes(range(1, 33))).public_bytes for alg in Algorithm}
REGISTER = format_terminals(
    [
        TerminalInfo(1001, "qd-metro", "M3", "wusi-square", Direction.ENTRY, Algorithm.ED25519, _KEYS[Algorithm.ED25519], 0, 0),
        TerminalInfo(1002, "qd-bus", "1", "bus-17", Direction.BOARD, Algorithm.P256, _KEYS[Algorithm.P256], -5, 12000),
    ]
)  # fmt: skip
_cells = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["1001", " 7 ", "-1", "1_000", "0x10", "1" * 5000, "ENTRY", "exit", "Ed25519"]),
    st.sampled_from(list(_KEYS.values())).map(bytes.hex),
)


def _parse_register(text: str) -> None:
    register = attempt(lambda: parse_terminals(text), MalformedFile)
    if not isinstance(register, MalformedFile):
        for tid, info in register.items():
            assert tid == info.terminal_id and info.key() is not None


@fuzz_settings()
@given(text=mutated_text(REGISTER))
def test_register_bytes(text: str) -> None:
    _parse_register(text)


@fuzz_settings()
@given(rows=st.lists(st.lists(_cells, min_size=8, max_size=10), max_size=4))
def test_register_rows(rows: list[list[str]]) -> None:
    body = "\n".join(
        ",".join(json.dumps(c) if "," in c or '"' in c else c for c in r) for r in rows
    )
    _parse_register(REGISTER.splitlines()[0] + "\n" + body)
