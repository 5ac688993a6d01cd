"""Running a settlement: find the inputs, run one unit per batch, merge, write.

Units run in-process (the default), or over ``jobs`` local processes; either way their
partials are merged in a canonical order, so the outputs are byte-identical. Another
engine (Dask) plugs in by supplying a ``map_units`` callable with the same contract:
apply ``settle_unit`` to each path and return the partials. This module reads files
and may show progress, but must never let the engine change the result.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gc
import hashlib
import io
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial as bind
from pathlib import Path

import numpy as np

from farecore.errors import MalformedFile, SettlementError
from farecore.keys import Keyring
from farecore.settlement.fares import FareTable, parse_fares
from farecore.settlement.merge import MergeOptions, Settlement, merge
from farecore.settlement.outputs import write_outputs
from farecore.settlement.terminals import TerminalInfo, parse_terminals
from farecore.settlement.unit import Partial, UnitConfig, settle_unit

__all__ = [
    "BATCH_SUFFIX",
    "MapUnits",
    "SettlementInputs",
    "find_batches",
    "load_inputs",
    "map_in_process",
    "map_with_processes",
    "parse_revocations_csv",
    "run_settlement",
]

BATCH_SUFFIX = ".fcb"
_NO_CARDS = np.zeros(0, dtype=np.uint64)
MapUnits = Callable[[Sequence[str], UnitConfig], Iterator[Partial]]


@dataclass(frozen=True, slots=True)
class SettlementInputs:
    day: dt.date
    terminals: dict[int, TerminalInfo]
    keyring: bytes
    fares: FareTable
    revoked_at: dict[int, int]
    settings: dict[str, str]  # input name -> SHA-256, for the manifest
    # A verified revocation table (farecore.revocation), looked up per card at merge time.
    revocation_lookup: Callable[[int], int | None] | None = None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettlementError(f"cannot read {what} {path}: {exc.strerror}") from None


def parse_revocations_csv(text: str, source: str = "revocations.csv") -> dict[int, int]:
    """``card_id,revoked_at,reason`` rows (revoked_at in UTC Unix seconds)."""
    out: dict[int, int] = {}
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            if not row or row[0].strip() in ("", "card_id"):
                continue
            if len(row) < 2:
                raise MalformedFile(f"{source}:{reader.line_num}: need card_id,revoked_at")
            try:
                card, at = int(row[0]), int(row[1])
            except ValueError:
                raise MalformedFile(f"{source}:{reader.line_num}: not integers") from None
            out[card] = min(at, out.get(card, at))
    except csv.Error as exc:
        raise MalformedFile(f"{source}: {exc}") from None
    return out


def load_inputs(
    day: dt.date,
    terminals: Path,
    keyring: Path,
    fares: Path,
    revocations: Path | None = None,
    revocation_table: Path | None = None,
    revocation_signer: Path | None = None,
) -> SettlementInputs:
    raw_t, raw_k, raw_f = (
        _read(terminals, "terminals"),
        _read(keyring, "keyring"),
        _read(fares, "fares"),
    )
    Keyring.from_bytes(raw_k, str(keyring))  # fail early, with the file's name
    settings = {
        "terminals_sha256": hashlib.sha256(raw_t).hexdigest(),
        "keyring_sha256": hashlib.sha256(raw_k).hexdigest(),
        "fares_sha256": hashlib.sha256(raw_f).hexdigest(),
    }
    revoked: dict[int, int] = {}
    if revocations is not None:
        raw_r = _read(revocations, "revocations")
        revoked = parse_revocations_csv(raw_r.decode(errors="replace"), str(revocations))
        settings["revocations_sha256"] = hashlib.sha256(raw_r).hexdigest()
    try:
        t_text, f_text = raw_t.decode(), raw_f.decode()
    except UnicodeDecodeError:
        raise MalformedFile("terminals or fares file is not UTF-8") from None
    lookup = None
    if revocation_table is not None:
        lookup = _open_table(revocation_table, revocation_signer, settings)
    return SettlementInputs(
        day,
        parse_terminals(t_text, str(terminals)),
        raw_k,
        parse_fares(f_text, str(fares)),
        revoked,
        settings,
        lookup,
    )


def _open_table(
    path: Path, signer: Path | None, settings: dict[str, str]
) -> Callable[[int], int | None]:
    """Open and verify a signed revocation table; return card id -> revoked-at."""
    if signer is None:
        raise SettlementError("--revocation-table needs --revocation-signer (a .pub file)")
    from farecore.keys import load_public_key_file
    from farecore.revocation import RevocationTable

    table = RevocationTable.open(path, load_public_key_file(signer, role="revocation"))
    raw = _read(path, "revocation table")
    settings["revocation_table_sha256"] = hashlib.sha256(raw).hexdigest()

    def revoked_at(card_id: int) -> int | None:
        entry = table.lookup(card_id)
        return None if entry is None else entry.revoked_at

    return revoked_at


def find_batches(directory: Path) -> list[str]:
    """Every ``*.fcb`` file under ``directory``, sorted (the order does not matter)."""
    if not directory.is_dir():
        raise SettlementError(f"batch directory {directory} does not exist")
    return sorted(str(p) for p in directory.rglob(f"*{BATCH_SUFFIX}") if p.is_file())


def map_in_process(paths: Sequence[str], cfg: UnitConfig) -> Iterator[Partial]:
    for path in paths:
        yield settle_unit(path, cfg)


def map_with_processes(jobs: int) -> MapUnits:
    def run(paths: Sequence[str], cfg: UnitConfig) -> Iterator[Partial]:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            yield from pool.map(bind(settle_unit, cfg=cfg), paths, chunksize=1)

    return run


def run_settlement(
    inputs: SettlementInputs,
    paths: Sequence[str],
    out_dir: Path | None,
    *,
    jobs: int = 1,
    map_units: MapUnits | None = None,
    options: MergeOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Settlement:
    """Settle ``paths`` for ``inputs.day``; write outputs when ``out_dir`` is given."""
    if jobs < 1:
        raise SettlementError("--jobs must be at least 1")
    cfg = UnitConfig(
        inputs.day, tuple(inputs.terminals[k] for k in sorted(inputs.terminals)), inputs.keyring
    )
    mapper = map_units or (map_in_process if jobs == 1 else map_with_processes(jobs))
    with _without_cycle_collector():
        return _settle(inputs, paths, cfg, mapper, out_dir, options, progress)


@contextlib.contextmanager
def _without_cycle_collector() -> Iterator[None]:
    """Keep Python's cycle collector off the night's rides while they are gathered and merged.

    A night is millions of small tuples, none of them in a reference cycle (reference
    counting frees them all), but the collector would walk every live one again and
    again as more are created: measured on a million rides, the merge took twice and the
    Parquet file three times as long with it. Each partial is frozen as it arrives (the
    collector then skips it, while an engine's own cyclic garbage is still collected),
    and the collector is off during the merge, which runs no engine.
    """
    was_enabled = gc.isenabled()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def _settle(
    inputs: SettlementInputs,
    paths: Sequence[str],
    cfg: UnitConfig,
    mapper: MapUnits,
    out_dir: Path | None,
    options: MergeOptions | None,
    progress: Callable[[int, int], None] | None,
) -> Settlement:
    partials: list[Partial] = []
    for i, p in enumerate(mapper(paths, cfg), 1):
        partials.append(p)
        gc.freeze()
        if progress is not None:
            progress(i, len(paths))
    gc.disable()
    revoked = dict(inputs.revoked_at)
    if inputs.revocation_lookup is not None:
        cards = np.unique(np.concatenate([p.rides.card_id for p in partials] or [_NO_CARDS]))
        for card in cards.tolist():
            at = inputs.revocation_lookup(card)
            if at is not None:
                revoked[card] = min(at, revoked.get(card, at))
    opts = options or MergeOptions(revoked_at=revoked)
    result = merge(partials, inputs.day, inputs.fares, inputs.terminals, opts)
    if out_dir is not None:
        write_outputs(result, out_dir, inputs.settings)
    return result
