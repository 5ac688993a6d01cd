"""A gate's health as Prometheus metrics (docs/monitoring.md).

:class:`FleetMetrics` holds one process's metric families; :meth:`FleetMetrics.gate`
gives one terminal's :class:`GateMetrics`, which is the gate's observer
(``farecore.gate.observe``) and has the setters the package follower and the journal
courier call. :func:`watch_gate`, :func:`watch_follower` and :func:`watch_courier` hang
a built gate and those parts on them; ``farecore.fleet.metrics_http`` serves them.

In multi-process mode (:func:`use_multiprocess_dir`) every gate process of a host writes
its values into files in one directory, to be served as one sum. A process that dies
must not leave its gauges saying its gate is fine: the gauges that describe a running
gate are "live" and disappear with their process. A clean stop removes them; after a
kill, :func:`sweep_dead` finds the writer gone (its lock on ``live_<pid>.lock`` is
released by the kernel) and removes them.

Watching a gate must never stop it or slow it: nothing here raises into the tap path.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import math
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import mark_process_dead

from farecore.decide.decision import Decision, Reason
from farecore.errors import ConfigError

if TYPE_CHECKING:
    from farecore.gate.config import GateConfig
    from farecore.gate.wiring import WiredGate

__all__ = [
    "ENV_DIR",
    "LATENCY_BUCKETS",
    "METRICS",
    "CourierLike",
    "FleetMetrics",
    "FollowerLike",
    "GateMetrics",
    "sample_names",
    "sweep_dead",
    "use_multiprocess_dir",
    "watch_courier",
    "watch_follower",
    "watch_gate",
]

_log = logging.getLogger(__name__)

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's switch into multi-process mode
#: Seconds; a tap over a virtual card takes well under a millisecond, over PC/SC tens.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# Name: (type, labels beyond ``terminal``, help). Live gauges vanish with their process;
# the lasting ones (``_LASTING``) may be written by another process (a courier run from a
# timer) and stay true after it exits.
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "farecore_taps": ("counter", ("decision", "reason"), "Taps served, by decision and reason"),
    "farecore_tap_duration_seconds": ("histogram", (), "Time from SELECT to the decision"),
    "farecore_gate_info": ("gauge", ("place", "role"), "1 for every running gate"),
    "farecore_reader_up": ("gauge", (), "1 while the reader answers, 0 while it is lost"),
    "farecore_reader_reconnects": ("counter", (), "Times the reader came back after a loss"),
    "farecore_revocation_generation": ("gauge", (), "Generation of the table in force"),
    "farecore_revocation_table_created_timestamp_seconds": (
        "gauge",
        (),
        "Creation time of the table in force (Unix seconds)",
    ),
    "farecore_revocation_max_age_seconds": ("gauge", (), "The gate's revocation.max_age_s"),
    "farecore_revocation_tables_refused": ("counter", (), "Published tables the gate refused"),
    "farecore_clock_fault": ("gauge", (), "1 while the gate is in a clock fault"),
    "farecore_clock_tolerance_seconds": ("gauge", (), "The gate's clock.tolerance_s"),
    "farecore_package_version": ("gauge", (), "Version of the parameter package installed"),
    "farecore_journal_pending_records": ("gauge", (), "Journal records not yet handed in"),
    "farecore_journal_closed_days_pending": (
        "gauge",
        (),
        "Service days over whose batch the collection point has not acknowledged",
    ),
    "farecore_journal_last_upload_timestamp_seconds": (
        "gauge",
        (),
        "Time of the last journal upload the collection point acknowledged (Unix seconds)",
    ),
    "farecore_clock_offset_seconds": (
        "gauge",
        (),
        "The gate's clock minus the collection point's (seconds; positive: gate ahead)",
    ),
}
_LASTING = frozenset(
    {
        "farecore_package_version",
        "farecore_journal_pending_records",
        "farecore_journal_closed_days_pending",
        "farecore_journal_last_upload_timestamp_seconds",
        "farecore_clock_offset_seconds",
    }
)
_ACCEPT_REASON = "none"
_LIVE_FILE = re.compile(r"(?:gauge_live[a-z]+|live)_(?P<pid>[0-9]{1,10})\.(?:db|lock)")


def sample_names() -> frozenset[str]:
    """Every sample name a scrape can hold (``_total``, ``_bucket`` … included)."""
    names: set[str] = set()
    for name, (kind, _, _) in METRICS.items():
        if kind == "counter":
            names |= {f"{name}_total", f"{name}_created"}
        elif kind == "histogram":
            names |= {f"{name}_{s}" for s in ("bucket", "sum", "count", "created")}
        else:
            names.add(name)
    return frozenset(names)


# --- the metric families ---------------------------------------------------------------


class FleetMetrics:
    """One process's metric families, in a registry of their own (``registry``).

    In multi-process mode (:func:`use_multiprocess_dir` first) the values go to files in
    that directory instead, and one process may hold only one ``FleetMetrics``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = _writer_dir()
        self._lock = threading.Lock()
        self._gates: dict[int, GateMetrics] = {}
        r = self.registry

        def family(name: str) -> Any:
            kind, extra, doc = METRICS[name]
            labels = ("terminal", *extra)
            if kind == "counter":
                return Counter(name, doc, labels, registry=r)
            if kind == "histogram":
                return Histogram(name, doc, labels, registry=r, buckets=LATENCY_BUCKETS)
            if name in _LASTING:
                return Gauge(name, doc, labels, registry=r, multiprocess_mode="mostrecent")
            return Gauge(name, doc, labels, registry=r, multiprocess_mode="livemostrecent")

        self.families: dict[str, Any] = {name: family(name) for name in METRICS}

    def gate(self, terminal_id: int) -> GateMetrics:
        """The series of terminal ``terminal_id`` (the same object for the same id)."""
        if (
            isinstance(terminal_id, bool)
            or not isinstance(terminal_id, int)
            or not 0 <= terminal_id <= 0xFFFFFFFFFFFFFFFF
        ):
            raise ValueError(f"terminal id must be a uint64, not {terminal_id!r}")
        with self._lock:
            found = self._gates.get(terminal_id)
            if found is None:
                found = self._gates[terminal_id] = GateMetrics(self, str(terminal_id))
        return found

    def refresh(self) -> None:
        """Read again what each gate's metrics follow (the table in force, the clock)."""
        with self._lock:
            gates = list(self._gates.values())
        for g in gates:
            g.refresh()

    def close(self) -> None:
        """In multi-process mode: this process's gates stop, and their live gauges go
        now (its counters stay in the sums). Nothing to do otherwise."""
        d, self.multiprocess_dir = self.multiprocess_dir, None
        if d is not None:
            _retire(d)


def _finite(value: float, what: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return number


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a whole number of at least 0, not {value!r}")
    return value


class GateMetrics:
    """One terminal's series: the gate's observer and the setters of the fleet's parts.

    The process that runs the gate calls :meth:`attach` (``watch_gate`` does); a process
    that only sets the package, journal or clock figures (a courier) never does, so it
    says nothing about the gate's reader. The observer methods run on the tap path and
    never raise; the setters raise ValueError for a value that cannot be true (a
    negative count, an infinite time).
    """

    def __init__(self, owner: FleetMetrics, terminal: str) -> None:
        f = owner.families
        self.terminal = terminal
        self._f = f
        self._lock = threading.Lock()
        self._sources: list[Callable[[], None]] = []
        self._refused = 0
        self._failed = False
        self._place_role: tuple[str, str] | None = None
        taps = f["farecore_taps"]
        # Every reason's series exists from the start (at 0), so rate() sees its first
        # deny; counters at 0 say nothing untrue from any process.
        self._accept = taps.labels(terminal, "ACCEPT", _ACCEPT_REASON)
        self._deny = {r: taps.labels(terminal, "DENY", r.name) for r in Reason}
        self._latency = f["farecore_tap_duration_seconds"].labels(terminal)
        self._reconnects = f["farecore_reader_reconnects"].labels(terminal)
        f["farecore_revocation_tables_refused"].labels(terminal)
        # Gauges are made when first set: in multi-process mode even an unset one is
        # written (as 0), and a courier's process must not say the reader is down.

    def _child(self, name: str) -> Any:
        return self._f[name].labels(self.terminal)

    # -- GateObserver: on the tap path ----------------------------------------------------

    def decided(self, decision: Decision) -> None:
        try:
            reason = decision.reason
            (self._accept if reason is None else self._deny[reason]).inc()
            self._latency.observe(decision.timings.total_us / 1e6)
        except Exception as exc:  # a full disk under the metrics files, say
            self._complain(exc)

    def reader_lost(self, detail: str) -> None:
        try:
            self._child("farecore_reader_up").set(0)
        except Exception as exc:
            self._complain(exc)

    def reader_back(self) -> None:
        try:
            self._reconnects.inc()  # first: whoever sees the reader up sees it counted
            self._child("farecore_reader_up").set(1)
        except Exception as exc:
            self._complain(exc)

    def _complain(self, exc: Exception) -> None:
        if not self._failed:  # once: a gate that taps all day must not flood its log
            self._failed = True
            _log.warning("metrics of terminal %s cannot be kept: %s", self.terminal, exc)

    # -- what the gate is and what it follows ----------------------------------------------

    def attach(self, place: str, role: str) -> None:
        """This process runs the gate, at ``place`` in ``role``, and its reader has just
        opened: ``farecore_gate_info`` and ``farecore_reader_up`` say so."""
        with self._lock:
            if self._place_role not in (None, (place, role)):
                raise ValueError(
                    f"terminal {self.terminal} is already attached at {self._place_role}"
                )
            self._place_role = (place, role)
        self._f["farecore_gate_info"].labels(self.terminal, place, role).set(1)
        self._child("farecore_reader_up").set(1)

    def limits(self, *, max_age_s: int | None, clock_tolerance_s: int) -> None:
        """The gate's configured limits, which the alert rules compare against."""
        if max_age_s is not None:
            self._child("farecore_revocation_max_age_seconds").set(_count(max_age_s, "max_age_s"))
        tolerance = _count(clock_tolerance_s, "clock_tolerance_s")
        self._child("farecore_clock_tolerance_seconds").set(tolerance)

    def follow(self, source: Callable[[], None]) -> None:
        """Have :meth:`refresh` call ``source`` (which calls this object's setters), and
        call it now."""
        with self._lock:
            self._sources.append(source)
        self._pull(source)

    def refresh(self) -> None:
        with self._lock:
            sources = list(self._sources)
        for source in sources:
            self._pull(source)

    def _pull(self, source: Callable[[], None]) -> None:
        try:
            source()
        except Exception as exc:  # a scrape must not fail because one gate's state did
            self._complain(exc)

    # -- setters: the gate's wiring, the package follower, the journal courier --------------

    def revocation(self, generation: int, created_at: float) -> None:
        """The revocation table in force: its generation and creation time (Unix s)."""
        self._child("farecore_revocation_generation").set(_count(generation, "generation"))
        created = _finite(created_at, "created_at")
        self._child("farecore_revocation_table_created_timestamp_seconds").set(created)

    def tables_refused(self, total: int) -> None:
        """How many published tables the gate has refused since it started."""
        total = _count(total, "tables refused")
        with self._lock:
            more, self._refused = total - self._refused, max(total, self._refused)
        if more > 0:
            self._child("farecore_revocation_tables_refused").inc(more)

    def clock_fault(self, faulted: bool) -> None:
        self._child("farecore_clock_fault").set(1 if faulted else 0)

    def package(self, version: int) -> None:
        """The parameter package installed for this gate."""
        self._child("farecore_package_version").set(_count(version, "package version"))

    def journal_pending(self, records: int) -> None:
        """Journal records not yet handed in to the collection point."""
        self._child("farecore_journal_pending_records").set(_count(records, "pending records"))

    def closed_days_pending(self, days: int) -> None:
        """Service days over whose batch the collection point has not acknowledged (0
        while only the open day's records wait)."""
        days = _count(days, "closed days pending")
        self._child("farecore_journal_closed_days_pending").set(days)

    def uploaded(self, at: float) -> None:
        """The collection point acknowledged an upload at ``at`` (Unix seconds)."""
        when = _finite(at, "upload time")
        self._child("farecore_journal_last_upload_timestamp_seconds").set(when)

    def clock_offset(self, seconds: float) -> None:
        """The gate's clock minus the collection point's, as last measured."""
        self._child("farecore_clock_offset_seconds").set(_finite(seconds, "clock offset"))


def watch_gate(metrics: FleetMetrics, wired: WiredGate, cfg: GateConfig) -> GateMetrics:
    """Hang a built gate on ``metrics``: it becomes the gate's observer, and the table in
    force, refused tables and the clock guard's state are read at every refresh."""
    g = metrics.gate(cfg.terminal_id)
    g.attach(cfg.place, cfg.role)
    g.limits(max_age_s=cfg.revocation_max_age_s, clock_tolerance_s=cfg.clock_tolerance_s)
    hot, clock = wired.revocation, wired.clock

    def source() -> None:
        if hot is not None:
            table = hot.snapshot()
            g.revocation(table.generation, table.created_at)
            g.tables_refused(hot.rejected)
        g.clock_fault(clock.faulted)

    g.follow(source)
    wired.gate.observer = g
    return g


class _CourierStatus(Protocol):
    @property
    def records_pending(self) -> int | None: ...
    @property
    def closed_days_pending(self) -> int | None: ...
    @property
    def last_upload_time(self) -> float | None: ...
    @property
    def clock_offset_s(self) -> float | None: ...


class CourierLike(Protocol):
    """What :func:`watch_courier` reads: ``farecore.fleet.upload.Courier``."""

    @property
    def terminal(self) -> int: ...

    def status(self) -> _CourierStatus: ...


class FollowerLike(Protocol):
    """What :func:`watch_follower` reads: ``farecore.fleet.follow.PackageFollower``."""

    @property
    def version(self) -> int | None: ...


def watch_courier(metrics: FleetMetrics, courier: CourierLike) -> GateMetrics:
    """Show a courier's figures in its terminal's metrics: the records and the closed
    days not yet handed in, the last acknowledged upload and the clock offset it measured
    (each once known)."""
    g = metrics.gate(courier.terminal)

    def source() -> None:
        s = courier.status()
        if s.records_pending is not None:
            g.journal_pending(s.records_pending)
        if s.closed_days_pending is not None:
            g.closed_days_pending(s.closed_days_pending)
        if s.last_upload_time is not None:
            g.uploaded(s.last_upload_time)
        if s.clock_offset_s is not None:
            g.clock_offset(s.clock_offset_s)

    g.follow(source)
    return g


def watch_follower(metrics: FleetMetrics, terminal_id: int, follower: FollowerLike) -> GateMetrics:
    """Show the version of the parameter package in force for ``terminal_id``."""
    g = metrics.gate(terminal_id)

    def source() -> None:
        version = follower.version
        if version is not None:
            g.package(version)

    g.follow(source)
    return g


# --- multi-process mode ----------------------------------------------------------------

_live_locks: dict[tuple[int, str], int] = {}  # (pid, dir) -> the fd holding live_<pid>.lock
_writers: set[tuple[int, str]] = set()


def use_multiprocess_dir(directory: str | os.PathLike[str]) -> Path:
    """Put this process (and those it forks later) in multi-process mode, writing into
    ``directory``. Call it before any metric is made; ConfigError if it cannot be."""
    d = Path(directory).absolute()
    if not d.is_dir():
        raise ConfigError(f"metrics.multiprocess_dir {d}: no such directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise ConfigError(f"metrics.multiprocess_dir {d}: not writable")
    current = os.environ.get(ENV_DIR)
    if current is not None and Path(current).absolute() != d:
        raise ConfigError(
            f"{ENV_DIR} is {current} in the environment, but metrics.multiprocess_dir is {d}"
        )
    os.environ[ENV_DIR] = str(d)
    if not values.ValueClass._multiprocess:
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return d


def _writer_dir() -> Path | None:
    """The directory this process writes its values to (None: they stay in memory); in
    it, the lock that tells the serving process this one is alive."""
    if not values.ValueClass._multiprocess:
        return None
    d = Path(os.environ[ENV_DIR]).absolute()
    key = (os.getpid(), str(d))
    if key in _writers:
        raise ConfigError(f"this process already writes metrics into {d}")
    _writers.add(key)
    if key not in _live_locks:
        # Taken before any value file exists, so a serving process never sees a live
        # file whose writer has not locked yet.
        fd = os.open(d / f"live_{key[0]}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"{d}: cannot lock live_{key[0]}.lock: {exc}") from None
        _live_locks[key] = fd
    return d


def _retire(d: Path) -> None:
    """This process stops writing: its live gauges go now, not at the next sweep."""
    key = (os.getpid(), str(d))
    _writers.discard(key)
    mark_process_dead(key[0], str(d))  # type: ignore[no-untyped-call]
    fd = _live_locks.pop(key, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.unlink(d / f"live_{key[0]}.lock")
        os.close(fd)


def _alive(d: Path, pid: int) -> bool:
    try:
        fd = os.open(d / f"live_{pid}.lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:  # a writer that never locked (not ours): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return True
    with contextlib.suppress(OSError):
        os.unlink(d / f"live_{pid}.lock")
    os.close(fd)
    return False


def sweep_dead(directory: str | os.PathLike[str]) -> list[int]:
    """Remove the live gauges of every writer of ``directory`` that has died; return
    their pids. Its counters and histograms stay: the sums must never go down."""
    d = Path(directory)
    pids: set[int] = set()
    for path in glob.glob(str(d / "*_*.*")):
        m = _LIVE_FILE.fullmatch(os.path.basename(path))
        if m is not None:
            pids.add(int(m["pid"]))
    pids.discard(os.getpid())
    dead = sorted(p for p in pids if not _alive(d, p))
    for pid in dead:
        mark_process_dead(pid, str(d))  # type: ignore[no-untyped-call]
    return dead
