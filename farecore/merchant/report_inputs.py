"""The monthly merchant report's inputs other than the batches: the month, the register,
the keyring, the alliance's rules (``merchants.csv``: each merchant's discount and,
optionally, the regions and categories it accepts) and the signed revocation tables and
deltas, each read with a bounded size and checked before any batch is read; a problem is
one error naming the file (exit 2, nothing written). Each input's SHA-256 goes into the
report's summary.

The discount columns are read by ``farecore.merchant.rules``, unchanged; this module
adds the optional policy columns around it, so a ``merchants.csv`` without them means
exactly what it meant before. Tables and deltas are opened by the settlement's own
``open_revocations``, so they are verified, and refused, in the same words."""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from farecore.card.keys import Keyring
from farecore.decide.revocation import (
    RevocationInForce,
)
from farecore.decide.validator import ALL_CATEGORIES
from farecore.errors import ConfigError, SettlementError
from farecore.journal.batch import QINGDAO_UTC_OFFSET_MIN, day_bounds_ms
from farecore.merchant.rules import HEADER, MerchantRules, parse_rules
from farecore.settlement.inputs import open_revocations, read_input
from farecore.settlement.terminals import TerminalInfo, parse_terminals
from farecore.strictkeys import check_keys

__all__ = [
    "MAX_CLOCK_TOLERANCE_S",
    "POLICY_COLUMNS",
    "MerchantPolicies",
    "MerchantPolicy",
    "Month",
    "ReportInputs",
    "load_report_inputs",
    "parse_merchants",
]

_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})", re.ASCII)
_DEFAULT_TOLERANCE_MS = 300_000
# A till's clock.tolerance_s is at most a day: a claim's own day is then its batch's day
# or a neighbour of it, and the report of the claim's month reads that batch.
MAX_CLOCK_TOLERANCE_S = 86_400


@dataclass(frozen=True, slots=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        m = _MONTH.fullmatch(text)
        # The report reads the next month's first day: 9999-12 has none in a date.
        if m is None or not 1 <= int(m[2]) <= 12 or not 1970 <= int(m[1]) <= 9998:
            raise ConfigError(f"month {text!r} must be YYYY-MM (e.g. 2026-12), 1970 to 9998")
        return cls(int(m[1]), int(m[2]))

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def of(self, day: dt.date) -> int:
        """-1, 0 or 1: ``day`` is before, in or after this month."""
        mine, its = (self.year, self.month), (day.year, day.month)
        return (its > mine) - (its < mine)

    def bounds_ms(self, utc_offset_min: int) -> tuple[int, int]:
        """[start, end) of the month in UTC milliseconds, its days local at the offset."""
        nxt = (self.year + self.month // 12, self.month % 12 + 1)
        start = day_bounds_ms(dt.date(self.year, self.month, 1), utc_offset_min)[0]
        return start, day_bounds_ms(dt.date(*nxt, 1), utc_offset_min)[0]


# The optional columns of merchants.csv after the discount rule's four, in either order.
POLICY_COLUMNS = ("regions", "categories")
_RULE_COLUMNS = HEADER.split(",")
_CODE = re.compile(r"[1-9][0-9]{0,9}", re.ASCII)
_LIMITS = {
    "regions": (1, 0xFFFFFFFF, "region codes 1..4294967295"),
    "categories": (min(ALL_CATEGORIES), max(ALL_CATEGORIES), "categories 1..5"),
}


@dataclass(frozen=True, slots=True)
class MerchantPolicy:
    """What the alliance accepts at a merchant under one of its rules, as a till's
    ``[policy]``; None where merchants.csv leaves that check out (an empty cell)."""

    regions: frozenset[int] | None = None
    categories: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class MerchantPolicies:
    """Each merchant's policies, by the service day their rule takes effect (ascending).
    ``columns`` are the policy columns merchants.csv has: none, and the report checks no
    region or category and says nothing of them, as before they existed."""

    columns: tuple[str, ...] = ()
    policies: dict[str, tuple[tuple[dt.date, MerchantPolicy], ...]] = field(default_factory=dict)

    def in_force(self, merchant: str, day: dt.date) -> MerchantPolicy | None:
        """The policy of the rule in force for ``merchant`` on ``day``; None if none."""
        rows = self.policies.get(merchant, ())
        i = bisect.bisect_right([d for d, _ in rows], day)
        return rows[i - 1][1] if i else None


@dataclass(frozen=True, slots=True)
class ReportInputs:
    """Everything but the batches, read and checked before any batch is."""

    month: Month
    terminals: dict[int, TerminalInfo]
    keyring: Keyring
    rules: MerchantRules
    # Verified revocation tables, and views of deltas over them, by generation.
    tables: tuple[RevocationInForce, ...] = ()
    revocation_max_age_s: int = 172_800
    clock_tolerance_ms: int = _DEFAULT_TOLERANCE_MS
    utc_offset_min: int = QINGDAO_UTC_OFFSET_MIN
    settings: dict[str, str] = field(default_factory=dict)  # input -> SHA-256
    policies: MerchantPolicies = field(default_factory=MerchantPolicies)


def parse_merchants(
    text: str, name: str = "merchants.csv"
) -> tuple[MerchantRules, MerchantPolicies]:
    """The alliance's rules file: its discount rules (``parse_rules``) and, when its header
    goes on with ``regions`` and/or ``categories``, each rule's policy. ConfigError naming
    the file's line (and the column, for a policy cell) of a fault."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    head = lines[0].removesuffix("\r").split(",") if lines else []
    extra = head[len(_RULE_COLUMNS) :]
    if not extra:
        return parse_rules(text, name), MerchantPolicies()  # judged as it always was
    if head[: len(_RULE_COLUMNS)] != _RULE_COLUMNS:
        raise ConfigError(
            f"{name} line 1: the header must be {HEADER}, then optionally regions and categories"
        )
    check_keys(dict.fromkeys(extra), f"{name} line 1", POLICY_COLUMNS, "column")
    if len(set(extra)) != len(extra):
        raise ConfigError(f"{name} line 1: a column named twice ({','.join(extra)})")
    rows, cells = [HEADER], []
    for n, raw in enumerate(lines[1:], start=2):
        fields = raw.removesuffix("\r").split(",")
        if len(fields) != len(head):
            raise ConfigError(
                f"{name} line {n}: {len(fields)} fields, not {len(head)} ({','.join(head)})"
            )
        rows.append(",".join(fields[: len(_RULE_COLUMNS)]))
        cells.append(fields)
    rules = parse_rules("\n".join(rows), name)  # every merchant and day checked here
    found: dict[str, dict[dt.date, MerchantPolicy]] = {}
    for n, fields in enumerate(cells, start=2):
        lists: dict[str, frozenset[int] | None] = {}
        for column, cell in zip(extra, fields[len(_RULE_COLUMNS) :], strict=True):
            try:
                lists[column] = _policy_list(column, cell)
            except ValueError as exc:
                raise ConfigError(f"{name} line {n} column {column}: {exc}") from None
        day = dt.date.fromisoformat(fields[3])
        found.setdefault(fields[0], {})[day] = MerchantPolicy(**lists)
    policies = {m: tuple(sorted(d.items())) for m, d in sorted(found.items())}
    return rules, MerchantPolicies(tuple(extra), policies)


def _policy_list(column: str, cell: str) -> frozenset[int] | None:
    """One policy cell: empty (the check is left out), or values separated by ``;``,
    each once. Never empty when given: a list that names nothing must not accept nothing."""
    if not cell:
        return None
    low, high, what = _LIMITS[column]
    values: set[int] = set()
    for item in cell.split(";"):
        if _CODE.fullmatch(item) is None or not low <= int(item) <= high:
            raise ValueError(f"{item[:20]!r} is not one of {what} (separated by ';', no blanks)")
        if int(item) in values:
            raise ValueError(f"{item} is listed twice")
        values.add(int(item))
    return frozenset(values)


def load_report_inputs(
    month: Month,
    register: Path,
    keyring: Path,
    revocation_tables: Sequence[Path] = (),
    revocation_signer: Path | None = None,
    revocation_max_age_s: int = 172_800,
    *,
    rules: Path,
    clock_tolerance_s: int = _DEFAULT_TOLERANCE_MS // 1000,
    revocation_deltas: Sequence[Path] = (),
) -> ReportInputs:
    """Read and check the register, keyring, rules and revocation tables and deltas; an
    error naming the file on any problem (``farecore merchant report`` exits 2, writing
    nothing)."""
    raw_t, raw_k = read_input(register, "terminal register"), read_input(keyring, "keyring")
    raw_r = read_input(rules, "merchant rules")
    try:
        text = raw_t.decode("utf-8")
    except UnicodeDecodeError:
        raise SettlementError(f"terminal register {register} is not UTF-8") from None
    try:
        merchant_rules, policies = parse_merchants(raw_r.decode("utf-8"), str(rules))
    except UnicodeDecodeError:
        raise SettlementError(f"merchant rules {rules} is not UTF-8") from None
    if not 0 <= clock_tolerance_s <= MAX_CLOCK_TOLERANCE_S:
        raise SettlementError(f"the clock tolerance must be 0..{MAX_CLOCK_TOLERANCE_S} s")
    settings = {
        "terminals_sha256": hashlib.sha256(raw_t).hexdigest(),
        "keyring_sha256": hashlib.sha256(raw_k).hexdigest(),
        "merchant_rules_sha256": hashlib.sha256(raw_r).hexdigest(),
    }
    tables = open_revocations(revocation_tables, revocation_deltas, revocation_signer, settings)
    if not 0 < revocation_max_age_s <= 10 * 365 * 86_400:
        raise SettlementError("the revocation maximum age must be 1 s to 10 years")
    return ReportInputs(
        month,
        parse_terminals(text, str(register)),
        Keyring.from_bytes(raw_k, str(keyring)),
        merchant_rules,
        tables,
        revocation_max_age_s,
        clock_tolerance_s * 1000,
        settings=settings,
        policies=policies,
    )
