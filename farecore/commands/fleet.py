"""``farecore fleet status``: which gates are current, stale, silent, or behind on uploads.

Exit status: 0 every registered gate is current (and no head is refused or in
conflict); 1 some gate needs attention (a cron job alerts on it); 2 bad arguments, or a
register or collection point that cannot be read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

from farecore.boundedinput import read_limited
from farecore.commands._args import count, path
from farecore.commands.journal import parse_utc_offset
from farecore.errors import ConfigError, MalformedFile
from farecore.fleet.status import (
    DEFAULT_MAX_PENDING,
    STATES,
    FleetStatus,
    TerminalStatus,
    Thresholds,
    fleet_status,
    utc_text,
)
from farecore.settlement.terminals import TerminalInfo, parse_terminals

__all__ = ["register"]

_log = logging.getLogger(__name__)
_MAX_REGISTER_BYTES = 64 << 20  # as the settlement reads it

_EPILOG = """states (the first that applies; every one that applies is listed as a reason):
  silent   no trusted head, or none for longer than --silent-after
  behind   more records not yet uploaded than --max-pending, or a closed day older
           than yesterday with no batch at the point
  stale    package version or revocation generation behind the published package
           (--package; without it, the newest any gate reports)
  current  none of these

exit status:
  0  every registered gate is current, no head refused, no conflicting heads
  1  some gate needs attention
  2  bad arguments, or the register or the collection point cannot be read
"""


def register(sub: Any) -> None:
    fleet = sub.add_parser(
        "fleet",
        help="watch the city's gates from the collection point",
        description="Look at the fleet of gates from what they hand in to the collection point.",
    )
    actions = fleet.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    st = actions.add_parser(
        "status",
        help="one row per registered gate: current, stale, silent or behind",
        description="Read every registered terminal's newest signed chain head (verified\n"
        "with the register's key; a head that fails is shown as refused, never trusted)\n"
        "and the batches the collection point holds, and say which gates are current,\n"
        "stale, silent, or behind on uploads. A summary line ends the table\n"
        "(docs/fleet-status.md).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    st.add_argument("--point", required=True, type=path, help="the collection point directory")
    st.add_argument("--register", required=True, type=path, help="terminal register (CSV)")
    st.add_argument(
        "--now",
        help="judge as of this time: ISO 8601 with a zone (2026-03-02T10:00:00+08:00) or "
        "Unix ms (default: the clock)",
    )
    st.add_argument(
        "--silent-after",
        type=count("minutes", low=0),
        default=15,
        metavar="MINUTES",
        help="a gate whose newest head is older is silent (default 15)",
    )
    st.add_argument(
        "--max-pending",
        type=count("records", low=0),
        default=DEFAULT_MAX_PENDING,
        metavar="N",
        help=f"a gate holding more records not yet uploaded is behind (default {DEFAULT_MAX_PENDING})",
    )
    st.add_argument("--tz", default="+08:00", help="UTC offset of the service day (default +08:00)")
    st.add_argument(
        "--package",
        metavar="SOURCE",
        help="the package source the gates follow (a directory or an http(s) URL): its "
        "signed version and revocation generation are what current means",
    )
    st.add_argument(
        "--keyring",
        type=path,
        help="with --package: the keyring whose publishing keys verify package.json",
    )
    st.add_argument("--json", action="store_true", help="one JSON object per terminal, per line")
    st.set_defaults(func=_status)


def _published(source: str, keyring: Path | None) -> tuple[int, int]:
    """The version and revocation generation of the package ``source`` publishes,
    verified with a publishing key of ``keyring``."""
    from farecore.card.keys import Keyring
    from farecore.fleet.follow import SourceUnavailable, open_source
    from farecore.fleet.package import parse_package, verify_package

    if keyring is None:
        raise ConfigError("--package needs --keyring (its publishing keys verify the package)")
    ring = Keyring.load(keyring)
    where = open_source(source)
    try:
        got = where.manifest(None)
    except SourceUnavailable as exc:
        raise ConfigError(f"--package: {exc}") from None
    assert got is not None  # an unconditional request always answers
    signed = parse_package(got[0], f"{where.label} package.json")
    verify_package(signed, ring, f"{where.label} package.json")
    return signed.manifest.version, signed.manifest.revocation_generation


def parse_now(text: str) -> int:
    """``--now``: Unix ms, or an ISO 8601 time with its zone."""
    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        when = dt.datetime.fromisoformat(t)
    except ValueError:
        raise ConfigError(f"--now {text!r} is neither Unix ms nor an ISO 8601 time") from None
    if when.tzinfo is None:
        raise ConfigError(f"--now {text!r} names no time zone (add Z or +08:00)")
    return int(when.timestamp() * 1000)


def _register(where: Path) -> dict[int, TerminalInfo]:
    try:
        data = read_limited(where, _MAX_REGISTER_BYTES, f"register {where}", ConfigError)
        text = data.decode()
    except OSError as exc:
        raise ConfigError(f"cannot read register {where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MalformedFile(f"{where}: not UTF-8") from None
    return parse_terminals(text, str(where))


def _status(args: argparse.Namespace) -> int:
    now_ms = parse_now(args.now) if args.now is not None else time.time_ns() // 1_000_000
    limits = Thresholds(args.silent_after * 60_000, args.max_pending, parse_utc_offset(args.tz))
    if args.keyring is not None and args.package is None:
        raise ConfigError("--keyring is for --package; give both or neither")
    published = _published(args.package, args.keyring) if args.package is not None else None
    status = fleet_status(
        args.point, _register(args.register), now_ms=now_ms, thresholds=limits, published=published
    )
    if args.json:
        for row in status.rows:
            print(json.dumps(row.to_json(now_ms), separators=(",", ":")))
        _log.info("%s", _summary(status))
    else:
        _table(status, now_ms)
        print(_summary(status))
    return 0 if status.all_current else 1


def _age(row: TerminalStatus, now_ms: int) -> str:
    if row.head is None:
        return "-"
    seconds = (now_ms - row.head.time_ms) // 1000
    if seconds < 0:
        return f"-{-seconds}s"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172_800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86_400}d"


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _table(status: FleetStatus, now_ms: int) -> None:
    print(
        f"{'terminal':<12}{'state':<9}{'head (UTC)':<22}{'age':>6}{'seq':>12}{'package':>9}"
        f"{'gen':>8}{'pending':>9}  {'last batch':<11} notes"
    )
    for r in status.rows:
        h = r.head
        stamp = "refused" if r.head_refused is not None else "-"
        if h is not None:
            stamp = utc_text(h.time_ms)
        notes = "; ".join(r.reasons)
        if r.head_refused is not None:
            notes = f"{notes}; {r.head_refused}" if notes else r.head_refused
        print(
            f"{r.terminal_id:<12}{r.state:<9}{stamp:<22}{_age(r, now_ms):>6}"
            f"{_text(h and h.seq):>12}{_text(h and h.package_version):>9}"
            f"{_text(h and h.revocation_generation):>8}{_text(h and h.records_pending):>9}  "
            f"{_text(r.last_batch_day):<11} {notes}".rstrip()
        )


def _summary(status: FleetStatus) -> str:
    counts = status.counts()
    parts = ", ".join(f"{counts[s]} {s}" for s in STATES)
    refused = sum(1 for r in status.rows if r.head_refused is not None)
    conflicts = sum(1 for r in status.rows if r.conflicts)
    extra = ""
    if refused:
        extra += f", {refused} with a refused head"
    if conflicts:
        extra += f", {conflicts} with conflicting heads"
    if status.unregistered:
        extra += f"; {len(status.unregistered)} unregistered terminals at the point ignored"
    package, generation = status.reference
    source = "published" if status.reference_given else "newest reported across the fleet"
    return (
        f"{len(status.rows)} terminals: {parts}{extra}; reference package {_text(package)}, "
        f"revocation generation {_text(generation)} ({source})"
    )
