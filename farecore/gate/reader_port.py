"""The reader port: what the gate needs from any card reader, and nothing more.

Adapters in ``readers/`` implement it (PC/SC, serial PN532, in-process virtual) and
register a factory under the ``farecore.readers`` entry-point group; the core finds them
by the URL scheme (``pcsc:NAME``, ``pn532:/dev/ttyUSB0``, ``virtual:``) and never imports
them. An adapter raises only :class:`ReaderIOError` (the reader is in trouble) or
:class:`CardIOError` (the card is), so the gate knows whether to recover or just deny.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Protocol

from farecore.errors import ConfigError

__all__ = ["READER_GROUP", "CardChannel", "Reader", "ReaderFactory", "open_reader"]

READER_GROUP = "farecore.readers"


class CardChannel(Protocol):
    """A connection to the card currently in the field."""

    def transmit(self, apdu: bytes) -> bytes:
        """Send a C-APDU; return the R-APDU (data ‖ SW). Raise CardIOError or ReaderIOError."""
        ...


class Reader(Protocol):
    """One physical or virtual reader. Whoever opens it closes it."""

    name: str

    def open(self) -> None: ...

    def close(self) -> None: ...

    def wait_for_card(self, timeout: float) -> CardChannel | None:
        """Block until a card is present (its channel) or ``timeout`` seconds pass (None)."""
        ...

    def wait_for_removal(self, timeout: float) -> bool:
        """Block until the card leaves the field (True) or ``timeout`` passes (False)."""
        ...


class ReaderFactory(Protocol):
    def __call__(self, target: str, **options: Any) -> Reader: ...


def open_reader(url: str, **options: Any) -> Reader:
    """Build (not yet open) the reader named by ``url``: ``SCHEME:TARGET``.

    Raises ConfigError naming the extra to install when the adapter cannot load.
    """
    scheme, sep, target = url.partition(":")
    if not sep:
        raise ConfigError(
            f"reader URL {url!r} needs a scheme, e.g. 'pcsc:' or 'pn532:/dev/ttyUSB0'"
        )
    found = {ep.name: ep for ep in entry_points(group=READER_GROUP)}
    ep = found.get(scheme)
    if ep is None:
        known = ", ".join(sorted(found)) or "none installed"
        raise ConfigError(f"no reader adapter for {scheme!r} (known: {known})")
    try:
        factory: ReaderFactory = ep.load()
    except ImportError as exc:
        extra = f" — install it with: pip install 'farecore[{ep.extras[0]}]'" if ep.extras else ""
        raise ConfigError(f"reader {scheme!r} cannot load ({exc}){extra}") from None
    return factory(target, **options)
