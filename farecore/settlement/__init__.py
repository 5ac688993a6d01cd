"""The nightly settlement: signed batches in, what each operator is owed out.

One pure unit of work per batch file (``unit.settle_unit``) gives a picklable partial;
a deterministic merge (``merge.merge``) combines them; ``outputs`` writes byte-stable
files. See docs/settlement.md.
"""

from farecore.settlement.anomalies import KINDS, Anomaly
from farecore.settlement.fares import FareTable, parse_fares
from farecore.settlement.merge import MergeOptions, Settlement, Total, merge
from farecore.settlement.outputs import write_outputs
from farecore.settlement.pipeline import (
    SettlementInputs,
    find_batches,
    load_inputs,
    map_in_process,
    map_with_processes,
    run_settlement,
)
from farecore.settlement.rides import PricedRides, Rides
from farecore.settlement.terminals import TerminalInfo, format_terminals, parse_terminals
from farecore.settlement.unit import Partial, RideColumns, UnitConfig, settle_unit

__all__ = [
    "KINDS",
    "Anomaly",
    "FareTable",
    "MergeOptions",
    "Partial",
    "PricedRides",
    "RideColumns",
    "Rides",
    "Settlement",
    "SettlementInputs",
    "TerminalInfo",
    "Total",
    "UnitConfig",
    "find_batches",
    "format_terminals",
    "load_inputs",
    "map_in_process",
    "map_with_processes",
    "merge",
    "parse_fares",
    "parse_terminals",
    "run_settlement",
    "settle_unit",
    "write_outputs",
]
