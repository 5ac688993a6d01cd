"""The outcome of one tap: ACCEPT, or DENY with exactly one reason.

``Reason`` lists the deny reasons in the precedence order of CARD-SPEC §7, so the
validator reports ``min(failing reasons)``. ``Decision`` carries everything the journal
and the settlement store later: the proof of tap, the revocation generation in force,
and how long each step took.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from farecore.card.proof import ProofOfTap

__all__ = ["ACCEPT", "Decision", "Reason", "Timings"]

ACCEPT = "ACCEPT"


class Reason(enum.IntEnum):
    """Deny reasons; a smaller value wins when several checks fail (CARD-SPEC §7).

    ``REVOCATION_STALE`` is farecore's own: the revocation table in force is older than
    the configured maximum age and the gate fails closed. It ranks with ``REVOKED``,
    because it is the revocation check that cannot be answered. ``CLOCK_FAULT`` (the
    terminal's clock is behind a time it has durably seen, ``farecore.decide.clockguard``)
    is a terminal state and ranks right after ``UNREADABLE``. ``ALREADY_ENTERED`` (a venue
    gate: one entry per card, per site, per service day) takes the place of ``PASSBACK``
    at a venue gate, so the two never compete. The values order the reasons; records
    store names, so the values may change.
    """

    UNREADABLE = 1
    CLOCK_FAULT = 2
    CARD_BLOCKED = 3
    UNKNOWN_ISSUER_KEY = 4
    BAD_CREDENTIAL_SIGNATURE = 5
    NOT_YET_VALID = 6
    EXPIRED = 7
    WRONG_REGION = 8
    CATEGORY_NOT_ACCEPTED = 9
    REVOKED = 10
    REVOCATION_STALE = 11
    CARD_AUTH_FAILED = 12
    PASSBACK = 13
    ALREADY_ENTERED = 14  # a venue gate's rule in place of PASSBACK (never both)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Timings:
    """Microseconds spent in each step of one tap (0 for a step not reached)."""

    select_us: float = 0.0
    read_us: float = 0.0
    auth_us: float = 0.0
    decide_us: float = 0.0
    total_us: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """One tap's verdict and evidence.

    ``card_id`` and ``proof`` are present only as far as the card was read: a credential
    that failed to parse gives neither; a card that answered INTERNAL AUTHENTICATE gives
    a full proof.
    """

    accepted: bool
    reason: Reason | None
    terminal_id: int
    time_ms: int
    challenge: bytes
    card_id: int | None = None
    credential: bytes | None = None
    counter: int | None = None
    card_signature: bytes | None = None
    revocation_generation: int | None = None
    flags: frozenset[str] = field(default_factory=frozenset)
    detail: str = ""
    timings: Timings = field(default_factory=Timings)

    def __post_init__(self) -> None:
        if self.accepted != (self.reason is None):
            raise ValueError("an accepted decision has no reason; a denied one has exactly one")
        if self.accepted and (
            self.credential is None or self.counter is None or self.card_signature is None
        ):
            raise ValueError("an accepted decision must carry a full proof of tap")

    @property
    def label(self) -> str:
        """``"ACCEPT"`` or the deny reason's name: one word for tables and logs."""
        return ACCEPT if self.reason is None else self.reason.name

    @property
    def proof(self) -> ProofOfTap | None:
        if self.credential is None or self.counter is None or self.card_signature is None:
            return None
        return ProofOfTap(self.credential, self.challenge, self.counter, self.card_signature)
