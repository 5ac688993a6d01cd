"""Keep the newest verified revocation table in force while the gate keeps tapping.

``HotRevocation`` is a ``farecore.checks.RevocationSource``. ``snapshot()`` returns the
table in force with one attribute read, so a tap never waits. A background thread (or a
caller of ``poll()``) notices a new file at the configured path by its identity (device,
inode, size, mtime), verifies it completely off the tap path, and swaps it in with one
reference assignment. A tap that already took a snapshot finishes on the old table and
records the old generation; the next tap sees the new one.

A file that fails verification, or whose generation is not newer than the one in force
(a rollback), is refused with one log line and counted; the old table keeps serving and
the same refused file is not re-verified until it changes.

This module must never block ``snapshot()``, never serve an unverified table, and never
leave its thread running after ``close()``.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from types import TracebackType

from farecore.errors import TableRejected
from farecore.keys import PublicKeyFile
from farecore.revocation.table import RevocationTable, TableChanged

__all__ = ["HotRevocation"]

_log = logging.getLogger("farecore.revocation")
_Identity = tuple[int, int, int, int]


def _identity_of(path: Path) -> _Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class HotRevocation:
    """The verified table in force at ``path``, reloaded when a newer one appears.

    The first table must verify, or the constructor raises :class:`TableRejected`: a
    gate must not start with no revocation list. ``poll_interval_s`` is how often the
    background thread looks at the path; 0 or None starts no thread (drive it with
    :meth:`poll`). Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        signer: PublicKeyFile,
        *,
        poll_interval_s: float | None = 1.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if poll_interval_s is not None and poll_interval_s < 0:
            raise ValueError("poll_interval_s must be >= 0 (0 or None: no background thread)")
        self.path = Path(path)
        self._signer = signer
        self._log = logger or _log
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._table = RevocationTable.open(self.path, signer)
        self._seen: _Identity | None = self._table.identity
        self.swaps = 0
        self.rejected = 0
        self.last_rejection: str | None = None
        self._log.info(
            "revocation table generation %d in force (%d ids) from %s",
            self._table.generation,
            self._table.count,
            self.path,
        )
        self._thread: threading.Thread | None = None
        if poll_interval_s:
            self._thread = threading.Thread(
                target=self._run,
                args=(float(poll_interval_s),),
                name=f"revocation-reload:{self.path.name}",
                daemon=True,
            )
            self._thread.start()

    # --- RevocationSource -------------------------------------------------------------

    def snapshot(self) -> RevocationTable:
        """The verified table in force (one attribute read; never blocks)."""
        return self._table

    # --- observability ----------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._table.generation

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- reloading --------------------------------------------------------------------

    def poll(self) -> bool:
        """Look at the path once now; return True when a newer table was swapped in."""
        with self._lock:
            seen = _identity_of(self.path)
            if seen is None or seen == self._seen:
                return False
            if seen == self._table.identity:  # back to the file in force
                self._seen = seen
                return False
            try:
                table = RevocationTable.open(self.path, self._signer)
            except TableChanged as exc:
                self._seen = None  # replaced mid-read: look again at the next poll
                self._refuse(str(exc))
                return False
            except TableRejected as exc:
                self._seen = seen  # do not re-verify (and re-log) the same bad file
                self._refuse(str(exc))
                return False
            self._seen = table.identity
            current = self._table.generation
            if table.generation <= current:
                self._refuse(
                    f"{self.path}: generation {table.generation} is not newer than "
                    f"generation {current} in force (rollback refused)"
                )
                return False
            self._table = table
            self.swaps += 1
        self._log.info(
            "revocation table generation %d in force (%d ids), replacing generation %d",
            table.generation,
            table.count,
            current,
        )
        return True

    def _refuse(self, why: str) -> None:
        self.rejected += 1
        self.last_rejection = why
        self._log.warning(
            "revocation table refused: %s; generation %d stays in force",
            why,
            self._table.generation,
        )

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.poll()
            except Exception:  # the reload thread must outlive any one bad file
                self._log.exception("revocation reload failed; the table in force is kept")

    def close(self) -> None:
        """Stop the reload thread and wait for it. The last table stays readable."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def __enter__(self) -> HotRevocation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"HotRevocation({str(self.path)!r}, generation={self.generation}, "
            f"swaps={self.swaps}, rejected={self.rejected})"
        )
