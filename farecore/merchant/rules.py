"""The alliance's discount rules, the monthly report's trusted word on what each merchant
gives: ``merchants.csv`` with the header ``merchant,percent,cap_fen,effective_from``.

A till writes its own rule into every claim it signs, so the report cannot take a claim's
percent or cap on trust; it compares them with the rule in force on the claim's service
day here. The parser is strict and never guesses: any fault is one ConfigError line
naming the file's line (``farecore merchant report`` exits 2, writing nothing).
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
from dataclasses import dataclass

from farecore.errors import ConfigError
from farecore.merchant.claim import MAX_AMOUNT_FEN, DiscountRule
from farecore.merchant.config import merchant_name_problem

__all__ = ["HEADER", "MerchantRules", "parse_rules"]

HEADER = "merchant,percent,cap_fen,effective_from"
_UINT = re.compile(r"[1-9][0-9]{0,11}", re.ASCII)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_MAX_ROWS = 100_000


@dataclass(frozen=True, slots=True)
class MerchantRules:
    """Each merchant's rules, by the service day they take effect (ascending)."""

    rules: dict[str, tuple[tuple[dt.date, DiscountRule], ...]]

    def in_force(self, merchant: str, day: dt.date) -> DiscountRule | None:
        """The rule in force for ``merchant`` on ``day``; None if it has none yet."""
        rows = self.rules.get(merchant, ())
        i = bisect.bisect_right([d for d, _ in rows], day)
        return rows[i - 1][1] if i else None


def parse_rules(text: str, name: str = "merchants.csv") -> MerchantRules:
    """Read the rules file; ConfigError naming the line of the first fault."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0].removesuffix("\r") != HEADER:
        raise ConfigError(f"{name} line 1: the header must be {HEADER}")
    if len(lines) - 1 > _MAX_ROWS:
        raise ConfigError(f"{name}: more than {_MAX_ROWS} rules")
    found: dict[str, dict[dt.date, DiscountRule]] = {}
    for n, raw in enumerate(lines[1:], start=2):
        try:
            merchant, day, rule = _row(raw.removesuffix("\r"))
        except ValueError as exc:
            raise ConfigError(f"{name} line {n}: {exc}") from None
        days = found.setdefault(merchant, {})
        if day in days:
            raise ConfigError(f"{name} line {n}: a second rule for {merchant} from {day}")
        days[day] = rule
    return MerchantRules({m: tuple(sorted(d.items())) for m, d in sorted(found.items())})


def _row(line: str) -> tuple[str, dt.date, DiscountRule]:
    fields = line.split(",")
    if len(fields) != 4:
        raise ValueError(f"{len(fields)} fields, not 4 ({HEADER})")
    merchant, percent, cap, since = fields
    problem = merchant_name_problem(merchant)
    if problem is not None:
        raise ValueError(f"merchant: {problem}")
    if _UINT.fullmatch(percent) is None or not 1 <= int(percent) <= 100:
        raise ValueError(f"percent {percent[:20]!r} must be 1..100")
    if cap and (_UINT.fullmatch(cap) is None or int(cap) > MAX_AMOUNT_FEN):
        raise ValueError(f"cap_fen {cap[:20]!r} must be empty or 1..{MAX_AMOUNT_FEN}")
    try:
        if _DATE.fullmatch(since) is None:
            raise ValueError
        day = dt.date.fromisoformat(since)
    except ValueError:
        raise ValueError(f"effective_from {since[:20]!r} must be a date, YYYY-MM-DD") from None
    return merchant, day, DiscountRule(int(percent), int(cap) if cap else None)
