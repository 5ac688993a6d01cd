"""The card's side of the protocol (CARD-SPEC §3–§5), sans I/O: SELECT, READ CREDENTIAL and
INTERNAL AUTHENTICATE answered from a credential and a signing step.

The simulator's cards and the card files a virtual reader serves both answer through
this one dispatcher; each supplies its credential and how it signs (and keeps its
counter). Status words and their order of checks are the contract's, written once.
"""

from __future__ import annotations

from farecore.card.apdu import (
    AID,
    SW_CLA_NOT_SUPPORTED,
    SW_CONDITIONS,
    SW_INS_NOT_SUPPORTED,
    SW_NOT_FOUND,
    SW_OK,
    SW_WRONG_LENGTH,
    SW_WRONG_P1P2,
    CommandApdu,
)

__all__ = ["SPEC_VERSION", "CardApplet"]

SPEC_VERSION = b"\x01\x00"


class CardApplet:
    """``dispatch`` answers one parsed command: (step, data, status word); the step is
    "select", "read", "auth" or None for a command the card does not know."""

    __slots__ = ("selected",)

    def __init__(self) -> None:
        self.selected = False

    def held_credential(self) -> bytes:
        """The credential READ CREDENTIAL returns."""
        raise NotImplementedError

    def sign(self, challenge: bytes) -> tuple[bytes, int]:
        """The counter and signature over ``challenge`` (or a refusal), as data and SW."""
        raise NotImplementedError

    def dispatch(self, cmd: CommandApdu) -> tuple[str | None, bytes, int]:
        if cmd.cla not in (0x00, 0x80):
            return None, b"", SW_CLA_NOT_SUPPORTED
        if (cmd.cla, cmd.ins) == (0x00, 0xA4):
            return "select", *self._select(cmd)
        if (cmd.cla, cmd.ins) == (0x80, 0xB0):
            return "read", *self._read(cmd)
        if (cmd.cla, cmd.ins) == (0x80, 0x88):
            return "auth", *self._authenticate(cmd)
        return None, b"", SW_INS_NOT_SUPPORTED

    def _select(self, cmd: CommandApdu) -> tuple[bytes, int]:
        self.selected = False
        if (cmd.p1, cmd.p2) != (0x04, 0x00):
            return b"", SW_WRONG_P1P2
        if len(cmd.data) != len(AID) or cmd.le != 256:
            return b"", SW_WRONG_LENGTH
        if cmd.data != AID:
            return b"", SW_NOT_FOUND
        self.selected = True
        return SPEC_VERSION, SW_OK

    def _read(self, cmd: CommandApdu) -> tuple[bytes, int]:
        if (cmd.p1, cmd.p2) != (0, 0):
            return b"", SW_WRONG_P1P2
        if cmd.data or cmd.le != 256:
            return b"", SW_WRONG_LENGTH
        if not self.selected:
            return b"", SW_CONDITIONS
        return self.held_credential(), SW_OK

    def _authenticate(self, cmd: CommandApdu) -> tuple[bytes, int]:
        if (cmd.p1, cmd.p2) != (0, 0):
            return b"", SW_WRONG_P1P2
        if len(cmd.data) != 32 or cmd.le != 256:
            return b"", SW_WRONG_LENGTH
        if not self.selected:
            return b"", SW_CONDITIONS
        return self.sign(cmd.data)
