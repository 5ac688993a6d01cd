"""A committer thread: writes work in the order it was handed over, one batch per
transaction, and wakes each waiter once the batch holding its work is durable.

Both journals commit on one: a terminal's journal hands it single taps and lets it
gather those that arrive within ``gather_s`` into one transaction (group commit across
the threads appending); a station's journal hands it whole groups, one transaction
each, and has it reorganise the file (``on_idle``) when nothing came for a while.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from farecore.errors import JournalError

__all__ = ["Committer", "Ticket"]

_T = TypeVar("_T")
_MAX_BATCH = 1000


class Ticket:
    """One piece of work handed to the committer; ``wait`` returns once it is durable."""

    __slots__ = ("_done", "_error", "taps")

    def __init__(self, taps: int = 1) -> None:
        self.taps = taps
        self._done = threading.Event()
        self._error: BaseException | None = None

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> None:
        """Block until the work is durable; raise JournalError if its commit failed."""
        self._done.wait()
        if self._error is not None:
            raise JournalError(str(self._error)) from self._error


class Committer(Generic[_T]):
    """``write`` runs on the committer's own thread, started with the first ``submit``.

    ``write(items)`` makes the items durable in one transaction or raises (then every
    ticket of the batch fails with its error). ``gather_s``: after the first item, also
    take those arriving within that long of the last one (at most 1,000; None: one item
    per batch). ``idle_s()``, asked before each wait, says how long to wait for work
    before calling ``on_idle`` (None: wait as long as it takes). ``cpu_s`` counts the
    thread's CPU time in ``write`` and ``on_idle``.
    """

    def __init__(
        self,
        name: str,
        write: Callable[[list[_T]], None],
        *,
        gather_s: float | None = None,
        idle_s: Callable[[], float | None] = lambda: None,
        on_idle: Callable[[], None] = lambda: None,
    ) -> None:
        self._name = name
        self._write = write
        self._gather_s = gather_s
        self._idle_s = idle_s
        self._on_idle = on_idle
        self._queue: queue.SimpleQueue[tuple[_T, Ticket] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._dead: BaseException | None = None  # why the thread stopped, if it failed
        self.cpu_s = 0.0

    def submit(self, item: _T, ticket: Ticket) -> Ticket:
        """Queue ``item``; ``ticket`` is finished once the batch holding it is written."""
        if self._dead is not None:
            ticket._finish(self._dead)
            return ticket
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()
        self._queue.put((item, ticket))
        return ticket

    def close(self) -> None:
        """Write what was submitted, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # the thread is gone: no waiter may wait for it
            self._dead = exc
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    return
                if item is not None:
                    item[1]._finish(exc)

    def _serve(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._idle_s())
            except queue.Empty:  # nothing to commit for a while
                cpu = time.thread_time()
                try:
                    self._on_idle()
                finally:
                    self.cpu_s += time.thread_time() - cpu
                continue
            if first is None:
                return
            batch, stop = self._gather(first)
            cpu = time.thread_time()
            try:
                self._write([item for item, _ in batch])
                error: BaseException | None = None
            except BaseException as exc:  # no waiter of this batch may go on as if durable
                error = exc
            finally:
                self.cpu_s += time.thread_time() - cpu
            for _, ticket in batch:
                ticket._finish(error)
            if stop:
                return

    def _gather(self, first: tuple[_T, Ticket]) -> tuple[list[tuple[_T, Ticket]], bool]:
        """The batch that starts with ``first``, and whether the stop came meanwhile."""
        batch = [first]
        if self._gather_s is None:
            return batch, False
        try:  # bounded wait: whatever arrives within the window joins the batch
            while len(batch) < _MAX_BATCH:
                item = self._queue.get(timeout=self._gather_s)
                if item is None:
                    return batch, True
                batch.append(item)
        except queue.Empty:
            pass
        return batch, False
