"""ISO/IEC 7816-4 short APDUs: the codec, the Rongjun commands, and the status-word table.

Pure functions over bytes. The terminal builds commands and splits responses here; the
virtual card parses commands here too, so both sides share one reading of the bytes.
Every reader completes the T=0 transport's 61xx and 6Cxx here (``complete_t0``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from farecore.errors import MalformedApdu

__all__ = [
    "AID",
    "CHALLENGE_LENGTH",
    "READ_CREDENTIAL",
    "SELECT_RONGJUN",
    "STATUS_WORDS",
    "SW_BLOCKED",
    "SW_CLA_NOT_SUPPORTED",
    "SW_CONDITIONS",
    "SW_INS_NOT_SUPPORTED",
    "SW_NOT_FOUND",
    "SW_OK",
    "SW_WRONG_LENGTH",
    "SW_WRONG_P1P2",
    "CommandApdu",
    "Response",
    "complete_t0",
    "internal_authenticate",
    "split_response",
    "t0_followup",
]

AID = bytes.fromhex("F0524A43415244")
CHALLENGE_LENGTH = 32

SW_OK = 0x9000
SW_WRONG_LENGTH = 0x6700
SW_BLOCKED = 0x6983
SW_CONDITIONS = 0x6985
SW_NOT_FOUND = 0x6A82
SW_WRONG_P1P2 = 0x6A86
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00

STATUS_WORDS: dict[int, str] = {
    SW_OK: "success",
    SW_WRONG_LENGTH: "wrong length",
    SW_BLOCKED: "card blocked: counter exhausted",
    SW_CONDITIONS: "conditions not satisfied: no SELECT yet",
    SW_NOT_FOUND: "application not found",
    SW_WRONG_P1P2: "wrong P1/P2",
    SW_INS_NOT_SUPPORTED: "INS not supported",
    SW_CLA_NOT_SUPPORTED: "CLA not supported",
}


def describe_sw(sw: int) -> str:
    """A short human description of a status word, for logs and deny details."""
    return f"SW {sw:04X} ({STATUS_WORDS.get(sw, 'not defined by the Rongjun spec')})"


@dataclass(frozen=True, slots=True)
class CommandApdu:
    """A short command APDU. ``le`` is None when absent; 0 in the encoding means 256."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            if not 0 <= getattr(self, name) <= 0xFF:
                raise ValueError(f"{name} must be a byte")
        if len(self.data) > 255:
            raise ValueError("short APDUs carry at most 255 data bytes")
        if self.le is not None and not 1 <= self.le <= 256:
            raise ValueError("Le must be 1..256")

    def encode(self) -> bytes:
        out = bytes((self.cla, self.ins, self.p1, self.p2))
        if self.data:
            out += bytes((len(self.data),)) + self.data
        if self.le is not None:
            out += bytes((self.le & 0xFF,))
        return out

    @classmethod
    def parse(cls, raw: bytes) -> CommandApdu:
        """Decode a short C-APDU (cases 1 to 4); raise MalformedApdu otherwise."""
        raw = bytes(raw)
        if len(raw) < 4:
            raise MalformedApdu(f"a C-APDU needs at least 4 bytes, got {len(raw)}")
        cla, ins, p1, p2 = raw[:4]
        body = raw[4:]
        if not body:
            return cls(cla, ins, p1, p2)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, le=body[0] or 256)
        lc = body[0]
        if lc == 0:
            raise MalformedApdu("extended-length APDUs are not supported")
        if len(body) == 1 + lc:
            return cls(cla, ins, p1, p2, data=body[1:])
        if len(body) == 2 + lc:
            return cls(cla, ins, p1, p2, data=body[1 : 1 + lc], le=body[-1] or 256)
        raise MalformedApdu(f"Lc says {lc} data bytes but the APDU body has {len(body)} bytes")


@dataclass(frozen=True, slots=True)
class Response:
    """A card's answer: data field and status word."""

    data: bytes
    sw: int

    def encode(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")


def split_response(raw: bytes) -> Response:
    """Split an R-APDU into data and SW; raise MalformedApdu when there is no SW."""
    if len(raw) < 2:
        raise MalformedApdu(f"response of {len(raw)} bytes has no status word")
    return Response(bytes(raw[:-2]), (raw[-2] << 8) | raw[-1])


SELECT_RONGJUN = CommandApdu(0x00, 0xA4, 0x04, 0x00, AID, 256).encode()
READ_CREDENTIAL = CommandApdu(0x80, 0xB0, 0x00, 0x00, le=256).encode()
_AUTH_HEADER = bytes((0x80, 0x88, 0x00, 0x00, CHALLENGE_LENGTH))


def internal_authenticate(challenge: bytes) -> bytes:
    """The INTERNAL AUTHENTICATE C-APDU for a 32-byte challenge."""
    if len(challenge) != CHALLENGE_LENGTH:
        raise ValueError(f"challenge must be {CHALLENGE_LENGTH} bytes")
    return _AUTH_HEADER + challenge + b"\x00"


def _has_le(apdu: bytes) -> bool:
    """True for a short case 2 or case 4 APDU, whose last byte is Le."""
    return len(apdu) == 5 or (len(apdu) > 5 and len(apdu) == 6 + apdu[4])


def t0_followup(command: bytes, response: bytes) -> bytes | None:
    """The T=0 transport's follow-up to ``response``, or None when it is the answer.

    CARD-SPEC §3 (amended): ``61 xx`` is completed with GET RESPONSE (``00 C0 00 00 xx``,
    on the command's logical channel) and ``6C xx`` by sending the same command again
    with Le = xx. A terminal completes them at most once per command, and every reader
    kind the same way (``complete_t0``), so a card gets one decision everywhere.
    """
    if len(response) < 2:
        return None
    sw1, sw2 = response[-2], response[-1]
    if sw1 == 0x61:
        return bytes((command[0] & 0x03, 0xC0, 0x00, 0x00, sw2))
    if sw1 == 0x6C and len(response) == 2 and _has_le(command):
        return command[:-1] + bytes((sw2,))
    return None


def complete_t0(command: bytes, response: bytes, exchange: Callable[[bytes], bytes]) -> bytes:
    """``response`` with its T=0 transport status completed once through ``exchange``.

    What comes back from the one follow-up is final, whatever it says: a card that asks
    for a second completion answers with a status word no command here succeeds with.
    """
    followup = t0_followup(command, response)
    if followup is None:
        return response
    answer = exchange(followup)
    if response[-2] == 0x61:
        return response[:-2] + answer  # data before the 61xx, then the rest
    return answer
