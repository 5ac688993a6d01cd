"""``farecore keys new`` and ``farecore keyring add|add-publisher|retire|revoke|list``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from farecore.card.crypto import Algorithm
from farecore.card.keys import IssuerKey, Keyring, load_public_key_file, new_key_pair
from farecore.commands._args import path, uint

__all__ = ["register"]


def register(sub: Any) -> None:
    keys = sub.add_parser(
        "keys", help="generate issuer, terminal, revocation-signer and publishing keys"
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = keys_sub.add_parser(
        "new",
        help="generate a key pair: PREFIX.key (private, mode 0600) and PREFIX.pub",
        description="Generate a key pair. PREFIX.key is private (mode 0600) and stays on the "
        "machine that signs; PREFIX.pub is what every other command reads.",
    )
    new.add_argument(
        "--role", required=True, choices=["issuer", "terminal", "revocation", "publishing"]
    )
    new.add_argument("--id", required=True, type=uint(32, "key id"), help="key id (uint32)")
    new.add_argument("--out", required=True, type=path, metavar="PREFIX", help="output path prefix")
    new.add_argument(
        "--algorithm",
        "--alg",
        default=Algorithm.ED25519,
        type=_algorithm,
        metavar="{ed25519,p256,sm2}",
        help="Ed25519 (the default), ECDSA-P256 (p256) or SM2-SM3 (sm2; needs "
        "pip install 'farecore[sm]')",
    )
    new.set_defaults(func=_keys_new)

    ring = sub.add_parser("keyring", help="maintain the issuer keyring that terminals trust")
    ring_sub = ring.add_subparsers(dest="keyring_command", metavar="ACTION", required=True)
    add = ring_sub.add_parser("add", help="add an issuer public key (PREFIX.pub) as active")
    add.add_argument("--keyring", required=True, type=path, help="keyring file (created if absent)")
    add.add_argument("pub", type=path, help="issuer public key file (.pub)")
    add.add_argument("--label", default="", help="a note for people reading the keyring")
    add.set_defaults(func=_keyring_add)
    addp = ring_sub.add_parser(
        "add-publisher",
        help="add a publishing public key (PREFIX.pub): gates holding this keyring take "
        "packages it signs",
    )
    addp.add_argument(
        "--keyring", required=True, type=path, help="keyring file (created if absent)"
    )
    addp.add_argument("pub", type=path, help="publishing public key file (.pub)")
    addp.add_argument("--label", default="", help="a note for people reading the keyring")
    addp.set_defaults(func=_keyring_add_publisher)
    retire = ring_sub.add_parser(
        "retire",
        help="retire a key at a time: cards valid from before then still pass",
    )
    retire.add_argument("--keyring", required=True, type=path)
    retire.add_argument("key_id", type=uint(32, "key id"))
    retire.add_argument(
        "--at", required=True, type=uint(32, "time"), help="retirement time, UTC Unix seconds"
    )
    retire.add_argument("--publisher", action="store_true", help="a publishing key's id")
    retire.set_defaults(func=_keyring_retire)
    revoke = ring_sub.add_parser("revoke", help="revoke a key: no card it signed passes any more")
    revoke.add_argument("--keyring", required=True, type=path)
    revoke.add_argument("key_id", type=uint(32, "key id"))
    revoke.add_argument(
        "--publisher", action="store_true", help="a publishing key's id: no package it signs passes"
    )
    revoke.set_defaults(func=_keyring_revoke)
    show = ring_sub.add_parser("list", help="print the keyring")
    show.add_argument("--keyring", required=True, type=path)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_keyring_list)


# The short names a person types; key files and keyrings carry only the labels.
_SHORT_NAMES = {"ed25519": Algorithm.ED25519, "p256": Algorithm.P256, "sm2": Algorithm.SM2_SM3}


def _algorithm(text: str) -> Algorithm:
    alg = _SHORT_NAMES.get(text.lower())
    if alg is not None:
        return alg
    try:
        return Algorithm.from_label(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown algorithm {text!r}: expected ed25519, p256 or sm2"
        ) from None


def _keys_new(args: argparse.Namespace) -> int:
    key_path, pub_path = new_key_pair(args.role, args.id, args.out, args.algorithm)
    print(f"wrote {key_path} (private, mode 0600) and {pub_path}")
    return 0


def _load_or_new(path: Path) -> Keyring:
    return Keyring.load(path) if path.exists() else Keyring()


def _keyring_add(args: argparse.Namespace) -> int:
    pub = load_public_key_file(args.pub, role="issuer")
    ring = _load_or_new(args.keyring).add(
        IssuerKey(pub.key_id, pub.algorithm, pub.public_key, label=args.label)
    )
    ring.save(args.keyring)
    print(f"added issuer key {pub.key_id} ({pub.algorithm.label}) to {args.keyring}")
    return 0


def _keyring_add_publisher(args: argparse.Namespace) -> int:
    pub = load_public_key_file(args.pub, role="publishing")
    ring = _load_or_new(args.keyring).add_publisher(
        IssuerKey(pub.key_id, pub.algorithm, pub.public_key, label=args.label)
    )
    ring.save(args.keyring)
    print(f"added publishing key {pub.key_id} ({pub.algorithm.label}) to {args.keyring}")
    return 0


def _keyring_retire(args: argparse.Namespace) -> int:
    ring = Keyring.load(args.keyring)
    if args.publisher:
        ring.retire_publisher(args.key_id, args.at).save(args.keyring)
    else:
        ring.retire(args.key_id, args.at).save(args.keyring)
    print(f"retired {_kind(args)} key {args.key_id} at {args.at}")
    return 0


def _keyring_revoke(args: argparse.Namespace) -> int:
    ring = Keyring.load(args.keyring)
    if args.publisher:
        ring.revoke_publisher(args.key_id).save(args.keyring)
    else:
        ring.revoke(args.key_id).save(args.keyring)
    print(f"revoked {_kind(args)} key {args.key_id}")
    return 0


def _kind(args: argparse.Namespace) -> str:
    return "publishing" if args.publisher else "issuer"


def _keyring_list(args: argparse.Namespace) -> int:
    ring = Keyring.load(args.keyring)
    if args.json:
        doc: Any = [k.to_json() for k in ring]
        if ring.publishers:
            doc = {"keys": doc, "publishers": [k.to_json() for k in ring.publishers]}
        print(json.dumps(doc, indent=2))
        return 0
    rows = [("issuer", k) for k in ring] + [("publishing", k) for k in ring.publishers]
    for kind, k in rows:
        when = f" at {k.retired_at}" if k.retired_at is not None else ""
        role = f"  {kind}" if ring.publishers else ""
        print(f"{k.key_id:>10}{role}  {k.algorithm.label:<10}  {k.status}{when}  {k.label}")
    return 0
