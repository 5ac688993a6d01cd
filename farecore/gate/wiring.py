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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from farecore.card.keys import Keyring, PublicKeyFile
from farecore.closing import Closing
from farecore.decide.checks import NO_PASSBACK, PassbackCheck
from farecore.decide.clockguard import ClockGuard
from farecore.decide.validator import Validator
from farecore.errors import ConfigError
from farecore.gate import parts
from farecore.gate.config import GateConfig
from farecore.gate.marks import GateMarks
from farecore.gate.parts import open_clock_guard, open_issued, open_revocation
from farecore.gate.reader_port import Reader
from farecore.gate.runtime import Actuator, CommandActuator, Gate, RideLog
from farecore.journal.passback import PassbackRule, PassbackStore, monotonic_ms
from farecore.journal.records import ROLE_DIRECTION
from farecore.journal.terminal import TapContext

if TYPE_CHECKING:
    from farecore.decide.revocation import HotRevocation
    from farecore.journal.station import StationJournal

__all__ = ["Station", "WiredGate", "build_gate", "check_terminal_key"]


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _random_nonce() -> bytes:
    return os.urandom(16)


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
        issued = open_issued(cfg, keyring, marks)
        revocation = open_revocation(cfg, marks, stack, clock_ms, revocation_poll_s)
        journal = _journal(cfg, station, stack)
        clock = open_clock_guard(cfg, marks, getattr(journal, "last_time_ms", 0), stack)
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
    """The gate's terminal key checked (``parts.check_terminal_key``); a register needs one."""
    if cfg.terminal_key is None and cfg.register is not None:
        raise ConfigError("terminal.register is set but terminal.key is not")
    return parts.check_terminal_key(cfg)
