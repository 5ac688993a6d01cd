"""A night's inputs other than the batches: register, keyring, fares and revocations.

Every one is read with a bounded size and checked before anything is settled or
written; a problem is one error naming the file (``farecore settle`` exits 2). The
revocation CSV is read by the same strict reader as ``farecore revocation build``, so a
file means the same at the gates' tables and at the settlement. A revocation delta is
verified against the base table given that it names, exactly as a gate does, and judges
rides at its own generation. The issuer's signed lists of its credentials (``--issued``)
are verified as a gate verifies them, and trusted as a gate trusts them: a credential
listed there needs no issuer signature check of its own. Each input's SHA-256 goes into
the manifest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from farecore.boundedinput import read_regular
from farecore.card.keys import Keyring, load_public_key_file
from farecore.decide.issued import MAX_LIST_BYTES, IssuedList
from farecore.decide.revocation import (
    RevocationDelta,
    RevocationInForce,
    RevocationTable,
    RevocationView,
)
from farecore.decide.revocation.csvinput import read_revocation_csv
from farecore.errors import IssuedListError, MalformedFile, SettlementError
from farecore.journal.records import Direction
from farecore.settlement.fares import FareTable, parse_fares
from farecore.settlement.terminals import TerminalInfo, parse_terminals

__all__ = [
    "BATCH_SUFFIX",
    "SettlementInputs",
    "find_batches",
    "load_inputs",
    "open_revocations",
    "read_input",
]

BATCH_SUFFIX = ".fcb"
_MAX_INPUT_BYTES = 64 << 20  # a register, keyring or fares file is far smaller


@dataclass(frozen=True, slots=True)
class SettlementInputs:
    day: dt.date
    terminals: dict[int, TerminalInfo]
    keyring: bytes
    fares: FareTable
    revoked_at: dict[int, int]
    settings: dict[str, str]  # input name -> SHA-256, for the manifest
    # Verified revocation tables, and views of deltas over them, by generation.
    tables: tuple[RevocationInForce, ...] = field(default=())
    # The verified issued lists, one per issuer key: (path, SHA-256 of the file's bytes,
    # its size). Every unit reads each again and stops the night unless its bytes are
    # still these.
    issued: tuple[tuple[str, str, int], ...] = ()


def read_input(path: Path, what: str) -> bytes:
    """A settlement-side input file, bounded as it is read; SettlementError naming it."""
    try:
        if path.is_dir():
            raise SettlementError(f"{what} {path} is a directory, not a file")
        # Bounded as it is read (the file can grow); a FIFO or a device is refused.
        return read_regular(path, _MAX_INPUT_BYTES, f"{what} {path}", SettlementError)
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
    revocation_deltas: Sequence[Path] = (),
    issued_lists: Sequence[Path] = (),
) -> SettlementInputs:
    """Read and check every input but the batches; SettlementError or MalformedFile
    naming the file on any problem, before anything is settled or written."""
    raw_t, raw_k, raw_f = (
        read_input(terminals, "terminal register"),
        read_input(keyring, "keyring"),
        read_input(fares, "fares file"),
    )
    ring = Keyring.from_bytes(raw_k, str(keyring))  # fail early, with the file's name
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
        {t.operator for t in register.values() if t.direction != Direction.CLAIM}
        - {p.operator for p in fare_table.operators}
    )
    if unknown:
        raise MalformedFile(
            f"{fares}: no [[operator]] for {', '.join(unknown)} (named by {terminals}); "
            "the settlement must know which regions and categories each operator accepts"
        )
    revoked: dict[int, int] = {}
    if revocations is not None:
        raw_r = read_input(revocations, "revocations CSV")
        cards, ats, _ = read_revocation_csv(revocations)  # the builder's strict reader
        for card, at in zip(cards.tolist(), ats.tolist(), strict=True):
            revoked[card] = min(at, revoked.get(card, at))
        settings["revocations_sha256"] = hashlib.sha256(raw_r).hexdigest()
    if isinstance(revocation_tables, Path):
        revocation_tables = [revocation_tables]
    tables = open_revocations(
        revocation_tables or (), revocation_deltas, revocation_signer, settings
    )
    issued = _open_issued(issued_lists, ring, settings)
    return SettlementInputs(day, register, raw_k, fare_table, revoked, settings, tables, issued)


def open_revocations(
    tables: Sequence[Path], deltas: Sequence[Path], signer: Path | None, settings: dict[str, str]
) -> tuple[RevocationInForce, ...]:
    """The signed revocation tables, and the deltas over them, each verified as a gate
    verifies it, by generation; each one's body SHA-256 goes into ``settings``.
    SettlementError naming the file on any problem, or two of one generation."""
    bases = [_open_table(path, signer, settings) for path in tables]
    found: list[RevocationInForce] = [*bases]
    found += [_open_delta(path, signer, bases, settings) for path in deltas]
    gens = [t.generation for t in found]
    if len(set(gens)) != len(gens):
        raise SettlementError("two revocation tables (or deltas) of the same generation were given")
    return tuple(sorted(found, key=lambda t: t.generation))


def _open_issued(
    paths: Sequence[Path], keyring: Keyring, settings: dict[str, str]
) -> tuple[tuple[str, str, int], ...]:
    """Verify each issued list against the keyring, exactly as a gate does; one list per
    issuer key. What the units are told: each list's path, the SHA-256 of its bytes and
    its size."""
    by_key: dict[int, tuple[Path, IssuedList]] = {}
    out: list[tuple[str, str, int]] = []
    for path in paths:
        if path.is_dir():
            raise SettlementError(f"issued list {path} is a directory, not a file")
        try:
            data = read_regular(path, MAX_LIST_BYTES, f"issued list {path}", SettlementError)
        except OSError as exc:
            raise SettlementError(
                f"cannot read issued list {path}: {exc.strerror or exc}"
            ) from None
        try:
            listed = IssuedList.from_bytes(data, keyring, str(path))
        except IssuedListError as exc:
            raise SettlementError(f"issued list {exc}") from None
        seen = by_key.get(listed.key_id)
        if seen is not None:
            raise SettlementError(
                f"issued lists {seen[0]} and {path} are both for issuer key {listed.key_id}; "
                "give one (the newest)"
            )
        by_key[listed.key_id] = (path, listed)
        digest = hashlib.sha256(data).hexdigest()
        settings[f"issued_list_key_{listed.key_id}_sha256"] = digest
        out.append((str(path.absolute()), digest, len(data)))
    return tuple(out)


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


def _open_delta(
    path: Path, signer: Path | None, bases: list[RevocationTable], settings: dict[str, str]
) -> RevocationView:
    """Verify a revocation delta, and against the base table given that it names."""
    if signer is None:
        raise SettlementError("--revocation-delta needs --revocation-signer (a .pub file)")
    if not path.is_file():
        raise SettlementError(f"revocation delta {path} is not a file")
    delta = RevocationDelta.open(path, load_public_key_file(signer, role="revocation"))
    base = next(
        (
            t
            for t in bases
            if hashlib.sha256(t.header_bytes()).digest() == delta.header.base_header_sha256
        ),
        None,
    )
    if base is None:
        raise SettlementError(
            f"revocation delta {path} is over a base of generation {delta.base_generation} "
            "that no --revocation-table given is"
        )
    view = RevocationView.over(base, delta, path)
    settings[f"revocation_delta_generation_{view.generation}_body_sha256"] = (
        delta.header.body_sha256.hex()
    )
    return view


def find_batches(directory: Path) -> list[str]:
    """Every ``*.fcb`` entry under ``directory``, sorted: files, and anything else so named
    (a directory, a dangling link), which the night then rejects by name."""
    if not directory.is_dir():
        raise SettlementError(f"batch directory {directory} does not exist")
    try:
        return sorted(str(p) for p in directory.rglob(f"*{BATCH_SUFFIX}"))
    except OSError as exc:
        raise SettlementError(f"cannot list batch directory {directory}: {exc.strerror}") from None
