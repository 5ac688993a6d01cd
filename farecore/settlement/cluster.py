"""The settlement on a Dask cluster: the same units, the same merge, the same bytes.

``map_on_dask`` returns a ``MapUnits`` callable for ``run_settlement``. It sends one task
per batch path (``settle_unit``) to the workers and hands back their partials; the merge
then runs here, in its canonical order, so the outputs are byte-identical to the
in-process and ``--jobs N`` runs. A worker that dies mid-run loses nothing: Dask runs its
tasks again elsewhere, and a unit depends only on its arguments. The night's
configuration reaches the workers as a task of its own, which Dask can also run again,
never as scattered data, which dies with the last worker holding it. A unit Dask gives
up on (its workers kept dying) or a scheduler that cancels the units stops the night
with one line; nothing is written.

Batch paths must be readable from every worker (a shared filesystem). A worker that
cannot read one fails the settlement with a message naming the worker and the path.

Dask is an optional extra; without it the options say which extra to install.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import importlib
import logging
import pickle
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from farecore.errors import ConfigError, SettlementError
from farecore.settlement.pipeline import MapUnits
from farecore.settlement.unit import Partial, UnitConfig, settle_unit

__all__ = [
    "CLUSTER_CONFIG",
    "DaskSettings",
    "dask_available",
    "map_on_dask",
    "settle_unit_on_worker",
    "start_local_cluster",
    "units_on",
]

_log = logging.getLogger(__name__)

_EXTRA_HINT = "Dask is not installed: pip install 'farecore[dask]'"


def _distributed() -> Any:
    """The ``dask.distributed`` module, untyped on purpose: its stubs are partial."""
    try:
        return importlib.import_module("dask.distributed")
    except ImportError:
        raise ConfigError(_EXTRA_HINT) from None


def dask_available() -> bool:
    try:
        _distributed()
    except ConfigError:
        return False
    return True


def settle_unit_on_worker(path: str, cfg: UnitConfig) -> bytes:
    """``settle_unit``, pickled, with the worker's address on a file it could not read.

    The partial is pickled here, in the task's own thread, and travels as plain bytes:
    left to Dask, the worker's event-loop thread would walk thousands of ride tuples
    while the next task computes, and the two would fight over the GIL.
    """
    try:
        partial = settle_unit(path, cfg)
    except SettlementError as exc:  # an issued list this worker does not see as checked
        raise SettlementError(f"{exc} (on {_where()})") from None
    if partial.unreadable:
        partial = dataclasses.replace(partial, where=_where())
    return pickle.dumps(partial, protocol=pickle.HIGHEST_PROTOCOL)


def _where() -> str:
    where = "this worker"
    with contextlib.suppress(Exception):
        where = f"worker {_distributed().get_worker().address}"
    return where


class DaskSettings:
    """Where to run: an existing scheduler, or a LocalCluster started for this run."""

    __slots__ = ("n_workers", "on_ready", "scheduler", "threads_per_worker")

    def __init__(
        self,
        scheduler: str | None = None,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        on_ready: Callable[[str], None] | None = None,
    ) -> None:
        if (scheduler is None) == (n_workers is None):
            raise ConfigError("give either a scheduler address or a number of local workers")
        if n_workers is not None and n_workers < 1:
            raise ConfigError("--dask-workers must be at least 1")
        if threads_per_worker < 1:
            raise ConfigError("threads per worker must be at least 1")
        if scheduler is not None:
            # Checked here, before anything is written: a Client that fails on a
            # malformed address also hangs at exit.
            _distributed()  # the extra's hint, if Dask is missing
            addressing = importlib.import_module("distributed.comm.addressing")
            try:
                addressing.get_address_host_port(scheduler)
            except ValueError as exc:
                raise ConfigError(f"--scheduler {scheduler!r}: {exc}") from None
        self.scheduler = scheduler
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.on_ready = on_ready


@contextlib.contextmanager
def _client(settings: DaskSettings) -> Iterator[Any]:
    dd = _distributed()
    if settings.scheduler is not None:
        try:
            client = dd.Client(settings.scheduler, timeout="20s")
        except OSError as exc:
            raise SettlementError(
                f"cannot reach the Dask scheduler at {settings.scheduler}: {exc}"
            ) from None
        with client:
            yield client
        return
    assert settings.n_workers is not None
    with (
        start_local_cluster(settings.n_workers, settings.threads_per_worker) as cluster,
        dd.Client(cluster) as client,
    ):
        yield client


# Cluster settings for a settlement, whose tasks are few, long and CPU-bound. Measured
# on 200,000 rides over two 1-thread workers, against Dask's defaults: 2.5 % more rides
# per second, 3 % less worker CPU per ride and 40 % less scheduler CPU.
# - the sampling profiler wakes every 10 ms in each worker to walk every thread's stack;
# - the system monitor (psutil) and the event-loop tick run every 0.5 s and 20 ms, for
#   dashboard plots and blocked-loop warnings a settlement does not need at that rate;
# - work stealing moves queued tasks between workers; equal batches gain nothing by it.
CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "10s",
    "distributed.admin.tick.interval": "1s",
    "distributed.scheduler.work-stealing": False,
}


def start_local_cluster(n_workers: int, threads_per_worker: int = 1) -> Any:
    """A LocalCluster of worker processes for one big machine, set up for settling."""
    dd = _distributed()
    dask = importlib.import_module("dask")
    # The scheduler runs in this process; the nannies hand this config to their workers.
    with dask.config.set(CLUSTER_CONFIG):
        return dd.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=":0",
            silence_logs=50,
        )


def map_on_dask(settings: DaskSettings) -> MapUnits:
    """A ``MapUnits`` that runs each batch's unit as one Dask task."""

    def run(paths: Sequence[str], cfg: UnitConfig) -> Iterator[Partial]:
        with _client(settings) as client:
            link = getattr(client, "dashboard_link", "") or "(no dashboard)"
            if settings.on_ready is not None:
                settings.on_ready(link)
            yield from units_on(client, paths, cfg, settings.scheduler)

    return run


def units_on(
    client: Any, paths: Sequence[str], cfg: UnitConfig, scheduler: str | None = None
) -> Iterator[Partial]:
    """Each batch's unit as one task on ``client``'s cluster; the partials as they finish.

    Raises SettlementError when Dask gives up on a unit or the scheduler cancels the
    units (``scheduler``, its address, names it; None for a local cluster)."""
    dd = _distributed()
    # A task, not client.scatter: Dask cannot make scattered data again, and its memory
    # manager keeps a single copy once few units still need it; had that worker died,
    # every unit to run again would have been cancelled.
    shared = client.submit(_the_config, cfg, pure=False)
    futures = client.map(settle_unit_on_worker, list(paths), cfg=shared, pure=False)
    path_of = {f.key: p for f, p in zip(futures, paths, strict=True)}
    try:
        for future in dd.as_completed(futures):
            try:
                blob = future.result()
            except dd.KilledWorker as exc:
                raise _killed(exc, path_of) from None
            except concurrent.futures.CancelledError as exc:
                raise _cancelled(exc, scheduler) from None
            partial: Partial = pickle.loads(blob)
            yield partial
    finally:
        with contextlib.suppress(Exception):  # a scheduler gone cancels them anyway
            client.cancel([*futures, shared])


def _the_config(cfg: UnitConfig) -> UnitConfig:
    return cfg


def _killed(exc: Any, path_of: dict[Any, str]) -> SettlementError:
    """A unit whose workers all died while running it: Dask stops retrying it after
    ``distributed.scheduler.allowed-failures`` deaths (a batch that exhausts a worker's
    memory, or workers killed from outside); settling without it would change the money."""
    task = getattr(exc, "task", None)
    what = f"the unit of batch file {path_of[task]}" if task in path_of else "the night's setup"
    times = last = ""
    with contextlib.suppress(Exception):
        n = int(exc.allowed_failures) + 1
        times = f" {n} time{'s' if n != 1 else ''}"
    with contextlib.suppress(Exception):
        last = f", last at {exc.last_worker.address}"
    return SettlementError(
        f"Dask gave up on {what}: the worker running it died{times}{last}; nothing is "
        "written: see the worker logs (memory? a killed process?), then run the night again"
    )


def _cancelled(exc: BaseException, scheduler: str | None) -> SettlementError:
    reason = getattr(exc, "reason", None) or "no reason given"
    where = f"at {scheduler}" if scheduler else "of the local cluster"
    if reason == "scheduler-connection-lost":
        happened = f"lost the Dask scheduler {where} during the night"
    else:
        happened = f"the Dask scheduler {where} cancelled the night's units ({reason})"
    return SettlementError(f"{happened}; nothing is written: run the night again")


def print_dashboard(link: str) -> None:
    _log.info("Dask dashboard at %s", link)
