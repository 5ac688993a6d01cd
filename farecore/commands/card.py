"""``farecore card issue|new``: the card office signs credentials (docs/card-office.md).

``issue`` signs the credentials of an enrolment CSV (cards that made their own keys) and
writes them in the form ``farecore issued build`` reads, optionally with a new
generation of the issued list. ``new`` makes a virtual card (key, credential, counter in
one file) for trying a gate without hardware. Any fault exits 2 with one line, and
nothing is written unless the whole input is good.
"""

from __future__ import annotations

import argparse
import calendar
import time
from pathlib import Path
from typing import Any

from farecore.atomicfile import write_atomic
from farecore.card.cardfile import CardFile, save_card_file
from farecore.card.credential import CredentialFields, build_credential
from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.enrolment import (
    CATEGORIES,
    EnrolmentRow,
    algorithm_from_text,
    check_against_issued,
    enrolment_row,
    format_utc,
    issue,
    parse_utc,
    read_enrolment,
)
from farecore.card.keys import load_private_key
from farecore.commands._args import path, refuse_rollback, uint
from farecore.errors import ConfigError

__all__ = ["register"]

_DEFAULT_YEARS = 5


def register(sub: Any) -> None:
    top = sub.add_parser(
        "card",
        help="the card office: sign credentials from an enrolment CSV, or make a virtual card",
        description="The card office's commands (docs/card-office.md).",
    )
    actions = top.add_subparsers(dest="card_command", metavar="ACTION", required=True)
    _add_issue(actions)
    _add_new(actions)


def _utc(text: str) -> int:
    try:
        seconds = parse_utc(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 <= seconds <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text} is outside what a card holds (1970 to 2106)")
    return seconds


_utc.__name__ = "UTC time"


def _alg(text: str) -> Algorithm:
    try:
        return algorithm_from_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_issue(actions: Any) -> None:
    p = actions.add_parser(
        "issue",
        help="sign the credentials of an enrolment CSV",
        description="Sign one credential per row of an enrolment CSV (header "
        "card_id,category,region,valid_from,valid_until,key_algorithm,public_key; times "
        "YYYY-MM-DDTHH:MM:SSZ, UTC) with the issuer key, and write them one in hex a line, "
        "the form 'farecore issued build' reads. A bad row, a card id twice, or a public "
        "key already enrolled or signed for another card stops it with the line named "
        "(exit 2), and nothing is written.",
    )
    p.add_argument("--enrolment", required=True, type=path, help="enrolment CSV")
    p.add_argument("--key", required=True, type=path, help="the issuer private key (PREFIX.key)")
    p.add_argument(
        "--out", required=True, type=path, help="credentials file to write (one hex a line)"
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="OUT holds the credentials issued so far: refuse their card ids and keys, and "
        "add the new credentials to it (without it, an existing OUT is refused)",
    )
    p.add_argument(
        "--list",
        type=path,
        help="also sign an issued list (.fil) of every credential in OUT, old and new",
    )
    p.add_argument(
        "--generation",
        type=uint(64, "generation"),
        help="the new list's generation (with --list); above the one at the gates",
    )
    p.add_argument(
        "--created-at",
        type=uint(63, "created-at"),
        default=None,
        help="the list's build time in UTC Unix seconds (default: now)",
    )
    p.add_argument(
        "--replace", action="store_true", help="overwrite a --list file of this generation or later"
    )
    p.set_defaults(func=_issue)


def _add_new(actions: Any) -> None:
    p = actions.add_parser(
        "new",
        help="make a virtual card: its key, its signed credential and its counter in one file",
        description="Generate a card key, have the issuer key sign its credential, and write "
        "one card file (JSON, mode 0600) that the virtual: reader and the vpcd card server "
        "serve. Times are UTC, YYYY-MM-DDTHH:MM:SSZ.",
    )
    p.add_argument("--key", required=True, type=path, help="the issuer private key (PREFIX.key)")
    p.add_argument("--id", required=True, type=uint(64, "card id"), help="card id (1..2^64-1)")
    p.add_argument(
        "--category", required=True, type=uint(8, "category"), help="holder category (1..5)"
    )
    p.add_argument(
        "--region", required=True, type=uint(32, "region"), help="region code, e.g. 370200"
    )
    p.add_argument(
        "--valid-from", type=_utc, default=None, help="default: the start of today (UTC)"
    )
    p.add_argument(
        "--valid-until", type=_utc, default=None, help="default: five years after valid-from"
    )
    p.add_argument(
        "--alg",
        type=_alg,
        default=Algorithm.ED25519,
        metavar="{ed25519,p256,sm2}",
        help="the card key's algorithm (default ed25519)",
    )
    p.add_argument(
        "--out", required=True, type=path, help="card file to write (refused if it exists)"
    )
    p.add_argument(
        "--credentials",
        type=path,
        help="also add the credential to this file (one hex a line, for 'issued build'); "
        "created if absent",
    )
    p.add_argument(
        "--enrolment-row",
        action="store_true",
        help="also print the card's enrolment-CSV row on stdout",
    )
    p.set_defaults(func=_new)


def _read_lines(out: Path) -> list[tuple[str, bytes]]:
    from farecore.decide.issued import read_credential_lines

    return list(read_credential_lines(out))


def _existing_text(out: Path) -> bytes:
    data = out.read_bytes()
    return data if not data or data.endswith(b"\n") else data + b"\n"


def _issue(args: argparse.Namespace) -> int:
    if (args.list is None) != (args.generation is None):
        raise ConfigError("--list and --generation go together")
    if args.list is None and (args.created_at is not None or args.replace):
        raise ConfigError("--created-at and --replace are for the list: they need --list")
    key = load_private_key(args.key, role="issuer")
    rows = read_enrolment(args.enrolment)
    previous: list[tuple[str, bytes]] = []
    before = b""
    if args.out.exists():
        if not args.append:
            raise ConfigError(
                f"{args.out} exists; pass --append to add to the credentials it holds, or "
                "choose another file"
            )
        previous = _read_lines(args.out)
        before = _existing_text(args.out)
    check_against_issued(rows, previous, str(args.enrolment))
    if args.list is not None:
        from farecore.decide.issued import peek_generation

        refuse_rollback(args.list, args.generation, peek_generation, "issued list", args.replace)
    issued = issue(rows, key)
    text = before + b"".join(c.credential.hex().encode() + b"\n" for c in issued)
    list_data = None
    if args.list is not None:
        from farecore.decide.issued import build_issued_list

        created_at = args.created_at if args.created_at is not None else int(time.time())
        every = previous + [(f"{args.enrolment} line {c.line}", c.credential) for c in issued]
        list_data = build_issued_list(every, key, args.generation, created_at)
    # Everything is checked and signed: only now is anything written. The credentials
    # first: a stop between the two writes leaves credentials the list does not name yet
    # (a gate verifies their issuer signature), never a list naming unrecorded ones.
    write_atomic(args.out, text)
    if list_data is not None:
        write_atomic(args.list, list_data)
    print(
        f"signed {len(issued)} credentials from {args.enrolment} with issuer key "
        f"{key.key_id}: wrote {args.out} ({len(previous) + len(issued)} credentials)"
    )
    if list_data is not None:
        print(
            f"wrote {args.list}: generation {args.generation}, "
            f"{(len(list_data) - 256) // 32} credentials"
        )
    return 0


def _start_of_today() -> int:
    now = time.gmtime()
    return calendar.timegm((now.tm_year, now.tm_mon, now.tm_mday, 0, 0, 0, 0, 0, 0))


def _fields_row(f: CredentialFields) -> tuple[int, int, int, int, int, Algorithm, bytes]:
    """The enrolment-row values of a credential's fields."""
    return (
        f.card_id,
        f.category,
        f.region,
        f.valid_from,
        f.valid_until,
        f.card_key_algorithm,
        f.card_public_key,
    )


def _validity(args: argparse.Namespace) -> tuple[int, int]:
    """--valid-from (default: today's start, UTC) and --valid-until (default: five years on)."""
    valid_from = args.valid_from if args.valid_from is not None else _start_of_today()
    valid_until = args.valid_until
    if valid_until is None:
        t = time.gmtime(valid_from)  # the same time of day, five years on (29 Feb: 1 Mar)
        later = (t.tm_year + _DEFAULT_YEARS, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
        valid_until = min(calendar.timegm((*later, 0, 0, 0)), 0xFFFFFFFF)
    if valid_until <= valid_from:
        raise ConfigError("--valid-until must be after --valid-from")
    return valid_from, valid_until


def _new(args: argparse.Namespace) -> int:
    if args.id == 0:
        raise ConfigError("card id 0 is no card's id (card ids start at 1)")
    if args.category not in CATEGORIES:
        raise ConfigError(f"category {args.category} is not a holder category (1 to 5)")
    if args.region == 0:
        raise ConfigError("region 0 is no region (a GB/T 2260 code, e.g. 370200)")
    if args.out.exists():
        raise ConfigError(f"{args.out} already exists; refusing to overwrite a card's key")
    valid_from, valid_until = _validity(args)
    issuer = load_private_key(args.key, role="issuer")
    card_key = PrivateKey.generate(args.alg)
    row = EnrolmentRow(
        0,
        args.id,
        args.category,
        args.region,
        valid_from,
        valid_until,
        args.alg,
        card_key.public_bytes,
    )
    before = b""
    if args.credentials is not None and args.credentials.exists():
        check_against_issued([row], _read_lines(args.credentials), f"card {args.id}")
        before = _existing_text(args.credentials)
    fields = CredentialFields(
        issuer_algorithm=issuer.algorithm,
        issuer_key_id=issuer.key_id,
        card_id=args.id,
        category=args.category,
        region=args.region,
        valid_from=valid_from,
        valid_until=valid_until,
        card_key_algorithm=args.alg,
        card_public_key=card_key.public_bytes,
    )
    credential = build_credential(fields, issuer.private)
    # The credentials first: a card file whose credential went unrecorded would refuse
    # a retry (it exists) while no list could ever name it.
    if args.credentials is not None:
        write_atomic(args.credentials, before + credential.hex().encode() + b"\n")
    save_card_file(args.out, CardFile(card_key, credential, 0))
    print(
        f"wrote {args.out}: card {args.id}, {args.alg.label} key, category {args.category}, "
        f"region {args.region}, valid {format_utc(valid_from)} to {format_utc(valid_until)}"
    )
    if args.credentials is not None:
        print(f"added its credential to {args.credentials}")
    if args.enrolment_row:
        print(enrolment_row(*_fields_row(fields)))
    return 0
