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

from farecore.apdu import (
    READ_CREDENTIAL,
    SELECT_RONGJUN,
    SW_BLOCKED,
    SW_OK,
    describe_sw,
    internal_authenticate,
    split_response,
)
from farecore.credential import Credential, parse_unverified
from farecore.errors import MalformedApdu, MalformedCredential
from farecore.proof import parse_auth_response

__all__ = ["Outcome", "State", "Transaction", "TransactionResult"]

SUPPORTED_MAJOR = 1


class State(enum.Enum):
    SELECT = "select"
    READ = "read"
    AUTHENTICATE = "authenticate"
    DONE = "done"
    UNREADABLE = "unreadable"
    BLOCKED = "blocked"


class _Event(enum.Enum):
    OK = "ok"
    BAD = "bad"
    BLOCKED = "blocked"


_TRANSITIONS: dict[tuple[State, _Event], State] = {
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

    __slots__ = ("_challenge", "_credential", "_counter", "_detail", "_signature", "state")

    def __init__(self, challenge: bytes) -> None:
        self._challenge = challenge
        self.state = State.SELECT
        self._credential: Credential | None = None
        self._counter: int | None = None
        self._signature: bytes | None = None
        self._detail = ""

    def next_command(self) -> bytes | None:
        """The C-APDU to send now, or None when the transaction is over."""
        if self.state is State.SELECT:
            return SELECT_RONGJUN
        if self.state is State.READ:
            return READ_CREDENTIAL
        if self.state is State.AUTHENTICATE:
            return internal_authenticate(self._challenge)
        return None

    def receive(self, response: bytes) -> State:
        """Feed the card's R-APDU for the last command; return the new state."""
        try:
            rsp = split_response(response)
        except MalformedApdu as exc:
            return self._fire(_Event.BAD, str(exc))
        state = self.state
        if state is State.AUTHENTICATE and rsp.sw == SW_BLOCKED and not rsp.data:
            return self._fire(_Event.BLOCKED, "card answered 69 83: counter exhausted")
        if rsp.sw != SW_OK:
            return self._fire(_Event.BAD, f"{state.value}: card answered {describe_sw(rsp.sw)}")
        try:
            if state is State.SELECT:
                self._check_select(rsp.data)
            elif state is State.READ:
                self._credential = parse_unverified(rsp.data)
            elif state is State.AUTHENTICATE:
                self._counter, self._signature = parse_auth_response(rsp.data)
            else:
                raise RuntimeError(f"no command is outstanding in state {state.value}")
        except (MalformedApdu, MalformedCredential) as exc:
            return self._fire(_Event.BAD, f"{state.value}: {exc}")
        return self._fire(_Event.OK, "")

    def transport_failed(self, detail: str) -> State:
        """The reader or card failed before an answer came back."""
        if self.state in _FINAL:
            raise RuntimeError("transport failure reported after the transaction ended")
        return self._fire(_Event.BAD, f"{self.state.value}: {detail}")

    def _check_select(self, data: bytes) -> None:
        if len(data) != 2:
            raise MalformedApdu(f"SELECT answered {len(data)} data bytes, expected 2 (version)")
        if data[0] != SUPPORTED_MAJOR:
            raise MalformedApdu(f"card speaks spec {data[0]}.{data[1]}, this terminal speaks 1.x")

    def _fire(self, event: _Event, detail: str) -> State:
        key = (self.state, event)
        if key not in _TRANSITIONS:
            raise RuntimeError(f"no transition from {self.state.value} on {event.value}")
        self.state = _TRANSITIONS[key]
        if detail:
            self._detail = detail
        return self.state

    def result(self) -> TransactionResult:
        """The outcome; only once the transaction is over."""
        if self.state is State.DONE:
            return TransactionResult(
                Outcome.COMPLETE, "", self._credential, self._counter, self._signature
            )
        if self.state is State.UNREADABLE:
            return TransactionResult(Outcome.UNREADABLE, self._detail, self._credential)
        if self.state is State.BLOCKED:
            return TransactionResult(Outcome.BLOCKED, self._detail, self._credential)
        raise RuntimeError(f"transaction still in progress ({self.state.value})")
