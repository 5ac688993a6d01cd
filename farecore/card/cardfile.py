"""A virtual card in one file: its private key, its credential and its counter.

``farecore card new`` writes one for trying a gate without hardware; the ``virtual:``
reader and the vpcd card server (``python -m sim.vpcd --card-file``) serve it. It is a
small JSON document, mode 0600 since it holds a private key (docs/card-office.md)::

    {"format": "farecore-card/1", "card_id": 1001, "algorithm": "Ed25519",
     "secret": "<32-byte private key in hex>", "credential": "<credential in hex>",
     "counter": 0}

``counter`` is the card's authentication counter (CARD-SPEC §5): what it last signed
with, 0 for a new card. A card that serves a tap writes its new counter back before it
answers, as a chip does, so the next run goes on from there. Loading checks
everything: the credential parses, names this card id and this key's algorithm and
public key, and the counter is a uint32.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farecore.atomicfile import write_atomic
from farecore.boundedinput import check_json_nesting, read_limited
from farecore.card.credential import Credential, parse_unverified
from farecore.card.crypto import Algorithm, PrivateKey
from farecore.errors import ConfigError, FarecoreError, MalformedFile
from farecore.strictkeys import check_keys

__all__ = ["CARD_FILE_FORMAT", "CardFile", "load_card_file", "save_card_file"]

CARD_FILE_FORMAT = "farecore-card/1"
_KEYS = ("format", "card_id", "algorithm", "secret", "credential", "counter")
_MAX_BYTES = 1 << 12  # a card file is about 450 bytes
_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class CardFile:
    """What a card file holds."""

    key: PrivateKey
    credential: bytes
    counter: int = 0

    @property
    def parsed(self) -> Credential:
        return parse_unverified(self.credential)

    @property
    def card_id(self) -> int:
        return self.parsed.card_id

    def check(self, source: str) -> None:
        """Raise MalformedFile when the parts do not belong together."""
        try:
            cred = self.parsed
        except FarecoreError as exc:
            raise MalformedFile(f"{source}: credential: {exc}") from None
        f = cred.fields
        if f.card_key_algorithm != self.key.algorithm or f.card_public_key != self.key.public_bytes:
            raise MalformedFile(f"{source}: the credential names another key than the card's")
        if isinstance(self.counter, bool) or not 0 <= self.counter <= _U32:
            raise MalformedFile(f"{source}: counter must be 0..{_U32}")

    def to_bytes(self) -> bytes:
        doc = {
            "format": CARD_FILE_FORMAT,
            "card_id": self.card_id,
            "algorithm": self.key.algorithm.label,
            "secret": self.key.secret.hex(),
            "credential": self.credential.hex(),
            "counter": self.counter,
        }
        return (json.dumps(doc, indent=2) + "\n").encode()


def save_card_file(path: str | os.PathLike[str], card: CardFile) -> None:
    """Write ``card`` to ``path`` atomically, mode 0600."""
    card.check(str(path))
    write_atomic(path, card.to_bytes(), mode=0o600)


def load_card_file(path: str | os.PathLike[str]) -> CardFile:
    """Read and check a card file; MalformedFile names the file and the fault."""
    p = Path(path)
    try:
        data = read_limited(p, _MAX_BYTES, str(p), MalformedFile)
        mode = stat.S_IMODE(p.stat().st_mode)
    except OSError as exc:
        raise MalformedFile(f"{p}: cannot read card file: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise MalformedFile(f"{p}: card file is readable by others (mode {mode:04o}); chmod 600 it")
    check_json_nesting(data, 2, str(p), MalformedFile, max_digits=20)
    try:
        doc: Any = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise MalformedFile(f"{p}: not a card file (bad JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != CARD_FILE_FORMAT:
        raise MalformedFile(f"{p}: not a card file (format must be {CARD_FILE_FORMAT!r})")
    try:
        check_keys(doc, str(p), _KEYS)
    except ConfigError as exc:
        raise MalformedFile(str(exc)) from None
    try:
        missing = [k for k in _KEYS if k not in doc]
        if missing:
            raise ValueError(f"{missing[0]!r} is missing")
        for name in ("secret", "credential", "algorithm"):
            if not isinstance(doc[name], str):
                raise ValueError(f"{name} must be a string")
        for name in ("card_id", "counter"):
            if not isinstance(doc[name], int) or isinstance(doc[name], bool):
                raise ValueError(f"{name} must be an integer")
        key = PrivateKey(Algorithm.from_label(doc["algorithm"]), bytes.fromhex(doc["secret"]))
        card = CardFile(key, bytes.fromhex(doc["credential"]), doc["counter"])
    except (ValueError, FarecoreError) as exc:
        raise MalformedFile(f"{p}: bad card file: {exc}") from None
    except ImportError as exc:
        raise MalformedFile(f"{p}: this card's algorithm cannot be used here ({exc})") from None
    card.check(str(p))
    if card.card_id != doc["card_id"]:
        raise MalformedFile(f"{p}: card_id {doc['card_id']} is not the credential's card id")
    return card
