"""What the monthly merchant report finds, named in the settlement's style.

A finding names its evidence (till, seq, card, merchant, batch file) like a settlement
``Anomaly``, and a reused counter's use not counted also where the first use is
(``ClaimAt``: that claim's file, till, day and seq). The kinds the settlement knows keep
its names (``batch_rejected``, ``chain_break``, ``bad_proof``, ``wrong_region``,
``reused_counter``, …), and the report adds the ones only a claim can have
(``malformed_claim``, ``rule_mismatch``, ``outside_month``, ``revoked_at_claim``).
No claim named by a review finding is counted in the report's totals.
"""

from __future__ import annotations

from dataclasses import dataclass

from farecore.settlement.anomalies import Anomaly

__all__ = ["KINDS", "REVIEW_KINDS", "ClaimAt", "Finding", "from_anomaly"]

KINDS: dict[str, str] = {
    # the files and the chain
    "batch_rejected": "batch file failed its size, format, signature or hash-chain check; none of it counted",
    "unknown_terminal": "batch from a terminal not in the register; none of it counted",
    "seq_gap": "records missing between this till's earlier batches and this one; not counted",
    "chain_break": "batch does not link by hash to the till's chain before it; not counted",
    "chain_fork": "two different batches continue the same chain head; neither counted",
    "chain_conflict": "batch overlaps records of another batch (rewritten or replayed history); not counted",
    "second_batch": "a till's second batch for a day already counted; not counted",
    # one claim
    "context_mismatch": "claim's operator/merchant/till/direction differ from the register; not counted",
    "malformed_claim": "claim's detail is not the canonical amounts, or its discount is not its rule's; not counted",
    "outside_month": "claim's time is beyond the clock tolerance outside its batch's day; counted in no month",
    "rule_mismatch": "claim's percent or cap is not the alliance's rule in force on its day, or its merchant has none; not counted",
    "bad_proof": "claim's credential or card signature does not verify; not counted",
    "not_yet_valid": "the card was not yet valid at the claim's time; not counted",
    "expired": "the card had expired at the claim's time; not counted",
    "wrong_region": "the card's region is not one the alliance accepts at the merchant (merchants.csv); not counted",
    "category_not_accepted": "the card's category is not one the alliance accepts at the merchant (merchants.csv); not counted",
    "revoked_at_claim": "a till would have refused the card: its generation, or every table it could hold, held it; not counted",
    # across claims
    "reused_counter": "one card counter signed twice (replay or clone); only the first counted",
    "after_revocation": "claim accepted after the card's revoked-at, before its till could know; counted",
    "stale_table": "claim accepted under a revocation table past its maximum age; counted",
}

# Findings that make a month need review (exit status 3); the others are for information.
REVIEW_KINDS = frozenset(KINDS) - {"after_revocation", "stale_table"}

# The settlement's kinds whose meaning for a claim has another name.
_RENAMED = {"revoked_at_ride": "revoked_at_claim"}


@dataclass(frozen=True, slots=True, order=True)
class ClaimAt:
    """Where one claim record is: its batch file (name and SHA-256), the till, the
    batch's day, the record's seq in the till's chain (unique in the till's batches),
    and the claim's merchant and time. The empty default names nothing."""

    file: str = ""
    batch: str = ""  # SHA-256 of the batch file, hex
    terminal_id: int = -1
    day: str = ""  # the batch's service day, YYYY-MM-DD
    seq: int = -1
    merchant: str = ""
    time_ms: int = -1

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "batch_sha256": self.batch,
            "terminal_id": self.terminal_id,
            "day": self.day,
            "seq": self.seq,
            "merchant": self.merchant,
            "time_ms": self.time_ms,
        }


_NOWHERE = ClaimAt()


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    """One finding. Ordering is the report order: by kind, then till, seq, detail."""

    kind: str
    terminal_id: int = -1
    seq: int = -1
    card_id: int = -1
    merchant: str = ""
    batch: str = ""  # SHA-256 of the batch file, hex
    detail: str = ""
    file: str = ""
    # reused_counter, on a use not counted: the use that is (the first, by time)
    first_use: ClaimAt = _NOWHERE

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind}
        if self.terminal_id >= 0:
            out["terminal_id"] = self.terminal_id
        if self.seq >= 0:
            out["seq"] = self.seq
        if self.card_id >= 0:
            out["card_id"] = self.card_id
        if self.merchant:
            out["merchant"] = self.merchant
        if self.file:
            out["file"] = self.file
        if self.batch:
            out["batch_sha256"] = self.batch
        if self.detail:
            out["detail"] = self.detail
        if self.first_use != _NOWHERE:
            out["first_use"] = self.first_use.to_json()
        return out


def from_anomaly(a: Anomaly, merchant: str = "") -> Finding:
    """A settlement anomaly (from its admission or revocation checks) as a finding."""
    return Finding(
        _RENAMED.get(a.kind, a.kind),
        terminal_id=a.terminal_id,
        seq=a.seq,
        card_id=a.card_id,
        merchant=merchant,
        batch=a.batch,
        detail=a.detail,
        file=a.file,
    )
