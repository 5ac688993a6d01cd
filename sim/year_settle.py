"""A simulated year's nights: each day's batches settled through one ledger, in day order.

After a day's lanes are done (each has exported its terminals' batches of the day from
its station journal: ``sim.year_tasks.export_lane``; each batch continues its terminal's
chain from the day before), the real settlement settles the night through the year's
ledger, which checks chain continuity and reused counters against every earlier night.
What a night paid is read back from its outputs (``settlement/DAY/``), so a night is reported the same whether it
was just settled or found settled by a resumed run.

``rollback`` puts a stopped run back to the end of its last completed day: each lane's
journal loses the records of the day to run again (from its first tap on; the completed
day's late exits after midnight stay, for the next night's batches) and that day's
passback lockouts, the lanes' gate marks go (a gate then starts afresh), and a
half-written night's batches and outputs are removed. This module must never loosen a
check: a night that finds a wrong payment reports it.
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from farecore.journal.layout import station_records_table
from farecore.journal.station import StationJournal
from farecore.settlement import Ledger, find_batches, load_inputs, run_settlement
from farecore.settlement.pipeline import MapUnits
from sim.lane import LaneResult
from sim.venues import VENUE_OPERATOR
from sim.world import SimError, World
from sim.year_tasks import lane_journal
from sim.year_world import day_tables, year_day

__all__ = ["night_figures", "rollback", "settle_night"]


def settle_night(
    out: Path,
    index: int,
    batches: Path,
    ledger: Ledger,
    jobs: int,
    map_units: MapUnits | None = None,
    issued: Sequence[Path] = (),
) -> Path:
    """Settle day ``index`` from ``batches`` through ``ledger``; the outputs' directory.
    ``issued``: the issuer's signed lists, as ``farecore settle --issued``."""
    day = year_day(index)
    gen1, gen2, revoked = day_tables(out, index)
    inputs = load_inputs(
        day,
        out / "terminals.csv",
        out / "keyring.json",
        out / "fares.toml",
        revoked,
        [gen1, gen2],
        out / "keys" / "revocation-1.pub",
        issued_lists=issued,
    )
    where = out / "settlement" / day.isoformat()
    where.parent.mkdir(exist_ok=True)
    run_settlement(
        inputs,
        find_batches(batches),
        where,
        jobs=jobs,
        map_units=map_units,
        ledger=ledger,
    )
    return where


def night_figures(where: Path) -> dict[str, Any]:
    """What a settled night paid: fen per operator, rides (taps) paid, anomalies by kind;
    ``settled_fen`` is the transit operators' (the figure Qingdao's report counts), the
    venues' is ``settled_venue_fen``."""
    by_op: dict[str, int] = defaultdict(int)
    with (where / "totals.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            by_op[row["operator"]] += int(row["amount_fen"])
    stats = json.loads((where / "manifest.json").read_text())["stats"]
    kinds = json.loads((where / "anomalies.json").read_text()).get("counts", {})
    venue_fen = by_op.get(VENUE_OPERATOR, 0)  # parks and museums: not rides
    return {
        "settled_by_operator": dict(sorted(by_op.items())),
        "settled_taps": int(stats.get("rides_paid", 0)),
        "settled_fen": int(stats.get("amount_fen", 0)) - venue_fen,
        "settled_venue_fen": venue_fen,
        "anomalies": dict(sorted(kinds.items())),
    }


def rollback(
    out: Path,
    world: World,
    lanes: Sequence[tuple[int, ...]],
    ledger: Ledger,
    next_index: int,
    first_tap_ms: int | None = None,
) -> int:
    """Undo what a stopped run did after its last settled night; the records removed.

    ``first_tap_ms``: the first tap of day ``next_index``, the day to run again. What
    the lanes journaled before it stays: the last settled day's late exits, after
    midnight, which belong to the next night's batches and which no rerun of the next
    day would make again. None: the next day's midnight (a run with no day left)."""
    last = ledger.last_night()
    heads = ledger.heads(last[0] + 1) if last is not None else {}
    start_ms = world.clock.start_ms + 86_400_000 * next_index  # the base world is day 0
    if first_tap_ms is not None:
        start_ms = first_tap_ms
    work = out / "work"
    removed = 0
    for k, gates in enumerate(lanes):
        path = lane_journal(work, k)
        if path.exists():
            tids = [world.gates[g].terminal_id for g in gates]
            # A reopen moves what a crash left in the recent tables to the terminals'.
            StationJournal.open(path, tids, move_when_idle_s=None).close()
            removed += _trim(path, tids, heads, start_ms)
        shutil.rmtree(work / "state" / f"lane-{k}", ignore_errors=True)
    for sub in ("batches", "settlement"):
        for stale in (out / sub).glob("*"):
            if stale.name >= year_day(next_index).isoformat():
                shutil.rmtree(stale)
    return removed


def _trim(path: Path, tids: list[int], heads: dict[int, Any], start_ms: int) -> int:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        removed = 0
        for tid in tids:
            head = heads.get(tid)
            last = head.last_seq if head is not None else 0
            table = station_records_table(tid)
            # The first record of the day to run again, after the settled head; a
            # terminal's records are in time order, so all from it on are that day's.
            (cut,) = db.execute(
                f"SELECT MIN(seq) FROM {table} WHERE seq > ? AND time_ms >= ?", (last, start_ms)
            ).fetchone()
            if cut is not None:
                removed += db.execute(f"DELETE FROM {table} WHERE seq >= ?", (cut,)).rowcount
            row = db.execute(f"SELECT hash FROM {table} WHERE seq = ?", (last,)).fetchone()
            # A terminal idle on every settled day has a head at seq 0: nothing to reach.
            if head is not None and last > 0 and (row is None or bytes(row[0]) != head.tail_hash):
                db.execute("ROLLBACK")
                raise SimError(
                    f"{path}: terminal {tid}'s chain does not reach the ledger's head "
                    f"(seq {last}); the run cannot be resumed"
                )
        db.execute("DELETE FROM passback_log WHERE wall_ms >= ?", (start_ms,))
        db.execute("COMMIT")
        return removed
    finally:
        db.close()


def lane_results(
    results: Sequence[tuple[int, Any, LaneResult]], taps: int
) -> tuple[Any, Any, dict[str, int]]:
    """The lanes' results put back in workload order: got codes, latencies, and totals
    (commits, taps committed, CPU ns of the lanes and committers)."""
    import numpy as np

    got = np.zeros(taps, dtype=np.uint8)
    latency = np.zeros(taps)
    totals: Counter[str] = Counter()
    for _, idx, r in results:
        got[idx] = r.got
        latency[idx] = r.latency_us
        totals["commits"] += int(r.groups[0])
        totals["grouped_taps"] += int(r.groups[1])
        totals["lane_cpu_ns"] += int(r.cpu_ns[0])
        totals["committer_cpu_ns"] += int(r.cpu_ns[1])
    return got, latency, dict(totals)
