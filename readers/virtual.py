"""An in-process reader that holds virtual cards: ``virtual:``.

| capability        | support                                              |
|-------------------|------------------------------------------------------|
| card presence     | ``present(card)`` / ``remove()`` from any thread       |
| transmit          | direct call into the card, no transport              |
| removal detection | immediate                                            |
| errors            | the card's CardIOError passes through; closed → ReaderIOError |

Anything with ``process_apdu(bytes) -> bytes`` (and optionally ``power_on()``) is a card
here, so this module needs nothing from ``sim/``.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from farecore.card.apdu import complete_t0
from farecore.errors import CardIOError, ReaderIOError

__all__ = ["ApduCard", "VirtualChannel", "VirtualReader", "VirtualReaderFactory"]


class ApduCard(Protocol):
    def process_apdu(self, apdu: bytes) -> bytes: ...


class VirtualChannel:
    """The channel to one inserted card; dead once that card is removed."""

    __slots__ = ("_card", "_reader")

    def __init__(self, reader: VirtualReader, card: ApduCard) -> None:
        self._reader = reader
        self._card = card

    def transmit(self, apdu: bytes) -> bytes:
        if self._reader._card is not self._card:
            raise CardIOError("card is no longer in the field")
        try:
            card = self._card
            return complete_t0(apdu, card.process_apdu(apdu), card.process_apdu)
        except CardIOError:
            self._reader.remove()
            raise


class VirtualReader:
    """A reader whose field holds at most one virtual card at a time."""

    def __init__(self, name: str = "virtual") -> None:
        self.name = name
        self._card: ApduCard | None = None
        self._open = False
        self._changed = threading.Condition()

    def open(self) -> None:
        self._open = True

    def close(self) -> None:
        with self._changed:
            self._open = False
            self._card = None
            self._changed.notify_all()

    def present(self, card: ApduCard) -> None:
        """Put ``card`` in the field (replacing any card there)."""
        power_on = getattr(card, "power_on", None)
        if power_on is not None:
            power_on()
        with self._changed:
            self._card = card
            self._changed.notify_all()

    def remove(self) -> None:
        with self._changed:
            self._card = None
            self._changed.notify_all()

    def wait_for_card(self, timeout: float) -> VirtualChannel | None:
        with self._changed:
            if not self._open:
                raise ReaderIOError(f"reader {self.name!r} is not open")
            if not self._changed.wait_for(
                lambda: self._card is not None or not self._open, timeout
            ):
                return None
            if self._card is None:
                raise ReaderIOError(f"reader {self.name!r} was closed")
            return VirtualChannel(self, self._card)

    def wait_for_removal(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._card is None, timeout)

    def tap(self, card: ApduCard) -> VirtualChannel:
        """Present ``card`` and return its channel at once (for single-threaded drivers)."""
        self._open = True
        self.present(card)
        return VirtualChannel(self, card)


def VirtualReaderFactory(target: str, **options: Any) -> VirtualReader:
    """Entry point for ``virtual:NAME``."""
    return VirtualReader(target or "virtual")
