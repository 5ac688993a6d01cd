"""An emulated PN532 chip: its state, the cards in its field, and its command handlers.

``Pn532Chip.answer`` takes one command's packet data (the code, then its parameters)
and gives the reply's packet data, or None for a command the chip does not know. It
speaks firmware version, SAM configuration, parameters, registers, InListPassiveTarget
(ISO 14443-4 type A, with or without automatic RATS), InDataExchange with MI chaining of
long answers, InCommunicateThru carrying RATS and ISO-DEP blocks, deselect, release and
power-down; other card types are answered "no target", so probing clients see exactly
one card. A card whose ``process_apdu`` raises CardIOError has left the field.

The frames, the line and the fault knobs around it are ``sim.pn532_emulator``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ClassVar, Protocol

from farecore.errors import CardIOError
from readers.pn532 import BAUD_RATES

__all__ = ["ATS", "FIRMWARE", "EmulatedCard", "Pn532Chip"]

FIRMWARE = bytes.fromhex("32010607")  # IC = PN532, v1.6, supports ISO 14443 A/B
# TL T0 TA TB TC: FSCI 8 (256 bytes), 106 kbps only, FWI 7, CID supported.
ATS = bytes.fromhex("0578807002")
_CIU_FIFO_DATA = 0x6339
_STATUS_TIMEOUT = 0x01  # what the chip reports when the card no longer answers
_STATUS_NO_TARGET = 0x27  # command not acceptable: no target activated


class EmulatedCard(Protocol):
    def process_apdu(self, apdu: bytes) -> bytes: ...


def _simple(code: int, extra: bytes = b"") -> Callable[[Pn532Chip, bytes], bytes]:
    """A command handler whose answer is always the same: ``code`` then ``extra``."""

    def handler(self: Pn532Chip, p: bytes) -> bytes:
        return bytes([code]) + extra

    return handler


class Pn532Chip:
    """The chip's side of the protocol, without frames or a line. Thread-safe through
    ``_lock``, which every handler runs under."""

    def __init__(self, *, max_data: int = 262, line_baud: int | None = None) -> None:
        if not 1 <= max_data <= 262:
            raise ValueError("max_data must be 1..262")
        if line_baud is not None and line_baud <= 0:
            raise ValueError("line_baud must be positive")
        self.line_baud = line_baud  # the modelled line's rate: SetBaudRate changes it
        self.max_data = max_data  # most card-answer bytes in one InDataExchange reply
        self._lock = threading.RLock()
        self._card: EmulatedCard | None = None
        self._active = False  # the card is the listed target
        self._iso_dep = False  # RATS done through InCommunicateThru
        self._auto_rats = True
        self._registers: dict[int, int] = {_CIU_FIFO_DATA: 0x26}
        self._pending_in = b""  # host-chained command data
        self._pending_out = b""  # card answer not yet fetched (MI)
        self._thru_chain = b""

    # -- the field -------------------------------------------------------------------

    def insert(self, card: EmulatedCard) -> None:
        """Put ``card`` in the field (replacing any other); it is found by the next poll."""
        with self._lock:
            self._card = card
            self._active = self._iso_dep = False

    def remove(self) -> None:
        with self._lock:
            self._card = None
            self._active = self._iso_dep = False
            self._pending_out = self._pending_in = b""

    @property
    def card(self) -> EmulatedCard | None:
        return self._card

    def answer(self, data: bytes) -> bytes | None:
        """The reply to one command (code, then parameters); None if it is unknown."""
        with self._lock:
            handler = self._HANDLERS.get(data[0])
            return None if handler is None else handler(self, data[1:])

    # -- command handlers: params in, reply packet data (code + 1 first) out ------------

    def _firmware(self, p: bytes) -> bytes:
        return b"\x03" + FIRMWARE

    def _diagnose(self, p: bytes) -> bytes:
        if p[:1] == b"\x06":  # card presence test
            present = self._card is not None and self._active
            return b"\x01" + (b"\x00" if present else b"\x01")
        return b"\x01" + p  # communication line test: an exact echo

    def _set_parameters(self, p: bytes) -> bytes:
        if p:
            self._auto_rats = bool(p[0] & 0x10)
        return b"\x13"

    def _read_register(self, p: bytes) -> bytes:
        addrs = [p[i] << 8 | p[i + 1] for i in range(0, len(p) - 1, 2)]
        return b"\x07" + bytes(self._registers.get(a, 0) for a in addrs)

    def _write_register(self, p: bytes) -> bytes:
        for i in range(0, len(p) - 2, 3):
            addr = p[i] << 8 | p[i + 1]
            if addr != _CIU_FIFO_DATA:  # keep the "no SENS_RES" marker nfcpy looks for
                self._registers[addr] = p[i + 2]
        return b"\x09"

    def _in_list(self, p: bytes) -> bytes:
        card = self._card
        if len(p) < 2 or p[1] != 0x00 or card is None:
            return b"\x4b\x00"
        power_on: Callable[[], None] | None = getattr(card, "power_on", None)
        if power_on is not None:
            power_on()
        uid = bytes(getattr(card, "uid", b"") or b"\x08\x01\x02\x03")
        if len(uid) not in (4, 7, 10):
            uid = uid[-4:].rjust(4, b"\x08")
        sens_res = b"\x00\x04" if len(uid) == 4 else b"\x00\x44"
        self._active = True
        self._iso_dep = self._auto_rats
        self._pending_in = self._pending_out = b""
        body = b"\x4b\x01\x01" + sens_res + b"\x20" + bytes([len(uid)]) + uid
        return body + (ATS if self._auto_rats else b"")

    def _card_apdu(self, apdu: bytes) -> bytes | None:
        """The card's answer, or None when it has left the field."""
        card = self._card
        if card is None:
            return None
        try:
            return card.process_apdu(apdu)
        except CardIOError:
            self._card = None
            self._active = self._iso_dep = False
            return None

    def _data_exchange(self, p: bytes) -> bytes:
        if not p:
            return b"\x41\x27"
        tg, data = p[0], p[1:]
        if self._card is None:
            return bytes([0x41, _STATUS_TIMEOUT])
        if not self._active:
            return bytes([0x41, _STATUS_NO_TARGET])
        if tg & 0x40:  # host chaining: more command data follows
            self._pending_in += data
            return b"\x41\x00"
        if not data and self._pending_out:
            answer = self._pending_out
        else:
            full = self._pending_in + data
            self._pending_in = b""
            got = self._card_apdu(full)
            if got is None:
                return bytes([0x41, _STATUS_TIMEOUT])
            answer = got
        chunk, self._pending_out = answer[: self.max_data], answer[self.max_data :]
        status = 0x40 if self._pending_out else 0x00
        return bytes([0x41, status]) + chunk

    def _communicate_thru(self, p: bytes) -> bytes:
        no_answer = bytes([0x43, _STATUS_TIMEOUT])
        if not p or self._card is None or not self._active:
            return no_answer
        if p[0] == 0xE0 and len(p) == 2 and not self._iso_dep:  # RATS
            self._iso_dep = True
            return b"\x43\x00" + ATS
        if p[:2] == b"\x50\x00":  # HLTA: the card goes quiet
            self._active = self._iso_dep = False
            return no_answer
        if not self._iso_dep:
            return no_answer
        pcb = p[0]
        head = 1 + (1 if pcb & 0x08 else 0) + (1 if pcb & 0x04 else 0)
        cid = p[1:2] if pcb & 0x08 else b""
        if pcb & 0xE2 == 0x02:  # I-block
            if pcb & 0x10:  # chained: acknowledge with an R(ACK)
                self._thru_chain += p[head:]
                return b"\x43\x00" + bytes([0xA2 | (pcb & 0x09)]) + cid
            apdu = self._thru_chain + p[head:]
            self._thru_chain = b""
            answer = self._card_apdu(apdu)
            if answer is None:
                return no_answer
            return b"\x43\x00" + bytes([0x02 | (pcb & 0x09)]) + cid + answer
        if pcb & 0xF7 == 0xC2:  # S(DESELECT)
            self._iso_dep = False
            self._active = False
            return b"\x43\x00" + p[:head]
        return no_answer

    def _set_baud_rate(self, p: bytes) -> bytes:
        # A pty has no rate; only the modelled line speed changes.
        if self.line_baud is not None and p and p[0] < len(BAUD_RATES):
            self.line_baud = BAUD_RATES[p[0]]
        return b"\x11"

    def _release(self, p: bytes) -> bytes:
        self._active = self._iso_dep = False
        return b"\x53\x00"

    def _deselect(self, p: bytes) -> bytes:
        self._iso_dep = False
        return b"\x45\x00"

    _HANDLERS: ClassVar[dict[int, Callable[[Pn532Chip, bytes], bytes]]] = {
        0x00: _diagnose,
        0x02: _firmware,
        0x06: _read_register,
        0x08: _write_register,
        0x10: _set_baud_rate,
        0x12: _set_parameters,
        0x14: _simple(0x15),
        0x16: _simple(0x17, b"\x00"),
        0x32: _simple(0x33),
        0x40: _data_exchange,
        0x42: _communicate_thru,
        0x44: _deselect,
        0x4A: _in_list,
        0x4E: _simple(0x4F, b"\x00"),
        0x52: _release,
    }
