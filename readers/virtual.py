"""An in-process reader that holds virtual cards: ``virtual:``.

| capability        | support                                              |
|-------------------|------------------------------------------------------|
| card presence     | ``present(card)`` / ``remove()`` from any thread       |
| transmit          | direct call into the card, no transport              |
| removal detection | immediate                                            |
| errors            | the card's CardIOError passes through; closed → ReaderIOError |

Anything with ``process_apdu(bytes) -> bytes`` (and optionally ``power_on()``) is a card
here, so this module needs nothing from ``sim/``.

``virtual:`` is an empty reader that a program in the same process fills.
``virtual:PATH[,PATH…]`` serves card files (``farecore card new``, docs/card-office.md):
each is tapped once, in order, and leaves the field as soon as its tap is done; the
same file named twice taps twice, with its counter going on. After the last one the
reader stays empty (``farecore gate --max-taps N`` stops the gate). :class:`FileCard`
is such a card: it answers as CARD-SPEC §3 says and writes its counter back to its file
before it answers an authentication, as a chip does.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Protocol

from farecore.card.apdu import (
    SW_BLOCKED,
    SW_OK,
    SW_WRONG_LENGTH,
    CommandApdu,
    complete_t0,
)
from farecore.card.applet import CardApplet
from farecore.card.cardfile import CardFile, load_card_file, save_card_file
from farecore.card.proof import auth_message
from farecore.errors import CardIOError, ConfigError, FarecoreError, MalformedApdu, ReaderIOError

__all__ = [
    "ApduCard",
    "CardFileReader",
    "FileCard",
    "VirtualChannel",
    "VirtualReader",
    "VirtualReaderFactory",
]

_U32 = 0xFFFFFFFF


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


class FileCard(CardApplet):
    """The card of a card file: SELECT, READ CREDENTIAL and INTERNAL AUTHENTICATE.

    The counter is written back to the file (atomically) before a signature leaves the
    card; a counter that cannot be saved fails the tap (CardIOError) and signs nothing.
    """

    def __init__(self, path: str | os.PathLike[str], card: CardFile | None = None) -> None:
        self.path = Path(path)
        self.card = card if card is not None else load_card_file(self.path)
        self.card_id = self.card.card_id
        self.selected = False

    @property
    def counter(self) -> int:
        return self.card.counter

    def held_credential(self) -> bytes:
        return self.card.credential

    def power_on(self) -> None:
        self.selected = False

    def process_apdu(self, apdu: bytes) -> bytes:
        try:
            cmd = CommandApdu.parse(apdu)
        except MalformedApdu:
            return _sw(SW_WRONG_LENGTH)
        _, data, sw = self.dispatch(cmd)
        return data + _sw(sw)

    def sign(self, challenge: bytes) -> tuple[bytes, int]:
        if self.card.counter >= _U32:
            return b"", SW_BLOCKED
        counter = self.card.counter + 1
        card = CardFile(self.card.key, self.card.credential, counter)
        try:
            save_card_file(self.path, card)
        except (OSError, FarecoreError) as exc:
            raise CardIOError(f"card file {self.path}: cannot save its counter: {exc}") from None
        self.card = card
        signature = card.key.sign(auth_message(self.card_id, counter, challenge))
        return counter.to_bytes(4, "big") + signature, SW_OK


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


class CardFileReader(VirtualReader):
    """A virtual reader that taps each of its cards once, in order, then stays empty."""

    def __init__(self, cards: list[FileCard], name: str = "virtual") -> None:
        super().__init__(name)
        self._queue = list(cards)

    def wait_for_card(self, timeout: float) -> VirtualChannel | None:
        if self._open and self._card is None and self._queue:
            self.present(self._queue.pop(0))
        return super().wait_for_card(timeout)

    def wait_for_removal(self, timeout: float) -> bool:
        self.remove()  # a tapped card leaves the field: its tap is done
        return True


def VirtualReaderFactory(target: str, **options: Any) -> VirtualReader:
    """Entry point for ``virtual:`` (an empty reader) and ``virtual:PATH[,PATH…]``
    (card files, each tapped once in order). A card file that does not load is a
    ConfigError naming it, before the gate starts."""
    if not target:
        return VirtualReader("virtual")
    cards: dict[Path, FileCard] = {}
    queue = []
    for part in target.split(","):
        if not part:
            raise ConfigError(f"reader URL virtual:{target}: an empty card file name")
        p = Path(part).resolve()  # one card under two spellings is still one card
        if p not in cards:
            try:
                cards[p] = FileCard(p)
            except FarecoreError as exc:
                raise ConfigError(str(exc)) from None
        queue.append(cards[p])
    return CardFileReader(queue, f"virtual:{target}")
