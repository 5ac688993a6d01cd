"""The gate runtime: wait for a card, run the tap, decide, journal, signal, wait for removal.

Order matters and is fixed here, the same for every ride log: the gate decides, hands
the ride to the log (``RideLog.stage``), records the lockout the ride causes, has the log
make the ride durable (``RideLog.commit``), and only then opens (``Gate.complete``). So
an opened gate always has its ride on disk. A lockout never outlives a ride that did not
become durable: a terminal's journal makes the ride durable within ``stage``, before the
lockout is written to the gate's own passback store; a station's journal
(``StationTerminal``, with ``PassbackStore.in_station``) stages both in one group and
makes them durable in the same commit.

Reader failures never stop the loop: a card failure is an UNREADABLE deny, a reader
failure is retried with backoff. Only a journal that cannot write stops the gate,
because a gate that cannot log a free ride must not give one.

The gate's observer (``farecore.gate.observe``) hears of every tap served and of the
reader going and coming back; by default nobody listens.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TextIO

from farecore.decide.checks import NO_PASSBACK, PassbackCheck
from farecore.decide.decision import Decision
from farecore.decide.validator import Validator
from farecore.errors import ReaderError
from farecore.gate.observe import NO_OBSERVER, GateObserver
from farecore.gate.reader_port import CardChannel, Reader
from farecore.gate.tap import run_tap

__all__ = [
    "Actuator",
    "CommandActuator",
    "ConsoleActuator",
    "Gate",
    "RideLog",
    "decision_json",
    "mask_card_id",
]

_log = logging.getLogger(__name__)


class RideLog(Protocol):
    """The durable journal as the gate sees it: a terminal's ``Journal`` or a gate's
    ``StationTerminal`` of a station journal.

    ``stage`` takes a ride; ``commit`` returns once every ride this gate staged is
    durable (raising JournalError if it cannot be). What the gate records between the
    two (the ride's lockout) must become durable no earlier than the ride: a log either
    makes the ride durable within ``stage``, or writes that lockout in the ride's commit.
    """

    def stage(self, decision: Decision, ctx: Any) -> None: ...

    def commit(self) -> None: ...

    def close(self) -> None: ...


class _NoRideLog:
    """A gate configured without a journal."""

    def stage(self, decision: Decision, ctx: Any) -> None:
        return None

    def commit(self) -> None:
        return None

    def close(self) -> None:
        return None


class Actuator(Protocol):
    """What opens the gate (a relay, a turnstile motor) or shows the refusal."""

    def signal(self, decision: Decision) -> None: ...


def mask_card_id(card_id: int | None) -> str:
    """A card id for people and logs: only the last four digits."""
    return "-" if card_id is None else f"****{card_id % 10_000:04d}"


def decision_json(decision: Decision, place: str = "", role: str = "") -> str:
    """One JSON log line for the operator's pipeline."""
    t = decision.timings
    return json.dumps(
        {
            "time_ms": decision.time_ms,
            "terminal_id": decision.terminal_id,
            "place": place,
            "role": role,
            "card": mask_card_id(decision.card_id),
            "card_id": decision.card_id,
            "decision": "ACCEPT" if decision.accepted else "DENY",
            "reason": None if decision.reason is None else decision.reason.name,
            "counter": decision.counter,
            "revocation_generation": decision.revocation_generation,
            "flags": sorted(decision.flags),
            "detail": decision.detail,
            "latency_us": round(t.total_us, 1),
        },
        separators=(",", ":"),
    )


class ConsoleActuator:
    """Prints one clear line per tap, for a technician watching the gate."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def signal(self, decision: Decision) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(decision.time_ms / 1000))
        verdict = "OPEN  ACCEPT" if decision.accepted else f"SHUT  DENY {decision.label}"
        print(
            f"{stamp}Z  card {mask_card_id(decision.card_id):>9}  {verdict:<34}"
            f"{decision.timings.total_us / 1000:7.2f} ms",
            file=self._stream or sys.stderr,
            flush=True,
        )


class CommandActuator:
    """Runs a command on ACCEPT (a GPIO or relay tool), then delegates to another actuator.

    The command is started, not waited for: a slow relay tool must not delay the next tap.
    """

    def __init__(self, command: Sequence[str], then: Actuator | None = None) -> None:
        self._command = list(command)
        self._then = then
        self._running: list[subprocess.Popen[bytes]] = []

    def signal(self, decision: Decision) -> None:
        if decision.accepted and self._command:
            self._running = [p for p in self._running if p.poll() is None]
            try:
                self._running.append(subprocess.Popen(self._command, stdin=subprocess.DEVNULL))
            except OSError as exc:
                _log.warning("actuator command failed: %s", exc)
        if self._then is not None:
            self._then.signal(decision)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Gate:
    """One gate: a reader, a validator, a journal, passback state and an actuator."""

    def __init__(
        self,
        reader: Reader,
        validator: Validator,
        *,
        journal: RideLog | None = None,
        context: Any = None,
        passback: PassbackCheck = NO_PASSBACK,
        actuator: Actuator | None = None,
        log: TextIO | None = None,
        place: str = "",
        role: str = "",
        clock_ms: Callable[[], int] = _wall_clock_ms,
        nonce: Callable[[], bytes] = lambda: os.urandom(16),
        observer: GateObserver = NO_OBSERVER,
    ) -> None:
        self.reader = reader
        self.validator = validator
        self.journal = journal
        self._rides: RideLog = journal if journal is not None else _NoRideLog()
        self.context = context
        self.passback = passback
        self.actuator = actuator
        self.log = log
        self.place = place
        self.role = role
        self._clock_ms = clock_ms
        self._nonce = nonce
        self._stop = threading.Event()
        self.taps = 0
        # Assignable after the gate is built (``farecore.fleet.metrics.watch_gate``).
        self.observer = observer
        self._reader_lost = False

    def process(self, channel: CardChannel) -> Decision:
        """One tap on a card already in the field: decide, journal, record, signal."""
        decision = self.stage(channel)
        self._rides.commit()  # durable before the gate opens
        self.complete(decision)
        return decision

    def stage(self, channel: CardChannel) -> Decision:
        """Decide a tap, hand its ride to the journal and record its lockout, without
        signalling: ``process`` (or ``farecore.gate.controller.StationController``, which
        commits the rides of several gates at once) makes the ride durable and then
        calls ``complete``."""
        now = self._clock_ms()
        decision = run_tap(channel, self.validator, now, self._nonce())
        self._rides.stage(decision, self.context)
        if decision.accepted and decision.card_id is not None:
            self.passback.record(decision.card_id, now)
        return decision

    def complete(self, decision: Decision) -> None:
        """Signal a decision whose ride is durable: open or refuse, and log it."""
        if self.actuator is not None:
            self.actuator.signal(decision)
        if self.log is not None:
            self.log.write(decision_json(decision, self.place, self.role) + "\n")
            self.log.flush()
        self.taps += 1
        try:
            self.observer.decided(decision)
        except Exception as exc:  # watching the gate must never stop it
            _log.warning("gate observer failed: %s", exc)

    def stop(self) -> None:
        """Ask the loop to finish after the current tap (safe from a signal handler)."""
        self._stop.set()

    def run(self, poll_s: float = 0.25, max_taps: int | None = None) -> int:
        """Serve taps until stop() or ``max_taps``; return the number of taps served.

        Raises JournalError when the journal cannot write: the gate must then go out of
        service rather than give rides it cannot log.
        """
        backoff = 0.05
        served = 0
        while not self._stop.is_set() and (max_taps is None or served < max_taps):
            try:
                channel = self.reader.wait_for_card(poll_s)
            except ReaderError as exc:
                self._lost(exc)
                self._note(f"reader unavailable: {exc}; retrying in {backoff:.2f} s")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            if self._reader_lost:
                self._back()
            if channel is None:
                continue
            self.process(channel)  # a JournalError stops the gate: see the docstring
            served += 1
            self._await_removal(poll_s)
        return served

    def _await_removal(self, poll_s: float) -> None:
        # A card left on the reader must not ride twice: wait until it leaves.
        while not self._stop.is_set():
            try:
                if self.reader.wait_for_removal(poll_s):
                    return
            except ReaderError as exc:
                self._lost(exc)
                self._note(f"reader failed while waiting for the card to leave: {exc}")
                return

    def _lost(self, exc: ReaderError) -> None:
        # Told once per outage: the loop retries many times before the reader is back.
        if not self._reader_lost:
            try:
                self.observer.reader_lost(str(exc))
            except Exception as err:  # watching the gate must never stop it
                _log.warning("gate observer failed: %s", err)
            self._reader_lost = True

    def _back(self) -> None:
        try:
            self.observer.reader_back()
        except Exception as err:
            _log.warning("gate observer failed: %s", err)
        self._reader_lost = False

    def _note(self, message: str) -> None:
        _log.warning("%s", message)
