"""The virtual Rongjun card: the whole card side of CARD-SPEC, plus knobs for faults.

A ``VirtualCard`` answers C-APDUs with R-APDUs exactly as a conforming chip would,
including its monotonic counter and every status word. ``CardFaults`` makes it misbehave
on purpose (pulled mid-transaction, wrong SW, truncated or padded answers, slow answers,
an exhausted counter), and :meth:`VirtualCard.clone` builds the classic clone: the
genuine credential with a key that is not the card's.

The card is transport-agnostic: the in-process reader, the vpcd bridge and the PN532
emulator all call :meth:`VirtualCard.process_apdu`.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

from farecore.card.apdu import (
    READ_CREDENTIAL,
    SELECT_RONGJUN,
    SW_BLOCKED,
    SW_OK,
    SW_WRONG_LENGTH,
    CommandApdu,
)
from farecore.card.applet import SPEC_VERSION, CardApplet
from farecore.card.credential import parse_unverified
from farecore.card.crypto import PrivateKey
from farecore.card.proof import auth_message
from farecore.errors import CardIOError, MalformedApdu

__all__ = ["SPEC_VERSION", "STEPS", "CardFaults", "VirtualCard"]

STEPS = ("select", "read", "auth")
_U32_MAX = 0xFFFFFFFF
_SW = struct.Struct(">H")
_AUTH_HEADER = bytes.fromhex("8088000020")


@dataclass(slots=True)
class CardFaults:
    """Ways to make a card misbehave, each keyed by step: "select", "read" or "auth".

    - ``remove_at``: the card leaves the field when that command arrives (CardIOError).
    - ``wrong_sw``: answer that step with this status word and no data.
    - ``truncate``: drop this many bytes from the end of that step's answer.
    - ``extra``: append these bytes to that step's data field.
    - ``delay_s``: sleep this long before every answer (a slow card).
    - ``fixed_counter``: sign with this counter instead of the real one (0 is a clone tell).
    """

    remove_at: str | None = None
    wrong_sw: dict[str, int] = field(default_factory=dict)
    truncate: dict[str, int] = field(default_factory=dict)
    extra: dict[str, bytes] = field(default_factory=dict)
    delay_s: float = 0.0
    fixed_counter: int | None = None

    def __post_init__(self) -> None:
        for step in [self.remove_at, *self.wrong_sw, *self.truncate, *self.extra]:
            if step is not None and step not in STEPS:
                raise ValueError(f"unknown step {step!r}: expected one of {STEPS}")


class VirtualCard(CardApplet):
    """A card with a credential, a private key and a counter."""

    __slots__ = ("_card_id", "counter", "credential", "faults", "key", "uid")

    def __init__(
        self,
        credential: bytes,
        key: PrivateKey,
        counter: int = 0,
        faults: CardFaults | None = None,
        uid: bytes | None = None,
        card_id: int | None = None,
    ) -> None:
        self.credential = bytes(credential)
        self.key = key
        self.counter = counter
        self.faults = faults or CardFaults()
        self.selected = False
        # The card id is read from the credential when it parses (unless the maker of
        # many cards already knows it); a garbage credential (for fault tests) still
        # gets a stable id from its bytes.
        if card_id is not None:
            self._card_id = card_id
        else:
            try:
                self._card_id = parse_unverified(self.credential).card_id
            except ValueError:
                self._card_id = int.from_bytes(self.credential[6:14].ljust(8, b"\0"), "big")
        self.uid = uid if uid is not None else self._card_id.to_bytes(8, "big")[-4:]

    @property
    def card_id(self) -> int:
        return self._card_id

    def held_credential(self) -> bytes:
        return self.credential

    @classmethod
    def clone(cls, original: VirtualCard, key: PrivateKey | None = None) -> VirtualCard:
        """A copy of ``original``'s credential with a key the cloner made up."""
        fake = key or PrivateKey.generate(original.key.algorithm)
        return cls(original.credential, fake, counter=original.counter)

    def power_on(self) -> None:
        """A new field: the application is deselected, the counter persists."""
        self.selected = False

    def process_apdu(self, apdu: bytes) -> bytes:
        """Answer one C-APDU. Raises CardIOError when the card 'leaves the field'."""
        step, data, sw = self._fast_path(apdu)
        if step is None:
            try:
                cmd = CommandApdu.parse(apdu)
            except MalformedApdu:
                return _SW.pack(SW_WRONG_LENGTH)
            step, data, sw = self.dispatch(cmd)
        if step is not None:
            faults = self.faults
            if faults.remove_at == step:
                self.selected = False
                raise CardIOError(f"card removed during {step}")
            if step in faults.wrong_sw:
                data, sw = b"", faults.wrong_sw[step]
            if step in faults.extra:
                data += faults.extra[step]
            if faults.delay_s:
                time.sleep(faults.delay_s)
            out = data + _SW.pack(sw)
            cut = faults.truncate.get(step, 0)
            return out[: len(out) - cut] if cut else out
        return data + _SW.pack(sw)

    def _fast_path(self, apdu: bytes) -> tuple[str | None, bytes, int]:
        """The three well-formed commands, answered without the general parser."""
        if apdu == SELECT_RONGJUN:
            self.selected = True
            return "select", SPEC_VERSION, SW_OK
        if not self.selected:
            return None, b"", 0
        if apdu == READ_CREDENTIAL:
            return "read", self.credential, SW_OK
        if len(apdu) == 38 and apdu[:5] == _AUTH_HEADER and apdu[37] == 0:
            return "auth", *self.sign(apdu[5:37])
        return None, b"", 0

    def sign(self, challenge: bytes) -> tuple[bytes, int]:
        if self.counter >= _U32_MAX:
            return b"", SW_BLOCKED
        self.counter += 1
        counter = self.counter if self.faults.fixed_counter is None else self.faults.fixed_counter
        signature = self.key.sign(auth_message(self._card_id, counter, challenge))
        return counter.to_bytes(4, "big") + signature, SW_OK
