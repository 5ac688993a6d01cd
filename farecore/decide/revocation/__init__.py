"""The revocation table: a signed, memory-mapped file of revoked card ids.

Build one with :func:`build_table` (or ``farecore revocation build``), open and verify
one with :meth:`RevocationTable.open`, and keep the newest in force at a gate with
:class:`HotRevocation`. A delta (:func:`build_delta`, ``farecore revocation delta``)
carries the changes since a base table; :class:`RevocationView` is the two together.
The file formats are in docs/revocation-format.md.

This package must never import readers or sim, and never serve an unverified table.
"""

from __future__ import annotations

from farecore.decide.revocation.builder import BuildError, TableSummary, build_table
from farecore.decide.revocation.csvinput import read_revocation_csv
from farecore.decide.revocation.delta import RevocationDelta
from farecore.decide.revocation.deltabuild import DeltaSummary, build_delta
from farecore.decide.revocation.format import RevocationReason, reason_code
from farecore.decide.revocation.hot import Floor, HotRevocation
from farecore.decide.revocation.store import TableStore
from farecore.decide.revocation.table import RevocationTable
from farecore.decide.revocation.view import RevocationInForce, RevocationView

__all__ = [
    "BuildError",
    "DeltaSummary",
    "Floor",
    "HotRevocation",
    "RevocationDelta",
    "RevocationInForce",
    "RevocationReason",
    "RevocationTable",
    "RevocationView",
    "TableStore",
    "TableSummary",
    "build_delta",
    "build_table",
    "read_revocation_csv",
    "reason_code",
]
