"""Where a simulated year's lanes and nights run: a local pool of forked processes, or Dask.

The local pool is made before the year's cards and forks its processes at the first
day's tasks, after them, so they inherit every card. With a Dask scheduler, lane tasks
and the settlement's units run on its workers (each makes the year's cards once), which
must see the run directory at the same path. Either way a task depends only on its
arguments and the files of the run, so where it runs changes no byte of the result.
"""

from __future__ import annotations

import concurrent.futures
import gc
import importlib
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from farecore.errors import ConfigError
from farecore.settlement.pipeline import MapUnits
from farecore.settlement.unit import Partial, UnitConfig
from sim.lane import LaneResult
from sim.world import SimError
from sim.year_tasks import LaneDay, run_lane_day
from sim.year_world import YearOptions

__all__ = ["Executor", "executor"]


class Executor:
    """Runs a day's lane tasks; ``units`` runs the settlement's units the same way."""

    units: MapUnits | None = None

    def submit(self, tasks: list[LaneDay]) -> Any:
        """Start the tasks; a handle for ``gather``."""
        raise NotImplementedError

    def gather(self, handle: Any) -> list[tuple[int, Any, LaneResult]]:
        """Wait for the tasks of ``handle``; their results, in task order."""
        raise NotImplementedError

    def map(self, tasks: list[LaneDay]) -> list[tuple[int, Any, LaneResult]]:
        return self.gather(self.submit(tasks))

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _LocalPool(Executor):
    """A pool of forked worker processes, made after the cards: they inherit them."""

    def __init__(self, workers: int) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("fork"),
            initializer=_watch_parent,
            initargs=(os.getpid(),),
        )

    def submit(self, tasks: list[LaneDay]) -> Any:
        try:
            return [self._pool.submit(_lane_day_here, task) for task in tasks]
        except BrokenProcessPool as exc:
            raise SimError(f"a worker process died ({exc})") from None

    def gather(self, handle: Any) -> list[tuple[int, Any, LaneResult]]:
        try:
            return [future.result() for future in handle]
        except BrokenProcessPool as exc:
            raise SimError(f"a worker process died during the day ({exc})") from None

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(cancel_futures=True)


class _DaskPool(Executor):
    """A Dask cluster: lane tasks and settlement units run on its workers, which must
    see the run directory at the same path."""

    def __init__(self, address: str) -> None:
        from farecore.settlement.cluster import DaskSettings

        try:
            DaskSettings(scheduler=address)  # checks the address and the extra
        except ConfigError as exc:
            raise SimError(str(exc)) from None
        dd = importlib.import_module("dask.distributed")
        try:
            self._client = dd.Client(address, timeout="20s")
        except OSError as exc:
            raise SimError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        self._dd = dd
        self._address = address
        self.units = self._map_units

    def submit(self, tasks: list[LaneDay]) -> Any:
        return self._client.map(run_lane_day, tasks, pure=False)

    def gather(self, handle: Any) -> list[tuple[int, Any, LaneResult]]:
        try:
            return list(self._client.gather(handle))
        except self._dd.KilledWorker as exc:
            raise SimError(
                f"Dask gave up on a lane's day: the workers running it kept dying ({exc}); "
                "the run resumes from its last completed day"
            ) from None
        except concurrent.futures.CancelledError:
            raise SimError(
                f"lost the Dask scheduler at {self._address} during the day; "
                "the run resumes from its last completed day"
            ) from None

    def _map_units(self, paths: Sequence[str], cfg: UnitConfig) -> Iterator[Partial]:
        from farecore.settlement.cluster import units_on

        yield from units_on(self._client, paths, cfg, self._address)

    def __exit__(self, *exc: object) -> None:
        self._client.close()


# The cycle collector's thresholds in a pool worker (Python's default is 700, 10, 10).
_GC_THRESHOLDS = (50_000, 20, 20)


def _lane_day_here(task: LaneDay) -> tuple[int, Any, LaneResult]:
    """A lane's day in a pool worker. The worker keeps hundreds of thousands of objects
    from day to day (the cards' keys, parsed credentials) and a day makes few cycles:
    collect yesterday's cycles once, set what is left aside for good (``gc.freeze``),
    and run the collector seldom, a few times a day instead of hundreds (it took about a
    tenth of a lane's time). A Dask worker's process is not ours to tune: it runs
    ``run_lane_day`` as it is."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)
    return run_lane_day(task)


def _watch_parent(parent: int) -> None:
    """In a pool worker: end when the run's process is gone (killed), instead of
    waiting for work forever with the run's output still open. And freeze what the
    worker inherits (the year's cards): its cycle collector then never walks them, so
    the pages stay shared with the parent instead of being copied."""
    gc.freeze()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def executor(opts: YearOptions) -> Executor:
    if opts.scheduler is not None:
        return _DaskPool(opts.scheduler)
    return _LocalPool(opts.workers)
