"""The card office's side of issuing: an enrolment CSV in, signed credentials out.

A real card makes its key pair on the chip and exports only the public key; the office
collects one row per card and signs each card's credential (CARD-SPEC §4) with the issuer
key. The enrolment file (docs/card-office.md) is plain ASCII CSV, with no quoting,
with exactly this header line::

    card_id,category,region,valid_from,valid_until,key_algorithm,public_key

- ``card_id``: decimal, 1 to 18446744073709551615;
- ``category``: a holder category of CARD-SPEC §6, ``1`` to ``5``;
- ``region``: decimal GB/T 2260 division code, 1 to 4294967295 (``370200`` is Qingdao);
- ``valid_from`` / ``valid_until``: UTC times written ``YYYY-MM-DDTHH:MM:SSZ``
  (from inclusive, until exclusive, as on the card), until after from, within the
  card's uint32 range;
- ``key_algorithm``: ``ed25519``, ``p256`` or ``sm2`` (or the labels ``Ed25519``,
  ``ECDSA-P256``, ``SM2-SM3``);
- ``public_key``: the card's public key in hex (32 bytes for Ed25519, 65 for P-256 and
  SM2, ``04 ‖ X ‖ Y``), a valid key of that algorithm.

The file is read whole before anything is signed, and bounded: at most
:data:`MAX_ENROLMENT_BYTES` bytes and :data:`MAX_LINE_BYTES` a line. Every fault, in the
file or against the credentials already issued, is one :class:`MalformedFile` naming the
file and the line (``enrolment.csv line 7: card id 12 appears again (line 3)``), never a
traceback. Blank lines are faults: a hole in an export is a sign of a cut file.
"""

from __future__ import annotations

import calendar
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from farecore.card.credential import CredentialFields, build_credential, parse_unverified
from farecore.card.crypto import Algorithm, load_public_key
from farecore.card.keys import SigningKey
from farecore.errors import FarecoreError, MalformedFile

__all__ = [
    "CATEGORIES",
    "ENROLMENT_HEADER",
    "MAX_ENROLMENT_BYTES",
    "MAX_LINE_BYTES",
    "EnrolmentRow",
    "IssuedCredential",
    "algorithm_from_text",
    "check_against_issued",
    "enrolment_row",
    "format_utc",
    "issue",
    "parse_enrolment",
    "parse_utc",
    "read_enrolment",
]

ENROLMENT_HEADER = "card_id,category,region,valid_from,valid_until,key_algorithm,public_key"
MAX_ENROLMENT_BYTES = 64 << 20  # about 500,000 rows: more than the city's cards
MAX_LINE_BYTES = 512  # the longest good row is about 220 bytes
CATEGORIES = range(1, 6)  # CARD-SPEC §6
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
_UTC = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")
_SHORT = {"ed25519": Algorithm.ED25519, "p256": Algorithm.P256, "sm2": Algorithm.SM2_SM3}
_SHORT_OF = {alg: name for name, alg in _SHORT.items()}


@dataclass(frozen=True, slots=True)
class EnrolmentRow:
    """One card to issue, as the office enrolled it; ``line`` is its line in the file."""

    line: int
    card_id: int
    category: int
    region: int
    valid_from: int
    valid_until: int
    key_algorithm: Algorithm
    public_key: bytes


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """A signed credential and the enrolment line it came from."""

    line: int
    card_id: int
    credential: bytes


def parse_utc(text: str) -> int:
    """``YYYY-MM-DDTHH:MM:SSZ`` to UTC Unix seconds; ValueError on anything else."""
    m = _UTC.fullmatch(text)
    if m is None:
        raise ValueError(f"{text[:40]!r} is not a UTC time written YYYY-MM-DDTHH:MM:SSZ")
    try:
        parsed = time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise ValueError(f"{text!r} is not a real date and time") from None
    if parsed.tm_sec > 59:  # strptime takes a leap second; a credential cannot hold one
        raise ValueError(f"{text!r} is not a real date and time")
    return calendar.timegm(parsed)


def format_utc(seconds: int) -> str:
    """UTC Unix seconds as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def algorithm_from_text(text: str) -> Algorithm:
    """``ed25519``, ``p256``, ``sm2`` or a label (``ECDSA-P256``); ValueError otherwise."""
    alg = _SHORT.get(text.lower())
    if alg is not None:
        return alg
    if text in {a.label for a in Algorithm}:
        return Algorithm.from_label(text)
    raise ValueError(f"key algorithm {text[:40]!r} is not one of ed25519, p256, sm2")


def _decimal(text: str, name: str, low: int, top: int) -> int:
    if not text:
        raise ValueError(f"{name} is empty")
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise ValueError(f"{name} {text[:40]!r} is not a decimal number")
    value = int(text)
    if not low <= value <= top:
        raise ValueError(f"{name} {value} is not in {low}..{top}")
    return value


def _time(text: str, name: str) -> int:
    try:
        seconds = parse_utc(text)
    except ValueError as exc:
        raise ValueError(f"{name} {exc}") from None
    if not 0 <= seconds <= _U32:
        raise ValueError(f"{name} {text} is outside what a card holds (1970 to 2106)")
    return seconds


def _row(line: int, fields: list[str]) -> EnrolmentRow:
    if len(fields) != 7:
        raise ValueError(f"expected 7 fields, found {len(fields)}")
    card_id = _decimal(fields[0], "card id", 1, _U64)
    category = _decimal(fields[1], "category", 0, 255)
    if category not in CATEGORIES:
        raise ValueError(f"category {category} is not a holder category (1 to 5, CARD-SPEC §6)")
    region = _decimal(fields[2], "region", 1, _U32)
    valid_from = _time(fields[3], "valid_from")
    valid_until = _time(fields[4], "valid_until")
    if valid_until <= valid_from:
        raise ValueError("valid_until must be after valid_from")
    algorithm = algorithm_from_text(fields[5])
    text = fields[6]
    if not text or len(text) > 2 * 65 or not re.fullmatch(r"[0-9a-fA-F]*", text) or len(text) % 2:
        raise ValueError(f"public key {text[:20]!r} is not a key in hex")
    public_key = bytes.fromhex(text)
    if len(public_key) != algorithm.public_key_length:
        raise ValueError(
            f"an {algorithm.label} public key is {algorithm.public_key_length} bytes, "
            f"not {len(public_key)}"
        )
    try:
        load_public_key(algorithm, public_key)
    except (FarecoreError, ValueError) as exc:
        raise ValueError(f"public key is not a valid {algorithm.label} key ({exc})") from None
    except ImportError as exc:
        raise ValueError(f"{algorithm.label} keys cannot be checked here ({exc})") from None
    return EnrolmentRow(
        line, card_id, category, region, valid_from, valid_until, algorithm, public_key
    )


def parse_enrolment(data: bytes, source: str) -> list[EnrolmentRow]:
    """Every row of an enrolment file's bytes, or MalformedFile naming the first bad line.

    Checks each row and that no card id and no public key appears twice in the file.
    """
    if len(data) > MAX_ENROLMENT_BYTES:
        raise MalformedFile(f"{source}: larger than {MAX_ENROLMENT_BYTES} bytes")
    if not data:
        raise MalformedFile(f"{source} line 1: empty file; the header must be {ENROLMENT_HEADER!r}")
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    rows: list[EnrolmentRow] = []
    ids: dict[int, int] = {}
    keys: dict[bytes, tuple[int, int]] = {}
    for number, raw in enumerate(lines, 1):
        where = f"{source} line {number}"
        if len(raw) > MAX_LINE_BYTES:
            raise MalformedFile(f"{where}: longer than {MAX_LINE_BYTES} bytes")
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedFile(f"{where}: not ASCII text") from None
        if number == 1:
            if text != ENROLMENT_HEADER:
                raise MalformedFile(
                    f"{where}: the header must be {ENROLMENT_HEADER!r}, found {text[:80]!r}"
                )
            continue
        if not text.strip():
            raise MalformedFile(f"{where}: empty line")
        try:
            row = _row(number, text.split(","))
        except ValueError as exc:
            raise MalformedFile(f"{where}: {exc}") from None
        first = ids.get(row.card_id)
        if first is not None:
            raise MalformedFile(f"{where}: card id {row.card_id} appears again (line {first})")
        seen = keys.get(row.public_key)
        if seen is not None:
            raise MalformedFile(
                f"{where}: public key {row.public_key.hex()[:16]}… is already enrolled for "
                f"card {seen[1]} (line {seen[0]})"
            )
        ids[row.card_id] = number
        keys[row.public_key] = (number, row.card_id)
        rows.append(row)
    if not rows:
        raise MalformedFile(f"{source} line 2: no cards to issue: the file ends after its header")
    return rows


def read_enrolment(path: str | os.PathLike[str]) -> list[EnrolmentRow]:
    """Read and parse an enrolment file (bounded: see :func:`parse_enrolment`)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_ENROLMENT_BYTES + 1)
    except OSError as exc:
        raise MalformedFile(f"{p}: cannot read: {exc.strerror or exc}") from None
    return parse_enrolment(data, str(p))


def check_against_issued(
    rows: Iterable[EnrolmentRow], issued: Iterable[tuple[str, bytes]], source: str
) -> None:
    """Refuse a row whose card id or public key a credential already issued holds.

    ``issued`` gives each earlier credential with where it is (``FILE:LINE``), as
    :func:`farecore.decide.issued.read_credential_lines` yields them.
    """
    ids: dict[int, str] = {}
    keys: dict[bytes, tuple[str, int]] = {}
    for where, raw in issued:
        try:
            cred = parse_unverified(raw)
        except FarecoreError as exc:
            raise MalformedFile(f"{where}: {exc}") from None
        ids.setdefault(cred.card_id, where)
        keys.setdefault(cred.fields.card_public_key, (where, cred.card_id))
    for row in rows:
        at = f"{source} line {row.line}" if row.line else source
        if row.card_id in ids:
            raise MalformedFile(
                f"{at}: card id {row.card_id} was already issued ({ids[row.card_id]})"
            )
        if row.public_key in keys:
            where, card = keys[row.public_key]
            raise MalformedFile(
                f"{at}: public key {row.public_key.hex()[:16]}… is already signed for "
                f"card {card} ({where})"
            )


def issue(rows: Iterable[EnrolmentRow], issuer: SigningKey) -> list[IssuedCredential]:
    """Sign every row's credential with the ``issuer`` key."""
    if issuer.role != "issuer":
        raise MalformedFile(f"credentials are signed by an issuer key, not a {issuer.role} key")
    out = []
    for row in rows:
        fields = CredentialFields(
            issuer_algorithm=issuer.algorithm,
            issuer_key_id=issuer.key_id,
            card_id=row.card_id,
            category=row.category,
            region=row.region,
            valid_from=row.valid_from,
            valid_until=row.valid_until,
            card_key_algorithm=row.key_algorithm,
            card_public_key=row.public_key,
        )
        out.append(
            IssuedCredential(row.line, row.card_id, build_credential(fields, issuer.private))
        )
    return out


def enrolment_row(
    card_id: int,
    category: int,
    region: int,
    valid_from: int,
    valid_until: int,
    algorithm: Algorithm,
    public_key: bytes,
) -> str:
    """One line of an enrolment file (no line end) for these values."""
    return ",".join(
        (
            str(card_id),
            str(category),
            str(region),
            format_utc(valid_from),
            format_utc(valid_until),
            _SHORT_OF[algorithm],
            public_key.hex(),
        )
    )
