"""``farecore publish``: the next version of the signed parameter package."""

from __future__ import annotations

import argparse
import json
from typing import Any

from farecore.card.keys import load_private_key, load_public_key_file
from farecore.commands._args import path, uint

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "publish",
        help="publish the next signed parameter package for the gates to follow",
        description="Verify every file as a gate will, then publish them in DIR as the next "
        "version of the signed parameter package (docs/fleet.md): the files under "
        "files/<sha256>, then package.json by atomic rename. Serve DIR with any static web "
        "server, or point the gates' [package] source at it. Exit status: 0 when published; "
        "2 when an argument is wrong or an input does not verify (nothing is published).",
    )
    p.add_argument("--out", required=True, type=path, metavar="DIR", help="the package directory")
    p.add_argument("--key", required=True, type=path, help="publishing private key (.key)")
    p.add_argument("--keyring", required=True, type=path, help="the keyring the gates will hold")
    p.add_argument(
        "--revocation", required=True, type=path, help="the revocation base table (.frt)"
    )
    p.add_argument(
        "--revocation-delta", type=path, help="the newest delta for that base (.frd), if any"
    )
    p.add_argument(
        "--revocation-signer",
        required=True,
        type=path,
        help="the revocation signer's public key (.pub): the table and delta must verify",
    )
    p.add_argument(
        "--issued", action="append", default=[], type=path, help="an issued list (repeatable)"
    )
    p.add_argument("--fares", type=path, help="fares.toml, for the settlement")
    p.add_argument("--register", type=path, help="the terminal register (terminals.csv)")
    p.add_argument(
        "--version",
        type=uint(63, "version"),
        help="the package version (default: the published one plus one)",
    )
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from farecore.fleet.publish import PublishInputs, publish

    key = load_private_key(args.key, role="publishing")
    inputs = PublishInputs(
        keyring=args.keyring,
        revocation_base=args.revocation,
        revocation_signer=load_public_key_file(args.revocation_signer, role="revocation"),
        revocation_delta=args.revocation_delta,
        issued=tuple(args.issued),
        fares=args.fares,
        register=args.register,
    )
    signed = publish(args.out, inputs, key, version=args.version)
    m = signed.manifest
    if args.json:
        print(json.dumps(json.loads(m.to_text()), indent=2))
        return 0
    print(
        f"published version {m.version} in {args.out}: {len(m.files)} files, revocation "
        f"generation {m.revocation_generation}, package.json sha256 {signed.sha256}"
    )
    return 0
