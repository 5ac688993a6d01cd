"""A merchant till's configuration file (TOML), parsed and checked before the till starts.

The file is read like a gate's (``farecore.gate.config.read_gate_toml``: size and nesting
bounded), and the sections a till shares with a gate take the gate's keys. Paths are
relative to the file's own directory. Every problem is a ConfigError naming the key; an
unknown key names the nearest valid one. Example::

    [terminal]
    id = 2001
    key = "keys/till-2001.key"
    merchant = "laoshan-books"   # the merchant's id in the alliance (the record's line)
    till = "till-1"              # this till (the record's place)
    register = "terminals.csv"   # optional: the key and context must be the registered ones

    [discount]
    percent = 10                 # of the purchase, rounded down to whole fen
    cap_fen = 5000               # optional: at most 50.00 yuan per purchase

    [policy]
    regions = [370200]
    categories = [1, 2, 3, 4, 5]

    [keyring]
    path = "keyring.json"
    issued = ["issued-1.fil"]

    [revocation]
    table = "revocation.frt"     # required: a till checks revocation (CARD-SPEC §7 check 8)
    signer = "keys/revocation.pub"
    max_age_s = 172800
    stale_policy = "closed"      # closed | open
    store = "state/tables"

    [journal]
    path = "claims-2001.sqlite"  # required: every claim is journaled

    [state]
    dir = "state"

    [clock]
    tolerance_s = 300

A till has no passback, no actuator and no role: its records carry
``Direction.CLAIM``, with the alliance as operator (``ALLIANCE``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farecore.decide.clockguard import DEFAULT_TOLERANCE_S
from farecore.decide.validator import ALL_CATEGORIES, TerminalPolicy
from farecore.errors import ConfigError
from farecore.gate.config import (
    DEFAULT_MAX_AGE_S,
    config_section,
    config_value,
    policy_list,
    read_gate_toml,
    terminal_policy,
)
from farecore.gate.config import SCHEMA as GATE_SCHEMA
from farecore.journal.records import Direction, TapContext
from farecore.merchant.claim import MAX_AMOUNT_FEN, DiscountRule
from farecore.strictkeys import check_keys

__all__ = ["ALLIANCE", "SCHEMA", "TillConfig", "load_till_config", "merchant_name_problem"]

# The operator every claim record names: the alliance (荣军联盟) the merchants belong to.
# The merchant is the record's line and the till its place (docs/merchant.md).
ALLIANCE = "rongjun-alliance"

SCHEMA: dict[str, tuple[str, ...]] = {
    "terminal": ("id", "key", "merchant", "till", "register"),
    "discount": ("percent", "cap_fen"),
    "policy": GATE_SCHEMA["policy"],
    "keyring": GATE_SCHEMA["keyring"],
    "revocation": ("table", "signer", "max_age_s", "stale_policy", "store"),
    "journal": ("path",),
    "state": GATE_SCHEMA["state"],
    "clock": GATE_SCHEMA["clock"],
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_MAX_AGE_LIMIT_S = 10 * 365 * 86_400
_MAX_CLOCK_TOLERANCE_S = 86_400


def merchant_name_problem(text: str) -> str | None:
    """Why ``text`` cannot be a merchant or till id (None: it can): 1 to 64 ASCII
    letters, digits, '.', '_' or '-', starting with a letter or digit."""
    if _NAME.fullmatch(text) is None:
        return (
            f"{text[:80]!r} is not an id: 1 to 64 ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return None


@dataclass(frozen=True, slots=True)
class TillConfig:
    terminal_id: int
    terminal_key: Path
    merchant: str
    till: str
    discount: DiscountRule
    regions: frozenset[int]
    categories: frozenset[int]
    keyring: Path
    issued_lists: tuple[Path, ...]
    revocation_table: Path
    revocation_signer: Path
    revocation_max_age_s: int
    stale_policy: str
    revocation_store: Path
    journal: Path
    state_dir: Path
    clock_tolerance_s: int = DEFAULT_TOLERANCE_S
    register: Path | None = None

    def __post_init__(self) -> None:
        self.policy()  # regions, categories and stale policy checked at load

    @property
    def marks(self) -> Path:
        """The till's durable high-water marks (``farecore.gate.marks``), as a gate's."""
        return self.state_dir / f"marks-{self.terminal_id}.json"

    @property
    def context(self) -> TapContext:
        """What every claim record of this till names."""
        return TapContext(ALLIANCE, self.merchant, self.till, Direction.CLAIM)

    def policy(self) -> TerminalPolicy:
        return terminal_policy(self)


def load_till_config(path: str | Path) -> TillConfig:
    """Read and check a till configuration; raise ConfigError naming what is wrong."""
    p = Path(path)
    doc = read_gate_toml(p)
    try:
        return _load(doc, p.parent)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return config_section(doc, name, SCHEMA)


def _get(section: dict[str, Any], where: str, key: str, kind: type, default: Any = ...) -> Any:
    """As a gate's settings are read; a till's strings are never empty."""
    value = config_value(section, where, key, kind, default)
    if kind is str and key in section and not value:
        raise ConfigError(f"{where}.{key} must be a non-empty string, not {value!r}")
    return value


def _load(doc: dict[str, Any], base: Path) -> TillConfig:
    check_keys(doc, "", SCHEMA, "section")
    term = _table(doc, "terminal")
    terminal_id = _get(term, "terminal", "id", int)
    if not 0 <= terminal_id <= 0xFFFFFFFFFFFFFFFF:
        raise ConfigError("terminal.id must be a uint64")
    names = {}
    for key in ("merchant", "till"):
        names[key] = _get(term, "terminal", key, str)
        problem = merchant_name_problem(names[key])
        if problem is not None:
            raise ConfigError(f"terminal.{key}: {problem}")
    register = _get(term, "terminal", "register", str, None)
    state_dir = base / _get(_table(doc, "state"), "state", "dir", str, "state")
    revocation = _table(doc, "revocation")
    max_age = _get(revocation, "revocation", "max_age_s", int, DEFAULT_MAX_AGE_S)
    if not 0 < max_age <= _MAX_AGE_LIMIT_S:
        raise ConfigError(f"revocation.max_age_s must be 1..{_MAX_AGE_LIMIT_S}, not {max_age}")
    store = _get(revocation, "revocation", "store", str, None)
    keyring = _table(doc, "keyring")
    policy = _table(doc, "policy")
    return TillConfig(
        terminal_id=terminal_id,
        terminal_key=base / _get(term, "terminal", "key", str),
        merchant=names["merchant"],
        till=names["till"],
        discount=_discount(_table(doc, "discount")),
        regions=policy_list(policy, "policy", "regions", frozenset()),
        categories=policy_list(policy, "policy", "categories", ALL_CATEGORIES),
        keyring=base / _get(keyring, "keyring", "path", str),
        issued_lists=_paths(keyring, base),
        revocation_table=base / _get(revocation, "revocation", "table", str),
        revocation_signer=base / _get(revocation, "revocation", "signer", str),
        revocation_max_age_s=max_age,
        stale_policy=_get(revocation, "revocation", "stale_policy", str, "closed"),
        revocation_store=base / store if store else state_dir / "tables",
        journal=base / _get(_table(doc, "journal"), "journal", "path", str),
        state_dir=state_dir,
        clock_tolerance_s=_tolerance(_table(doc, "clock")),
        register=base / register if register else None,
    )


def _discount(section: dict[str, Any]) -> DiscountRule:
    percent = _get(section, "discount", "percent", int)
    cap = _get(section, "discount", "cap_fen", int, None)
    if not 1 <= percent <= 100:
        raise ConfigError(f"discount.percent must be 1..100, not {percent}")
    if cap is not None and not 1 <= cap <= MAX_AMOUNT_FEN:
        raise ConfigError(f"discount.cap_fen must be 1..{MAX_AMOUNT_FEN}, not {cap}")
    return DiscountRule(percent, cap)


def _paths(section: dict[str, Any], base: Path) -> tuple[Path, ...]:
    value = section.get("issued", [])
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ConfigError("keyring.issued must be a path or a list of paths")
    return tuple(base / v for v in values)


def _tolerance(clock: dict[str, Any]) -> int:
    tolerance: int = _get(clock, "clock", "tolerance_s", int, DEFAULT_TOLERANCE_S)
    if not 0 <= tolerance <= _MAX_CLOCK_TOLERANCE_S:
        raise ConfigError(f"clock.tolerance_s must be 0..{_MAX_CLOCK_TOLERANCE_S}, not {tolerance}")
    return tolerance
