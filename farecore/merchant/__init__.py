"""Merchant verification (荣军联盟): a till that verifies cards and journals discount
claims (``farecore verify``), and the monthly merchant report over their batches
(``farecore merchant report``). See docs/merchant.md.

The layer sits beside ``farecore.fleet``: it builds on the gate's parts (reader port,
tap, marks, configuration reading) and the settlement's checks, and nothing below it
imports it.
"""

from farecore.merchant.claim import (
    MAX_AMOUNT_FEN,
    ClaimAmounts,
    DiscountRule,
    claim_detail,
    parse_amount,
    parse_claim_detail,
)
from farecore.merchant.config import ALLIANCE, TillConfig, load_till_config

__all__ = [
    "ALLIANCE",
    "MAX_AMOUNT_FEN",
    "ClaimAmounts",
    "DiscountRule",
    "TillConfig",
    "claim_detail",
    "load_till_config",
    "parse_amount",
    "parse_claim_detail",
]
