"""Revocation table lookups at 1 M and 10 M ids (50 M with --national), 1 % of queries present.

Baselines measured in the same run, interleaved with the subject: numpy.searchsorted on
the same memory-mapped id column, a Python ``set`` of the same ids, and LMDB when the
``lmdb`` module is importable (otherwise that row is skipped and reported as null).

Goals:
- batch lookups at 10 M ids >= 20 x numpy.searchsorted;
- a single lookup called from Python <= 2 x ``x in python_set``;
- open + verify + first lookup of a 10 M table < 1 s (page cache warm), the way a gate
  does it: copy the published file into its store and verify the copy (the first gate
  of a host); a gate that finds the copy there only verifies it (also reported);
- peak memory of a gate process with a 50 M table ~ file size, and, for 4 gates sharing
  one store, the memory the table adds to each gate ~ file size / 4 (PSS: a page shared
  by 4 processes counts 1/4 in each) (measured with --national; otherwise the 10 M
  figures are metrics and the goals are null);
- cold start of a gate-like process (imports, open + verify a 10 M table, first lookup;
  warm numba cache) <= 2 s.

    python benchmarks/bench_revocation.py [--quick] [--national] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from _report import goal, logged, write_report

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import SigningKey, save_signing_key
from farecore.decide.revocation import RevocationTable, TableStore, build_table, read_revocation_csv

KEY = SigningKey("revocation", 1, PrivateKey(Algorithm.ED25519, bytes(range(32))))
clock = time.perf_counter


def make_ids(n: int, seed: int) -> np.ndarray:
    """n distinct random uint64 ids, sorted (np.unique is very slow here: sort instead)."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True))
    while True:
        keep = np.ones(ids.size, dtype=bool)
        keep[1:] = ids[1:] != ids[:-1]
        ids = ids[keep]
        if ids.size == n:
            return ids
        more = rng.integers(0, 2**64 - 1, size=n - ids.size, dtype=np.uint64, endpoint=True)
        ids = np.sort(np.concatenate([ids, more]))


def make_queries(ids: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    queries = rng.integers(0, 2**64 - 1, size=count, dtype=np.uint64, endpoint=True)
    present = rng.choice(ids.size, size=count // 100, replace=False)
    slots = rng.choice(count, size=count // 100, replace=False)
    queries[slots] = ids[present]
    return queries


def build(directory: Path, n: int) -> tuple[Path, np.ndarray, float]:
    ids = make_ids(n, seed=n)
    times = np.full(n, 1_790_000_000, dtype=np.int64)
    reasons = np.ones(n, dtype=np.uint8)
    path = directory / f"table-{n}.frt"
    t0 = clock()
    build_table(ids, times, reasons, KEY, 1, 1_790_000_000, path)
    return path, ids, clock() - t0


def searchsorted_hits(column: np.ndarray, queries: np.ndarray) -> int:
    pos = np.searchsorted(column, queries)
    n = column.shape[0]
    return int(np.count_nonzero(column[np.minimum(pos, n - 1)] == queries))


def batch_rates(
    table: RevocationTable, queries: np.ndarray, sub: int, rounds: int
) -> dict[str, float]:
    """Lookups per second of the batch kernel and of searchsorted, interleaved."""
    kernel, base = [], []
    table.find_many(queries[:1000])  # compile/load before timing
    small = queries[:sub]
    for _ in range(rounds):
        t0 = clock()
        found = int(np.count_nonzero(table.find_many(queries) >= 0))
        t1 = clock()
        base_found = searchsorted_hits(table.ids, small)
        t2 = clock()
        kernel.append(queries.size / (t1 - t0))
        base.append(small.size / (t2 - t1))
    assert found >= queries.size // 100 and base_found >= 0
    return {"kernel": statistics.median(kernel), "searchsorted": statistics.median(base)}


def single_costs(
    table: RevocationTable, ids: np.ndarray, queries: np.ndarray, rounds: int
) -> dict[str, float]:
    """ns per call from Python: table.lookup, the bare kernel, a set, searchsorted."""
    qs = [int(q) for q in queries]
    t0 = clock()
    as_set = {int(x) for x in ids}
    set_build = clock() - t0
    lookup, find = table.lookup, table.find
    column = table.ids
    results: dict[str, list[float]] = {"lookup": [], "set": [], "kernel": [], "searchsorted": []}
    few = qs[: max(1000, len(qs) // 20)]
    for _ in range(rounds):
        t0 = clock()
        for q in qs:
            lookup(q)
        t1 = clock()
        for q in qs:
            q in as_set  # noqa: B015
        t2 = clock()
        for q in few:
            find(q)
        t3 = clock()
        for q in few:
            np.searchsorted(column, np.uint64(q))
        t4 = clock()
        results["lookup"].append((t1 - t0) / len(qs) * 1e9)
        results["set"].append((t2 - t1) / len(qs) * 1e9)
        results["kernel"].append((t3 - t2) / len(few) * 1e9)
        results["searchsorted"].append((t4 - t3) / len(few) * 1e9)
    hits = sum(1 for q in qs if lookup(q) is not None)
    assert hits == sum(1 for q in qs if q in as_set)
    del as_set
    out = {k: statistics.median(v) for k, v in results.items()}
    out["set_build_s"] = set_build
    return out


def lmdb_single(ids: np.ndarray, queries: np.ndarray, directory: Path) -> float | None:
    try:
        import lmdb  # type: ignore[import-not-found]
    except ImportError:
        return None
    env = lmdb.open(str(directory / "lmdb"), map_size=ids.nbytes * 8, writemap=True)
    with env.begin(write=True) as txn:
        for x in ids.tolist():
            txn.put(x.to_bytes(8, "big"), b"\x01")
    keys = [int(q).to_bytes(8, "big") for q in queries]
    with env.begin() as txn:
        t0 = clock()
        for k in keys:
            txn.get(k)
        cost = (clock() - t0) / len(keys) * 1e9
    env.close()
    return cost


def open_verify_first(path: Path, signer: Any, probe: int, rounds: int) -> tuple[float, float]:
    """Median seconds to adopt the table into an empty store (copy, verify, first lookup),
    and into a store that already holds the copy (verify, first lookup)."""
    first, again = [], []
    for i in range(rounds):
        store = TableStore(path.parent / f"store-{i}")
        for times in (first, again):
            t0 = clock()
            table = store.adopt(path, signer)
            table.lookup(probe)
            times.append(clock() - t0)
            del table
        for copy in store.directory.iterdir():
            copy.unlink()
        store.directory.rmdir()
    return statistics.median(first), statistics.median(again)


COLD = """
import sys, time
from farecore.card.keys import load_public_key_file
from farecore.decide.revocation import TableStore
import farecore.gate.tap, farecore.decide.validator
store = TableStore(sys.argv[3])
t = store.adopt(sys.argv[1], load_public_key_file(sys.argv[2], role="revocation"))
t.lookup(12345)
print("ready", flush=True)
"""

MEMORY = """
import json, sys
def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out
from farecore.card.keys import load_public_key_file
from farecore.decide.revocation import TableStore, _kernels
import numpy as np
# numba and the kernels load with a gate's first table; load them before the baseline so
# that what is measured is the table's own memory.
_kernels.verify_body, _kernels.find_one, _kernels.find_many
def pss():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0
before = status()
pss_before = pss()
store = TableStore(sys.argv[3])
t = store.adopt(sys.argv[1], load_public_key_file(sys.argv[2], role="revocation"))
q = np.random.default_rng(1).integers(0, 2**64 - 1, size=1_000_000, dtype=np.uint64)
t.find_many(q)
for x in range(0, 2**64 - 1, 2**44):
    t.lookup(x)
after = status()
if len(sys.argv) > 4:  # one of several gates: measure once all of them hold the table
    print("ready", flush=True)
    sys.stdin.readline()
print(json.dumps({"before": before, "after": after, "pss": pss(), "pss_before": pss_before}))
"""


def cold_start(path: Path, pub: Path, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = clock()
        proc = subprocess.Popen(
            [sys.executable, "-c", COLD, str(path), str(pub), str(path.parent / "store-cold")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        times.append(clock() - t0)
        proc.wait()
        if not line.startswith("ready"):
            raise SystemExit("cold-start child failed")
    return statistics.median(times)


def gate_memory(path: Path, pub: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY, str(path), str(pub), str(path.parent / "store-gate")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc = json.loads(out)
    size = path.stat().st_size
    before, after = doc["before"], doc["after"]
    growth = max(after["VmHWM"], after["VmRSS"]) - before["VmRSS"]
    return {
        "file_mb": size / 1e6,
        "peak_growth_mb": growth / 1e6,
        "peak_vs_file": growth / size,
        "rss_file_growth_mb": (after["RssFile"] - before["RssFile"]) / 1e6,
        "rss_anon_growth_mb": (after["RssAnon"] - before["RssAnon"]) / 1e6,
        "pss_total_mb": doc["pss"] / 1e6,
    }


def gates_memory(path: Path, pub: Path, gates: int = 4) -> dict[str, float]:
    """``gates`` gate-like processes adopt the table through one shared store and hold it;
    their PSS (each shared page counted 1/n in each of the n processes mapping it)."""
    store = path.parent / "store-shared"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MEMORY, str(path), str(pub), str(store), "shared"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(gates)
    ]
    docs = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("gate memory child failed")
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            docs.append(json.loads(proc.stdout.readline()))
    finally:
        for proc in procs:
            proc.wait()
    size = path.stat().st_size
    pss = [doc["pss"] for doc in docs]
    # What the table adds to each gate (its PSS after the table, less before it): ideally
    # its 1/n share of the one copy, file size / n.
    share = statistics.mean(doc["pss"] - doc["pss_before"] for doc in docs)
    return {
        "gates": gates,
        "file_mb": size / 1e6,
        "pss_per_gate_mb": statistics.mean(pss) / 1e6,
        "pss_total_mb": sum(pss) / 1e6,
        "table_share_per_gate_mb": share / 1e6,
        "table_share_vs_fair_share": share / (size / gates),
        "rss_per_gate_mb": statistics.mean(d["after"]["VmRSS"] for d in docs) / 1e6,
        "copies_in_store": len(list(store.iterdir())),
    }


def csv_build_rate(directory: Path, n: int) -> float | None:
    """Rows per second of CSV -> signed table (pyarrow parse + build)."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:
        return None
    ids = make_ids(n, seed=99)
    src = directory / "revoked.csv"
    table = pa.table(
        {
            "card_id": pa.array(ids),
            "revoked_at": pa.array(np.full(n, 1_790_000_000, dtype=np.int64)),
            "reason": pa.array(
                ["lost", "stolen", "fraud", "other"] * (n // 4) + ["lost"] * (n % 4)
            ),
        }
    )
    with open(src, "wb") as fh:
        fh.write(b"card_id,revoked_at,reason\n")
        pacsv.write_csv(
            table, fh, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none")
        )
    t0 = clock()
    cols = read_revocation_csv(src)
    build_table(*cols, KEY, 1, 1, directory / "from-csv.frt")
    elapsed = clock() - t0
    src.unlink()
    (directory / "from-csv.frt").unlink()
    return n / elapsed


_T0 = clock()
_log = logging.getLogger(__name__)


def progress(what: str) -> None:
    _log.info("[%6.1f s] %s", clock() - _T0, what)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run, under 60 s")
    parser.add_argument("--national", action="store_true", help="also build and measure 50 M ids")
    parser.add_argument("--out", default=None, help="JSON output path")
    args = parser.parse_args()
    sizes = [1_000_000, 10_000_000] + ([50_000_000] if args.national else [])
    n_queries = 1_000_000 if args.quick else 4_000_000
    n_single = 100_000 if args.quick else 400_000
    rounds = 3 if args.quick else 5
    metrics: dict[str, Any] = {"queries_present": 0.01, "page_cache": "warm"}
    rows: list[tuple[str, str, str, str, str]] = []
    memory_50m: float | None = None
    shared_50m: float | None = None
    with tempfile.TemporaryDirectory(prefix="bench-revocation-") as tmp:
        directory = Path(tmp)
        _, pub = save_signing_key(KEY, directory / "signer")
        signer = KEY.public()
        for n in sizes:
            label = f"{n // 1_000_000}M"
            progress(f"building {label}")
            path, ids, build_s = build(directory, n)
            progress(f"built {label} in {build_s:.2f} s")
            metrics[f"build_{label}_s"] = round(build_s, 3)
            metrics[f"file_{label}_mb"] = round(path.stat().st_size / 1e6, 1)
            adopt_s, verify_s = open_verify_first(path, signer, int(ids[n // 2]), rounds)
            metrics[f"open_verify_first_{label}_s"] = round(adopt_s, 4)
            metrics[f"open_verify_first_{label}_copy_present_s"] = round(verify_s, 4)
            progress("open+verify done")
            table = RevocationTable.open(path, signer)
            queries = make_queries(ids, n_queries, seed=n + 1)
            rates = batch_rates(table, queries, n_queries // 5, rounds)
            metrics[f"batch_{label}_lookups_per_s"] = round(rates["kernel"])
            metrics[f"searchsorted_{label}_lookups_per_s"] = round(rates["searchsorted"])
            ratio = rates["kernel"] / rates["searchsorted"]
            metrics[f"batch_{label}_vs_searchsorted"] = round(ratio, 2)
            rows.append((f"batch {label} (lookups/s)", f"{rates['kernel']:.3g}",
                         f"{rates['searchsorted']:.3g}", f"{ratio:.1f}x", ">= 20x at 10M"))  # fmt: skip
            progress("batch done")
            if n <= 10_000_000:
                single = single_costs(table, ids, queries[:n_single], rounds)
                for k in ("lookup", "set", "kernel", "searchsorted"):
                    metrics[f"single_{label}_{k}_ns"] = round(single[k], 1)
                metrics[f"set_build_{label}_s"] = round(single["set_build_s"], 2)
                metrics[f"single_{label}_vs_set"] = round(single["lookup"] / single["set"], 3)
                rows.append((f"single {label} lookup (ns)", f"{single['lookup']:.0f}",
                             f"{single['set']:.0f}", f"{single['lookup'] / single['set']:.2f}",
                             "<= 2x set"))  # fmt: skip
                rows.append((f"single {label} bare kernel (ns)", f"{single['kernel']:.0f}",
                             f"{single['searchsorted']:.0f}",
                             f"{single['kernel'] / single['searchsorted']:.2f}", "(searchsorted)"))  # fmt: skip
                lm = lmdb_single(ids, queries[:n_single], directory) if not args.quick else None
                metrics[f"single_{label}_lmdb_ns"] = lm
            del table, ids, queries
            progress("single done")
            if n == 10_000_000:
                metrics["cold_start_10M_s"] = round(cold_start(path, pub, rounds), 3)
                progress("cold start done")
                mem = gate_memory(path, pub)
                metrics.update({f"gate_10M_{k}": round(v, 3) for k, v in mem.items()})
                four = gates_memory(path, pub)
                metrics.update({f"gates4_10M_{k}": round(v, 3) for k, v in four.items()})
                progress("memory done")
            if n == 50_000_000:
                mem = gate_memory(path, pub)
                metrics.update({f"gate_50M_{k}": round(v, 3) for k, v in mem.items()})
                memory_50m = mem["peak_vs_file"]
                four = gates_memory(path, pub)
                metrics.update({f"gates4_50M_{k}": round(v, 3) for k, v in four.items()})
                shared_50m = four["table_share_vs_fair_share"]
            path.unlink()
        progress("csv build")
        rate = csv_build_rate(directory, 1_000_000 if args.quick else 10_000_000)
        metrics["csv_build_rows_per_s"] = None if rate is None else round(rate)
    goals = [
        goal(
            "batch 10M vs numpy.searchsorted",
            metrics["batch_10M_vs_searchsorted"],
            ">=",
            20,
            "ratio",
        ),
        goal("single call vs python set (10M)", metrics["single_10M_vs_set"], "<=", 2, "ratio"),
        goal("open+verify+first lookup 10M", metrics["open_verify_first_10M_s"], "<", 1.0, "s"),
        goal("gate peak memory vs file size (50M)", memory_50m, "<=", 1.1, "ratio"),
        goal(
            "table memory per gate, 4 gates sharing a store, vs file size / 4 (50M, PSS)",
            shared_50m,
            "<=",
            1.1,
            "ratio",
        ),
        goal("cold start 10M, warm numba cache", metrics["cold_start_10M_s"], "<=", 2.0, "s"),
    ]
    if memory_50m is None:
        metrics["note"] = (
            "50M memory is measured with --national; see gate_10M_* and gates4_10M_* for 10M"
        )
    write_report("revocation", args.quick, metrics, goals, args.out, rows)


if __name__ == "__main__":
    with logged("bench_revocation"):
        main()
