"""Writing a night: totals and corrections CSV, rides Parquet, anomalies JSON, manifest.

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
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from farecore.atomicfile import write_atomic
from farecore.errors import SettlementError
from farecore.journal.terminal import Direction
from farecore.settlement.anomalies import KINDS
from farecore.settlement.merge import Settlement, Total
from farecore.settlement.rides import TRIPS, PricedRides

__all__ = [
    "MANIFEST_FORMAT",
    "OUTPUT_NAMES",
    "digests_of",
    "prepare_out",
    "render_outputs",
    "rides_parquet_bytes",
    "write_outputs",
    "write_rendered",
]

MANIFEST_FORMAT = "farecore-settlement/2"
OUTPUT_NAMES = ("totals.csv", "corrections.csv", "rides.parquet", "anomalies.json")


def _totals(totals: Iterable[Total]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["day", "operator", "line", "rides", "amount_fen"])
    for t in totals:
        w.writerow([t.day, t.operator, t.line, t.rides, t.amount_fen])
    return buf.getvalue().encode()


def totals_csv(s: Settlement) -> bytes:
    """What each operator and line is owed for the settled day."""
    return _totals(s.totals)


def corrections_csv(s: Settlement) -> bytes:
    """What late batches add to earlier days, per day, operator and line (header only
    when nothing arrived late)."""
    return _totals(t for c in s.corrections for t in c.totals)


def rides_parquet_bytes(s: Settlement) -> bytes:
    """The paid rides as Parquet (the settled day's, then each correction's); same
    settlement, same bytes."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the install
        raise SettlementError(
            "writing rides.parquet needs pyarrow: pip install 'farecore[settle]'"
        ) from None
    parts = [(s.day, s.rides)] + [(c.day, c.rides) for c in s.corrections]
    table = pa.concat_tables([_rides_table(pa, day, priced) for day, priced in parts])
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


def _rides_table(pa: Any, day: str, priced: PricedRides) -> Any:
    rides = priced.rides
    contexts = rides.contexts

    def per_ride(values: list[str]) -> Any:
        # One string per context, taken for every ride by its context code.
        return pa.array(values, type=pa.string()).take(pa.array(rides.context))

    flags = [""] * len(rides)
    for row, (words, _) in rides.flagged.items():
        flags[row] = ",".join(words)
    no_pair = ~priced.paired()
    cols: dict[str, Any] = {
        "day": pa.array([day] * len(rides), type=pa.string()),
        "terminal_id": rides.terminal_id,
        "seq": rides.seq,
        "time_ms": rides.time_ms,
        "card_id": rides.card_id,
        "counter": rides.counter.astype(np.uint32),
        "operator": per_ride([c[0] for c in contexts]),
        "line": per_ride([c[1] for c in contexts]),
        "place": per_ride([c[2] for c in contexts]),
        "direction": per_ride([Direction(c[3]).name for c in contexts]),
        "trip": pa.array(list(TRIPS), type=pa.string()).take(pa.array(priced.trip)),
        "fare_fen": priced.fare_fen,
        "paired_terminal_id": pa.array(priced.paired_terminal_id, mask=no_pair),
        "paired_seq": pa.array(priced.paired_seq, mask=no_pair),
        "flags": pa.array(flags, type=pa.string()),
        "record_hash": pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(32), len(rides), [None, pa.py_buffer(rides.record_hash.tobytes())]
        ),
    }
    schema = pa.schema(
        [
            ("day", pa.string()),
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
    return pa.Table.from_pydict(cols, schema=schema)


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


def render_outputs(s: Settlement, settings: dict[str, str]) -> dict[str, bytes]:
    """Every output file's bytes, the manifest last (it holds the others' SHA-256)."""
    blobs = {
        "totals.csv": totals_csv(s),
        "corrections.csv": corrections_csv(s),
        "rides.parquet": rides_parquet_bytes(s),
        "anomalies.json": anomalies_json(s),
    }
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}
    manifest = {
        "format": MANIFEST_FORMAT,
        "day": s.day,
        "night": s.night,
        "correction_days": [c.day for c in s.corrections],
        "inputs": {"batches_sha256": list(s.inputs), **dict(sorted(settings.items()))},
        "outputs": digests,
        "stats": dict(sorted(s.stats.items())),
    }
    blobs["manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
    return blobs


def digests_of(blobs: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}


def prepare_out(out_dir: Path) -> None:
    """Create the output directory before a night's work, so a bad one fails early."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettlementError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK):
        raise SettlementError(f"cannot write in {out_dir}")


def write_rendered(blobs: dict[str, bytes], out_dir: Path) -> None:
    """Write rendered outputs atomically, each file whole, the manifest last."""
    prepare_out(out_dir)
    for name, data in blobs.items():
        _write(out_dir / name, data)


def write_outputs(s: Settlement, out_dir: Path, settings: dict[str, str]) -> dict[str, str]:
    """Write all outputs and the manifest into ``out_dir``; return name -> SHA-256."""
    blobs = render_outputs(s, settings)
    write_rendered(blobs, out_dir)
    return digests_of(blobs)


def _write(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise SettlementError(f"cannot write {path}: {exc.strerror or exc}") from None
