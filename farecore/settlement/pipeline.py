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
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial as bind
from pathlib import Path

import numpy as np

from farecore.boundedinput import read_limited
from farecore.card.keys import Keyring, load_public_key_file
from farecore.decide.revocation import RevocationTable
from farecore.decide.revocation.csvinput import read_revocation_csv
from farecore.errors import LedgerDamaged, MalformedFile, SettlementError
from farecore.journal.batch import day_bounds_ms, peek_header
from farecore.settlement.admission import Admission, Admitted, Settled, admit
from farecore.settlement.anomalies import REVIEW_KINDS, Anomaly
from farecore.settlement.fares import FareTable, parse_fares
from farecore.settlement.ledger import HeldRide, Ledger, NightRecord, SettledBatch, TakenRide
from farecore.settlement.merge import (
    DayInputs,
    DayResult,
    MergeOptions,
    RevocationGeneration,
    Settlement,
    settle_day,
)
from farecore.settlement.outputs import digests_of, prepare_out, render_outputs, write_rendered
from farecore.settlement.terminals import TerminalInfo, parse_terminals
from farecore.settlement.unit import (
    MAX_BATCH_BYTES,
    Partial,
    UnitConfig,
    settle_unit,
    unreadable_key,
)

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

BATCH_SUFFIX = ".fcb"
_NO_CARDS = np.zeros(0, dtype=np.uint64)
_MAX_INPUT_BYTES = 64 << 20  # a register, keyring or fares file is far smaller
MapUnits = Callable[[Sequence[str], UnitConfig], Iterator[Partial]]


@dataclass(frozen=True, slots=True)
class SettlementInputs:
    day: dt.date
    terminals: dict[int, TerminalInfo]
    keyring: bytes
    fares: FareTable
    revoked_at: dict[int, int]
    settings: dict[str, str]  # input name -> SHA-256, for the manifest
    # Verified revocation tables, by generation.
    tables: tuple[RevocationTable, ...] = field(default=())


def _read(path: Path, what: str) -> bytes:
    try:
        if path.is_dir():
            raise SettlementError(f"{what} {path} is a directory, not a file")
        # Bounded as it is read: the size a stat reports can change, or be 0 for a device.
        return read_limited(path, _MAX_INPUT_BYTES, f"{what} {path}", SettlementError)
    except OSError as exc:
        raise SettlementError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def load_inputs(
    day: dt.date,
    terminals: Path,
    keyring: Path,
    fares: Path,
    revocations: Path | None = None,
    revocation_tables: Sequence[Path] | Path | None = None,
    revocation_signer: Path | None = None,
) -> SettlementInputs:
    """Read and check every input but the batches; SettlementError or MalformedFile
    naming the file on any problem, before anything is settled or written."""
    raw_t, raw_k, raw_f = (
        _read(terminals, "terminal register"),
        _read(keyring, "keyring"),
        _read(fares, "fares file"),
    )
    Keyring.from_bytes(raw_k, str(keyring))  # fail early, with the file's name
    settings = {
        "terminals_sha256": hashlib.sha256(raw_t).hexdigest(),
        "keyring_sha256": hashlib.sha256(raw_k).hexdigest(),
        "fares_sha256": hashlib.sha256(raw_f).hexdigest(),
    }
    try:
        t_text, f_text = raw_t.decode(), raw_f.decode()
    except UnicodeDecodeError:
        raise MalformedFile("terminals or fares file is not UTF-8") from None
    register = parse_terminals(t_text, str(terminals))
    fare_table = parse_fares(f_text, str(fares))
    unknown = sorted(
        {t.operator for t in register.values()} - {p.operator for p in fare_table.operators}
    )
    if unknown:
        raise MalformedFile(
            f"{fares}: no [[operator]] for {', '.join(unknown)} (named by {terminals}); "
            "the settlement must know which regions and categories each operator accepts"
        )
    revoked: dict[int, int] = {}
    if revocations is not None:
        raw_r = _read(revocations, "revocations CSV")
        cards, ats, _ = read_revocation_csv(revocations)  # the builder's strict reader
        for card, at in zip(cards.tolist(), ats.tolist(), strict=True):
            revoked[card] = min(at, revoked.get(card, at))
        settings["revocations_sha256"] = hashlib.sha256(raw_r).hexdigest()
    if isinstance(revocation_tables, Path):
        revocation_tables = [revocation_tables]
    tables = [_open_table(path, revocation_signer, settings) for path in revocation_tables or ()]
    gens = [t.generation for t in tables]
    if len(set(gens)) != len(gens):
        raise SettlementError("two revocation tables of the same generation were given")
    tables.sort(key=lambda t: t.generation)
    return SettlementInputs(day, register, raw_k, fare_table, revoked, settings, tuple(tables))


def _open_table(path: Path, signer: Path | None, settings: dict[str, str]) -> RevocationTable:
    """Open and verify a signed revocation table, exactly as a gate would."""
    if signer is None:
        raise SettlementError("--revocation-table needs --revocation-signer (a .pub file)")
    if not path.is_file():
        raise SettlementError(f"revocation table {path} is not a file")
    try:
        table = RevocationTable.open(path, load_public_key_file(signer, role="revocation"))
    except OSError as exc:
        raise SettlementError(f"cannot read revocation table {path}: {exc.strerror}") from None
    # The verified body's hash (what the lookups use), named by generation: the manifest
    # does not depend on the order the tables were given in.
    settings[f"revocation_table_generation_{table.generation}_body_sha256"] = table.body_sha256
    return table


def find_batches(directory: Path) -> list[str]:
    """Every ``*.fcb`` entry under ``directory``, sorted: files, and anything else so named
    (a directory, a dangling link), which the night then rejects by name."""
    if not directory.is_dir():
        raise SettlementError(f"batch directory {directory} does not exist")
    try:
        return sorted(str(p) for p in directory.rglob(f"*{BATCH_SUFFIX}"))
    except OSError as exc:
        raise SettlementError(f"cannot list batch directory {directory}: {exc.strerror}") from None


def map_in_process(paths: Sequence[str], cfg: UnitConfig) -> Iterator[Partial]:
    for path in paths:
        yield settle_unit(path, cfg)


def map_with_processes(jobs: int) -> MapUnits:
    def run(paths: Sequence[str], cfg: UnitConfig) -> Iterator[Partial]:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            yield from pool.map(bind(settle_unit, cfg=cfg), paths, chunksize=1)

    return run


@dataclass(frozen=True, slots=True)
class _Survey:
    """The batch files a night takes, and what it leaves for other nights."""

    paths: list[str]
    keys: dict[str, bytes]  # path -> SHA-256 (or the key of an unreadable entry)
    later_days: int
    done_before: int
    arrived_after: int
    stats: list[tuple[str, int, int, bytes]]  # (path, size, mtime_ns, SHA-256) hashed


def _file_key(
    path: str, known: dict[str, tuple[int, int, bytes]], hashed: list[tuple[str, int, int, bytes]]
) -> tuple[bytes, bytes | None]:
    """(SHA-256 of the file, its first bytes, or None when it was not read) or a stable
    key for an entry that cannot be read, so a re-run recognises it. A file whose size
    and modification time match an earlier night's reading is not read again."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BATCH_BYTES:
            raise OSError
        was = known.get(path)
        if was is not None and was[:2] == (st.st_size, st.st_mtime_ns):
            return was[2], None
        h = hashlib.sha256()
        head = b""
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                if not head:
                    head = chunk
                h.update(chunk)
        hashed.append((path, st.st_size, st.st_mtime_ns, h.digest()))
        return h.digest(), head
    except OSError:
        return unreadable_key(path), None


def _peek_day(path: str, head: bytes | None) -> dt.date | None:
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 20)
        except OSError:
            return None
    claimed = peek_header(head)
    return None if claimed is None else claimed[1]


def _survey(
    paths: Sequence[str], day: dt.date, ledger: Ledger, night: int, rerun: NightRecord | None
) -> _Survey:
    chosen: list[str] = []
    keys: dict[str, bytes] = {}
    seen: set[bytes] = set()
    later = done = after = 0
    done_set = set() if rerun is not None else ledger.done_files(night)
    known = ledger.known_paths()
    hashed: list[tuple[str, int, int, bytes]] = []
    for path in paths:
        key, head = _file_key(path, known, hashed)
        if key in seen:
            continue  # the same bytes under another name: one batch
        seen.add(key)
        if rerun is not None:
            if key in rerun.files:
                chosen.append(path)
                keys[path] = key
            else:
                after += 1
            continue
        if key in done_set:
            done += 1
            continue
        claimed = _peek_day(path, head)
        if claimed is not None and claimed > day:
            later += 1
            continue
        chosen.append(path)
        keys[path] = key
    if rerun is not None:
        absent = set(rerun.files) - set(keys.values())
        if absent:
            raise SettlementError(
                f"night {day} was settled from {len(rerun.files)} batch files; "
                f"{len(absent)} of them are no longer in the batch directory "
                f"(first: {sorted(absent)[0].hex()}), so it cannot be re-run"
            )
    return _Survey(chosen, keys, later, done, after, hashed)


def _inputs_digest(keys: Sequence[bytes], settings: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(keys):
        h.update(k)
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


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
) -> Settlement:
    """Settle ``inputs.day`` from ``paths`` against ``ledger`` (an empty one if None).

    With ``out_dir``, write the outputs, then append the night to the ledger; without
    it, nothing is written or recorded (a dry run)."""
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
    )
    mapper = map_units or (map_in_process if jobs == 1 else map_with_processes(jobs))
    try:
        with _without_cycle_collector():
            return _night(inputs, paths, cfg, mapper, out_dir, options, progress, book)
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
) -> Settlement:
    day = inputs.day
    rerun = ledger.night_of(day)
    if rerun is not None:
        night = rerun.night
    else:
        last = ledger.last_night()
        if last is not None and last[1] >= day:
            raise SettlementError(
                f"ledger {ledger.where} has settled nights up to {last[1]}; {day} cannot be "
                "settled after them (its late batches settle as corrections on the next night)"
            )
        night = last[0] + 1 if last is not None else 1
    if out_dir is not None:
        prepare_out(out_dir)
    survey = _survey(paths, day, ledger, night, rerun)
    digest = _inputs_digest(list(survey.keys.values()), inputs.settings)
    if rerun is not None and rerun.inputs_sha256 != digest:
        raise SettlementError(
            f"night {day} was settled with other inputs (register, keyring, fares or "
            "revocation files differ); a settled night is final"
        )
    partials: list[Partial] = []
    read_before = {unreadable_key(p): p for p, k in survey.keys.items() if k != unreadable_key(p)}
    for i, p in enumerate(mapper(survey.paths, cfg), 1):
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
            progress(i, len(survey.paths))
    gc.disable()
    unique: dict[bytes, Partial] = {}
    for p in partials:
        unique.setdefault(p.batch_sha256, p)
    ordered = [unique[k] for k in sorted(unique)]
    admission = admit(
        ordered,
        Settled(
            ledger.heads(night),
            lambda tid, seq, h: ledger.links_at(night, tid, seq, h),
            lambda tid, day_text: ledger.has_day(night, tid, day_text),
            first_night=night == 1,
        ),
    )
    opts = options or _merge_options(inputs, [a.partial for a in admission.admitted])
    corrections, main = _days(inputs, admission, ledger, night, opts)
    result = _assemble(inputs, survey, admission, main, corrections, night, rerun is not None)
    if out_dir is None:
        return result
    blobs = render_outputs(result, inputs.settings)
    digests = digests_of(blobs)
    if rerun is not None:
        if digests != rerun.outputs:
            differ = sorted(k for k in digests if digests[k] != rerun.outputs.get(k))
            raise SettlementError(
                f"re-running night {day} gives other {', '.join(differ)} than its first run "
                "(a batch file renamed, another farecore or pyarrow version, or a ledger "
                "changed by hand); nothing was written"
            )
        write_rendered(blobs, out_dir)
        return result
    # The ledger first: a night whose outputs fail to write is re-run to write them, and
    # a re-run never appends twice.
    _record(ledger, night, day, digest, digests, admission, [*corrections, main], survey.stats)
    try:
        write_rendered(blobs, out_dir)
    except SettlementError as exc:
        raise SettlementError(
            f"night {day} is recorded in the ledger, but its outputs were not written "
            f"({exc}); run the same command again to write them"
        ) from None
    return result


def _merge_options(inputs: SettlementInputs, admitted: list[Partial]) -> MergeOptions:
    """The revocation knowledge the merge needs, for the cards that rode tonight."""
    revoked = dict(inputs.revoked_at)
    cards = np.unique(np.concatenate([p.rides.card_id for p in admitted] or [_NO_CARDS]))
    gens = []
    for table in inputs.tables:
        found = table.find_many(cards)
        at = table.revoked_at
        for card, pos in zip(cards[found >= 0].tolist(), found[found >= 0].tolist(), strict=True):
            when = int(at[pos])
            revoked[card] = min(when, revoked.get(card, when))
        gens.append(
            RevocationGeneration(
                int(table.generation),
                int(table.created_at),
                _holder(table),
            )
        )
    return MergeOptions(
        revoked_at=revoked,
        generations=tuple(gens),
        revocation_max_age_s=inputs.fares.revocation_max_age_s,
    )


def _holder(table: RevocationTable) -> Callable[[np.ndarray], np.ndarray]:
    def holds(cards: np.ndarray) -> np.ndarray:
        found: np.ndarray = table.find_many(np.ascontiguousarray(cards, dtype=np.uint64)) >= 0
        return found

    return holds


def _max_window_ms(fares: FareTable) -> int:
    return max((w for p in fares.operators for _, w in p.passback_s), default=0) * 1000


def _context(ledger: Ledger, night: int, day: dt.date, fares: FareTable) -> list[TakenRide]:
    start, end = day_bounds_ms(day, fares.utc_offset_min)
    tol = fares.clock_tolerance_s * 1000
    return ledger.taken_between(night, start - tol - _max_window_ms(fares), end + tol)


def _taken_check(
    ledger: Ledger, night: int, tonight: set[tuple[int, int]]
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def taken(cards: np.ndarray, counters: np.ndarray) -> np.ndarray:
        mask = ledger.taken_mask(night, cards, counters)
        if tonight:
            seen = np.fromiter({card for card, _ in tonight}, dtype=np.uint64)
            for i in np.flatnonzero(np.isin(cards, seen)).tolist():
                if (int(cards[i]), int(counters[i])) in tonight:
                    mask[i] = True
        return mask

    return taken


def _days(
    inputs: SettlementInputs,
    admission: Admission,
    ledger: Ledger,
    night: int,
    opts: MergeOptions,
) -> tuple[list[DayResult], DayResult]:
    """Each earlier day a late batch reopened (its correction, oldest first), then the
    settled day. Every day is settled the same way; the counters each one takes are
    barred from the days after it tonight."""
    by_day: dict[str, list[Admitted]] = {inputs.day.isoformat(): []}
    for a in admission.admitted:
        by_day.setdefault(a.partial.day, []).append(a)
    results: list[DayResult] = []
    taken: set[tuple[int, int]] = set()
    for day_text in sorted(by_day):
        day, admitted = dt.date.fromisoformat(day_text), by_day[day_text]
        present = ledger.settled_terminals(night, day_text) | {
            a.partial.terminal_id for a in admitted
        }
        result = settle_day(
            DayInputs(
                day,
                admitted,
                ledger.held(night, day_text),
                _context(ledger, night, day, inputs.fares),
                frozenset(inputs.terminals) - present,
                _taken_check(ledger, night, taken),
                correction=day != inputs.day,
            ),
            inputs.fares,
            inputs.terminals,
            opts,
        )
        results.append(result)
        rides = result.rides.rides
        taken |= set(zip(rides.card_id.tolist(), rides.counter.tolist(), strict=True))
        taken |= {(h.card_id, h.counter) for h in result.held}
    return results[:-1], results[-1]


def _assemble(
    inputs: SettlementInputs,
    survey: _Survey,
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
    cards, counters, tids, seqs, times = [], [], [], [], []
    held: list[HeldRide] = []
    resolved: list[tuple[int, int]] = []
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
        held += r.held
        resolved += r.resolved
    ledger.record_night(
        night,
        day,
        digest,
        outputs,
        admission.outcomes,
        batches,
        (
            np.concatenate(cards) if cards else np.zeros(0, np.uint64),
            np.concatenate(counters) if counters else np.zeros(0, np.int64),
            np.concatenate(tids) if tids else np.zeros(0, np.uint64),
            np.concatenate(seqs) if seqs else np.zeros(0, np.uint64),
            np.concatenate(times) if times else np.zeros(0, np.int64),
        ),
        held,
        resolved,
        paths,
    )


def exit_status(s: Settlement) -> int:
    """0 when the night needs no review, else 3 (see ``farecore settle --help``)."""
    if s.stats.get("batches", 0) == 0:
        return 3  # no batch of the day at all: never a clean night
    if any(a.kind in REVIEW_KINDS for a in s.anomalies) or s.corrections:
        return 3
    return 0
