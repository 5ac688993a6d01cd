"""``farecore sim``: simulate a day of Qingdao's free rides through the real engine.

Registered through the ``farecore.commands`` entry point. It only parses arguments and
hands them to :mod:`sim.run`; it must never decide anything itself. The exit status is
0 when every decision matched the ground truth and the settlement equals it, 1 when
not, and 2 when the run could not be done at all.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from farecore.commands._args import path
from sim.population import FraudMix
from sim.venues import VENUE_SITES

__all__ = ["register"]

_EPILOG = """\
fraud mix kinds (shares): per card expired, forged, clone, other_region,
revoked_before, revoked_during; per tap passback, pulled.
Example: --fraud-mix forged=0.01,pulled=0.02   or   --fraud-mix none

--crypto sm2 or mix needs the SM2 backend: pip install 'farecore[sm]'. With mix the
keyring has two issuer keys and each has its own issued list (issued-1.fil, issued-2.fil).

The run directory gets keys/, keyring.json, revocation/ (signed tables and their
CSV), fares.toml, terminals.csv, gates/ (one gate config each), work/ (journals and
passback stores), batches/, settlement/, summary.json and two PNG plots.
--metrics-listen serves every simulated gate's Prometheus metrics (docs/monitoring.md)
while the day runs; it needs prometheus_client: pip install 'farecore[fleet]'.

Exit status: 0 all decisions and the money right, 1 a wrong decision or a settlement
mismatch, 2 the run could not be done.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sim",
        help="simulate a city's day of taps end to end and check every decision and the money",
        description="Create a Qingdao-like network, a card population and a day of taps "
        "(with fraud and faults), run every tap through the real engine in parallel gate "
        "processes with durable journals, then export signed batches, settle them, and "
        "check each decision and the reimbursement against the simulator's ground truth.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _day_arguments(p)
    _engine_arguments(p)
    _metrics_arguments(p)
    # Each simulated gate's table reloader says what it loads; the day's summary is enough.
    p.set_defaults(func=_run, log_level=logging.WARNING)


def _day_arguments(p: argparse.ArgumentParser) -> None:
    """What the day is: where it goes, its seed, its size, its fraud and its reader."""
    p.add_argument(
        "--out", required=True, type=path, metavar="RUNDIR", help="run directory (new or empty)"
    )
    p.add_argument(
        "--seed", type=int, default=1, help="random seed; same seed, same day (default 1)"
    )
    p.add_argument("--cards", type=int, help="card population (default 20000)")
    p.add_argument("--taps", type=int, help="taps in the day (default 40000)")
    p.add_argument(
        "--gates",
        type=int,
        help="validators, about 60%% in metro stations (default 16; 40 with --year/--days)",
    )
    p.add_argument(
        "--reader",
        default="virtual",
        choices=["virtual", "pcsc", "pn532"],
        help="virtual (default: in-process); pcsc pushes --transport-taps taps of one gate "
        "through a private pcscd + vpcd, pn532 through an emulated PN532 on a pty read by the "
        "serial PN532 reader; all other taps stay virtual",
    )
    p.add_argument(
        "--fraud-mix",
        default="",
        metavar="KIND=SHARE,...",
        help="override the default fraud and fault shares",
    )
    p.add_argument(
        "--transport-taps",
        type=int,
        default=20,
        help="with --reader pcsc or pn532: how many taps go through the transport (default 20)",
    )
    p.add_argument(
        "--crypto",
        default="ed25519",
        choices=["ed25519", "sm2", "mix"],
        help="signature schemes of the day: ed25519 (default) for every issuer, card, "
        "terminal and revocation key; sm2 (SM2 with SM3, needs the 'sm' extra) for all of "
        "them; mix: issuer key 1 Ed25519 and issuer key 2 SM2, each signing Ed25519 and SM2 "
        "cards alike, terminals alternating between the two, an SM2 revocation signer",
    )
    p.add_argument(
        "--venue-sites",
        type=int,
        help="parks, scenic spots and museums with entrance gates (0..6; default 0 for a "
        "day, all 6 with --year/--days; docs/venues.md)",
    )
    p.add_argument(
        "--venue-visits",
        type=int,
        help="visits to the venue sites in the day (default 0; a year takes its own)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--year",
        action="store_true",
        help="simulate the calibrated year 2026 (365 days; docs/calibration.md)",
    )
    p.add_argument(
        "--days",
        type=int,
        metavar="N",
        help="simulate the first N days of the calibrated year (1..365)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="with --year/--days: cards, rides and yuan times this (0 < S <= 1; default 1: "
        "300,000 cards, 27 million rides, 45 million yuan a year)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="with --year/--days: run the lanes and the settlement on this Dask scheduler "
        "(its workers must see RUNDIR at the same path; needs the 'dask' extra)",
    )


def _engine_arguments(p: argparse.ArgumentParser) -> None:
    """How the day runs: processes, controllers, group commits, the ceiling."""
    p.add_argument("--workers", type=int, help="worker processes (default: one per CPU)")
    p.add_argument(
        "--lanes",
        type=int,
        default=1,
        help="station controllers per worker, each a thread with its own journal (default 1)",
    )
    p.add_argument(
        "--max-group",
        type=int,
        default=32,
        help="most taps one station-journal commit makes durable (default 32; 1: a commit per tap)",
    )
    p.add_argument(
        "--measure-ceiling",
        action="store_true",
        help="time this machine's crypto ceiling (a card signature and its verification "
        "per tap) in the workers, all at once, just before and after the taps, and report "
        "taps/s against it",
    )


def _metrics_arguments(p: argparse.ArgumentParser) -> None:
    """Where the simulated gates' metrics are served, as a real host's are."""
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve every simulated gate's Prometheus metrics on this address while the "
        "day runs (e.g. 127.0.0.1:9464)",
    )
    p.add_argument(
        "--metrics-dir",
        type=path,
        metavar="DIR",
        help="with --metrics-listen: the empty directory the workers write their metrics "
        "into (default: a temporary one, removed at the end)",
    )
    p.add_argument(
        "--metrics-linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --metrics-listen: keep serving this long after the day (Ctrl-C ends it)",
    )


def _serve_metrics(args: argparse.Namespace, stack: contextlib.ExitStack) -> Path | None:
    """Start the endpoint that sums what the workers write; return their directory."""
    if args.metrics_listen is None:
        if args.metrics_dir is not None or args.metrics_linger:
            raise ValueError("--metrics-dir and --metrics-linger need --metrics-listen")
        return None
    if not 0 <= args.metrics_linger <= 86_400:
        raise ValueError("--metrics-linger must be 0..86400 seconds")
    try:
        from farecore.fleet.metrics_http import serve_metrics_dir
    except ImportError as exc:
        raise ValueError(
            f"--metrics-listen needs prometheus_client ({exc}): pip install 'farecore[fleet]'"
        ) from None
    if args.metrics_dir is None:
        directory = Path(tempfile.mkdtemp(prefix="farecore-sim-metrics-"))
        stack.callback(shutil.rmtree, directory, True)
    else:
        directory = args.metrics_dir.absolute()
        if not directory.is_dir() or any(directory.iterdir()):
            raise ValueError(f"--metrics-dir {directory} must be an empty directory")
    server = serve_metrics_dir(args.metrics_listen, directory, "--metrics-listen")
    stack.callback(server.close)
    host, port = server.address
    logging.getLogger(__name__).warning("metrics of the simulated gates on %s:%d", host, port)
    return directory


def _run(args: argparse.Namespace) -> int:
    from sim.run import SimError

    if args.year or args.days is not None:
        return _run_year(args)
    if args.scheduler is not None or args.scale != 1.0:
        raise SimError("--scheduler and --scale go with --year or --days")
    with contextlib.ExitStack() as stack:
        try:
            metrics_dir = _serve_metrics(args, stack)
        except ValueError as exc:
            raise SimError(str(exc)) from None
        status = _run_day(args, metrics_dir)
        if metrics_dir is not None and args.metrics_linger:
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the linger early
                time.sleep(args.metrics_linger)
    return status


def _run_day(args: argparse.Namespace, metrics_dir: Path | None) -> int:
    from sim.run import SimError, SimOptions, run_simulation

    try:
        opts = SimOptions(
            out=args.out,
            seed=args.seed,
            cards=20_000 if args.cards is None else args.cards,
            taps=40_000 if args.taps is None else args.taps,
            gates=16 if args.gates is None else args.gates,
            reader=args.reader,
            mix=FraudMix.parse(args.fraud_mix),
            workers=args.workers,
            lanes=args.lanes,
            plots=not args.no_plots,
            max_group=args.max_group,
            transport_taps=args.transport_taps,
            ceiling_ops=2000 if args.measure_ceiling else 0,
            crypto=args.crypto,
            metrics_dir=metrics_dir,
            venue_sites=args.venue_sites or 0,
            venue_visits=args.venue_visits or 0,
        )
    except ValueError as exc:
        raise SimError(str(exc)) from None
    summary = run_simulation(opts)
    return 0 if summary["ok"] else 1


# Options of a single day that a simulated year does not take (its sizes come from the
# calibration, its taps all go through the virtual reader).
_DAY_ONLY = {
    "cards": "--cards",
    "taps": "--taps",
    "metrics_listen": "--metrics-listen",
    "metrics_dir": "--metrics-dir",
    "venue_visits": "--venue-visits",
}


def _run_year(args: argparse.Namespace) -> int:
    from sim.run import SimError
    from sim.year import YearOptions, run_year

    if args.year and args.days is not None and args.days != 365:
        raise SimError("--year is 365 days; give --year or --days N, not both")
    given = [flag for name, flag in _DAY_ONLY.items() if getattr(args, name) is not None]
    if args.reader != "virtual":
        given.append("--reader")
    if args.measure_ceiling:
        given.append("--measure-ceiling")
    if given:
        raise SimError(
            f"{', '.join(given)} not with --year/--days: the calibration sizes the year "
            "(use --scale) and its taps use the virtual reader"
        )
    try:
        opts = YearOptions(
            out=args.out,
            seed=args.seed,
            days=365 if args.days is None else args.days,
            scale=args.scale,
            gates=40 if args.gates is None else args.gates,
            venue_sites=len(VENUE_SITES) if args.venue_sites is None else args.venue_sites,
            mix=FraudMix.parse(args.fraud_mix),
            workers=args.workers or os.cpu_count() or 1,
            lanes=args.lanes,
            max_group=args.max_group,
            crypto=args.crypto,
            scheduler=args.scheduler,
        )
    except ValueError as exc:
        raise SimError(str(exc)) from None
    if opts.crypto != "ed25519":
        from farecore.card import sm2

        try:
            sm2.backend()
        except ValueError as exc:
            raise SimError(f"--crypto {opts.crypto}: {exc}") from None
    summary = run_year(opts)
    return 0 if summary["ok"] else 1
