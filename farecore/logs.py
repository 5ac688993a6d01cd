"""How farecore's diagnostics reach people: one convention, one handler.

The convention:

- Every module logs to ``logging.getLogger(__name__)``; no module prints a diagnostic.
- stdout carries only what a command was asked for: tables, JSON, the gate's one JSON
  line per tap. Everything else (progress, warnings, a gate's human lines, errors) is a
  log record, and goes to stderr.
- The ``farecore`` command installs one stderr handler when it starts
  (:func:`to_stderr`). Each record is one line, ``farecore <command>: <message>``; an
  exception attached to a record (``log.exception``, ``exc_info=``) adds
  ``: <Type>: <text>`` to that line, never a traceback.
- Levels: INFO and above from ``farecore``, ``readers`` and ``sim``; WARNING and above
  from other libraries. ``farecore -v COMMAND …`` (or ``FARECORE_LOG=debug``) adds the
  DEBUG lines, with each line's level and logger, and full tracebacks.
  ``FARECORE_LOG=warning`` (or ``error``) keeps only those. A subcommand whose INFO
  lines would be noise by default (one per simulated gate, say) sets its own default
  with ``parser.set_defaults(log_level=logging.WARNING)``; ``-v`` and ``FARECORE_LOG``
  still override it.
- Used as a library, farecore configures nothing: the application's logging decides.

Scripts outside the command (the benchmarks) call :func:`to_stderr` with their own name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import TextIO

__all__ = ["LEVELS", "PACKAGES", "LineFormatter", "level_from", "to_stderr"]

PACKAGES = ("farecore", "readers", "sim")
"""The loggers the handler shows from INFO (DEBUG when verbose); others from WARNING."""

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
ENV = "FARECORE_LOG"


class LineFormatter(logging.Formatter):
    """``PROG: message``, one line; with ``verbose``, ``PROG: LEVEL logger: message``
    and a full traceback. A record's ``prog`` attribute (``extra={"prog": …}``) replaces
    the handler's own, for the command line's own verdicts (``farecore: error: …``)."""

    def __init__(self, prog: str, verbose: bool = False) -> None:
        super().__init__()
        self.prog = prog
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        own = getattr(record, "prog", None)
        prog = own or self.prog
        message = record.getMessage()
        if self.verbose and not own:
            message = f"{record.levelname} {record.name}: {message}"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if self.verbose:
                message = f"{message}\n{self.formatException(record.exc_info).rstrip()}"
            else:
                message = f"{message}: {type(exc).__name__}: {exc}"
        return f"{prog}: {message}"


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record comes (tests swap it)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def level_from(
    verbose: bool, environ: Mapping[str, str] | None = None, default: int = logging.INFO
) -> int:
    """The level for farecore's own loggers: DEBUG with ``verbose``, else ``FARECORE_LOG``
    (debug, info, warning, error), else ``default``. Raises ValueError naming the choices."""
    if verbose:
        return logging.DEBUG
    text = (os.environ if environ is None else environ).get(ENV, "").strip().lower()
    if not text:
        return default
    try:
        return LEVELS[text]
    except KeyError:
        raise ValueError(f"{ENV} must be one of {', '.join(LEVELS)}, not {text!r}") from None


@contextlib.contextmanager
def to_stderr(
    prog: str, level: int = logging.INFO, packages: Sequence[str] = PACKAGES
) -> Iterator[logging.Handler]:
    """Show log records on stderr as ``PROG: message`` lines while the block runs.

    Installs one handler on the root logger and sets the level of the ``packages``'
    loggers (a script adds ``"__main__"``); both are put back as they were on leaving,
    so in-process callers (tests) are left as they were found.
    """
    handler = _StderrHandler()
    handler.setFormatter(LineFormatter(prog, verbose=level <= logging.DEBUG))
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in packages}
    for name in packages:
        logging.getLogger(name).setLevel(level)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, old in saved.items():
            logging.getLogger(name).setLevel(old)
