"""The till's session: an amount a line in, a card tap, one JSON line per claim out.

Each line of the input is a purchase amount (``farecore.merchant.claim.parse_amount``).
For each, the session waits for a card on the reader, verifies it and journals the claim
(``Till.claim``), then writes the claim's JSON line and waits for the card to leave. A
line that is not an amount is refused with one log line naming it, and no card is read.
A card that does not come within the tap timeout abandons that purchase (nothing is
journaled). End of input, or ``stop()`` (SIGINT, SIGTERM), ends the session between
claims; a claim under way is always finished and journaled first. An output that can no
longer be written (the merchant's software closed the pipe) stops the session too: the
claim is journaled already, and the till must not go on giving discounts no one sees.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

from farecore.errors import MalformedInput, ReaderError
from farecore.gate.reader_port import CardChannel
from farecore.gate.runtime import mask_card_id
from farecore.merchant.claim import parse_amount
from farecore.merchant.till import Claim, Till

__all__ = ["SessionStats", "TillSession", "claim_json"]

_log = logging.getLogger(__name__)


def claim_json(claim: Claim) -> str:
    """One JSON line per claim for the merchant's till software."""
    d, cfg = claim.decision, claim.record
    return json.dumps(
        {
            "time_ms": d.time_ms,
            "terminal_id": d.terminal_id,
            "merchant": cfg.line,
            "till": cfg.place,
            "seq": claim.record.seq,
            "card": mask_card_id(d.card_id),
            "card_id": d.card_id,
            "decision": "ACCEPT" if d.accepted else "DENY",
            "reason": None if d.reason is None else d.reason.name,
            "amount_fen": claim.amount_fen,
            "discount_fen": claim.discount_fen,
            "pay_fen": claim.pay_fen,
            "counter": d.counter,
            "revocation_generation": d.revocation_generation,
            "flags": sorted(d.flags),
            "detail": d.detail,
            "latency_us": round(d.timings.total_us, 1),
        },
        separators=(",", ":"),
    )


@dataclass(slots=True)
class SessionStats:
    claims: int = 0
    accepted: int = 0
    refused_lines: int = 0
    abandoned: int = 0
    output_closed: bool = False


class TillSession:
    """Serve ``lines`` on ``till``, writing each claim's JSON line to ``out``."""

    def __init__(
        self, till: Till, out: TextIO, *, tap_timeout_s: float = 60.0, poll_s: float = 0.25
    ) -> None:
        self.till = till
        self.out = out
        self.tap_timeout_s = tap_timeout_s
        self.poll_s = poll_s
        self.stats = SessionStats()
        self._stop = threading.Event()

    def stop(self) -> None:
        """Finish after the claim under way (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, lines: Iterable[str]) -> SessionStats:
        """Serve every amount of ``lines`` until they end or ``stop()``. Raises
        JournalError when a claim cannot be journaled: the till must then stop."""
        for number, line in enumerate(lines, 1):
            if self._stop.is_set():
                break
            if not line.strip():
                continue
            try:
                amount = parse_amount(line)
            except MalformedInput as exc:
                self.stats.refused_lines += 1
                _log.error("line %d refused, no card read: %s", number, exc)
                continue
            channel = self._wait_for_card()
            if channel is None:
                if not self._stop.is_set():
                    self.stats.abandoned += 1
                    _log.warning(
                        "line %d: no card within %.0f s; purchase abandoned, nothing journaled",
                        number,
                        self.tap_timeout_s,
                    )
                continue
            claim = self.till.claim(channel, amount)  # journaled before anything is shown
            self.stats.claims += 1
            self.stats.accepted += claim.decision.accepted
            _log.info("%s", _human(claim))
            try:
                self.out.write(claim_json(claim) + "\n")
                self.out.flush()
            except (OSError, ValueError) as exc:  # a closed pipe, a closed file
                self.stats.output_closed = True
                _log.error(
                    "standard output closed after claim %d (journaled): %s; stopping",
                    claim.record.seq,
                    getattr(exc, "strerror", None) or exc,
                )
                break
            self._await_removal()
        return self.stats

    def _wait_for_card(self) -> CardChannel | None:
        deadline = time.monotonic() + self.tap_timeout_s
        backoff = 0.05
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                channel = self.till.reader.wait_for_card(min(self.poll_s, left))
            except ReaderError as exc:
                _log.warning("reader unavailable: %s; retrying in %.2f s", exc, backoff)
                self._stop.wait(min(backoff, max(left, 0)))
                backoff = min(backoff * 2, 2.0)
                continue
            if channel is not None:
                return channel
        return None

    def _await_removal(self) -> None:
        # A card left on the reader must not be claimed twice: wait until it leaves.
        while not self._stop.is_set():
            try:
                if self.till.reader.wait_for_removal(self.poll_s):
                    return
            except ReaderError as exc:
                _log.warning("reader failed while waiting for the card to leave: %s", exc)
                return


def _human(claim: Claim) -> str:
    d = claim.decision
    verdict = (
        f"ACCEPT  discount {_yuan(claim.discount_fen)}, pay {_yuan(claim.pay_fen)}"
        if d.accepted
        else f"DENY {d.label}  no discount, pay {_yuan(claim.pay_fen)}"
    )
    return f"card {mask_card_id(d.card_id)}  amount {_yuan(claim.amount_fen)}  {verdict}"


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"
