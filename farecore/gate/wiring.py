"""A gate built from its configuration: the one wiring ``farecore gate`` and the simulator use.

``build_gate`` checks the terminal key, loads the gate's durable
marks (``farecore.gate.marks``), opens the issuer's lists and the revocation table
(refusing either if older than what the marks hold), the journal, the clock guard and
the passback state, and puts them behind one ``Gate``. A gate of a station controller
passes a :class:`Station`: its rides then go to the station journal and its passback
state lives in that file, shared by the gates of one place.

The gate's clock function is the only time it reads: the clock guard's first check, the
staleness warning at start and every tap use it, so a gate run on another clock (a
simulated day) is judged by that clock alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from farecore.card.keys import Keyring, PublicKeyFile, load_private_key
from farecore.closing import Closing
from farecore.decide.checks import NO_PASSBACK, PassbackCheck
from farecore.decide.clockguard import ClockGuard
from farecore.decide.validator import Validator
from farecore.errors import ConfigError
from farecore.gate.config import GateConfig
from farecore.gate.marks import GateMarks
from farecore.gate.reader_port import Reader
from farecore.gate.runtime import Actuator, CommandActuator, Gate, RideLog
from farecore.journal.passback import PassbackRule, PassbackStore, monotonic_ms
from farecore.journal.records import ROLE_DIRECTION
from farecore.journal.terminal import TapContext

if TYPE_CHECKING:
    from farecore.decide.issued import IssuedList
    from farecore.decide.revocation import HotRevocation
    from farecore.journal.station import StationJournal

__all__ = ["Station", "WiredGate", "build_gate", "check_terminal_key"]


_log = logging.getLogger(__name__)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _random_nonce() -> bytes:
    return os.urandom(16)


def _loud(message: str) -> None:
    _log.warning("%s", message)


@dataclass(frozen=True, slots=True)
class Station:
    """What the gates of one station controller share: the station journal, each
    place's passback state inside it, and the credentials they have verified.

    ``monotonic`` and ``boot`` time the passback state (``PassbackStore.in_station``).
    The cache is shared only by gates that load the same keyring.
    """

    journal: StationJournal
    monotonic: Callable[[], int] = monotonic_ms
    boot: str | None = None
    cache_size: int = 100_000
    cache: dict[bytes, object] = field(default_factory=dict)
    places: dict[tuple[str, int, int | None], PassbackStore] = field(default_factory=dict)

    def passback(self, cfg: GateConfig) -> PassbackStore:
        """The passback state of the gate's place (one per place and window), or a venue
        gate's state of its site."""
        rule, where = _rule(cfg)
        key = (where, rule.window_s, rule.service_day_offset_min)
        store = self.places.get(key)
        if store is None:
            store = self.places[key] = PassbackStore.in_station(
                self.journal, rule, where, monotonic=self.monotonic, boot=self.boot
            )
        return store


class WiredGate(Closing):
    """A built gate and what must be closed with it (``close``, or use it as a context)."""

    def __init__(
        self,
        gate: Gate,
        revocation: HotRevocation | None,
        clock: ClockGuard,
        marks: GateMarks,
        stack: contextlib.ExitStack,
    ) -> None:
        self.gate = gate
        self.revocation = revocation
        self.clock = clock
        self.marks = marks
        self._stack = stack

    def close(self) -> None:
        """Close the reader, journal, table and passback state; keep the time mark."""
        self._stack.close()


def build_gate(
    cfg: GateConfig,
    reader: Reader,
    *,
    station: Station | None = None,
    clock_ms: Callable[[], int] = _wall_clock_ms,
    nonce: Callable[[], bytes] = _random_nonce,
    revocation_poll_s: float | None = 1.0,
    actuator: Actuator | None = None,
    log: TextIO | None = None,
) -> WiredGate:
    """Build every part of the gate ``cfg`` describes around ``reader`` (opened here, last).

    ``clock_ms`` is the gate's clock (the tap times and the clock guard's); ``nonce``
    its nonce source. ``revocation_poll_s`` None: the table is reloaded only by
    ``revocation.poll()``. Raises ConfigError (or the error of the part that failed)
    with nothing left open.
    """
    stack = contextlib.ExitStack()
    try:
        check_terminal_key(cfg)
        keyring = Keyring.load(cfg.keyring)
        marks = GateMarks.load(cfg.marks, cfg.terminal_id)
        issued = _issued(cfg, keyring, marks)
        revocation = _revocation(cfg, marks, stack, clock_ms, revocation_poll_s)
        journal = _journal(cfg, station, stack)
        clock = _clock_guard(cfg, marks, journal, stack)
        validator = Validator(
            cfg.policy(),
            keyring,
            revocation,
            _passback(cfg, station, stack),
            cache_size=station.cache_size if station is not None else 100_000,
            cache=station.cache if station is not None else None,
            issued=issued,
            clock=clock,
        )
        # A clock already behind is said loudly now, not at the first tap.
        created_ms = revocation.snapshot().created_at * 1000 if revocation is not None else 0
        clock.check(clock_ms(), created_ms)
        reader.open()
        stack.callback(reader.close)
        gate = Gate(
            reader,
            validator,
            journal=journal,
            context=TapContext(cfg.operator, cfg.line, cfg.place, ROLE_DIRECTION[cfg.role]),
            passback=validator.passback,
            actuator=_actuator(cfg, actuator),
            log=log,
            place=cfg.place,
            role=cfg.role,
            clock_ms=clock_ms,
            nonce=nonce,
        )
    except BaseException:
        stack.close()
        raise
    return WiredGate(gate, revocation, clock, marks, stack)


def _actuator(cfg: GateConfig, then: Actuator | None) -> Actuator | None:
    """The configured command (run on ACCEPT) in front of ``then``, if there is one."""
    return CommandActuator(cfg.actuator_command, then=then) if cfg.actuator_command else then


def _revocation(
    cfg: GateConfig,
    marks: GateMarks,
    stack: contextlib.ExitStack,
    clock_ms: Callable[[], int],
    poll_s: float | None,
) -> HotRevocation | None:
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
        _loud(f"WARNING: {hot.last_rejection}; this gate keeps generation {hot.generation}")
    snapshot = hot.snapshot()
    _warn_if_stale(cfg, snapshot.generation, snapshot.created_at, clock_ms() / 1000)
    return hot


def _warn_if_stale(cfg: GateConfig, generation: int, created_at: int, now: float) -> None:
    """Say loudly, at start, what the first taps would otherwise reveal one by one. (A
    table made in the gate's future is a clock fault, which the clock guard says.)"""
    age = now - created_at
    if cfg.revocation_max_age_s is not None and age > cfg.revocation_max_age_s:
        then = (
            "every tap will be DENIED REVOCATION_STALE"
            if cfg.stale_policy == "closed"
            else "every ride will be accepted flagged revocation_stale"
        )
        _loud(
            f"WARNING: revocation table generation {generation} is already stale: made "
            f"{int(age)} s ago, max_age_s {cfg.revocation_max_age_s}; {then} until a newer "
            "table is published"
        )


def _issued(cfg: GateConfig, keyring: Keyring, marks: GateMarks) -> list[IssuedList]:
    """The issued lists to use: none older than one this gate already used (rollback)."""
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
                f"issuer key {listed.key_id} is a rollback (this gate used generation "
                f"{seen[0]}); not used"
            )
            continue
        marks.issued[listed.key_id] = (listed.generation, digest)
        lists.append(listed)
    marks.save()
    return lists


def _generation(listed: IssuedList) -> int:
    return listed.generation


def _journal(
    cfg: GateConfig, station: Station | None, stack: contextlib.ExitStack
) -> RideLog | None:
    """The station journal's view for this terminal, or the gate's own journal file."""
    if station is not None:
        return station.journal.terminal(cfg.terminal_id)
    if cfg.journal is None:
        return None
    from farecore.journal.terminal import Journal

    journal = Journal.open(
        cfg.journal, cfg.terminal_id, group_commit_ms=cfg.group_commit_ms or None
    )
    stack.callback(journal.close)
    return journal


def _clock_guard(
    cfg: GateConfig, marks: GateMarks, journal: RideLog | None, stack: contextlib.ExitStack
) -> ClockGuard:
    """The guard over the latest time this gate has seen: its marks and its journal."""
    last = getattr(journal, "last_time_ms", 0)

    def changed(faulted: bool, now_ms: int, floor_ms: int) -> None:
        if faulted:
            try:
                marks.raise_time(floor_ms)  # the records now written must not lower the mark
            except ConfigError as exc:  # the journal's records still hold the time
                _loud(f"WARNING: {exc}")
            _loud(
                f"CLOCK FAULT: the clock is {(floor_ms - now_ms) // 1000} s behind a time this "
                "gate has seen; every tap is DENIED CLOCK_FAULT until the clock is right"
            )
        else:
            _loud("clock fault over: the clock is ahead of every time this gate has seen")

    guard = ClockGuard(max(marks.time_ms, last), cfg.clock_tolerance_s, changed)

    def keep_floor() -> None:
        try:
            marks.raise_time(guard.floor_ms)
        except ConfigError as exc:
            _loud(f"WARNING: {exc}")

    stack.callback(keep_floor)  # at a clean stop, the latest time seen outlives the journal
    return guard


def _rule(cfg: GateConfig) -> tuple[PassbackRule, str]:
    """The gate's rule and the key its state is kept under: a venue's site (its ``line``),
    shared by the site's entrances, or the place."""
    if cfg.role == "venue":
        # Prefixed: a site never shares state with a place of the same name in one file.
        return PassbackRule.once_a_day(cfg.venue_utc_offset_min), f"site:{cfg.line}"
    return PassbackRule(window_s=cfg.passback_window_s), cfg.place


def _passback(
    cfg: GateConfig, station: Station | None, stack: contextlib.ExitStack
) -> PassbackCheck:
    venue = cfg.role == "venue"
    if not venue and (cfg.passback_window_s == 0 or cfg.role == "metro_exit"):
        return NO_PASSBACK
    if station is not None:
        return station.passback(cfg)
    path = cfg.venue_store if venue else cfg.passback_store
    if path is None:
        raise ConfigError("passback.window_s is set but passback.store is not")
    rule, where = _rule(cfg)
    store = PassbackStore.open(path, rule, where)
    stack.callback(store.close)
    return store


def check_terminal_key(cfg: GateConfig) -> PublicKeyFile | None:
    """The key a gate's batches will be signed with must exist and be this terminal's:
    found wrong at the end of the day, the day's rides could not be paid. Returns its
    public part (None: the configuration names no key)."""
    if cfg.terminal_key is None:
        if cfg.register is not None:
            raise ConfigError("terminal.register is set but terminal.key is not")
        return None
    key = load_private_key(cfg.terminal_key, role="terminal")
    if key.key_id != cfg.terminal_id:
        raise ConfigError(
            f"terminal.key {cfg.terminal_key} is terminal {key.key_id}'s key, not terminal "
            f"{cfg.terminal_id}'s"
        )
    return key.public()
