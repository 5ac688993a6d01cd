"""Running a night: find the inputs, run one unit per batch, admit, settle, write, record.

A night settles one service day against the ledger of every earlier night. It looks at
every batch file not already settled or rejected by an earlier night; batches of later
days wait for their own night. Units run in-process (the default), or over ``jobs``
local processes, or on another engine (Dask) through a ``map_units`` callable with the
same contract; their partials are admitted in chain order, so the outputs are
byte-identical whatever runs them. Batches of earlier days that arrive late settle as
corrections of their own day, through the same checks and the same ledger. The outputs
are written first, then the night is appended to the ledger in one transaction.

Re-running a night the ledger already holds takes exactly the batch files that night
took, sees the ledger as it stood before it, writes the same bytes, and adds nothing.
This module reads files and may show progress, but must never let the engine change
the result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import partial as bind
from pathlib import Path

import numpy as np

from farecore.errors import LedgerDamaged, SettlementError
from farecore.journal.batch import day_bounds_ms
from farecore.journal.records import Direction
from farecore.settlement.admission import Admission, Settled, admit
from farecore.settlement.anomalies import REVIEW_KINDS, Anomaly
from farecore.settlement.days import merge_options, settle_days
from farecore.settlement.heads import (
    ChainKnown,
    NightHeads,
    batch_days,
    check_heads,
    heads_directory,
    read_heads,
)
from farecore.settlement.inputs import BATCH_SUFFIX, SettlementInputs, find_batches, load_inputs
from farecore.settlement.ledger import HeldRide, Ledger, NightRecord, SettledBatch
from farecore.settlement.merge import DayResult, MergeOptions, Settlement
from farecore.settlement.outputs import digests_of, prepare_out, render_outputs, write_rendered
from farecore.settlement.partial import Partial, UnitConfig
from farecore.settlement.survey import Survey, inputs_digest, survey
from farecore.settlement.unit import settle_unit, unreadable_key

__all__ = [
    "BATCH_SUFFIX",
    "MapUnits",
    "SettlementInputs",
    "exit_status",
    "find_batches",
    "load_inputs",
    "map_in_process",
    "map_with_processes",
    "run_settlement",
]

MapUnits = Callable[[Sequence[str], UnitConfig], Iterator[Partial]]


def map_in_process(paths: Sequence[str], cfg: UnitConfig) -> Iterator[Partial]:
    for path in paths:
        yield settle_unit(path, cfg)


def map_with_processes(jobs: int) -> MapUnits:
    def run(paths: Sequence[str], cfg: UnitConfig) -> Iterator[Partial]:
        # A forked worker freezes what it inherits: its cycle collector then never walks
        # (and so never copies) the parent's pages, which it shares instead.
        with ProcessPoolExecutor(max_workers=jobs, initializer=gc.freeze) as pool:
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
    ledger: Ledger | None = None,
    heads: Path | None = None,
) -> Settlement:
    """Settle ``inputs.day`` from ``paths`` against ``ledger`` (an empty one if None).

    With ``out_dir``, write the outputs, then append the night to the ledger; without
    it, nothing is written or recorded (a dry run). ``heads`` (a collection point or
    its heads directory) adds the gates' signed chain heads to the checks."""
    if jobs < 1:
        raise SettlementError("--jobs must be at least 1")
    own = ledger is None
    book = Ledger.memory() if ledger is None else ledger
    cfg = UnitConfig(
        inputs.day,
        tuple(inputs.terminals[k] for k in sorted(inputs.terminals)),
        inputs.keyring,
        inputs.fares.operators,
        inputs.fares.clock_tolerance_s * 1000,
        utc_offset_min=inputs.fares.utc_offset_min,
        issued=inputs.issued,
    )
    mapper = map_units or (map_in_process if jobs == 1 else map_with_processes(jobs))
    try:
        with _without_cycle_collector():
            return _night(inputs, paths, cfg, mapper, out_dir, options, progress, book, heads)
    except LedgerDamaged as exc:
        raise book.damaged(exc) from None
    finally:
        if own:
            book.close()


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


def _night(
    inputs: SettlementInputs,
    paths: Sequence[str],
    cfg: UnitConfig,
    mapper: MapUnits,
    out_dir: Path | None,
    options: MergeOptions | None,
    progress: Callable[[int, int], None] | None,
    ledger: Ledger,
    heads: Path | None = None,
) -> Settlement:
    day = inputs.day
    rerun = ledger.night_of(day)
    night = rerun.night if rerun is not None else _next_night(ledger, day)
    if out_dir is not None:
        prepare_out(out_dir)
    taken = survey(paths, day, ledger, night, rerun)
    settings = inputs.settings
    night_heads = None
    if heads is not None:
        night_heads = _read_heads(heads, inputs, taken)
        settings = {**settings, "heads_sha256": night_heads.digest}
        cfg = replace(cfg, head_seqs=night_heads.seqs())
    digest = inputs_digest(list(taken.keys.values()), settings)
    if rerun is not None and rerun.inputs_sha256 != digest:
        raise SettlementError(
            f"night {day} was settled with other inputs (register, keyring, fares, "
            "revocation files, issued lists or chain heads differ); a settled night is final"
        )
    partials = _gather(mapper, taken, cfg, progress)
    gc.disable()
    admission = _admit(partials, ledger, night)
    if night_heads is not None:
        admission = _check_heads(night_heads, admission, ledger, night, inputs)
    opts = options or merge_options(inputs, [a.partial for a in admission.admitted])
    corrections, main = settle_days(inputs, admission, ledger, night, opts)
    result = _assemble(inputs, taken, admission, main, corrections, night, rerun is not None)
    if night_heads is not None:
        result.stats["heads_used"] = night_heads.used
        result.stats["heads_rejected"] = len(night_heads.anomalies)
    if out_dir is None:
        return result
    blobs = render_outputs(result, settings)
    digests = digests_of(blobs)
    if rerun is not None:
        _check_rerun(day, digests, rerun)
        write_rendered(blobs, out_dir)
        return result
    # The ledger first: a night whose outputs fail to write is re-run to write them, and
    # a re-run never appends twice.
    _record(ledger, night, day, digest, digests, admission, [*corrections, main], taken.stats)
    try:
        write_rendered(blobs, out_dir)
    except SettlementError as exc:
        raise SettlementError(
            f"night {day} is recorded in the ledger, but its outputs were not written "
            f"({exc}); run the same command again to write them"
        ) from None
    return result


def _next_night(ledger: Ledger, day: dt.date) -> int:
    """The number of a new night for ``day``, which must come after every night held."""
    last = ledger.last_night()
    if last is not None and last[1] >= day:
        raise SettlementError(
            f"ledger {ledger.where} has settled nights up to {last[1]}; {day} cannot be "
            "settled after them (its late batches settle as corrections on the next night)"
        )
    return last[0] + 1 if last is not None else 1


def _gather(
    mapper: MapUnits,
    taken: Survey,
    cfg: UnitConfig,
    progress: Callable[[int, int], None] | None,
) -> list[Partial]:
    """Every unit's partial, each frozen out of the cycle collector's sight as it arrives."""
    partials: list[Partial] = []
    read_before = {unreadable_key(p): p for p, k in taken.keys.items() if k != unreadable_key(p)}
    for i, p in enumerate(mapper(taken.paths, cfg), 1):
        if p.unreadable and p.batch_sha256 in read_before:
            # Read when the night began, unreadable where its unit ran: not the file's
            # fault, and settling without it would silently report it missing.
            on = f" on {p.where}" if p.where else ""
            raise SettlementError(
                f"batch file {read_before[p.batch_sha256]} was readable when the night began "
                f"but not to its unit{on} ({p.anomalies[0].detail}); on a cluster, batch "
                "paths must be readable from every worker, for example on a shared filesystem"
            )
        partials.append(p)
        gc.freeze()
        if progress is not None:
            progress(i, len(taken.paths))
    return partials


def _admit(partials: list[Partial], ledger: Ledger, night: int) -> Admission:
    """Admission of the distinct batches, in SHA-256 order whatever order units finished."""
    unique: dict[bytes, Partial] = {}
    for p in partials:
        unique.setdefault(p.batch_sha256, p)
    return admit(
        [unique[k] for k in sorted(unique)],
        Settled(
            ledger.heads(night),
            lambda tid, seq, h: ledger.links_at(night, tid, seq, h),
            lambda tid, day_text: ledger.has_day(night, tid, day_text),
            first_night=night == 1,
        ),
    )


def _read_heads(directory: Path, inputs: SettlementInputs, taken: Survey) -> NightHeads:
    """The heads of the settled day and of the days of the night's batch files."""
    fares = inputs.fares
    days = {inputs.day} | {d for d in batch_days(taken.paths) if d <= inputs.day}
    return read_heads(
        heads_directory(directory),
        inputs.terminals,
        days,
        until_ms=day_bounds_ms(inputs.day, fares.utc_offset_min)[1],
        utc_offset_min=fares.utc_offset_min,
        tolerance_ms=fares.clock_tolerance_s * 1000,
    )


def _check_heads(
    heads: NightHeads, admission: Admission, ledger: Ledger, night: int, inputs: SettlementInputs
) -> Admission:
    return check_heads(
        heads,
        admission,
        ChainKnown(
            ledger.heads(night),
            lambda tid, seq: ledger.hashes_at(night, tid, seq),
            lambda tid: ledger.last_day(night, tid),
        ),
        utc_offset_min=inputs.fares.utc_offset_min,
        tolerance_ms=inputs.fares.clock_tolerance_s * 1000,
    )


def _check_rerun(day: dt.date, digests: dict[str, str], rerun: NightRecord) -> None:
    if digests != rerun.outputs:
        differ = sorted(k for k in digests if digests[k] != rerun.outputs.get(k))
        raise SettlementError(
            f"re-running night {day} gives other {', '.join(differ)} than its first run "
            "(a batch file renamed, another farecore or pyarrow version, or a ledger "
            "changed by hand); nothing was written"
        )


def _assemble(
    inputs: SettlementInputs,
    survey: Survey,
    admission: Admission,
    main: DayResult,
    corrections: list[DayResult],
    night: int,
    rerun: bool,
) -> Settlement:
    day_text = inputs.day.isoformat()
    reported = {a.partial.terminal_id for a in admission.admitted if a.partial.day == day_text}
    missing = [
        Anomaly("missing_batch", terminal_id=t, detail=f"no batch for {day_text}")
        for t in sorted(set(inputs.terminals) - reported)
        if inputs.terminals[t].direction != Direction.CLAIM  # a till's claims are not rides
    ]
    anomalies = sorted(
        {
            *admission.anomalies,
            *missing,
            *main.anomalies,
            *(a for c in corrections for a in c.anomalies),
        }
    )
    outcomes = admission.outcomes
    stats = dict(main.stats)
    stats.update(
        {
            "night": night,
            "batch_files": len(survey.paths),
            "batches_rejected": sum(1 for o in outcomes.values() if o == "rejected"),
            "batches_held": sum(1 for o in outcomes.values() if o == "held"),
            "batches_missing": len(missing),
            "correction_days": len(corrections),
            "correction_amount_fen": sum(c.stats["amount_fen"] for c in corrections),
            "rides_held": main.stats["rides_held"]
            + sum(c.stats["rides_held"] for c in corrections),
            "anomalies": len(anomalies),
        }
    )
    return Settlement(
        day=day_text,
        inputs=tuple(sorted(k.hex() for k in survey.keys.values())),
        rides=main.rides,
        totals=main.totals,
        anomalies=tuple(anomalies),
        stats=stats,
        corrections=tuple(corrections),
        night=night,
        rerun=rerun,
        # What else the directory held: it changes from night to night, so it is shown
        # but kept out of the outputs (a re-run must give the same bytes).
        directory={
            "batches_for_later_days": survey.later_days,
            "batches_settled_before": survey.done_before,
            "batches_after_this_night": survey.arrived_after,
        },
    )


def _record(
    ledger: Ledger,
    night: int,
    day: dt.date,
    digest: str,
    outputs: dict[str, str],
    admission: Admission,
    results: list[DayResult],
    paths: list[tuple[str, int, int, bytes]],
) -> None:
    batches = [
        SettledBatch(
            p.batch_sha256,
            p.terminal_id,
            p.day,
            p.first_seq,
            p.last_seq,
            p.prev_hash,
            p.tail_hash,
            p.max_time_ms,
        )
        for p in [a.partial for a in admission.admitted] + admission.chain_only
    ]
    held: list[HeldRide] = [h for r in results for h in r.held]
    resolved: list[tuple[int, int]] = [t for r in results for t in r.resolved]
    taken = _taken_columns(results)
    ledger.record_night(
        night, day, digest, outputs, admission.outcomes, batches, taken, held, resolved, paths
    )


def _taken_columns(
    results: list[DayResult],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(card, counter, terminal, seq, time) of every counter the night takes: the rides
    it pays and the rides it newly holds."""
    cards, counters, tids, seqs, times = [], [], [], [], []
    for r in results:
        rides = r.rides.rides
        assert rides.held is not None
        new = ~rides.held  # a resolved held ride's counter is already in the ledger
        cards.append(rides.card_id[new])
        counters.append(rides.counter[new])
        tids.append(rides.terminal_id[new])
        seqs.append(rides.seq[new])
        times.append(rides.time_ms[new])
        for h in r.held:
            cards.append(np.array([h.card_id], np.uint64))
            counters.append(np.array([h.counter], np.int64))
            tids.append(np.array([h.terminal_id], np.uint64))
            seqs.append(np.array([h.seq], np.uint64))
            times.append(np.array([h.time_ms], np.int64))
    return (
        np.concatenate(cards) if cards else np.zeros(0, np.uint64),
        np.concatenate(counters) if counters else np.zeros(0, np.int64),
        np.concatenate(tids) if tids else np.zeros(0, np.uint64),
        np.concatenate(seqs) if seqs else np.zeros(0, np.uint64),
        np.concatenate(times) if times else np.zeros(0, np.int64),
    )


def exit_status(s: Settlement) -> int:
    """0 when the night needs no review, else 3 (see ``farecore settle --help``)."""
    if s.stats.get("batches", 0) == 0:
        return 3  # no batch of the day at all: never a clean night
    if any(a.kind in REVIEW_KINDS for a in s.anomalies) or s.corrections:
        return 3
    return 0
