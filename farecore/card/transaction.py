"""The terminal side of one card transaction, as a sans-I/O state machine.

SELECT → READ CREDENTIAL → INTERNAL AUTHENTICATE. The machine hands out the next
C-APDU with :meth:`Transaction.next_command`, takes the card's answer with
:meth:`Transaction.receive`, and is told of transport failures with
:meth:`Transaction.transport_failed`. It never touches a reader, a thread or a clock.

Rule: every transition lives in ``_TRANSITIONS`` below. A (state, event) pair that is not
in the table is a bug in the caller and raises ``RuntimeError``.

The machine keeps going after a credential that will later be denied for a *policy*
reason, because CARD_BLOCKED ranks above every policy reason and only INTERNAL
AUTHENTICATE can reveal it. It stops early only for UNREADABLE, which outranks all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from farecore.card.apdu import (
    READ_CREDENTIAL,
    SELECT_RONGJUN,
    SW_BLOCKED,
    SW_OK,
    describe_sw,
    internal_authenticate,
    split_response,
)
from farecore.card.credential import Credential, parse_unverified
from farecore.card.proof import parse_auth_response
from farecore.errors import MalformedApdu, MalformedCredential

__all__ = ["Outcome", "State", "Transaction", "TransactionResult"]

SUPPORTED_MAJOR = 1


class State:
    """Transaction states. Plain strings: they are compared on every APDU of every tap."""

    SELECT = "select"
    READ = "read"
    AUTHENTICATE = "authenticate"
    DONE = "done"
    UNREADABLE = "unreadable"
    BLOCKED = "blocked"


class _Event:
    OK = "ok"
    BAD = "bad"
    BLOCKED = "blocked"


_TRANSITIONS: dict[tuple[str, str], str] = {
    (State.SELECT, _Event.OK): State.READ,
    (State.SELECT, _Event.BAD): State.UNREADABLE,
    (State.READ, _Event.OK): State.AUTHENTICATE,
    (State.READ, _Event.BAD): State.UNREADABLE,
    (State.AUTHENTICATE, _Event.OK): State.DONE,
    (State.AUTHENTICATE, _Event.BAD): State.UNREADABLE,
    (State.AUTHENTICATE, _Event.BLOCKED): State.BLOCKED,
}

_FINAL = frozenset({State.DONE, State.UNREADABLE, State.BLOCKED})


class Outcome(enum.Enum):
    COMPLETE = "complete"
    UNREADABLE = "unreadable"
    BLOCKED = "blocked"


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """What the card said, parsed but not verified."""

    outcome: Outcome
    detail: str = ""
    credential: Credential | None = None
    counter: int | None = None
    signature: bytes | None = None


class Transaction:
    """One tap's exchange with a card, driven by whoever owns the reader."""

    __slots__ = ("_challenge", "_counter", "_credential", "_detail", "_signature", "state")

    def __init__(self, challenge: bytes) -> None:
        self._challenge = challenge
        self.state: str = State.SELECT
        self._credential: Credential | None = None
        self._counter: int | None = None
        self._signature: bytes | None = None
        self._detail = ""

    def next_command(self) -> bytes | None:
        """The C-APDU to send now, or None when the transaction is over."""
        if self.state == State.SELECT:
            return SELECT_RONGJUN
        if self.state == State.READ:
            return READ_CREDENTIAL
        if self.state == State.AUTHENTICATE:
            return internal_authenticate(self._challenge)
        return None

    def receive(self, response: bytes) -> str:
        """Feed the card's R-APDU for the last command; return the new state."""
        try:
            reply = split_response(response)
        except MalformedApdu as exc:
            return self._fire(_Event.BAD, str(exc))
        sw, data = reply.sw, reply.data
        state = self.state
        if state == State.AUTHENTICATE and sw == SW_BLOCKED and not data:
            return self._fire(_Event.BLOCKED, "card answered 69 83: counter exhausted")
        if sw != SW_OK:
            return self._fire(_Event.BAD, f"{state}: card answered {describe_sw(sw)}")
        try:
            if state == State.SELECT:
                self._check_select(data)
            elif state == State.READ:
                self._credential = parse_unverified(data)
            elif state == State.AUTHENTICATE:
                self._counter, self._signature = parse_auth_response(data)
            else:
                raise RuntimeError(f"no command is outstanding in state {state}")
        except (MalformedApdu, MalformedCredential) as exc:
            return self._fire(_Event.BAD, f"{state}: {exc}")
        return self._fire(_Event.OK, "")

    def transport_failed(self, detail: str) -> str:
        """The reader or card failed before an answer came back."""
        if self.state in _FINAL:
            raise RuntimeError("transport failure reported after the transaction ended")
        return self._fire(_Event.BAD, f"{self.state}: {detail}")

    def _check_select(self, data: bytes) -> None:
        if len(data) != 2:
            raise MalformedApdu(f"SELECT answered {len(data)} data bytes, expected 2 (version)")
        if data[0] != SUPPORTED_MAJOR:
            raise MalformedApdu(f"card speaks spec {data[0]}.{data[1]}, this terminal speaks 1.x")

    def _fire(self, event: str, detail: str) -> str:
        new = _TRANSITIONS.get((self.state, event))
        if new is None:
            raise RuntimeError(f"no transition from {self.state} on {event}")
        self.state = new
        if detail:
            self._detail = detail
        return self.state

    def result(self) -> TransactionResult:
        """The outcome; only once the transaction is over."""
        if self.state == State.DONE:
            return TransactionResult(
                Outcome.COMPLETE, "", self._credential, self._counter, self._signature
            )
        if self.state == State.UNREADABLE:
            return TransactionResult(Outcome.UNREADABLE, self._detail, self._credential)
        if self.state == State.BLOCKED:
            return TransactionResult(Outcome.BLOCKED, self._detail, self._credential)
        raise RuntimeError(f"transaction still in progress ({self.state})")
