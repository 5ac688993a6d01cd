"""A merchant claim's money: the purchase amount typed at the till, the discount rule, and
the canonical text a claim record carries in its ``detail``.

Money is integer fen throughout; no float ever touches it. ``parse_amount`` reads what a
cashier types (yuan with at most two decimals, or fen with the ``fen`` suffix);
``claim_detail`` writes the record's detail and ``parse_claim_detail`` reads it back
strictly, so the monthly report believes only text the till could have written. The
detail is inside the record's hashed, signed bytes: a claim's amounts cannot be altered
after the fact without breaking the batch signature.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from farecore.errors import MalformedInput

__all__ = [
    "MAX_AMOUNT_FEN",
    "ClaimAmounts",
    "DiscountRule",
    "claim_detail",
    "parse_amount",
    "parse_claim_detail",
]

# One purchase of at most 1,000,000.00 yuan: anything larger is a typing mistake.
MAX_AMOUNT_FEN = 100_000_000
_MAX_LINE = 64
# Yuan: digits with no leading zero (but "0.50"), then at most two decimals.
_YUAN = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]{1,2}))?", re.ASCII)
_FEN = re.compile(r"(0|[1-9][0-9]*)fen", re.ASCII)
# The detail's one canonical form (docs/merchant.md); ``why`` only on a deny.
_UINT = r"(0|[1-9][0-9]{0,11})"
_DETAIL = re.compile(
    rf"amount_fen={_UINT} discount_fen={_UINT} percent={_UINT}(?: cap_fen={_UINT})?"
    r"(?:; (?P<why>[^\x00-\x1f\x7f]+))?",
    re.ASCII,
)
_MAX_WHY = 800  # the journal keeps 1000 characters of a detail: the claim part always fits


def parse_amount(text: str) -> int:
    """A purchase amount in fen from what a cashier typed: ``128``, ``128.5``, ``128.50``
    (yuan) or ``12850fen``. Surrounding blanks are ignored; anything else (a sign, a
    comma, a third decimal, a leading zero, zero itself, more than ``MAX_AMOUNT_FEN``) is
    refused with MalformedInput naming the text."""
    if len(text) > _MAX_LINE:
        raise MalformedInput(f"an amount is at most {_MAX_LINE} characters")
    s = text.strip(" \t\r\n")
    fen: int
    if m := _FEN.fullmatch(s):
        fen = int(m[1])
    elif m := _YUAN.fullmatch(s):
        fen = int(m[1]) * 100 + int((m[2] or "0").ljust(2, "0"))
    else:
        raise MalformedInput(
            f"{s!r} is not an amount: yuan with at most two decimals (128.50) or fen (12850fen)"
        )
    if not 1 <= fen <= MAX_AMOUNT_FEN:
        raise MalformedInput(f"{s!r}: an amount is 0.01 to {MAX_AMOUNT_FEN // 100} yuan")
    return fen


@dataclass(frozen=True, slots=True)
class DiscountRule:
    """A merchant's discount: ``percent`` of the amount, rounded down to whole fen, at
    most ``cap_fen`` when a cap is set."""

    percent: int
    cap_fen: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.percent, bool) or not 1 <= self.percent <= 100:
            raise ValueError(f"percent must be 1..100, not {self.percent!r}")
        if self.cap_fen is not None and (
            isinstance(self.cap_fen, bool) or not 1 <= self.cap_fen <= MAX_AMOUNT_FEN
        ):
            raise ValueError(f"cap_fen must be 1..{MAX_AMOUNT_FEN}, not {self.cap_fen!r}")

    def discount(self, amount_fen: int) -> int:
        """The discount on ``amount_fen``, in fen (never more than the amount)."""
        if not 1 <= amount_fen <= MAX_AMOUNT_FEN:
            raise ValueError(f"amount must be 1..{MAX_AMOUNT_FEN} fen, not {amount_fen}")
        fen = amount_fen * self.percent // 100
        return fen if self.cap_fen is None else min(fen, self.cap_fen)


@dataclass(frozen=True, slots=True)
class ClaimAmounts:
    """What a claim record's detail says: the amount, the discount given, the rule, and
    (on a deny) the validator's words."""

    amount_fen: int
    discount_fen: int
    rule: DiscountRule
    why: str = ""


def claim_detail(amount_fen: int, rule: DiscountRule, accepted: bool, why: str = "") -> str:
    """The canonical detail of a claim: the discount the rule gives on an accepted
    verification, 0 on a deny (followed by the validator's detail, if any)."""
    discount = rule.discount(amount_fen) if accepted else 0
    text = f"amount_fen={amount_fen} discount_fen={discount} percent={rule.percent}"
    if rule.cap_fen is not None:
        text += f" cap_fen={rule.cap_fen}"
    why = "".join(c if " " <= c != "\x7f" else " " for c in why).strip()[:_MAX_WHY].strip()
    if why and not accepted:
        text += f"; {why}"
    return text


def parse_claim_detail(text: str, accepted: bool) -> ClaimAmounts:
    """Read a claim record's detail back; MalformedInput unless it is exactly what
    ``claim_detail`` writes for such a claim (its discount the rule's, 0 on a deny)."""
    m = _DETAIL.fullmatch(text)
    if m is None:
        raise MalformedInput(f"claim detail {text[:80]!r} is not in the canonical form")
    amount, discount, percent = int(m[1]), int(m[2]), int(m[3])
    try:
        rule = DiscountRule(percent, int(m[4]) if m[4] is not None else None)
        expected = rule.discount(amount)  # refuses an amount no till takes, on a deny too
        expected = expected if accepted else 0
    except ValueError as exc:
        raise MalformedInput(f"claim detail: {exc}") from None
    why = m["why"] or ""
    if discount != expected:
        raise MalformedInput(
            f"claim detail: discount {discount} fen, but the rule gives {expected} fen"
        )
    if accepted and why:
        raise MalformedInput("claim detail: an accepted claim carries no deny detail")
    if why != why.strip() or len(why) > _MAX_WHY:
        raise MalformedInput("claim detail: the deny detail is not in the canonical form")
    return ClaimAmounts(amount, discount, rule, why)
