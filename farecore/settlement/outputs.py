"""Writing a settlement: totals CSV, rides Parquet, anomalies JSON and the manifest.

Every output is a pure function of the Settlement, serialised with fixed options and no
timestamps, so the same settlement always gives the same bytes. Files are replaced
atomically; the manifest, written last, records the SHA-256 of each. This module must
never write a float for money.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from farecore.atomicfile import write_atomic
from farecore.errors import SettlementError
from farecore.journal import Direction
from farecore.settlement.anomalies import KINDS
from farecore.settlement.merge import Settlement

__all__ = ["MANIFEST_FORMAT", "OUTPUT_NAMES", "rides_parquet_bytes", "write_outputs"]

MANIFEST_FORMAT = "farecore-settlement/1"
OUTPUT_NAMES = ("totals.csv", "rides.parquet", "anomalies.json")


def totals_csv(s: Settlement) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["day", "operator", "line", "rides", "amount_fen"])
    for t in s.totals:
        w.writerow([t.day, t.operator, t.line, t.rides, t.amount_fen])
    return buf.getvalue().encode()


def rides_parquet_bytes(s: Settlement) -> bytes:
    """The verified, paid rides as Parquet; same settlement, same bytes."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the install
        raise SettlementError(
            "writing rides.parquet needs pyarrow: pip install 'farecore[settle]'"
        ) from None
    # Columns by transposing the row tuples at C speed (zip(*rows)), not field by field.
    names = (
        "terminal_id",
        "seq",
        "time_ms",
        "card_id",
        "counter",
        "operator",
        "line",
        "place",
        "direction",
        "record_hash",
        "flags",
        "revocation_generation",
    )
    priced = list(zip(*s.rides, strict=True)) if s.rides else [()] * 5
    ride_cols = list(zip(*priced[0], strict=True)) if s.rides else [()] * len(names)
    cols: dict[str, Sequence[Any]] = dict(zip(names, ride_cols, strict=True))
    direction_name = {int(d): d.name for d in Direction}
    cols["direction"] = [direction_name[d] for d in cols["direction"]]
    cols["flags"] = [",".join(f) if f else "" for f in cols["flags"]]
    del cols["revocation_generation"]
    cols["trip"] = priced[2]
    cols["fare_fen"] = priced[1]
    cols["paired_terminal_id"] = priced[3]
    cols["paired_seq"] = priced[4]
    schema = pa.schema(
        [
            ("terminal_id", pa.uint64()),
            ("seq", pa.uint64()),
            ("time_ms", pa.int64()),
            ("card_id", pa.uint64()),
            ("counter", pa.uint32()),
            ("operator", pa.string()),
            ("line", pa.string()),
            ("place", pa.string()),
            ("direction", pa.string()),
            ("trip", pa.string()),
            ("fare_fen", pa.int64()),
            ("paired_terminal_id", pa.uint64()),
            ("paired_seq", pa.uint64()),
            ("flags", pa.string()),
            ("record_hash", pa.binary(32)),
        ]
    )
    table = pa.Table.from_pydict(cols, schema=schema)
    sink = pa.BufferOutputStream()
    # Fixed options and no pandas metadata: nothing in the file depends on when it ran.
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=3,
        use_dictionary=True,
        write_statistics=True,
        store_schema=False,
        row_group_size=1 << 20,
    )
    return bytes(sink.getvalue().to_pybytes())


def anomalies_json(s: Settlement) -> bytes:
    counts: dict[str, int] = {}
    for a in s.anomalies:
        counts[a.kind] = counts.get(a.kind, 0) + 1
    doc = {
        "day": s.day,
        "counts": dict(sorted(counts.items())),
        "legend": {k: KINDS[k] for k in sorted(counts)},
        "anomalies": [a.to_json() for a in s.anomalies],
    }
    return (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode()


def write_outputs(s: Settlement, out_dir: Path, settings: dict[str, str]) -> dict[str, str]:
    """Write all outputs and the manifest into ``out_dir``; return name -> SHA-256."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettlementError(f"cannot create {out_dir}: {exc.strerror}") from None
    blobs = {
        "totals.csv": totals_csv(s),
        "rides.parquet": rides_parquet_bytes(s),
        "anomalies.json": anomalies_json(s),
    }
    digests: dict[str, str] = {}
    for name, data in blobs.items():
        write_atomic(out_dir / name, data)
        digests[name] = hashlib.sha256(data).hexdigest()
    manifest = {
        "format": MANIFEST_FORMAT,
        "day": s.day,
        "inputs": {"batches_sha256": list(s.inputs), **dict(sorted(settings.items()))},
        "outputs": digests,
        "stats": dict(sorted(s.stats.items())),
    }
    write_atomic(out_dir / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    return digests
