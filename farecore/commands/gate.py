"""``farecore gate``: run a gate terminal on a reader until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farecore.card.keys import Keyring
from farecore.commands._args import count
from farecore.decide.checks import NO_PASSBACK, PassbackCheck, RevocationSource
from farecore.decide.clockguard import ClockGuard
from farecore.decide.validator import Validator
from farecore.errors import ConfigError, JournalError
from farecore.gate.config import GateConfig, load_gate_config
from farecore.gate.marks import GateMarks
from farecore.gate.reader_port import open_reader
from farecore.gate.runtime import Actuator, CommandActuator, ConsoleActuator, Gate, RideLog

if TYPE_CHECKING:
    from farecore.decide.issued import IssuedList

__all__ = ["open_gate", "register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "gate",
        help="run a gate terminal on a reader",
        description="Run a gate terminal: wait for a card, decide, journal the ride durably, "
        "signal the actuator, wait for removal. One JSON line per tap goes to stdout; a "
        "human line per tap goes to stderr. SIGTERM or SIGINT stops it cleanly.",
    )
    p.add_argument(
        "--reader",
        required=True,
        metavar="URL",
        help="pcsc: | pcsc:NAME | pn532:/dev/ttyUSB0 | virtual:",
    )
    p.add_argument("--config", required=True, type=Path, help="gate configuration (TOML)")
    p.add_argument("--max-taps", type=count("the number of taps"), help="stop after this many taps")
    p.add_argument("--quiet", action="store_true", help="no human line per tap on stderr")
    p.set_defaults(func=_run)


def _revocation(
    cfg: GateConfig, stack: contextlib.ExitStack, marks: GateMarks
) -> RevocationSource | None:
    if cfg.revocation_table is None:
        return None
    from farecore.card.keys import load_public_key_file
    from farecore.decide.revocation import HotRevocation, RevocationTable, TableStore

    signer = load_public_key_file(cfg.revocation_signer, role="revocation")  # type: ignore[arg-type]
    store = TableStore(cfg.revocation_store)

    def adopt(table: RevocationTable) -> None:
        # Durable before the table goes in force: a restart can never fall back below it.
        marks.revocation = (table.generation, table.path.name)
        marks.save()

    hot = HotRevocation(
        cfg.revocation_table, signer, store=store, floor=marks.revocation, on_adopt=adopt
    )
    stack.callback(hot.close)
    if hot.rejected:
        _loud(f"WARNING: {hot.last_rejection}; this gate keeps generation {hot.generation}")
    _warn_if_stale(cfg, hot.snapshot().generation, hot.snapshot().created_at, time.time())
    return hot


def _issued(cfg: GateConfig, keyring: Keyring, marks: GateMarks) -> list[IssuedList]:
    """The issued lists to use: none older than one this gate already used (rollback)."""
    from farecore.decide.issued import IssuedList

    lists = []
    # Oldest first: of two lists for one issuer key, the later one is kept, not refused.
    opened = sorted((IssuedList.open(p, keyring) for p in cfg.issued_lists), key=_generation)
    for listed in opened:
        path = listed.path
        digest = listed.header.body_sha256.hex()
        seen = marks.issued.get(listed.key_id)
        if seen is not None and (
            listed.generation < seen[0] or (listed.generation == seen[0] and digest != seen[1])
        ):
            _loud(
                f"WARNING: issued list {path}: generation {listed.generation} for issuer key "
                f"{listed.key_id} is a rollback (this gate used generation {seen[0]}); not used"
            )
            continue
        marks.issued[listed.key_id] = (listed.generation, digest)
        lists.append(listed)
    marks.save()
    return lists


def _generation(listed: IssuedList) -> int:
    return listed.generation


def _clock(
    cfg: GateConfig, marks: GateMarks, journal: RideLog | None, stack: contextlib.ExitStack
) -> ClockGuard:
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


def _loud(message: str) -> None:
    print(f"farecore gate: {message}", file=sys.stderr, flush=True)


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


def _journal(cfg: GateConfig, stack: contextlib.ExitStack) -> tuple[RideLog | None, Any]:
    from farecore.journal.records import ROLE_DIRECTION
    from farecore.journal.terminal import Journal, TapContext

    direction = ROLE_DIRECTION[cfg.role]
    ctx = TapContext(operator=cfg.operator, line=cfg.line, place=cfg.place, direction=direction)
    if cfg.journal is None:
        return None, ctx
    journal = Journal.open(
        cfg.journal, cfg.terminal_id, group_commit_ms=cfg.group_commit_ms or None
    )
    stack.callback(journal.close)
    return journal, ctx


def _passback(cfg: GateConfig, stack: contextlib.ExitStack) -> PassbackCheck:
    if cfg.passback_window_s == 0 or cfg.role == "metro_exit":
        return NO_PASSBACK
    if cfg.passback_store is None:
        raise ConfigError("passback.window_s is set but passback.store is not")
    from farecore.journal.passback import PassbackRule, PassbackStore

    store = PassbackStore.open(
        cfg.passback_store, PassbackRule(window_s=cfg.passback_window_s), cfg.place
    )
    close = getattr(store, "close", None)
    if close is not None:
        stack.callback(close)
    return store


def _check_terminal_key(cfg: GateConfig) -> None:
    """The key a gate's batches will be signed with must exist and be this terminal's, and,
    with a register, be the one registered for it, for the same place: found wrong at the
    end of the day, the day's rides could not be paid."""
    if cfg.terminal_key is None:
        if cfg.register is not None:
            raise ConfigError("terminal.register is set but terminal.key is not")
        return
    from farecore.card.keys import load_private_key

    key = load_private_key(cfg.terminal_key, role="terminal")
    if key.key_id != cfg.terminal_id:
        raise ConfigError(
            f"terminal.key {cfg.terminal_key} is terminal {key.key_id}'s key, not terminal "
            f"{cfg.terminal_id}'s"
        )
    if cfg.register is None:
        return
    from farecore.journal.records import ROLE_DIRECTION
    from farecore.settlement.terminals import parse_terminals

    try:
        text = cfg.register.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"terminal.register {cfg.register}: cannot read: {exc}") from None
    info = parse_terminals(text, str(cfg.register)).get(cfg.terminal_id)
    if info is None:
        raise ConfigError(f"terminal {cfg.terminal_id} is not in the register {cfg.register}")
    public = key.public()
    if (info.algorithm, info.public_key) != (public.algorithm, public.public_key):
        raise ConfigError(
            f"terminal.key {cfg.terminal_key} is not the key the register {cfg.register} "
            f"holds for terminal {cfg.terminal_id}"
        )
    mine = (cfg.operator, cfg.line, cfg.place, ROLE_DIRECTION[cfg.role])
    registered = (info.operator, info.line, info.place, info.direction)
    if mine != registered:
        raise ConfigError(
            f"terminal {cfg.terminal_id} is registered as {'/'.join(map(str, registered))} "
            f"in {cfg.register}, but configured as {'/'.join(map(str, mine))}: its rides "
            "would not be paid"
        )


def open_gate(
    cfg: GateConfig, reader_url: str, stack: contextlib.ExitStack, *, quiet: bool = False
) -> Gate:
    """Build every part of a gate from its configuration; register cleanups on ``stack``."""
    _check_terminal_key(cfg)
    keyring = Keyring.load(cfg.keyring)
    marks = GateMarks.load(cfg.marks, cfg.terminal_id)
    issued = _issued(cfg, keyring, marks)
    revocation = _revocation(cfg, stack, marks)
    journal, ctx = _journal(cfg, stack)
    clock = _clock(cfg, marks, journal, stack)
    validator = Validator(cfg.policy(), keyring, revocation, issued=issued, clock=clock)
    # A clock already behind is said loudly now, not at the first tap.
    clock.check(
        int(time.time() * 1000), revocation.snapshot().created_at * 1000 if revocation else 0
    )
    passback = _passback(cfg, stack)
    validator.passback = passback
    reader = open_reader(reader_url)
    reader.open()
    stack.callback(reader.close)
    actuator: Actuator | None = None if quiet else ConsoleActuator()
    if cfg.actuator_command:
        actuator = CommandActuator(cfg.actuator_command, then=actuator)
    return Gate(
        reader,
        validator,
        journal=journal,
        context=ctx,
        passback=passback,
        actuator=actuator,
        log=sys.stdout,
        place=cfg.place,
        role=cfg.role,
    )


def _run(args: argparse.Namespace) -> int:
    cfg = load_gate_config(args.config)
    with contextlib.ExitStack() as stack:
        gate = open_gate(cfg, args.reader, stack, quiet=args.quiet)

        def stop(signum: int, frame: object) -> None:
            gate.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(
            f"farecore gate: terminal {cfg.terminal_id} ({cfg.role} at {cfg.place}) ready on "
            f"{args.reader}",
            file=sys.stderr,
            flush=True,
        )
        try:
            served = gate.run(max_taps=args.max_taps)
        except JournalError as exc:
            print(f"farecore gate: OUT OF SERVICE, journal failed: {exc}", file=sys.stderr)
            return 3
    print(f"farecore gate: stopped after {served} taps; journal closed", file=sys.stderr)
    return 0
