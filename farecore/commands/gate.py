"""``farecore gate``: run a gate terminal on a reader until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from farecore.card.keys import PublicKeyFile
from farecore.commands._args import count
from farecore.errors import ConfigError, JournalError
from farecore.gate.config import GateConfig, load_gate_config
from farecore.gate.reader_port import open_reader
from farecore.gate.runtime import ConsoleActuator, Gate
from farecore.gate.wiring import build_gate, check_terminal_key
from farecore.journal.records import ROLE_DIRECTION

__all__ = ["open_gate", "register"]

_log = logging.getLogger(__name__)


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


def _check_registered(cfg: GateConfig, public: PublicKeyFile) -> None:
    """With a register, the terminal's key must be the one registered for it, for the
    same place: found wrong at the end of the day, the day's rides could not be paid."""
    from farecore.settlement.terminals import parse_terminals

    assert cfg.register is not None
    try:
        text = cfg.register.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"terminal.register {cfg.register}: cannot read: {exc}") from None
    info = parse_terminals(text, str(cfg.register)).get(cfg.terminal_id)
    if info is None:
        raise ConfigError(f"terminal {cfg.terminal_id} is not in the register {cfg.register}")
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
    """Build the gate of ``cfg`` on the reader at ``reader_url`` (``farecore.gate.wiring``),
    after checking its key against the register; register its cleanup on ``stack``."""
    public = check_terminal_key(cfg)
    if cfg.register is not None and public is not None:
        _check_registered(cfg, public)
    wired = build_gate(
        cfg,
        open_reader(reader_url),
        actuator=None if quiet else ConsoleActuator(),
        log=sys.stdout,
    )
    stack.callback(wired.close)
    return wired.gate


def _run(args: argparse.Namespace) -> int:
    cfg = load_gate_config(args.config)
    with contextlib.ExitStack() as stack:
        gate = open_gate(cfg, args.reader, stack, quiet=args.quiet)

        def stop(signum: int, frame: object) -> None:
            gate.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        _log.info(
            "terminal %s (%s at %s) ready on %s", cfg.terminal_id, cfg.role, cfg.place, args.reader
        )
        try:
            served = gate.run(max_taps=args.max_taps)
        except JournalError as exc:
            _log.error("OUT OF SERVICE, journal failed: %s", exc)
            return 3
    _log.info("stopped after %d taps; journal closed", served)
    return 0
