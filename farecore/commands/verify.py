"""``farecore verify``: a merchant's till verifies Rongjun cards and journals discount claims.

Exit status: 0 when the input ends or the session is stopped (SIGINT, SIGTERM, or
standard output closed), with the journal closed; 2 for bad
arguments or configuration (nothing started); 3 when a claim could not be journaled (the
till stops: it gives no discount it cannot record).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from farecore.commands._args import path
from farecore.errors import ConfigError, JournalError
from farecore.gate.reader_port import open_reader
from farecore.merchant.config import load_till_config
from farecore.merchant.session import TillSession
from farecore.merchant.till import open_till

__all__ = ["register"]

_log = logging.getLogger(__name__)

_EPILOG = """Each line of standard input is one purchase: yuan with at most two decimals
(128, 128.5, 128.50) or fen (12850fen). For each, the till waits for a card, verifies it
(CARD-SPEC §7 checks 1-9, no passback), journals the claim and writes one JSON line to
standard output. End of input, Ctrl-C or SIGTERM, or standard output closed, stops it
cleanly; a stop while the till starts ends it at once (130 for Ctrl-C), nothing
journaled.

exit status:
  0  the input ended, the session was stopped or its output closed; every claim
     is journaled
  2  bad arguments or configuration, or --merchant is not the configured merchant
  3  a claim could not be journaled: the till stopped (no discount it cannot record)
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="a merchant's till: verify Rongjun cards and journal discount claims",
        description="Run a merchant's till (荣军联盟): read purchase amounts from standard "
        "input, verify the card tapped for each offline (issuer signature, the card's "
        "signature over a fresh challenge, validity, region, category, revocation), compute "
        "the merchant's discount and journal each claim in a signed-batch journal.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, type=path, help="till configuration (TOML)")
    p.add_argument(
        "--reader",
        required=True,
        metavar="URL",
        help="pcsc: | pcsc:NAME | pn532:/dev/ttyUSB0 | virtual:FILE[,FILE…]",
    )
    p.add_argument("--merchant", required=True, help="the merchant id; must be the configured one")
    p.add_argument(
        "--tap-timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="seconds to wait for a card after an amount (default 60)",
    )
    p.set_defaults(func=_run)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"the tap timeout must be 0.1..3600 s, not {text}")
    return value


class _Interrupted(Exception):
    """Raised by the signal handler only while the session waits for input."""


def _lines(stream: TextIO, reading: threading.Event) -> Iterator[str]:
    while True:
        reading.set()
        try:
            line = stream.readline()
        finally:
            reading.clear()
        if not line:
            return
        yield line


def _run(args: argparse.Namespace) -> int:
    cfg = load_till_config(args.config)
    if args.merchant != cfg.merchant:
        raise ConfigError(
            f"--merchant {args.merchant!r} is not this till's merchant ({cfg.merchant!r} in "
            f"{args.config})"
        )
    reading = threading.Event()
    # As a gate: a stop while the till starts ends the process (nothing is journaled
    # before it is ready, and every file it writes survives being killed).
    with open_till(cfg, open_reader(args.reader)) as till:
        session = TillSession(till, sys.stdout, tap_timeout_s=args.tap_timeout)

        def stop(signum: int, frame: object) -> None:
            session.stop()
            if reading.is_set():  # idle at the prompt: nothing under way to finish
                raise _Interrupted

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        _log.info(
            "till %s of merchant %s (terminal %d) ready on %s; %d%% discount%s",
            cfg.till,
            cfg.merchant,
            cfg.terminal_id,
            args.reader,
            cfg.discount.percent,
            f", at most {cfg.discount.cap_fen} fen" if cfg.discount.cap_fen else "",
        )
        with contextlib.suppress(_Interrupted):
            try:
                session.run(_lines(sys.stdin, reading))
            except JournalError as exc:
                _log.error("OUT OF SERVICE, journal failed: %s", exc)
                return 3
    st = session.stats
    if st.output_closed:
        # Later writes (the interpreter's last flush) go nowhere rather than fail.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    _log.info(
        "stopped after %d claims (%d accepted, %d lines refused, %d abandoned); journal closed",
        st.claims,
        st.accepted,
        st.refused_lines,
        st.abandoned,
    )
    return 0
