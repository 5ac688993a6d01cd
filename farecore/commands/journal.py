"""``farecore journal export|verify|check``: signed daily batches from a terminal journal."""

from __future__ import annotations

import argparse
from typing import Any

from farecore.atomicfile import write_atomic
from farecore.card.keys import load_private_key, load_public_key_file
from farecore.commands._args import path, uint
from farecore.errors import JournalError
from farecore.journal.batch import export_batch, parse_day, verify_batch
from farecore.journal.batch_header import parse_utc_offset
from farecore.journal.terminal import JournalReader

__all__ = ["parse_utc_offset", "register"]


def register(sub: Any) -> None:
    journal = sub.add_parser(
        "journal",
        help="export and verify signed daily batches of a terminal's ride journal",
        description="Work with a terminal's durable ride journal (SQLite).",
    )
    actions = journal.add_subparsers(dest="journal_command", metavar="ACTION", required=True)
    exp = actions.add_parser(
        "export",
        help="write one service day of the journal as a signed batch file",
        description="Check the journal's hash chain, then write the records of one service "
        "day (in the given time zone, Qingdao +08:00 by default) as a self-contained batch "
        "signed with the terminal key. Use the .fcb suffix: the settlement looks for it. "
        "Exit status: 0 when the batch is written; 2 when an argument is wrong, or the "
        "journal or key cannot be read, is damaged or breaks its chain (nothing is written).",
    )
    exp.add_argument("--journal", required=True, type=path, help="the terminal's journal file")
    exp.add_argument("--day", required=True, help="service day, YYYY-MM-DD")
    exp.add_argument("--key", required=True, type=path, help="terminal private key (.key)")
    exp.add_argument(
        "--terminal",
        type=uint(64, "terminal id"),
        help="the terminal to export from a station journal (which holds several)",
    )
    exp.add_argument("--out", required=True, type=path, help="batch file to write (.fcb)")
    exp.add_argument(
        "--tz", default="+08:00", help="UTC offset that defines the service day (default +08:00)"
    )
    exp.set_defaults(func=_export)
    ver = actions.add_parser(
        "verify",
        help="check a batch file: format, hash chain and (with --pub) the terminal signature",
        description="Verify a batch file completely and print its summary. Without --pub "
        "the signature is not checked, and the output says so. Exit status: 0 when the "
        "batch verifies, 2 when it does not or cannot be read.",
    )
    ver.add_argument("file", type=path, help="batch file (.fcb)")
    ver.add_argument("--pub", type=path, help="terminal public key (.pub)")
    ver.set_defaults(func=_verify)
    chk = actions.add_parser(
        "check",
        help="walk a journal's whole hash chain and report its length",
        description="Read-only: verify every record's link and that no seq is missing. "
        "Exit status: 0 when the chain is whole, 2 when the journal cannot be read, is "
        "damaged or breaks its chain.",
    )
    chk.add_argument("journal", type=path)
    chk.add_argument(
        "--terminal",
        type=uint(64, "terminal id"),
        help="the terminal to check in a station journal",
    )
    chk.set_defaults(func=_check)


def _export(args: argparse.Namespace) -> int:
    day = parse_day(args.day)
    offset = parse_utc_offset(args.tz)  # the default is +08:00; an empty one is an error
    key = load_private_key(args.key, role="terminal")
    data = export_batch(args.journal, day, key, offset, args.terminal)
    batch = verify_batch(data, key.public())
    write_atomic(args.out, data)
    print(
        f"wrote {args.out}: terminal {batch.terminal_id}, day {day} ({args.tz}), "
        f"seq {batch.first_seq}..{batch.last_seq} ({len(batch.records)} records)"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    pub = load_public_key_file(args.pub, role="terminal") if args.pub else None
    batch = verify_batch(args.file, pub)
    if pub is not None and pub.key_id != batch.terminal_id:
        raise JournalError(
            f"{args.file}: the batch is terminal {batch.terminal_id}'s, but {args.pub} is "
            f"terminal {pub.key_id}'s key; its signature proves nothing about terminal "
            f"{batch.terminal_id}"
        )
    accepted = sum(1 for r in batch.records if r.accepted)
    sig = "signature OK" if pub is not None else "signature NOT checked (no --pub)"
    print(
        f"{args.file}: OK, {sig}\n"
        f"  terminal {batch.terminal_id}, day {batch.day} (UTC{batch.utc_offset_min / 60:+.1f}h)\n"
        f"  seq {batch.first_seq}..{batch.last_seq}: {len(batch.records)} records, "
        f"{accepted} accepted, {len(batch.records) - accepted} denied\n"
        f"  chain {batch.prev_hash.hex()[:16]}… -> {batch.tail_hash.hex()[:16]}…\n"
        f"  sha256 {batch.sha256.hex()}"
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    with JournalReader(args.journal, args.terminal) as reader:
        n = reader.verify_chain()
        print(f"{args.journal}: terminal {reader.terminal_id}, {n} records, chain OK")
    return 0
