"""``farecore settle``: verify a night's batches and compute what each operator is owed."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from farecore.batch import parse_day
from farecore.settlement.merge import Settlement
from farecore.settlement.pipeline import MapUnits, find_batches, load_inputs, run_settlement

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "settle",
        help="settle one day: verify every batch and ride, pair, price, write the outputs",
        description="Verify each batch's terminal signature and hash chain, re-verify every "
        "ride's proof of tap, drop duplicates, pair metro entries with exits, price from the "
        "fares file, and write totals.csv, rides.parquet, anomalies.json and manifest.json. "
        "The same inputs always give byte-identical outputs, whatever --jobs is.",
    )
    p.add_argument("--batches", required=True, type=Path, help="directory of *.fcb batch files")
    p.add_argument("--terminals", required=True, type=Path, help="terminal register (CSV)")
    p.add_argument("--keyring", required=True, type=Path, help="issuer keyring (JSON)")
    p.add_argument("--fares", required=True, type=Path, help="fares file (TOML)")
    p.add_argument("--day", required=True, help="service day to settle, YYYY-MM-DD")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--jobs", type=int, default=1, help="verify over N processes (default 1)")
    p.add_argument(
        "--revocations",
        type=Path,
        help="optional CSV card_id,revoked_at,reason: flag rides after revoked-at",
    )
    p.add_argument(
        "--revocation-table",
        type=Path,
        help="optional signed revocation table (.frt): flag rides after revoked-at",
    )
    p.add_argument(
        "--revocation-signer", type=Path, help="public key (.pub) that signs --revocation-table"
    )
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
        "--dask-workers", type=int, metavar="N", help="start a local Dask cluster of N workers"
    )
    dask.add_argument(
        "--dask-threads",
        type=int,
        default=1,
        metavar="T",
        help="threads per local worker (default 1; see docs/settlement-cluster.md)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_settle)


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
    started = time.monotonic()
    show = not args.quiet and sys.stderr.isatty()
    result = run_settlement(
        inputs,
        paths,
        args.out,
        jobs=args.jobs,
        map_units=map_units,
        progress=(lambda d, t: _bar(d, t, started)) if show else None,
    )
    if not args.quiet:
        _summary(result, args.out, time.monotonic() - started)
    return 0


def _summary(s: Settlement, out: Path, seconds: float) -> None:
    st = s.stats
    print(
        f"settlement of {s.day}: {st['batches']} batches ({st['batches_rejected']} rejected), "
        f"{st['taps']} taps, {st['rides_verified']} rides verified in {seconds:.1f} s"
    )
    print(
        f"  paid tap records {st['rides_paid']}, duplicates dropped {st['duplicates_dropped']}, "
        f"total {st['amount_fen'] // 100}.{st['amount_fen'] % 100:02d} yuan ({st['amount_fen']} fen)"
    )
    print(f"  {'operator':<16}{'line':<10}{'rides':>9}{'amount (fen)':>16}")
    for t in s.totals[:12]:
        print(f"  {t.operator:<16}{t.line:<10}{t.rides:>9}{t.amount_fen:>16}")
    if len(s.totals) > 12:
        print(f"  … {len(s.totals) - 12} more lines in totals.csv")
    counts: dict[str, int] = {}
    for a in s.anomalies:
        counts[a.kind] = counts.get(a.kind, 0) + 1
    print("  anomalies: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    print(f"  outputs in {out}/ (manifest.json has their SHA-256)")
