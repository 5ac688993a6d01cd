"""``farecore revocation build|delta|info|check``: make, inspect and query revocation
tables and deltas.

``info`` and ``check`` verify the table (or the delta, and its base when given)
completely before they say anything about it; one that does not verify is an error
(exit 2), never a partial answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farecore.card.keys import PublicKeyFile, load_private_key, load_public_key_file
from farecore.commands._args import path, refuse_rollback, uint
from farecore.errors import ConfigError
from farecore.gate.config import read_gate_toml

if TYPE_CHECKING:
    from farecore.decide.revocation import RevocationDelta, RevocationTable, RevocationView

__all__ = ["register"]

_U64 = (1 << 64) - 1


def register(sub: Any) -> None:
    rev = sub.add_parser(
        "revocation",
        help="build, inspect and query signed revocation tables (.frt) and deltas (.frd)",
        description="Build, inspect and query signed, memory-mapped revocation tables, and "
        "the signed deltas that carry the changes since a base table.",
    )
    rev_sub = rev.add_subparsers(dest="revocation_command", metavar="ACTION", required=True)

    _add_build(rev_sub)
    _add_delta(rev_sub)
    _add_lookups(rev_sub)


def _add_build(rev_sub: Any) -> None:
    build = rev_sub.add_parser(
        "build",
        help="build a signed table from a CSV of revoked cards",
        description="Build a signed table from a CSV with the header "
        "'card_id,revoked_at,reason'. Reasons are names (lost, stolen, deceased, "
        "eligibility_ended, fraud, other) or their codes 1-6. Card ids start at 1 (no card "
        "has id 0). A bad row or a duplicate card id stops the build with its line number, "
        "and nothing is written. The "
        "output replaces OUT atomically, so gates polling it never see half a table.",
    )
    build.add_argument("--in", dest="csv", required=True, type=path, help="input CSV file")
    build.add_argument(
        "--key", required=True, type=path, help="revocation signer private key (PREFIX.key)"
    )
    _signed_output(
        build,
        "generation number; must be above the one in force at the gates",
        "output table file (.frt)",
    )
    build.set_defaults(func=_build)


def _signed_output(parser: Any, generation_help: str, out_help: str) -> None:
    """The options every signed revocation file's builder takes."""
    parser.add_argument(
        "--generation", required=True, type=uint(64, "generation"), help=generation_help
    )
    parser.add_argument("--out", required=True, type=path, help=out_help)
    parser.add_argument(
        "--created-at",
        type=uint(63, "created-at"),
        default=None,
        help="build time in UTC Unix seconds (default: now); gates measure staleness from it",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="overwrite OUT even when it holds this generation or a later one",
    )


def _add_delta(rev_sub: Any) -> None:
    delta = rev_sub.add_parser(
        "delta",
        help="build a signed delta: the changes from a base table to the current list",
        description="Build a signed delta (.frd) from a base table to the complete current "
        "list of revoked cards (a CSV as for 'build'): the ids added or whose revoked-at or "
        "reason changed, and the ids no longer revoked. A delta is cumulative: it holds "
        "every change since its base, so a gate needs only the newest one. The base is "
        "verified against the signer key's public part; the output replaces OUT atomically.",
    )
    delta.add_argument(
        "--base", required=True, type=path, help="the base table (.frt) the delta is over"
    )
    delta.add_argument(
        "--csv",
        "--in",
        dest="csv",
        required=True,
        type=path,
        help="the complete current list (CSV card_id,revoked_at,reason)",
    )
    delta.add_argument(
        "--signer-key",
        "--key",
        dest="key",
        required=True,
        type=path,
        help="revocation signer private key (PREFIX.key), the base's signer",
    )
    _signed_output(
        delta,
        "the delta's generation; above the base's and the one in force at the gates",
        "output delta file (.frd)",
    )
    delta.set_defaults(func=_delta)


def _add_lookups(rev_sub: Any) -> None:
    """``info`` and ``check``: both verify the table first, against a signer given or
    named by a gate config."""
    for name, helptext in (
        ("info", "verify a table and print its header facts"),
        ("check", "verify a table and look card ids up in it"),
    ):
        p = rev_sub.add_parser(
            name,
            help=helptext,
            description=helptext.capitalize()
            + ". The table is verified against --signer, or against the signer named in "
            "the [revocation] section of a gate config (--config). A delta (.frd) is "
            "verified on its own, and against its base table when --base names it"
            + (" (check needs it)." if name == "check" else ".")
            + (
                " Exit status: 0 when no id is revoked, 1 when any is, 2 on error."
                if name == "check"
                else " Exit status: 0 when the table verifies, 2 when it does not."
            ),
        )
        if name == "info":
            p.add_argument(
                "table",
                nargs="?",
                type=path,
                help="table file (default: the table of the --config gate config)",
            )
        else:
            p.add_argument("table", type=path, help="table file (.frt) or delta file (.frd)")
        p.add_argument("--base", type=path, help="for a delta: the base table (.frt) it is over")
        who = p.add_mutually_exclusive_group(required=True)
        who.add_argument("--signer", type=path, help="revocation signer public key (PREFIX.pub)")
        who.add_argument(
            "--config", type=path, help="gate config (TOML) whose [revocation] names the signer"
        )
        if name == "info":
            p.add_argument("--json", action="store_true", help="print JSON")
            p.set_defaults(func=_info)
        else:
            p.add_argument("ids", nargs="+", metavar="ID", help="card ids (decimal uint64)")
            p.set_defaults(func=_check)


def _from_config(config: Path) -> tuple[Path, Path | None]:
    """(signer, table or None) from a gate config; relative paths are from its directory."""
    doc = read_gate_toml(config)
    section = doc.get("revocation")
    if not isinstance(section, dict) or not isinstance(section.get("signer"), str):
        raise ConfigError(f'{config}: needs [revocation] with signer = "path/to/revocation.pub"')
    table = section.get("table")
    if table is not None and not isinstance(table, str):
        raise ConfigError(f"{config}: [revocation] table must be a string path")
    base = config.parent
    return base / section["signer"], (base / table if table is not None else None)


def _signer_and_table(args: argparse.Namespace) -> tuple[PublicKeyFile, Path]:
    table: Path | None = args.table
    if args.config is not None:
        signer_path, config_table = _from_config(args.config)
        table = table or config_table
    else:
        signer_path = args.signer
    if table is None:
        raise ConfigError("no table given, and the gate config names none")
    return load_public_key_file(signer_path, role="revocation"), table


def _when(seconds: int) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "?"


def _build(args: argparse.Namespace) -> int:
    from farecore.decide.revocation import build_table, read_revocation_csv
    from farecore.decide.revocation.csvinput import line_name

    key = load_private_key(args.key, role="revocation")
    created_at = args.created_at if args.created_at is not None else int(time.time())
    t0 = time.perf_counter()
    ids, times, reasons = read_revocation_csv(args.csv)  # refuses card id 0 and duplicates
    refuse_rollback(args.out, args.generation, _table_generation, "revocation table", args.replace)
    t1 = time.perf_counter()
    summary = build_table(
        ids,
        times,
        reasons,
        key,
        args.generation,
        created_at,
        args.out,
        row_name=lambda row: f"{args.csv}: {line_name(row)}",
    )
    t2 = time.perf_counter()
    print(
        f"wrote {summary.path}: generation {summary.generation}, {summary.count} ids, "
        f"{summary.file_size} bytes, body sha256 {summary.body_sha256} "
        f"(parse {t1 - t0:.2f} s, build {t2 - t1:.2f} s)"
    )
    return 0


def _delta(args: argparse.Namespace) -> int:
    from farecore.decide.revocation import RevocationTable, build_delta, read_revocation_csv
    from farecore.decide.revocation.csvinput import line_name

    key = load_private_key(args.key, role="revocation")
    created_at = args.created_at if args.created_at is not None else int(time.time())
    t0 = time.perf_counter()
    base = RevocationTable.open(args.base, key.public())
    ids, times, reasons = read_revocation_csv(args.csv)  # refuses card id 0 and duplicates
    refuse_rollback(args.out, args.generation, _delta_generation, "revocation delta", args.replace)
    t1 = time.perf_counter()
    summary = build_delta(
        base,
        ids,
        times,
        reasons,
        key,
        args.generation,
        created_at,
        args.out,
        row_name=lambda row: f"{args.csv}: {line_name(row)}",
    )
    t2 = time.perf_counter()
    print(
        f"wrote {summary.path}: generation {summary.generation} over base generation "
        f"{summary.base_generation}, {summary.added} added, {summary.changed} changed, "
        f"{summary.removed} removed, {summary.file_size} bytes, body sha256 "
        f"{summary.body_sha256} (read {t1 - t0:.2f} s, diff and write {t2 - t1:.2f} s)"
    )
    return 0


def _delta_generation(head: bytes) -> int | None:
    from farecore.decide.revocation.delta import parse_delta_header_unverified
    from farecore.errors import TableRejected

    try:
        return parse_delta_header_unverified(head)[0].generation
    except TableRejected:
        return None


def _is_delta(file: Path) -> bool:
    """Whether ``file`` starts like a delta (it is verified as one, or as a table, next)."""
    from farecore.decide.revocation.delta import DELTA_MAGIC

    try:
        with open(file, "rb") as fh:
            return fh.read(len(DELTA_MAGIC)) == DELTA_MAGIC
    except OSError:
        return False  # the table reader names the problem


def _open_any(
    file: Path, base: Path | None, signer: PublicKeyFile
) -> RevocationTable | RevocationDelta | RevocationView:
    """The verified table at ``file``, or the delta there (over ``base``, if given)."""
    from farecore.decide.revocation import RevocationDelta, RevocationTable, RevocationView

    if not _is_delta(file):
        if base is not None:
            raise ConfigError(f"--base is for a delta (.frd); {file} is not one")
        return RevocationTable.open(file, signer)
    delta = RevocationDelta.open(file, signer)
    if base is None:
        return delta
    return RevocationView.over(RevocationTable.open(base, signer), delta, file)


def _table_generation(head: bytes) -> int | None:
    from farecore.decide.revocation.format import parse_header_unverified
    from farecore.errors import TableRejected

    try:
        return parse_header_unverified(head)[0].generation
    except TableRejected:
        return None


def _info(args: argparse.Namespace) -> int:
    signer, path = _signer_and_table(args)
    facts = _open_any(path, args.base, signer).describe()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"{path}: verified")
    for key, value in facts.items():
        extra = f" ({_when(value)})" if key == "created_at" and isinstance(value, int) else ""
        print(f"  {key:<18} {value}{extra}")
    return 0


def _parse_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > _U64:
        raise ConfigError(f"card id {text!r} is not a decimal uint64")
    return int(text)


def _check(args: argparse.Namespace) -> int:
    from farecore.decide.revocation import RevocationDelta, RevocationReason

    ids = [_parse_id(t) for t in args.ids]
    signer, path = _signer_and_table(args)
    table = _open_any(path, args.base, signer)
    if isinstance(table, RevocationDelta):
        raise ConfigError(f"{path} is a delta: name its base table with --base")
    any_revoked = False
    for card_id in ids:
        entry = table.lookup(card_id)
        if entry is None:
            print(f"{card_id} not revoked (generation {table.generation})")
            continue
        any_revoked = True
        reason = RevocationReason(entry.reason).name.lower()
        print(
            f"{card_id} REVOKED at {entry.revoked_at} ({_when(entry.revoked_at)}), "
            f"reason {reason} ({entry.reason}) (generation {table.generation})"
        )
    sys.stdout.flush()
    return 1 if any_revoked else 0
