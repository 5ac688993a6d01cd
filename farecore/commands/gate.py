"""``farecore gate``: run a gate terminal on a reader until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

from farecore.checks import NO_PASSBACK, PassbackCheck, RevocationSource
from farecore.config import GateConfig, load_gate_config
from farecore.errors import ConfigError, JournalError
from farecore.gate import Actuator, CommandActuator, ConsoleActuator, Gate, RideLog
from farecore.keys import Keyring
from farecore.reader_port import open_reader
from farecore.validator import Validator

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
    p.add_argument("--max-taps", type=int, default=None, help="stop after this many taps")
    p.add_argument("--quiet", action="store_true", help="no human line per tap on stderr")
    p.set_defaults(func=_run)


def _revocation(cfg: GateConfig, stack: contextlib.ExitStack) -> RevocationSource | None:
    if cfg.revocation_table is None:
        return None
    from farecore.keys import load_public_key_file
    from farecore.revocation import HotRevocation

    signer = load_public_key_file(cfg.revocation_signer, role="revocation")  # type: ignore[arg-type]
    hot = HotRevocation(cfg.revocation_table, signer)
    stack.callback(hot.close)
    _warn_if_stale(cfg, hot.snapshot().generation, hot.snapshot().created_at, time.time())
    return hot


def _warn_if_stale(cfg: GateConfig, generation: int, created_at: int, now: float) -> None:
    """Say loudly, at start, what the first taps would otherwise reveal one by one."""
    age = now - created_at
    if cfg.revocation_max_age_s is not None and age > cfg.revocation_max_age_s:
        then = (
            "every tap will be DENIED REVOCATION_STALE"
            if cfg.stale_policy == "closed"
            else "every ride will be accepted flagged revocation_stale"
        )
        print(
            f"farecore gate: WARNING: revocation table generation {generation} is already "
            f"stale: made {int(age)} s ago, max_age_s {cfg.revocation_max_age_s}; {then} "
            "until a newer table is published",
            file=sys.stderr,
            flush=True,
        )
    elif age < -300:
        print(
            f"farecore gate: WARNING: revocation table generation {generation} was made "
            f"{int(-age)} s in this gate's future: check the gate's clock",
            file=sys.stderr,
            flush=True,
        )


def _journal(cfg: GateConfig, stack: contextlib.ExitStack) -> tuple[RideLog | None, Any]:
    from farecore.journal import Journal, TapContext
    from farecore.records import ROLE_DIRECTION

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
    from farecore.passback import PassbackRule, PassbackStore

    store = PassbackStore.open(
        cfg.passback_store, PassbackRule(window_s=cfg.passback_window_s), cfg.place
    )
    close = getattr(store, "close", None)
    if close is not None:
        stack.callback(close)
    return store


def _check_terminal_key(cfg: GateConfig) -> None:
    """The key a gate's batches will be signed with must exist and be this terminal's:
    found wrong at the end of the day, the day's rides could not be handed in."""
    if cfg.terminal_key is None:
        return
    from farecore.keys import load_private_key

    key = load_private_key(cfg.terminal_key, role="terminal")
    if key.key_id != cfg.terminal_id:
        raise ConfigError(
            f"terminal.key {cfg.terminal_key} is terminal {key.key_id}'s key, not terminal "
            f"{cfg.terminal_id}'s"
        )


def open_gate(
    cfg: GateConfig, reader_url: str, stack: contextlib.ExitStack, *, quiet: bool = False
) -> Gate:
    """Build every part of a gate from its configuration; register cleanups on ``stack``."""
    _check_terminal_key(cfg)
    keyring = Keyring.load(cfg.keyring)
    from farecore.issued import IssuedList

    issued = [IssuedList.open(path, keyring) for path in cfg.issued_lists]
    validator = Validator(cfg.policy(), keyring, _revocation(cfg, stack), issued=issued)
    journal, ctx = _journal(cfg, stack)
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
