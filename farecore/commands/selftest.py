"""``farecore selftest``: known-answer crypto tests and a quick timing."""

from __future__ import annotations

import argparse
import json
from typing import Any

from farecore.commands._args import count
from farecore.selftest import run_selftest

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "selftest",
        help="check the crypto against known answers and time a tap: is this machine fit?",
        description="Run the golden-vector known-answer tests (issuer and card signatures, "
        "every decision reason; the SM2-SM3 vectors when the 'sm' extra is installed, "
        "otherwise one SKIP line naming it) and time whole taps. Exits 0 only if every "
        "check that ran passes.",
    )
    p.add_argument(
        "--taps", type=count("the number of taps"), default=500, help="taps to time (default 500)"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    checks, figures = run_selftest(args.taps)
    failed = [c for c in checks if not c.passed]
    if args.json:
        print(
            json.dumps(
                {
                    "fit": not failed,
                    "checks": [
                        {
                            "name": c.name,
                            "passed": c.passed,
                            "skipped": c.skipped,
                            "detail": c.detail,
                        }
                        for c in checks
                    ],
                    "figures": figures,
                },
                indent=2,
            )
        )
    else:
        for c in checks:
            mark = "SKIP" if c.skipped else "PASS" if c.passed else "FAIL"
            shown = c.detail and (not c.passed or c.skipped or "time" in c.name)
            print(f"{mark}  {c.name}" + (f"  ({c.detail})" if shown else ""))
        print()
        if failed:
            print(f"NOT FIT: {len(failed)} of {len(checks)} checks failed. Do not run a gate here.")
        else:
            skipped = [c for c in checks if c.skipped]
            ran = len(checks) - len(skipped)
            print(
                f"FIT: all {ran} checks passed. This machine can run a gate"
                + (
                    f" ({len(skipped)} skipped: {'; '.join(c.name for c in skipped)})."
                    if skipped
                    else "."
                )
            )
    return 1 if failed else 0
