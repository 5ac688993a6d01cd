"""The challenge, the card's dynamic signature, and the proof of tap.

A proof of tap is the credential plus (challenge, counter, card signature). Anyone with
the issuer keyring can re-verify it later, which is what the settlement does for every
ride. Nothing here reads a clock: the terminal time goes into the challenge as given.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from farecore.card.credential import Credential, parse_unverified
from farecore.card.crypto import PublicKey, load_public_key
from farecore.card.keys import Keyring
from farecore.errors import BadSignature, MalformedApdu

__all__ = [
    "AUTH_RESPONSE_LENGTH",
    "AUTH_SIGNING_TAG",
    "ProofOfTap",
    "auth_message",
    "challenge_head",
    "make_challenge",
    "parse_auth_response",
    "verify_card_signature",
    "verify_credential",
]

AUTH_SIGNING_TAG = b"RJCARD/auth/v1"
AUTH_RESPONSE_LENGTH = 68
_U64 = struct.Struct(">Q")
_CHALLENGE = struct.Struct(">QQ16s")
_CHALLENGE_HEAD = struct.Struct(">QQ")
_U32 = struct.Struct(">I")


def make_challenge(terminal_id: int, time_ms: int, nonce: bytes) -> bytes:
    """``terminal id:8 ‖ terminal time:8 (Unix ms) ‖ nonce:16``."""
    if len(nonce) != 16:
        raise ValueError("nonce must be 16 bytes")
    return _CHALLENGE.pack(terminal_id, time_ms, nonce)


def challenge_fields(challenge: bytes) -> tuple[int, int, bytes]:
    """(terminal id, time in ms, nonce) of a 32-byte challenge."""
    if len(challenge) != 32:
        raise ValueError("challenge must be 32 bytes")
    terminal_id, time_ms, nonce = _CHALLENGE.unpack(challenge)
    return terminal_id, time_ms, nonce


def challenge_head(challenge: bytes) -> tuple[int, int]:
    """(terminal id, time in ms) of a challenge: what a settlement checks of it."""
    terminal_id, time_ms = _CHALLENGE_HEAD.unpack_from(challenge)
    return terminal_id, time_ms


def auth_message(card_id: int, counter: int, challenge: bytes) -> bytes:
    """The bytes a card signs on INTERNAL AUTHENTICATE."""
    return AUTH_SIGNING_TAG + _U64.pack(card_id) + _U32.pack(counter) + challenge


def parse_auth_response(data: bytes) -> tuple[int, bytes]:
    """Split ``counter:4 ‖ signature:64``; raise MalformedApdu on another length."""
    if len(data) != AUTH_RESPONSE_LENGTH:
        raise MalformedApdu(f"authentication response is {len(data)} bytes, expected 68")
    return _U32.unpack_from(data)[0], bytes(data[4:])


def verify_card_signature(
    card_key: PublicKey, card_id: int, counter: int, challenge: bytes, signature: bytes
) -> None:
    """Raise BadSignature unless the card signed this challenge with this counter.

    Counter 0 is never valid: a card's first authentication uses 1 (CARD-SPEC §5).
    """
    if counter == 0:
        raise BadSignature("counter 0 is never produced by a genuine card")
    card_key.verify(signature, auth_message(card_id, counter, challenge))


def verify_credential(credential: Credential, keyring: Keyring) -> PublicKey:
    """Check the issuer signature; return the card's public key.

    Raises BadSignature when the issuer key is unknown or the signature does not verify;
    the message says which.
    """
    f = credential.fields
    issuer = keyring.resolve(f.issuer_key_id, f.issuer_algorithm, f.valid_from)
    if issuer is None:
        raise BadSignature(f"issuer key {f.issuer_key_id} is not usable for this credential")
    issuer.verify(credential.issuer_signature, credential.signed_message)
    return load_public_key(f.card_key_algorithm, f.card_public_key)


@dataclass(frozen=True, slots=True)
class ProofOfTap:
    """What a ride record carries so that anyone can re-check it was a real tap."""

    credential: bytes
    challenge: bytes
    counter: int
    signature: bytes

    def __post_init__(self) -> None:
        if len(self.challenge) != 32:
            raise ValueError("challenge must be 32 bytes")
        if len(self.signature) != 64:
            raise ValueError("card signature must be 64 bytes")
        if not 0 <= self.counter <= 0xFFFFFFFF:
            raise ValueError("counter must be a uint32")

    def verify(self, keyring: Keyring) -> Credential:
        """Re-verify both signatures; return the parsed credential or raise."""
        credential = parse_unverified(self.credential)
        card_key = verify_credential(credential, keyring)
        verify_card_signature(
            card_key, credential.card_id, self.counter, self.challenge, self.signature
        )
        return credential
