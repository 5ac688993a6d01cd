"""The parts every deciding terminal builds from its configuration: a gate's
(``farecore.gate.wiring``) and a merchant till's (``farecore.merchant.till``).

Both decide only from files they have verified and never step back from what their marks
(``farecore.gate.marks``) hold: the issuer's lists (no list older than one already used),
the signed revocation table (hot-reloaded, never rolled back), the clock guard over the
latest time seen, and the terminal key their batches are signed with. (The register
entry the settlement holds them to is checked by ``farecore.settlement.terminals``.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from farecore.card.keys import Keyring, PublicKeyFile, load_private_key
from farecore.decide.clockguard import ClockGuard
from farecore.errors import ConfigError
from farecore.gate.marks import GateMarks

if TYPE_CHECKING:
    from farecore.decide.issued import IssuedList
    from farecore.decide.revocation import HotRevocation

__all__ = [
    "TerminalFiles",
    "check_terminal_key",
    "open_clock_guard",
    "open_issued",
    "open_revocation",
]

_log = logging.getLogger(__name__)


def _loud(message: str) -> None:
    _log.warning("%s", message)


class TerminalFiles(Protocol):
    """What a terminal's configuration says about the files it decides from."""

    @property
    def terminal_id(self) -> int: ...

    @property
    def terminal_key(self) -> Path | None: ...

    @property
    def issued_lists(self) -> tuple[Path, ...]: ...

    @property
    def revocation_table(self) -> Path | None: ...

    @property
    def revocation_signer(self) -> Path | None: ...

    @property
    def revocation_store(self) -> Path: ...

    @property
    def revocation_max_age_s(self) -> int | None: ...

    @property
    def stale_policy(self) -> str: ...

    @property
    def clock_tolerance_s(self) -> int: ...


def check_terminal_key(cfg: TerminalFiles) -> PublicKeyFile | None:
    """The key a terminal's batches will be signed with must exist and be this terminal's:
    found wrong at the end of the day, the day's records could not be counted. Returns its
    public part (None: the configuration names no key)."""
    if cfg.terminal_key is None:
        return None
    key = load_private_key(cfg.terminal_key, role="terminal")
    if key.key_id != cfg.terminal_id:
        raise ConfigError(
            f"terminal.key {cfg.terminal_key} is terminal {key.key_id}'s key, not terminal "
            f"{cfg.terminal_id}'s"
        )
    return key.public()


def open_revocation(
    cfg: TerminalFiles,
    marks: GateMarks,
    stack: contextlib.ExitStack,
    clock_ms: Callable[[], int],
    poll_s: float | None,
) -> HotRevocation | None:
    """The table in force (None: the configuration names none), hot-reloaded, never below
    the marks; said loudly at start if it is already stale or was refused."""
    if cfg.revocation_table is None:
        return None
    from farecore.card.keys import load_public_key_file
    from farecore.decide.revocation import HotRevocation, RevocationInForce, TableStore

    signer = load_public_key_file(cfg.revocation_signer, role="revocation")  # type: ignore[arg-type]
    store = TableStore(cfg.revocation_store)

    def adopt(table: RevocationInForce) -> None:
        # Durable before the table (or base and delta) goes in force: a restart can never
        # fall back below it.
        marks.revocation = table.floor_mark()
        marks.save()

    hot = HotRevocation(
        cfg.revocation_table,
        signer,
        poll_interval_s=poll_s,
        store=store,
        floor=marks.revocation,
        on_adopt=adopt,
    )
    stack.callback(hot.close)
    if hot.rejected:
        _loud(f"WARNING: {hot.last_rejection}; this terminal keeps generation {hot.generation}")
    snapshot = hot.snapshot()
    _warn_if_stale(cfg, snapshot.generation, snapshot.created_at, clock_ms() / 1000)
    return hot


def _warn_if_stale(cfg: TerminalFiles, generation: int, created_at: int, now: float) -> None:
    """Say loudly, at start, what the first taps would otherwise reveal one by one. (A
    table made in the terminal's future is a clock fault, which the clock guard says.)"""
    age = now - created_at
    if cfg.revocation_max_age_s is not None and age > cfg.revocation_max_age_s:
        then = (
            "every tap will be DENIED REVOCATION_STALE"
            if cfg.stale_policy == "closed"
            else "every tap will be accepted flagged revocation_stale"
        )
        _loud(
            f"WARNING: revocation table generation {generation} is already stale: made "
            f"{int(age)} s ago, max_age_s {cfg.revocation_max_age_s}; {then} until a newer "
            "table is published"
        )


def open_issued(cfg: TerminalFiles, keyring: Keyring, marks: GateMarks) -> list[IssuedList]:
    """The issued lists to use: none older than one this terminal already used (rollback)."""
    from farecore.decide.issued import IssuedList

    lists = []
    # Oldest first: of two lists for one issuer key, the later one is kept, not refused.
    opened = sorted((IssuedList.open(p, keyring) for p in cfg.issued_lists), key=_generation)
    for listed in opened:
        digest = listed.header.body_sha256.hex()
        seen = marks.issued.get(listed.key_id)
        if seen is not None and (
            listed.generation < seen[0] or (listed.generation == seen[0] and digest != seen[1])
        ):
            _loud(
                f"WARNING: issued list {listed.path}: generation {listed.generation} for "
                f"issuer key {listed.key_id} is a rollback (this terminal used generation "
                f"{seen[0]}); not used"
            )
            continue
        marks.issued[listed.key_id] = (listed.generation, digest)
        lists.append(listed)
    marks.save()
    return lists


def _generation(listed: IssuedList) -> int:
    return listed.generation


def open_clock_guard(
    cfg: TerminalFiles, marks: GateMarks, last_time_ms: int, stack: contextlib.ExitStack
) -> ClockGuard:
    """The guard over the latest time this terminal has seen: its marks and its journal's
    last record (``last_time_ms``)."""

    def changed(faulted: bool, now_ms: int, floor_ms: int) -> None:
        if faulted:
            try:
                marks.raise_time(floor_ms)  # the records now written must not lower the mark
            except ConfigError as exc:  # the journal's records still hold the time
                _loud(f"WARNING: {exc}")
            _loud(
                f"CLOCK FAULT: the clock is {(floor_ms - now_ms) // 1000} s behind a time this "
                "terminal has seen; every tap is DENIED CLOCK_FAULT until the clock is right"
            )
        else:
            _loud("clock fault over: the clock is ahead of every time this terminal has seen")

    guard = ClockGuard(max(marks.time_ms, last_time_ms), cfg.clock_tolerance_s, changed)

    def keep_floor() -> None:
        try:
            marks.raise_time(guard.floor_ms)
        except ConfigError as exc:
            _loud(f"WARNING: {exc}")

    stack.callback(keep_floor)  # at a clean stop, the latest time seen outlives the journal
    return guard
