"""``farecore issued build|info|check``: the issuer's signed list of the credentials it issued.

``info`` and ``check`` verify the list against the keyring before they say anything
about it; a list that does not verify is an error (exit 2), never a partial answer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from typing import Any

from farecore.card.keys import Keyring, load_private_key
from farecore.commands._args import count, path, refuse_rollback, uint

__all__ = ["register"]


def register(sub: Any) -> None:
    top = sub.add_parser(
        "issued",
        help="build, inspect and query the issuer's signed list of its credentials (.fil)",
        description="The issuer's signed list of the credentials it issued. A gate that "
        "loads it ([keyring] issued = ...) skips the issuer-signature check of every "
        "listed credential, even on a card's first tap; every other credential is "
        "verified in full, so the decisions are the same with or without the list.",
    )
    actions = top.add_subparsers(dest="issued_command", metavar="ACTION", required=True)

    _add_build(actions)
    _add_info(actions)
    _add_check(actions)


def _add_build(actions: Any) -> None:
    build = actions.add_parser(
        "build",
        help="sign a list from a file of credentials",
        description="Sign a list from a text file with one credential in hex a line "
        "(blank lines and lines starting with # are skipped). Each credential is checked "
        "first: it must parse, name the key's id, and carry a signature that verifies "
        "under the key. The first one that does not stops the build with its line "
        "number, and nothing is written. The output replaces OUT atomically.",
    )
    build.add_argument(
        "--credentials", required=True, type=path, help="text file, one hex credential a line"
    )
    build.add_argument(
        "--key", required=True, type=path, help="the issuer private key (PREFIX.key)"
    )
    build.add_argument(
        "--generation",
        required=True,
        type=uint(64, "generation"),
        help="generation number; must be above the list's in force at the gates",
    )
    build.add_argument("--out", required=True, type=path, help="output list file (.fil)")
    build.add_argument(
        "--jobs",
        type=count("the number of processes"),
        default=1,
        help="verify the credentials in this many processes",
    )
    build.add_argument(
        "--created-at",
        type=uint(63, "created-at"),
        default=None,
        help="build time in UTC Unix seconds (default: now)",
    )
    build.add_argument(
        "--replace",
        action="store_true",
        help="overwrite OUT even when it holds this generation or a later one",
    )
    build.set_defaults(func=_build)


def _add_info(actions: Any) -> None:
    info = actions.add_parser(
        "info",
        help="verify a list and print its header facts",
        description="Verify a list against the keyring and print its header facts. "
        "Exit status: 0 when it verifies, 2 when it does not.",
    )
    info.add_argument("list", type=path, help="list file (.fil)")
    info.add_argument("--keyring", required=True, type=path, help="issuer keyring (JSON)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)


def _add_check(actions: Any) -> None:
    check = actions.add_parser(
        "check",
        help="verify a list and look credentials up in it",
        description="Verify a list against the keyring and say for each credential (hex) "
        "whether the list vouches for it. Exit status: 0 when every one is listed, 1 when "
        "any is not, 2 on error.",
    )
    check.add_argument("list", type=path, help="list file (.fil)")
    check.add_argument("--keyring", required=True, type=path, help="issuer keyring (JSON)")
    check.add_argument("credentials", nargs="+", metavar="HEX", help="credentials in hex")
    check.set_defaults(func=_check)


def _build(args: argparse.Namespace) -> int:
    from farecore.decide.issued import build_issued_list, peek_generation, read_credential_lines

    key = load_private_key(args.key, role="issuer")
    refuse_rollback(args.out, args.generation, peek_generation, "issued list", args.replace)
    created_at = args.created_at if args.created_at is not None else int(time.time())
    t0 = time.perf_counter()
    data = build_issued_list(
        read_credential_lines(args.credentials),
        key,
        args.generation,
        created_at,
        args.out,
        jobs=args.jobs,
    )
    count = (len(data) - 256) // 32
    print(
        f"wrote {args.out}: issuer key id {key.key_id}, generation {args.generation}, "
        f"{count} credentials, {len(data)} bytes ({time.perf_counter() - t0:.2f} s)"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from farecore.decide.issued import IssuedList

    facts = IssuedList.open(args.list, Keyring.load(args.keyring)).describe()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"{args.list}: verified")
    for key, value in facts.items():
        print(f"  {key:<14} {value}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from farecore.decide.issued import IssuedList
    from farecore.errors import MalformedInput

    raws = []
    for text in args.credentials:
        try:
            raws.append(bytes.fromhex(text))
        except ValueError:
            raise MalformedInput(f"{text[:20]!r}…: not a credential in hex") from None
    listed = IssuedList.open(args.list, Keyring.load(args.keyring))
    missing = False
    for raw in raws:
        digest = hashlib.sha256(raw).digest()
        if digest in listed:
            print(f"{digest.hex()[:16]} listed (generation {listed.generation})")
        else:
            missing = True
            print(f"{digest.hex()[:16]} NOT listed: a gate verifies its issuer signature")
    return 1 if missing else 0
