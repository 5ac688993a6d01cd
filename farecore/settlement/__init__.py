"""The nightly settlement: signed batches in, what each operator is owed out.

One pure unit of work per batch file (``unit.settle_unit``) gives a picklable partial;
``admission`` continues each terminal's chain from the ``ledger`` of earlier nights;
``merge.settle_day`` checks, pairs and prices a day; ``outputs`` writes byte-stable
files; ``pipeline.run_settlement`` runs a night. See docs/settlement.md.
"""

from farecore.settlement.anomalies import KINDS, REVIEW_KINDS, Anomaly
from farecore.settlement.fares import FareTable, OperatorPolicy, parse_fares
from farecore.settlement.ledger import Ledger
from farecore.settlement.merge import DayResult, MergeOptions, Settlement, Total, settle_day
from farecore.settlement.outputs import write_outputs
from farecore.settlement.pipeline import (
    SettlementInputs,
    exit_status,
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
    "REVIEW_KINDS",
    "Anomaly",
    "DayResult",
    "FareTable",
    "Ledger",
    "MergeOptions",
    "OperatorPolicy",
    "Partial",
    "PricedRides",
    "RideColumns",
    "Rides",
    "Settlement",
    "SettlementInputs",
    "TerminalInfo",
    "Total",
    "UnitConfig",
    "exit_status",
    "find_batches",
    "format_terminals",
    "load_inputs",
    "map_in_process",
    "map_with_processes",
    "parse_fares",
    "parse_terminals",
    "run_settlement",
    "settle_day",
    "settle_unit",
    "write_outputs",
]
