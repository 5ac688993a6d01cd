"""Keep the newest verified revocation table in force while the gate keeps tapping.

``HotRevocation`` is a ``farecore.decide.checks.RevocationSource``. ``snapshot()`` returns the
table in force with one attribute read, so a tap never waits. A background thread (or a
caller of ``poll()``) notices a new file at the configured path by its identity (device,
inode, size, mtime), verifies it completely off the tap path, and swaps it in with one
reference assignment. A tap that already took a snapshot finishes on the old table and
records the old generation; the next tap sees the new one.

With a :class:`~farecore.decide.revocation.store.TableStore`, what is verified and mapped is
the gate's own read-only copy, never the published file: writing that file in place,
truncating it or renaming another over it changes no decision
(docs/revocation-format.md).

A file that fails verification, or whose generation is not newer than the one in force
(a rollback), is refused with one log line and counted; the old table keeps serving and
the same refused file is not re-verified until it changes. ``floor`` is the newest table
this gate ever put in force (its durable marks): at start, a published file older than
that, or of the same generation with other contents, is refused and the floor's own
verified copy serves instead. ``on_adopt`` is called with each table before it goes in
force, so the gate can make it its new floor; if it raises, the table is not swapped in.

A gate that follows signed packages is handed a base table and the newest delta over it
with :meth:`HotRevocation.offer`, on the follower's thread. The base is copied and
verified into the store only when it is not the base already in force (that copy is
reused, never verified again per delta); the delta is verified, checked against the
base, copied into the store, and the view of the two goes in force the same way as a
table: on_adopt, then one reference assignment. The floor may name such a view
(generation, base copy, delta copy); a restarted gate restores it from its store.

This module must never block ``snapshot()``, never serve an unverified table, and never
leave its thread running after ``close()``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from farecore.card.keys import PublicKeyFile
from farecore.closing import Closing
from farecore.decide.revocation.delta import RevocationDelta
from farecore.decide.revocation.filecheck import open_regular, signed_header
from farecore.decide.revocation.format import HEADER_SIZE, Header
from farecore.decide.revocation.store import TableStore
from farecore.decide.revocation.table import RevocationTable, TableChanged
from farecore.decide.revocation.view import RevocationInForce, RevocationView
from farecore.errors import FarecoreError, TableRejected

__all__ = ["Floor", "HotRevocation"]

_log = logging.getLogger(__name__)
_Identity = tuple[int, int, int, int]
_PAUSE_S = 100e-6
Floor = tuple[int, str] | tuple[int, str, str]
"""A gate's revocation mark: (generation, table copy) or (generation, base copy, delta copy)."""


def _base_of(held: RevocationInForce) -> RevocationTable:
    return held.base if isinstance(held, RevocationView) else held


def _pause() -> None:
    """Let a tap that waits for the GIL take it, between two steps of putting a delta in
    force. A thread holding the GIL hands it over only when it blocks long enough for
    the waiting thread to wake (a short system call is back before it does), or after
    the switch interval (5 ms by default); each step here holds it for well under 1 ms,
    so this bounds the wait of a tap to one step."""
    time.sleep(_PAUSE_S)


def _kind(held: RevocationInForce) -> str:
    return "view" if isinstance(held, RevocationView) else "table"


def _published_head(path: Path) -> tuple[bytes, int]:
    """The first 256 bytes of the table at ``path``, and its size (its body is not read)."""
    fd = open_regular(path)
    try:
        return os.pread(fd, HEADER_SIZE, 0), os.fstat(fd).st_size
    except OSError as exc:
        raise TableRejected(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _identity_of(path: Path) -> _Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class HotRevocation(Closing):
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
        store: TableStore | None = None,
        floor: Floor | None = None,
        on_adopt: Callable[[RevocationInForce], None] | None = None,
    ) -> None:
        if poll_interval_s is not None and poll_interval_s < 0:
            raise ValueError("poll_interval_s must be >= 0 (0 or None: no background thread)")
        self.path = Path(path)
        self._signer = signer
        self._store = store
        self._on_adopt = on_adopt
        self._log = logger or _log
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.swaps = 0
        self.rejected = 0
        self.last_rejection: str | None = None
        self._seen = _identity_of(self.path)
        self._table: RevocationInForce = self._first_table(floor)
        self._in_force = self._seen
        if on_adopt is not None:
            on_adopt(self._table)
        self._tidy()
        self._log.info(
            "revocation %s generation %d in force (%d ids) from %s",
            _kind(self._table),
            self._table.generation,
            self._table.count,
            self._table.source,
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

    def _load(self) -> RevocationTable:
        if self._store is None:
            return RevocationTable.open(self.path, self._signer)
        return self._store.adopt(self.path, self._signer)

    def _tidy(self) -> None:
        # Copies older than the table in force serve no one (a gate that still maps one
        # keeps its mapping); the marks name the one in force, so it is never removed.
        if self._store is not None:
            held = self._table
            delta = held.path.name if isinstance(held, RevocationView) else None
            try:
                self._store.prune(_base_of(held).path.name, self._signer, delta)
            except OSError as exc:
                self._log.warning("revocation table store not tidied: %s", exc)

    def _first_table(self, floor: Floor | None) -> RevocationInForce:
        if floor is None or self._store is None:
            return self._load()
        generation = floor[0]
        try:
            table = self._load()
        except TableRejected as exc:
            why: str | None = str(exc)
        else:
            if table.generation > generation or table.floor_mark() == floor:
                return table
            if len(floor) == 3 and table.path.name == floor[1]:
                why = None  # the base of the view in force: no rollback, the view serves
            elif table.generation < generation:
                why = (
                    f"{self.path}: generation {table.generation} is older than generation "
                    f"{generation}, which this gate already held"
                )
            else:
                why = (
                    f"{self.path}: generation {generation} with other contents than the "
                    "copy this gate already held"
                )
        kept = self._store.open_floor(floor, self._signer)
        if why is not None:
            self._refuse(why, kept)
        return kept

    # --- RevocationSource -------------------------------------------------------------

    def snapshot(self) -> RevocationInForce:
        """The verified table or view in force (one attribute read; never blocks)."""
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
            if seen == self._in_force:  # back to the file in force
                self._seen = seen
                return False
            current = self._table.generation
            try:
                table = self._load()
                if _identity_of(self.path) != seen:
                    raise TableChanged(f"{self.path}: replaced while it was being read")
            except TableChanged as exc:
                self._seen = None  # replaced mid-read: look again at the next poll
                self._refuse(str(exc))
                return False
            except TableRejected as exc:
                self._seen = seen  # do not re-verify (and re-log) the same bad file
                self._refuse(str(exc))
                return False
            self._seen = seen
            if self._store is not None and table.path == _base_of(self._table).path:
                return False  # the same signed table (or the base of the view) is in force
            if table.generation <= current:
                self._refuse(
                    f"{self.path}: generation {table.generation} is not newer than "
                    f"generation {current} in force (rollback refused)"
                )
                self._tidy()
                return False
            if self._on_adopt is not None:
                try:
                    self._on_adopt(table)
                except (OSError, FarecoreError) as exc:
                    self._seen = None  # try again at the next poll
                    self._refuse(f"cannot record generation {table.generation}: {exc}")
                    return False
            self._table = table
            self._in_force = seen
            self.swaps += 1
            self._tidy()
        self._log.info(
            "revocation table generation %d in force (%d ids), replacing generation %d",
            table.generation,
            table.count,
            current,
        )
        return True

    def offer(
        self, base: str | os.PathLike[str], delta: str | os.PathLike[str] | None = None
    ) -> bool:
        """Put the base table ``base``, with the delta ``delta`` over it, in force.

        Returns True when it was swapped in, False when exactly that table or view is in
        force already. Raises :class:`TableRejected` (the one in force stays) when either
        file fails its checks, the delta does not fit the base, or the generation is not
        above the one in force (a rollback); :class:`TableChanged` means try again (a file
        changed while read, or the store or on_adopt could not be written). Runs on the
        caller's thread (a package follower's), never on the tap path; needs a store.
        """
        if self._store is None:
            raise ValueError("offer needs a HotRevocation with a TableStore")
        base_path = Path(base)
        with self._lock:
            current = self._table
            try:
                table = self._offered(base_path, None if delta is None else Path(delta))
            except TableRejected as exc:
                self.rejected += 1
                self.last_rejection = str(exc)
                self._log.debug("offered revocation refused: %s", exc)
                raise
            if table is None:
                return False
            _pause()
            if self._on_adopt is not None:
                try:
                    self._on_adopt(table)
                except (OSError, FarecoreError) as exc:
                    self.rejected += 1
                    self.last_rejection = f"cannot record generation {table.generation}: {exc}"
                    raise TableChanged(self.last_rejection) from None
                _pause()
            self._table = table
            self.swaps += 1
            _pause()
            self._tidy()
        self._log.info(
            "revocation %s generation %d in force (%d ids), replacing generation %d",
            _kind(table),
            table.generation,
            table.count,
            current.generation,
        )
        return True

    def _offered(self, base: Path, delta_path: Path | None) -> RevocationInForce | None:
        """The offered table or view, verified; None when it is the one in force."""
        assert self._store is not None
        current = self._table
        held = _base_of(current)
        head, size = _published_head(base)
        # Byte for byte the verified header in force: that base, whose copy is reused.
        same_base = head == held.header_bytes()
        delta = None
        if delta_path is not None:
            delta = RevocationDelta.open(delta_path, self._signer)
            _pause()
            if (
                same_base
                and isinstance(current, RevocationView)
                and current.delta.header_bytes() == delta.header_bytes()
            ):
                return None
            generation = delta.generation
        elif same_base and current is held:
            return None
        else:
            generation = held.generation if same_base else self._base_generation(base, head, size)
        if generation <= current.generation:
            raise TableRejected(
                f"{delta_path or base}: generation {generation} is not newer than generation "
                f"{current.generation} in force (rollback refused)"
            )
        # The expensive verification of a base happens once, when a new base comes.
        table = held if same_base else self._store.adopt(base, self._signer)
        if delta is None:
            if table.generation <= current.generation:  # replaced since its header was read
                raise TableChanged(f"{base}: replaced while it was being read")
            return table
        _pause()
        view = RevocationView.over(table, delta, delta_path)
        _pause()
        self._store.keep_delta(view, self._signer)
        return view

    def _base_generation(self, base: Path, head: bytes, size: int) -> int:
        """The generation of an offered base, once its header's signature verifies."""
        header: Header = signed_header(base, head, size, self._signer)[0]
        return header.generation

    def _refuse(self, why: str, table: RevocationInForce | None = None) -> None:
        self.rejected += 1
        self.last_rejection = why
        self._log.warning(
            "revocation table refused: %s; generation %d stays in force",
            why,
            (table or self._table).generation,
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

    def __repr__(self) -> str:
        return (
            f"HotRevocation({str(self.path)!r}, generation={self.generation}, "
            f"swaps={self.swaps}, rejected={self.rejected})"
        )
