"""The slots a PC/SC reader watches and what their states say.

Which reader names a target matches, pcscd's event state of each slot, and the one
question that matters to a gate: has the card left, or is an event from pcscd still the
card the reader holds? ``readers.pcsc.PcscReader`` mixes this in; it owns the context,
the handle and the recovery.
"""

from __future__ import annotations

import fnmatch
import re

# pyscard ships neither inline types nor stubs.
from smartcard import scard  # type: ignore[import-untyped]

from readers.pcsc_calls import SUCCESS, TIMEOUT, code_of

__all__ = ["NOW", "Retry", "SlotWatch"]

NOW = 0.0  # a state query that does not wait


class Retry(Exception):
    """pcscd or the reader is unavailable right now; the caller retries until its timeout."""


class SlotWatch:
    """Slot matching and state reading, on the reader's own fields."""

    target: str
    name: str
    _regex: re.Pattern[str] | None
    _ctx: int | None
    _reader: str | None
    _slots: list[str] | None
    _handle: int | None
    _events: int

    def _fail(self, hresult: int, what: str) -> Retry:
        raise NotImplementedError  # the reader's: it knows what a failure kills

    def _disconnect(self) -> None:
        raise NotImplementedError  # the reader's: it holds the handle

    def _matches(self, name: str) -> bool:
        if not self.target or name == self.target:
            return True
        if fnmatch.fnmatchcase(name, self.target):
            return True
        return self._regex is not None and self._regex.search(name) is not None

    def _find_slots(self, ctx: int) -> list[str]:
        """The readers we watch: the first one for "", else every one that matches."""
        if self._slots:
            return self._slots
        hr, names = scard.SCardListReaders(ctx, [])
        if code_of(hr) not in (SUCCESS, 0x8010002E):
            raise self._fail(hr, "cannot list readers")
        names = [str(n) for n in names] if code_of(hr) == SUCCESS else []
        found = [n for n in names if self._matches(n)]
        if not found:
            raise Retry(f"no reader matches {self.target!r} (have: {', '.join(names) or 'none'})")
        self._slots = found[:1] if not self.target or self.target in found else found
        if len(self._slots) == 1:
            self.name = self._slots[0]
        return self._slots

    def _states(
        self, ctx: int, readers: list[str], wait_s: float, known: dict[str, int] | None = None
    ) -> dict[str, int]:
        """Each reader's event state now (``wait_s`` 0) or after a change or the timeout."""
        ms = max(0, int(wait_s * 1000))
        # ``known`` keeps pcscd's event counter in its high 16 bits, so a removal and
        # re-insertion between two calls still counts as a change.
        query = [(r, scard.SCARD_STATE_UNAWARE if known is None else known[r]) for r in readers]
        hr, states = scard.SCardGetStatusChange(ctx, ms, query)
        code = code_of(hr)
        if code == TIMEOUT:
            return dict(known) if known is not None else dict.fromkeys(readers, 0)
        if code != SUCCESS:
            raise self._fail(hr, "cannot read reader state")
        out = {str(name): int(state) for name, state, _atr in states}
        for name, state in out.items():
            if state & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE):
                self._forget_reader()
                raise Retry(f"reader {name!r} is unavailable")
        return out

    def _state(self, ctx: int, reader: str, wait_s: float, known: int | None = None) -> int:
        known_map = None if known is None else {reader: known}
        return self._states(ctx, [reader], wait_s, known_map)[reader]

    def _forget_reader(self) -> None:
        self._disconnect()
        self._reader = None
        self._slots = None

    def _card_gone(self, state: int) -> bool:
        if not state & scard.SCARD_STATE_PRESENT or state & scard.SCARD_STATE_MUTE:
            return True
        return self._events >= 0 and (state >> 16) != self._events

    def _still_ours(self, state: int) -> bool:
        """The event counter moved while a card is present: is it still the card we hold?

        pcscd's counter can move without a removal (seen right after a card was powered
        up). Taking that for a removal would let the gate serve the same card twice. Our
        handle is the authority: pcscd invalidates it when its card leaves, so a handle
        that still answers ``SCardStatus`` means the same card is still in the field.

        After a failed transaction the handle is gone. Then one event while the slot still
        shows a card is no removal either (a removal and an insertion are two events): it
        is the failed card, or its ghost until pcscd's next presence poll, and a connect
        to it would be a tap for no card.
        """
        if not state & scard.SCARD_STATE_PRESENT or state & scard.SCARD_STATE_MUTE:
            return False
        handle = self._handle
        if handle is None:
            if self._events >= 0 and ((state >> 16) - self._events) & 0xFFFF == 1:
                self._events = state >> 16
                return True
            return False
        try:
            hr = scard.SCardStatus(handle)[0]
        except Exception:  # pyscard misbehaving: do not claim the card is ours
            return False
        if code_of(hr) != SUCCESS:
            return False
        self._events = state >> 16
        return True

    def _refresh_events(self) -> None:
        if self._ctx is None or self._reader is None:
            return
        try:
            state = self._state(self._ctx, self._reader, NOW)
        except Retry:
            return
        self._events = state >> 16
