"""After the day: each terminal's signed batch, the real settlement, and the ground truth.

Each terminal's chain is exported from its station journal as a signed batch (the same
bytes a terminal's own journal would give) and settled in-process through a fresh
ledger, with the run's register, keyring, fares, both signed revocation tables and the
issuer's signed lists of its credentials. The
ground truth prices the same service day by the rule in docs/simulator.md.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from farecore.journal.batch import export_batch
from farecore.journal.terminal import JournalReader
from farecore.settlement import Ledger, find_batches, load_inputs, run_settlement
from sim.deploy import issued_lists
from sim.workload import reimburse
from sim.world import SIM_DAY, World

__all__ = ["expected_money", "export_batches", "settle"]


def export_batches(world: World, out: Path) -> Path:
    """Every terminal's signed batch of the day, into ``out/batches``."""
    batches = out / "batches"
    batches.mkdir()
    for jpath in sorted((out / "work" / "journals").glob("station-*.sqlite")):
        for tid in JournalReader.terminals_in(jpath):
            data = export_batch(jpath, SIM_DAY, world.terminal_key(tid), terminal_id=tid)
            (batches / f"terminal-{tid}-{SIM_DAY.isoformat()}.fcb").write_bytes(data)
    return batches


def settle(world: World, out: Path, batches: Path, jobs: int) -> dict[str, Any]:
    """Settle the batches into ``out/settlement`` and ``out/ledger.sqlite``, with the
    issuer's signed lists as the gates have them; what it paid."""
    rev = out / "revocation"
    inputs = load_inputs(
        SIM_DAY,
        out / "terminals.csv",
        out / "keyring.json",
        out / "fares.toml",
        rev / "revoked-gen2.csv",
        [rev / "gen1.frt", rev / "gen2.frt"],
        out / "keys" / "revocation-1.pub",
        issued_lists=[out / name for name in issued_lists(world)],
    )
    with Ledger.open(out / "ledger.sqlite") as ledger:
        settlement = run_settlement(
            inputs, find_batches(batches), out / "settlement", jobs=jobs, ledger=ledger
        )
    by_op: dict[str, int] = defaultdict(int)
    for total in settlement.totals:
        by_op[total.operator] += total.amount_fen
    return {
        "reimbursement_by_operator": dict(sorted(by_op.items())),
        "rides": settlement.stats.get("rides_paid", 0),
        "anomalies": [a.to_json() for a in settlement.anomalies],
        "stats": settlement.stats,
    }


def expected_money(world: World) -> dict[str, dict[str, int]]:
    """The ground truth: fen owed per operator and line for the day's legitimate rides.

    The settlement pays one service day: a tap after midnight (the exit of a late trip)
    belongs to the next day's batches, and its entry is an unpaired entry today, by the
    rule in docs/settlement.md. The ground truth counts the same day."""
    wl = world.workload
    in_day = wl.time_ms < world.clock.start_ms + 86_400_000
    accepted = (wl.expected == 0) & in_day
    return reimburse(
        wl.time_ms, wl.card, wl.gate, accepted, world.gates, world.network, world.clock.day
    )
