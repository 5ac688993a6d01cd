"""The monthly merchant report's inputs other than the batches: the month, the register,
the keyring, the alliance's discount rules and the signed revocation tables, each read with a bounded size and checked
before any batch is read; a problem is one error naming the file (exit 2, nothing
written). Each input's SHA-256 goes into the report's summary."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from farecore.card.keys import Keyring, load_public_key_file
from farecore.decide.revocation import RevocationTable
from farecore.errors import ConfigError, SettlementError
from farecore.journal.batch import QINGDAO_UTC_OFFSET_MIN, day_bounds_ms
from farecore.merchant.rules import MerchantRules, parse_rules
from farecore.settlement.inputs import read_input
from farecore.settlement.terminals import TerminalInfo, parse_terminals

__all__ = ["MAX_CLOCK_TOLERANCE_S", "Month", "ReportInputs", "load_report_inputs"]

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


@dataclass(frozen=True, slots=True)
class ReportInputs:
    """Everything but the batches, read and checked before any batch is."""

    month: Month
    terminals: dict[int, TerminalInfo]
    keyring: Keyring
    rules: MerchantRules
    tables: tuple[RevocationTable, ...] = ()
    revocation_max_age_s: int = 172_800
    clock_tolerance_ms: int = _DEFAULT_TOLERANCE_MS
    utc_offset_min: int = QINGDAO_UTC_OFFSET_MIN
    settings: dict[str, str] = field(default_factory=dict)  # input -> SHA-256


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
) -> ReportInputs:
    """Read and check the register, keyring, rules and revocation tables; an error naming
    the file on any problem (``farecore merchant report`` exits 2, writing nothing)."""
    raw_t, raw_k = read_input(register, "terminal register"), read_input(keyring, "keyring")
    raw_r = read_input(rules, "merchant rules")
    try:
        text = raw_t.decode("utf-8")
    except UnicodeDecodeError:
        raise SettlementError(f"terminal register {register} is not UTF-8") from None
    try:
        merchant_rules = parse_rules(raw_r.decode("utf-8"), str(rules))
    except UnicodeDecodeError:
        raise SettlementError(f"merchant rules {rules} is not UTF-8") from None
    if not 0 <= clock_tolerance_s <= MAX_CLOCK_TOLERANCE_S:
        raise SettlementError(f"the clock tolerance must be 0..{MAX_CLOCK_TOLERANCE_S} s")
    settings = {
        "terminals_sha256": hashlib.sha256(raw_t).hexdigest(),
        "keyring_sha256": hashlib.sha256(raw_k).hexdigest(),
        "merchant_rules_sha256": hashlib.sha256(raw_r).hexdigest(),
    }
    tables = []
    if revocation_tables and revocation_signer is None:
        raise SettlementError("--revocation-table needs --revocation-signer (a .pub file)")
    for path in revocation_tables:
        if not path.is_file():
            raise SettlementError(f"revocation table {path} is not a file")
        assert revocation_signer is not None
        table = RevocationTable.open(path, load_public_key_file(revocation_signer, "revocation"))
        key = f"revocation_table_generation_{table.generation}_body_sha256"
        if key in settings:
            raise SettlementError("two revocation tables of the same generation were given")
        settings[key] = table.body_sha256
        tables.append(table)
    if not 0 < revocation_max_age_s <= 10 * 365 * 86_400:
        raise SettlementError("the revocation maximum age must be 1 s to 10 years")
    return ReportInputs(
        month,
        parse_terminals(text, str(register)),
        Keyring.from_bytes(raw_k, str(keyring)),
        merchant_rules,
        tuple(sorted(tables, key=lambda t: t.generation)),
        revocation_max_age_s,
        clock_tolerance_s * 1000,
        settings=settings,
    )
