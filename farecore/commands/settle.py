"""``farecore settle``: settle one night against the ledger; what each operator is owed.

Exit status: 0 every expected batch present and settled, nothing held or rejected;
3 settled, with something to review (outputs written, summary says what); 2 bad
arguments or unreadable inputs (nothing written).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from farecore.commands._args import count, path
from farecore.journal.batch import parse_day
from farecore.settlement.heads import heads_directory
from farecore.settlement.ledger import Ledger
from farecore.settlement.merge import Settlement
from farecore.settlement.pipeline import (
    MapUnits,
    exit_status,
    find_batches,
    load_inputs,
    run_settlement,
)

_EPILOG = """exit status:
  0  every registered terminal's batch for the day is present and settled; nothing
     held, rejected or corrected
  3  settled, with something to review: a missing, rejected or held batch, a ride not
     paid for a failed check, a held ride, a correction of an earlier day, or no batch
     for the day at all; the outputs are written and the summary says what
  2  bad arguments or unreadable inputs (register, fares, keyring, ledger, revocation
     files, issued lists, batch directory), or the Dask cluster failed the night (a
     unit whose workers kept dying, the scheduler lost); nothing is written
"""

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "settle",
        help="settle one day: verify every batch and ride, pair, price, write the outputs",
        description="Settle one service day against the ledger of earlier nights: verify each "
        "batch's signature and hash chain, continue each terminal's chain from the ledger, "
        "redo every check of every ride (proof of tap, validity, region, category, time, "
        "revocation generation, passback), pair metro entries with exits, price from the "
        "fares file, and write totals.csv, corrections.csv, rides.parquet, anomalies.json and "
        "manifest.json; then append the night to the ledger in one transaction. Late batches "
        "of earlier days settle as corrections. The same inputs always give byte-identical "
        "outputs, whatever --jobs is, and re-running a settled night adds nothing.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_inputs(p)
    _add_dask(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_settle)


def _add_inputs(p: Any) -> None:
    """What a night reads and writes."""
    p.add_argument("--batches", required=True, type=path, help="directory of *.fcb batch files")
    p.add_argument("--terminals", required=True, type=path, help="terminal register (CSV)")
    p.add_argument("--keyring", required=True, type=path, help="issuer keyring (JSON)")
    p.add_argument("--fares", required=True, type=path, help="fares file (TOML)")
    p.add_argument("--day", required=True, help="service day to settle, YYYY-MM-DD")
    p.add_argument("--out", required=True, type=path, help="output directory")
    p.add_argument(
        "--ledger",
        required=True,
        type=path,
        help="the settlement ledger (SQLite; created on the first night)",
    )
    p.add_argument(
        "--jobs",
        type=count("the number of processes"),
        default=1,
        help="verify over N processes (default 1)",
    )
    p.add_argument(
        "--revocations",
        type=path,
        help="optional CSV card_id,revoked_at,reason: flag rides after revoked-at",
    )
    p.add_argument(
        "--revocation-table",
        type=path,
        action="append",
        default=[],
        help="a signed revocation table (.frt), repeatable: a ride decided under a "
        "generation that held its card is not paid; rides after revoked-at are flagged",
    )
    p.add_argument(
        "--revocation-delta",
        type=path,
        action="append",
        default=[],
        help="a signed revocation delta (.frd), repeatable, over a --revocation-table given: "
        "judges the rides decided under its generation like a table of that generation",
    )
    p.add_argument(
        "--revocation-signer",
        type=path,
        help="public key (.pub) that signs --revocation-table and --revocation-delta",
    )
    p.add_argument(
        "--issued",
        type=path,
        action="append",
        default=[],
        metavar="LIST",
        help="the issuer's signed list of the credentials it issued (.fil), repeatable, one "
        "per issuer key: a listed credential's issuer signature is vouched for by the list's "
        "and not verified again (the gates' shortcut); the same results, a faster night",
    )
    p.add_argument(
        "--heads",
        type=path,
        metavar="DIR",
        help="the gates' signed chain heads: a collection point, or its heads/ directory; "
        "a journal rewritten or cut short after its gate signed a head is not paid",
    )


def _add_dask(p: Any) -> None:
    """Where the units run when not in this machine's processes."""
    dask = p.add_argument_group(
        "Dask (pip install 'farecore[dask]')",
        "Run the per-batch verification on a Dask cluster instead; the outputs are the same "
        "bytes. Batch paths must be readable from every worker (a shared filesystem).",
    )
    where = dask.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://HOST:8786"
    )
    where.add_argument(
        "--dask-workers",
        type=count("the number of workers"),
        metavar="N",
        help="start a local Dask cluster of N workers",
    )
    dask.add_argument(
        "--dask-threads",
        type=count("the number of threads"),
        default=1,
        metavar="T",
        help="threads per local worker (default 1; see docs/settlement-cluster.md)",
    )


def _bar(done: int, total: int, started: float) -> None:
    width = 30
    filled = width * done // max(total, 1)
    rate = done / max(time.monotonic() - started, 1e-9)
    sys.stderr.write(
        f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} batches {rate:6.1f}/s"
    )
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _settle(args: argparse.Namespace) -> int:
    day = parse_day(args.day)
    inputs = load_inputs(
        day,
        args.terminals,
        args.keyring,
        args.fares,
        args.revocations,
        args.revocation_table,
        args.revocation_signer,
        args.revocation_delta,
        args.issued,
    )
    paths = find_batches(args.batches)
    map_units: MapUnits | None = None
    if args.scheduler is not None or args.dask_workers is not None:
        from farecore.settlement.cluster import DaskSettings, map_on_dask, print_dashboard

        map_units = map_on_dask(
            DaskSettings(
                scheduler=args.scheduler,
                n_workers=args.dask_workers,
                threads_per_worker=args.dask_threads,
                on_ready=None if args.quiet else print_dashboard,
            )
        )
    heads = heads_directory(args.heads) if args.heads is not None else None
    started = time.monotonic()
    show = not args.quiet and sys.stderr.isatty()
    with Ledger.open(args.ledger) as ledger:
        result = run_settlement(
            inputs,
            paths,
            args.out,
            jobs=args.jobs,
            map_units=map_units,
            progress=(lambda d, t: _bar(d, t, started)) if show else None,
            ledger=ledger,
            heads=heads,
        )
    status = exit_status(result)
    if not args.quiet:
        _summary(result, args.out, time.monotonic() - started, status)
    return status


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d} yuan"


def _summary(s: Settlement, out: Path, seconds: float, status: int) -> None:
    st = s.stats
    again = " (a re-run: the ledger is unchanged)" if s.rerun else ""
    print(
        f"settlement of {s.day}, night {s.night}{again}: {st['batch_files']} batch files, "
        f"{st['batches']} batches of the day, {st['taps']} taps, "
        f"{st['rides_verified']} rides verified in {seconds:.1f} s"
    )
    print(
        f"  paid tap records {st['rides_paid']}, held {st['rides_held']}, "
        f"total {_yuan(st['amount_fen'])} "
        f"({st['amount_fen']} fen); unpaired taps put {_yuan(st['unpaired_at_stake_fen'])} "
        "at stake (highest minus lowest fare)"
    )
    print(f"  {'operator':<16}{'line':<10}{'rides':>9}{'amount (fen)':>16}")
    for t in s.totals[:12]:
        print(f"  {t.operator:<16}{t.line:<10}{t.rides:>9}{t.amount_fen:>16}")
    if len(s.totals) > 12:
        print(f"  … {len(s.totals) - 12} more lines in totals.csv")
    for c in s.corrections:
        print(
            f"  correction for {c.day}: {c.stats['rides_paid']} rides, "
            f"{_yuan(c.stats['amount_fen'])} (corrections.csv)"
        )
    later = s.directory.get("batches_for_later_days", 0)
    if later:
        print(f"  {later} batch files of later days wait for their night")
    after = s.directory.get("batches_after_this_night", 0)
    if after:
        print(f"  {after} batch files arrived after this night and settle on a later one")
    counts: dict[str, int] = {}
    for a in s.anomalies:
        counts[a.kind] = counts.get(a.kind, 0) + 1
    print("  anomalies: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    verdict = "nothing to review" if status == 0 else "needs review (exit 3): see anomalies.json"
    print(f"  {verdict}; outputs in {out}/ (manifest.json has their SHA-256)")
