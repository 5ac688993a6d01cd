"""The monthly merchant report's files: ``merchants.csv``, ``findings.json`` and
``summary.json``, each replaced atomically (``farecore.atomicfile``), the same bytes for
the same inputs. ``summary.json`` is written last and names the SHA-256 of the others,
so a reader that finds it finds a whole report."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from farecore.atomicfile import write_atomic
from farecore.errors import SettlementError
from farecore.merchant.findings import KINDS, REVIEW_KINDS
from farecore.merchant.report import MerchantReport, exit_status

__all__ = ["COLUMNS", "write_report"]

COLUMNS = (
    "merchant",
    "tills",
    "claims",
    "denied",
    "verified",
    "amount_fen",
    "discount_fen",
    "findings",
)


def _csv(report: MerchantReport) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for t in report.totals:
        w.writerow([getattr(t, c) for c in COLUMNS])
    return buf.getvalue().encode()


def _json(doc: object) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_report(report: MerchantReport, out: Path) -> dict[str, int]:
    """Write the report's files into ``out`` (made if missing); return the count of
    findings by kind."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettlementError(f"cannot make the output directory {out}: {exc.strerror}") from None
    counts: dict[str, int] = {}
    for f in report.findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    files = {
        "merchants.csv": _csv(report),
        "findings.json": _json(
            {
                "month": report.month,
                "legend": {k: KINDS[k] for k in sorted(counts)},
                "findings": [f.to_json() for f in report.findings],
            }
        ),
    }
    for name, data in files.items():
        write_atomic(out / name, data)
    status = exit_status(report)
    summary = {
        "month": report.month,
        "status": "review" if status else "clean",
        "exit_status": status,
        "stats": report.stats,
        "merchants": [{c: getattr(t, c) for c in COLUMNS} for t in report.totals],
        "findings_by_kind": dict(sorted(counts.items())),
        "review_kinds_found": sorted(k for k in counts if k in REVIEW_KINDS),
        "revocation": report.revocation,
        "inputs": {**report.settings, "batches_sha256": list(report.batches)},
        "outputs_sha256": {n: hashlib.sha256(d).hexdigest() for n, d in sorted(files.items())},
    }
    if report.policy:  # only with policy columns: without, the summary is as it always was
        summary["policy"] = report.policy
        summary["policy_by_merchant"] = report.policy_by_merchant
    write_atomic(out / "summary.json", _json(summary))
    return counts
