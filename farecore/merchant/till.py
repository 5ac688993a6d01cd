"""A merchant's till built from its configuration: verify a card, journal the claim.

A till is a verify-only terminal (CARD-SPEC §7, 2026-12-06: checks 1–9, never 10): the
real ``Validator`` with no passback, no actuator and no gate. It keeps what makes a
gate's decision trustworthy: the issuer keyring and lists (no list older than one it
used), the signed revocation table (hot-reloaded, never rolled back, stale by the
configured age), the clock guard (CLOCK_FAULT: a till whose clock is behind a time it
has seen cannot judge validity), and its durable marks, in the same files a gate keeps.

``Till.claim`` runs one tap for one purchase, and journals the claim, ACCEPT with the
full proof of tap or the deny with its reason, before it returns: a discount is only
given on a claim already on disk. The claim's amounts go into the record's detail
(``farecore.merchant.claim``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from farecore.card.keys import Keyring
from farecore.closing import Closing
from farecore.decide.decision import Decision
from farecore.decide.validator import Validator
from farecore.gate.marks import GateMarks
from farecore.gate.parts import (
    check_terminal_key,
    open_clock_guard,
    open_issued,
    open_revocation,
)
from farecore.gate.reader_port import CardChannel, Reader
from farecore.gate.tap import run_tap
from farecore.journal.records import JournalRecord
from farecore.journal.terminal import Journal
from farecore.merchant.claim import claim_detail
from farecore.merchant.config import TillConfig
from farecore.settlement.terminals import check_registered

__all__ = ["Claim", "Till", "open_till"]


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _random_nonce() -> bytes:
    return os.urandom(16)


@dataclass(frozen=True, slots=True)
class Claim:
    """One verification at the till, as journaled."""

    decision: Decision
    record: JournalRecord
    amount_fen: int
    discount_fen: int

    @property
    def pay_fen(self) -> int:
        return self.amount_fen - self.discount_fen


class Till(Closing):
    """An open till: its reader, validator and claim journal (``close`` closes them)."""

    def __init__(
        self,
        cfg: TillConfig,
        reader: Reader,
        validator: Validator,
        journal: Journal,
        stack: contextlib.ExitStack,
        clock_ms: Callable[[], int],
        nonce: Callable[[], bytes],
    ) -> None:
        self.cfg = cfg
        self.reader = reader
        self.validator = validator
        self.journal = journal
        self._context = cfg.context
        self._stack = stack
        self._clock_ms = clock_ms
        self._nonce = nonce

    def claim(self, channel: CardChannel, amount_fen: int) -> Claim:
        """Verify the card in the field for a purchase of ``amount_fen`` and journal the
        claim; return once it is durable (JournalError if it cannot be)."""
        decision = run_tap(channel, self.validator, self._clock_ms(), self._nonce())
        rule = self.cfg.discount
        detail = claim_detail(amount_fen, rule, decision.accepted, decision.detail)
        record = self.journal.append(replace(decision, detail=detail), self._context)
        discount = rule.discount(amount_fen) if decision.accepted else 0
        return Claim(decision, record, amount_fen, discount)

    def close(self) -> None:
        """Close the reader, the journal and the table; keep the time mark."""
        self._stack.close()


def open_till(
    cfg: TillConfig,
    reader: Reader,
    *,
    clock_ms: Callable[[], int] = _wall_clock_ms,
    nonce: Callable[[], bytes] = _random_nonce,
    revocation_poll_s: float | None = 1.0,
) -> Till:
    """Build every part of the till ``cfg`` describes around ``reader`` (opened last),
    with the parts a gate builds (``farecore.gate.parts``). Raises ConfigError (or the
    failing part's error) with nothing left open."""
    stack = contextlib.ExitStack()
    try:
        public = check_terminal_key(cfg)
        assert public is not None  # a till's key is required (farecore.merchant.config)
        if cfg.register is not None:
            key = (public.algorithm, public.public_key)
            lost = "the monthly report would not count its claims"
            check_registered(cfg.register, cfg.terminal_id, key, cfg.context, lost)
        keyring = Keyring.load(cfg.keyring)
        marks = GateMarks.load(cfg.marks, cfg.terminal_id)
        issued = open_issued(cfg, keyring, marks)
        revocation = open_revocation(cfg, marks, stack, clock_ms, revocation_poll_s)
        assert revocation is not None  # a till always has a table (farecore.merchant.config)
        journal = Journal.open(cfg.journal, cfg.terminal_id)
        stack.callback(journal.close)
        clock = open_clock_guard(cfg, marks, journal.last_time_ms, stack)
        validator = Validator(cfg.policy(), keyring, revocation, issued=issued, clock=clock)
        clock.check(clock_ms(), revocation.snapshot().created_at * 1000)  # said now, loudly
        reader.open()
        stack.callback(reader.close)
    except BaseException:
        stack.close()
        raise
    return Till(cfg, reader, validator, journal, stack, clock_ms, nonce)
