"""The anomalies a settlement reports, and what each kind means for payment.

An anomaly names the evidence (terminal, seq, card, batch file) and says whether the
ride was withheld from payment. Kinds are fixed strings so reports can be filtered and
compared across nights. This module must never decide payment itself; the merge does.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KINDS", "REVIEW_KINDS", "Anomaly"]

# kind -> one line for the report legend
KINDS: dict[str, str] = {
    # the files and the chain
    "batch_rejected": "batch file failed its size, format, signature or hash-chain check; none of it paid",
    "unknown_terminal": "batch from a terminal not in terminals.csv; none of it paid",
    "missing_batch": "a registered terminal handed in no batch for the day; rides whose price depends on it are held",
    "seq_gap": "records missing between the settled chain and this batch; the batch is held until the gap is filled",
    "chain_break": "batch does not link by hash to the terminal's settled chain; held, not paid",
    "chain_fork": "two different batches continue the same settled chain head; both held, not paid",
    "chain_conflict": "batch overlaps records already settled or admitted (rewritten or replayed history); not paid",
    "second_batch": "a terminal's second batch for a day already settled: the chain moves on, its rides are not paid",
    # the gates' signed chain heads (--heads)
    "head_rejected": "a published chain head is malformed, does not verify with the registered key, or names an unregistered terminal; not trusted",
    "journal_rewritten": "a signed chain head has another hash at its seq than the chain handed in, or two heads sign one seq with two hashes; the terminal's batches tonight are held, not paid",
    "journal_shortened": "a signed chain head shows more records by its time than the terminal's batches through that day hand in; the terminal's batches tonight are held, not paid",
    # one ride
    "bad_proof": "ride's credential or card signature does not verify; not paid",
    "context_mismatch": "ride's operator/line/place/direction differ from terminals.csv; not paid",
    "not_yet_valid": "the card was not yet valid at the ride's time; not paid",
    "expired": "the card had expired at the ride's time; not paid",
    "wrong_region": "the card's region is not one its operator accepts; not paid",
    "category_not_accepted": "the card's category is not one its operator accepts; not paid",
    "outside_day": "ride's time is outside its batch's service day (beyond the clock tolerance); not paid",
    "clock_behind": "ride's time is behind an earlier record of its terminal (beyond the clock tolerance); not paid",
    "revoked_at_ride": "a gate would have refused the card: its generation, or every table it could hold, held it; not paid",
    "passback": "the operator's anti-passback rule refuses this ride; not paid",
    "already_entered": "the card already entered this venue site on this service day; not paid",
    "not_a_ride": "a record of a merchant's till (a discount claim) handed to the settlement; not paid",
    # across rides and nights
    "reused_counter": "one card counter signed twice (replay or clone); only the first paid",
    "already_paid": "this card counter was paid on an earlier night; not paid again",
    "impossible_travel": "same card at two distant places faster than possible",
    "after_revocation": "ride accepted after the card's revoked-at, before its gate could know; paid",
    "stale_table": "ride accepted under a revocation table past its maximum age; paid",
    "held": "unpaired metro tap held: a batch its price depends on is missing, or the rule is hold",
    "no_fare": "no fare applies to this ride on this day; priced 0",
}

# Kinds that make a night need review (exit status 3); the others are informational.
# A ride on a revoked card is paid when its gate could not know, but the card office
# should look at it; only travel and stale-table flags are for information alone.
REVIEW_KINDS = frozenset(KINDS) - {"impossible_travel", "stale_table"}


@dataclass(frozen=True, slots=True, order=True)
class Anomaly:
    """One finding. Ordering is the report order: by kind, then terminal, seq, detail.

    ``day`` is set on findings of a late batch's correction (the day it belongs to);
    ``file`` names the batch file where the finding is about the file itself.
    """

    kind: str
    terminal_id: int = -1
    seq: int = -1
    card_id: int = -1
    batch: str = ""  # SHA-256 of the batch file, hex
    detail: str = ""
    file: str = ""
    day: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown anomaly kind {self.kind!r}")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind}
        if self.day:
            out["day"] = self.day
        if self.terminal_id >= 0:
            out["terminal_id"] = self.terminal_id
        if self.seq >= 0:
            out["seq"] = self.seq
        if self.card_id >= 0:
            out["card_id"] = self.card_id
        if self.file:
            out["file"] = self.file
        if self.batch:
            out["batch_sha256"] = self.batch
        if self.detail:
            out["detail"] = self.detail
        return out
