"""The ``farecore`` command: one entry point, subcommands found, not hard-wired.

Built-in subcommands are the modules of ``farecore.commands``; each has
``register(subparsers)``. Plug-ins outside the core (the simulator, third-party tools)
register through the ``farecore.commands`` entry-point group.

Diagnostics go through :mod:`farecore.logs`: ``main`` shows log records on stderr as
``farecore <command>: <message>`` lines (``-v`` or ``FARECORE_LOG=debug`` adds the debug
lines). Errors that farecore anticipates, and any file-system error on a path the
command was given, end the command with one line, ``farecore: error: <message>``, and
exit 2; they never print a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

import farecore.commands
from farecore import __version__, logs
from farecore.errors import FarecoreError

__all__ = ["COMMAND_GROUP", "main"]

COMMAND_GROUP = "farecore.commands"
_Subparsers = Any  # argparse's _SubParsersAction is private
_log = logging.getLogger(__name__)
_OWN = {"prog": "farecore"}  # the command line's own verdicts: "farecore: error: …"


def _missing_plugin(name: str, extras: Sequence[str], exc: Exception) -> Callable[[Any], None]:
    def register(sub: _Subparsers) -> None:
        hint = f"pip install 'farecore[{extras[0]}]'" if extras else "reinstall farecore"
        p = sub.add_parser(name, help=f"(unavailable: {hint})")
        p.set_defaults(func=lambda args: _fail(f"'{name}' cannot load ({exc}); {hint}"))

    return register


def _fail(message: str) -> int:
    _log.error("error: %s", message, extra=_OWN)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="farecore",
        description="Validation engine for the Rongjun card: gates, revocation, journal, settlement.",
    )
    parser.add_argument("--version", action="version", version=f"farecore {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help=f"also show debug lines, with their level and logger (or {logs.ENV}=debug)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(farecore.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue  # shared helpers, not a subcommand
        module = importlib.import_module(f"farecore.commands.{info.name}")
        module.register(sub)
    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:
            register = _missing_plugin(ep.name, ep.extras, exc)
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        level = logs.level_from(args.verbose, default=getattr(args, "log_level", logging.INFO))
    except ValueError as exc:
        with logs.to_stderr("farecore"):
            return _fail(str(exc))
    with logs.to_stderr(f"farecore {args.command}", level):
        return _run(func, args)


def _run(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    try:
        return int(func(args) or 0)
    except FarecoreError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        _log.warning("interrupted", extra=_OWN)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a file or directory the command was pointed at
        where = f" {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}:{where}")


if __name__ == "__main__":
    sys.exit(main())
