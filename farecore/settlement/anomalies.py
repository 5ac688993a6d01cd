"""The anomalies a settlement reports, and what each kind means for payment.

An anomaly names the evidence (terminal, seq, card, batch file) and says whether the
ride was withheld from payment. Kinds are fixed strings so reports can be filtered and
compared across nights. This module must never decide payment itself; the merge does.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KINDS", "Anomaly"]

# kind -> one line for the report legend
KINDS: dict[str, str] = {
    "batch_rejected": "batch file failed its signature, format or hash-chain check; none of it paid",
    "unknown_terminal": "batch from a terminal not in terminals.csv; none of it paid",
    "seq_gap": "records missing between two batches of one terminal",
    "chain_break": "consecutive batches of one terminal do not link by hash",
    "bad_proof": "ride's credential or card signature does not verify; not paid",
    "context_mismatch": "ride's operator/line/place/direction differ from terminals.csv; not paid",
    "conflicting_duplicate": "two different records claim the same (terminal, seq); neither paid",
    "reused_counter": "one card counter signed twice (replay or clone); only the first paid",
    "impossible_travel": "same card at two distant places faster than possible",
    "after_revocation": "ride accepted after the card's revoked-at time",
    "stale_table": "ride accepted under a revocation table past its maximum age",
    "no_fare": "no fare applies to this ride on this day; priced 0",
}


@dataclass(frozen=True, slots=True, order=True)
class Anomaly:
    """One finding. Ordering is the report order: by kind, then terminal, seq, detail."""

    kind: str
    terminal_id: int = -1
    seq: int = -1
    card_id: int = -1
    batch: str = ""  # SHA-256 of the batch file, hex
    detail: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown anomaly kind {self.kind!r}")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind}
        if self.terminal_id >= 0:
            out["terminal_id"] = self.terminal_id
        if self.seq >= 0:
            out["seq"] = self.seq
        if self.card_id >= 0:
            out["card_id"] = self.card_id
        if self.batch:
            out["batch_sha256"] = self.batch
        if self.detail:
            out["detail"] = self.detail
        return out
