"""``farecore merchant report``: the month's merchant claims verified and totalled.

Exit status: 0 every batch verified and nothing to review; 3 the report is written, with
something to review (findings.json says what); 2 bad arguments or unreadable inputs
(nothing written).
"""

from __future__ import annotations

import argparse
from typing import Any

from farecore.commands._args import count, path
from farecore.merchant.report import Month, exit_status, load_report_inputs, run_report
from farecore.merchant.report_outputs import write_report
from farecore.settlement.inputs import find_batches

__all__ = ["register"]

_EPILOG = """exit status:
  0  every till batch of the month verified; nothing to review
  3  the report is written, with something to review: a rejected batch, a chain
     fault, a claim whose proof, detail, rule, time or context fails, a card whose region
     or category the alliance does not accept at the merchant, a reused counter or a card
     a till should have refused (findings.json names each)
  2  bad arguments or unreadable inputs (register, keyring, merchant rules,
     revocation tables and deltas, batch directory); nothing is written
"""


def register(sub: Any) -> None:
    merchant = sub.add_parser(
        "merchant",
        help="the alliance merchants' claims: the monthly report",
        description="Work with the claims merchants' tills journal (farecore verify).",
    )
    actions = merchant.add_subparsers(dest="merchant_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "report",
        help="verify a month of till batches and total the discounts per merchant",
        description="Verify every till batch of one month (signature under the registered "
        "key, hash chain and its continuity, every claim's proof of tap, detail, time and "
        "context), find reused counters and cards a till should have refused, and write "
        "merchants.csv, findings.json and summary.json (docs/merchant.md).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--month", required=True, help="the month, YYYY-MM (service days, +08:00)")
    p.add_argument("--batches", required=True, type=path, help="directory of *.fcb batch files")
    p.add_argument(
        "--register",
        "--terminals",
        dest="register",
        required=True,
        type=path,
        help="terminal register (CSV); tills have direction CLAIM",
    )
    p.add_argument("--keyring", required=True, type=path, help="issuer keyring (JSON)")
    p.add_argument(
        "--merchants",
        required=True,
        type=path,
        help="the alliance's rules (CSV: merchant,percent,cap_fen,effective_from, optionally "
        "then regions and/or categories, values separated by ';'); a claim whose rule is not "
        "the one in force on its day, or whose card's region or category that rule's policy "
        "does not accept, is not counted",
    )
    p.add_argument(
        "--clock-tolerance-s",
        type=count("the clock tolerance", 0),
        default=300,
        help="how far (s) a claim's time may lie outside its batch's day and still count "
        "(default 300; at least the tills' largest clock.tolerance_s, at most 86400)",
    )
    p.add_argument(
        "--revocation-table",
        type=path,
        action="append",
        default=[],
        help="a signed revocation table (.frt), repeatable: a claim decided under a "
        "generation that held its card is not counted",
    )
    p.add_argument(
        "--revocation-delta",
        type=path,
        action="append",
        default=[],
        help="a signed revocation delta (.frd), repeatable, over a --revocation-table given: "
        "judges the claims decided under its generation like a table of that generation",
    )
    p.add_argument(
        "--revocation-signer",
        type=path,
        help="public key (.pub) that signs --revocation-table and --revocation-delta",
    )
    p.add_argument(
        "--revocation-max-age-s",
        type=count("the maximum age"),
        default=172_800,
        help="the tills' maximum table age (default 172800, a till's default)",
    )
    p.add_argument("--out", required=True, type=path, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no summary on stdout")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    month = Month.parse(args.month)
    inputs = load_report_inputs(
        month,
        args.register,
        args.keyring,
        args.revocation_table,
        args.revocation_signer,
        args.revocation_max_age_s,
        rules=args.merchants,
        clock_tolerance_s=args.clock_tolerance_s,
        revocation_deltas=args.revocation_delta,
    )
    report = run_report(inputs, find_batches(args.batches))
    counts = write_report(report, args.out)
    status = exit_status(report)
    if not args.quiet:
        st = report.stats
        print(
            f"merchant report of {report.month}: {st['batches']} till batches, "
            f"{st['claims']} claims, {st['verified']} verified, "
            f"{st['amount_fen']} fen purchased, {st['discount_fen']} fen discounted"
            + (f"; {st['files_not_till']} gate batches left alone" if st["files_not_till"] else "")
        )
        print(
            f"  {'merchant':<24}{'claims':>8}{'verified':>10}{'amount (fen)':>16}{'discount':>12}"
        )
        for t in report.totals[:20]:
            print(
                f"  {t.merchant:<24}{t.claims:>8}{t.verified:>10}{t.amount_fen:>16}"
                f"{t.discount_fen:>12}"
            )
        if len(report.totals) > 20:
            print(f"  … {len(report.totals) - 20} more merchants in merchants.csv")
        found = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        print(f"  findings: {found}")
        print(f"  revocation {report.revocation}")
        if report.policy:
            print(f"  policy: {report.policy}")
        verdict = "nothing to review" if status == 0 else "needs review (exit 3): see findings.json"
        print(f"  {verdict}; outputs in {args.out}/")
    return status
