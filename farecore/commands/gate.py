"""``farecore gate``: run a gate terminal on a reader until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farecore.card.keys import PublicKeyFile
from farecore.commands._args import count
from farecore.errors import ConfigError, JournalError
from farecore.gate.config import GateConfig, load_gate_config
from farecore.gate.reader_port import open_reader
from farecore.gate.runtime import ConsoleActuator, Gate
from farecore.gate.wiring import WiredGate, build_gate, check_terminal_key
from farecore.journal.records import ROLE_DIRECTION, TapContext

if TYPE_CHECKING:
    from farecore.fleet.follow import PackageFollower
    from farecore.fleet.metrics import FleetMetrics
    from farecore.fleet.upload import Courier, CourierSettings

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
    from farecore.settlement.terminals import check_registered

    assert cfg.register is not None
    context = TapContext(cfg.operator, cfg.line, cfg.place, ROLE_DIRECTION[cfg.role])
    key = (public.algorithm, public.public_key)
    check_registered(cfg.register, cfg.terminal_id, key, context, "its rides would not be paid")


def _start_metrics(cfg: GateConfig, stack: contextlib.ExitStack) -> FleetMetrics | None:
    """Serve the gate's Prometheus metrics when ``[metrics]`` asks (docs/monitoring.md)."""
    if cfg.metrics_listen is None:
        return None
    try:
        from farecore.fleet.metrics_http import start_gate_metrics
    except ImportError as exc:
        raise ConfigError(
            f"[metrics] needs prometheus_client ({exc}): pip install 'farecore[fleet]'"
        ) from None
    service = start_gate_metrics(cfg.metrics_listen, cfg.metrics_multiprocess_dir)
    stack.callback(service.close)  # first in, last out: live gauges go as the process ends
    return service.metrics


def open_gate(
    cfg: GateConfig,
    reader_url: str,
    stack: contextlib.ExitStack,
    *,
    quiet: bool = False,
    metrics: FleetMetrics | None = None,
    upload: CourierSettings | None = None,
) -> Gate:
    """Build the gate of ``cfg`` on the reader at ``reader_url`` (``farecore.gate.wiring``),
    after checking its key against the register, with its package follower, metrics and
    courier (``upload``: its checked ``[upload]`` settings) when configured; register
    their cleanup on ``stack``."""
    public = check_terminal_key(cfg)
    if cfg.register is not None and public is not None:
        _check_registered(cfg, public)
    package = None
    if cfg.package_source is not None:
        from farecore.fleet.gatepackage import GatePackage

        package = GatePackage(cfg)
    wired = build_gate(
        package.for_config() if package is not None else cfg,
        open_reader(reader_url),
        actuator=None if quiet else ConsoleActuator(),
        log=sys.stdout,
        # A package's table comes by the follower, never by watching a path.
        revocation_poll_s=None if package is not None else 1.0,
    )
    stack.callback(wired.close)
    if metrics is not None:
        from farecore.fleet.metrics import watch_gate

        watch_gate(metrics, wired, cfg)
    follower = None
    if package is not None:
        follower = package.follow([wired])
        stack.callback(follower.close)  # runs before wired.close: no swap into a closed gate
        if metrics is not None:
            from farecore.fleet.metrics import watch_follower

            watch_follower(metrics, cfg.terminal_id, follower)
    if upload is not None:
        courier = _courier(cfg, upload, wired, follower)
        # Runs before wired.close: its last head reads a whole journal.
        stack.callback(courier.close)
        if metrics is not None:
            from farecore.fleet.metrics import watch_courier

            watch_courier(metrics, courier)
        courier.start()
    return wired.gate


def _courier(
    cfg: GateConfig,
    settings: CourierSettings,
    wired: WiredGate,
    follower: PackageFollower | None,
) -> Courier:
    """The courier that hands this gate's closed days and chain heads in (``[upload]``)."""
    from farecore.card.keys import load_private_key
    from farecore.fleet.upload import Courier

    if cfg.terminal_key is None or cfg.journal is None:
        raise ConfigError("[upload] needs terminal.key and journal.path: it signs the journal")
    hot = wired.revocation
    return Courier(
        settings,
        load_private_key(cfg.terminal_key, role="terminal"),
        cfg.journal,
        terminal_id=cfg.terminal_id,
        package_version=lambda: follower.version if follower is not None else None,
        revocation_generation=lambda: hot.generation if hot is not None else None,
    )


# A tap waits for the interpreter lock behind whatever background thread holds it (the
# package follower, the courier, the metrics): at most this long, not the default 5 ms.
GATE_SWITCH_INTERVAL_S = 0.0005


def _run(args: argparse.Namespace) -> int:
    sys.setswitchinterval(GATE_SWITCH_INTERVAL_S)
    cfg = load_gate_config(args.config)
    upload = None
    if cfg.upload is not None:  # its values, checked before anything starts
        from farecore.fleet.upload import courier_settings

        try:
            upload = courier_settings(
                dict(cfg.upload),
                base=cfg.config_dir,
                state_dir=cfg.state_dir,
                terminal_id=cfg.terminal_id,
            )
        except ConfigError as exc:
            raise ConfigError(f"{args.config}: {exc}") from None
    with contextlib.ExitStack() as stack:
        # Before the gate: a bad address stops it before it serves anyone.
        metrics = _start_metrics(cfg, stack)
        gate = open_gate(cfg, args.reader, stack, quiet=args.quiet, metrics=metrics, upload=upload)

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
