"""Anti-passback state shared by the gates of one place (a bus, or a station's entries).

A card that rode at a place is refused there again for ``window_s``. A venue's rule is
the same state with another question (``PassbackRule.once_a_day``): a card that entered
a site is refused there until the next service day (CARD-SPEC §7, ``ALREADY_ENTERED``);
the day is the local calendar day of the tap's wall time, as the settlement reckons it. The state lives in
one SQLite file, so it survives a restart and several gate processes of one station share
it. Each ride is stored with the wall time *and* a monotonic reading tagged with the boot
it came from. Elapsed time is measured on the monotonic clock whenever the boot matches;
only across a reboot (or between machines) does the wall clock count, and a wall clock
that went backwards by more than ``max_skew_s`` is distrusted rather than allowed to
stretch the lockout. This module must never refuse a card for longer than the window of
real elapsed time plus the bounded skew.

A store keeps its rows in one of two places behind one interface: its own SQLite file
(``PassbackStore.open``, a terminal gate's), or a station controller's journal file
(``PassbackStore.in_station``), where a lockout joins the open group of the ride that
caused it. Either way the gate records a lockout only after handing its ride to the ride
log (``farecore.gate.runtime``): a terminal's journal has made the ride durable by then,
and a station's makes both durable in one commit. Rows that can no longer refuse are
forgotten by one rule, ``forgets``, in both places.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from farecore.closing import Closing
from farecore.decide.decision import Reason
from farecore.errors import ConfigError, JournalError
from farecore.journal.batch_header import day_bounds_ms, service_day
from farecore.journal.records import sql_int
from farecore.journal.walfile import make_durable, reserve_wal

if TYPE_CHECKING:
    from farecore.journal.station import StationJournal

__all__ = [
    "PASSBACK_PRUNE",
    "PASSBACK_TABLE",
    "PASSBACK_UPSERT",
    "SCOPES",
    "PassbackRule",
    "PassbackStore",
    "boot_id",
    "forgets",
    "monotonic_ms",
]

PASSBACK_TABLE = (
    "CREATE TABLE IF NOT EXISTS passback (place TEXT NOT NULL, "
    "card_id INTEGER NOT NULL, wall_ms INTEGER NOT NULL, "
    "mono_ms INTEGER NOT NULL, boot TEXT NOT NULL, "
    "PRIMARY KEY (place, card_id)) WITHOUT ROWID"
)
PASSBACK_UPSERT = "INSERT OR REPLACE INTO passback VALUES (?, ?, ?, ?, ?)"


def forgets(wall_ms: int, mono_ms: int, boot: str, limits: tuple[int, str, int]) -> bool:
    """True when a stored ride (its wall time, monotonic reading and boot) can no longer
    refuse, by ``limits`` (wall_before, this boot, mono_before): it is older than the
    horizon on the wall clock and, if it is of this boot, on the monotonic one too."""
    wall_before, boot_now, mono_before = limits
    return wall_ms < wall_before and (boot != boot_now or mono_ms < mono_before)


# ``forgets`` over a place's rows, the limits as the last three parameters.
PASSBACK_PRUNE = "DELETE FROM passback WHERE place=? AND wall_ms < ? AND (boot != ? OR mono_ms < ?)"
_SELECT = "SELECT wall_ms, mono_ms, boot FROM passback WHERE place=? AND card_id=?"

SCOPES = ("place", "terminal")
_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def monotonic_ms() -> int:
    """CLOCK_MONOTONIC in ms: shared by every process of one boot, never goes back."""
    return time.monotonic_ns() // 1_000_000


def boot_id() -> str:
    """An id of the current boot; monotonic readings compare only within one boot."""
    try:
        return _BOOT_ID_PATH.read_text().strip()
    except OSError:
        # No boot id (not Linux): fall back to one per process, which only makes the
        # store trust the wall clock more often, never lock a card out longer.
        return f"pid-{os.getpid()}-{time.monotonic_ns()}"


@dataclass(frozen=True, slots=True)
class PassbackRule:
    """Refuse the same card at the same place within ``window_s``.

    ``scope`` "place": all gates with the same place id share the rule (a bus's readers,
    a station's entry gates); "terminal": each gate on its own. ``max_skew_s`` bounds how
    far a wall clock may step backwards across a reboot before the stored ride is
    disregarded.
    """

    window_s: int
    scope: str = "place"
    max_skew_s: int = 60
    # Set: the venue rule, one entry per service day (local day at this UTC offset, in
    # minutes), in place of the window.
    service_day_offset_min: int | None = None

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ConfigError("passback window_s must be positive")
        if self.scope not in SCOPES:
            raise ConfigError(f"passback scope must be one of {SCOPES}, not {self.scope!r}")
        if self.max_skew_s < 0:
            raise ConfigError("passback max_skew_s must not be negative")
        offset = self.service_day_offset_min
        if offset is not None and not -14 * 60 <= offset <= 14 * 60:
            raise ConfigError(f"service day UTC offset {offset} min is out of range")

    @classmethod
    def once_a_day(cls, utc_offset_min: int) -> PassbackRule:
        """A venue's rule: one entry per card per service day (the state's key is the
        site, shared by its entrances)."""
        return cls(window_s=86_400, service_day_offset_min=utc_offset_min)

    @property
    def reason(self) -> Reason:
        """The deny reason this rule gives: ALREADY_ENTERED for a venue, else PASSBACK."""
        return Reason.PASSBACK if self.service_day_offset_min is None else Reason.ALREADY_ENTERED


# A stored ride: wall_ms, mono_ms, boot (and, in a station file, its row in the log).
StoredRide = tuple[Any, ...]
# A prune: place, wall_before, boot, mono_before.
PruneArgs = tuple[str, int, str, int]


class _Backend(Protocol):
    def get(self, place: str, card: int) -> StoredRide | None: ...

    def put(self, row: tuple[str, int, int, int, str], prune: PruneArgs | None) -> None: ...

    def close(self) -> None: ...


class _FileBackend:
    """The store's own SQLite file, shared by the gates of a place; each ``put`` is one
    durable transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._lock = threading.Lock()

    def get(self, place: str, card: int) -> StoredRide | None:
        with self._lock:
            try:
                row: StoredRide | None = self._db.execute(_SELECT, (place, card)).fetchone()
            except sqlite3.Error:
                return None  # a store we cannot read must not block free rides
        return row

    def put(self, row: tuple[str, int, int, int, str], prune: PruneArgs | None) -> None:
        with self._lock:
            try:
                with self._db:
                    self._db.execute(PASSBACK_UPSERT, row)
                    if prune is not None:
                        self._db.execute(PASSBACK_PRUNE, prune)
            except sqlite3.Error as exc:
                raise JournalError(f"cannot record passback state: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _StationBackend:
    """A station controller's journal file: a ``put`` joins its open group."""

    def __init__(self, station: StationJournal) -> None:
        self._station = station

    def get(self, place: str, card: int) -> StoredRide | None:
        return self._station.passback_get((place, card))

    def put(self, row: tuple[str, int, int, int, str], prune: PruneArgs | None) -> None:
        self._station.passback_put(row)
        if prune is not None:
            self._station.passback_prune(prune)

    def close(self) -> None:
        """The state closes with the station journal."""


class PassbackStore(Closing):
    """The durable passback state of one place; implements ``checks.PassbackCheck``."""

    def __init__(
        self, backend: _Backend, rule: PassbackRule, key: str, clock: Callable[[], int], boot: str
    ) -> None:
        self._backend = backend
        self.rule = rule
        self.key = key
        self._clock = clock
        self._boot = boot
        self._writes = 0

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        rule: PassbackRule,
        place: str,
        *,
        terminal_id: int | None = None,
        monotonic: Callable[[], int] = monotonic_ms,
        boot: str | None = None,
    ) -> PassbackStore:
        """Open (creating if needed) the store at ``path`` for ``place``.

        ``monotonic`` and ``boot`` are injectable so tests can play clocks; the defaults
        read the system's monotonic clock and boot id.
        """
        key = _state_key(rule, place, terminal_id)
        backend = _FileBackend(_open_store(path))
        return cls(backend, rule, key, monotonic, boot if boot is not None else boot_id())

    @classmethod
    def in_station(
        cls,
        station: StationJournal,
        rule: PassbackRule,
        place: str,
        *,
        terminal_id: int | None = None,
        monotonic: Callable[[], int] = monotonic_ms,
        boot: str | None = None,
    ) -> PassbackStore:
        """The state of ``place`` inside a station controller's journal file.

        ``record`` then joins the station's open group, so the ride and its lockout
        become durable in the same commit (``farecore.journal.station``); ``refuses`` reads the
        controller's copy of the state, which already holds a ride staged in that group.
        Only the controller writes a station file, so its copy is the whole truth.
        """
        key = _state_key(rule, place, terminal_id)
        backend = _StationBackend(station)
        return cls(backend, rule, key, monotonic, boot if boot is not None else boot_id())

    def _elapsed_ms(self, wall_then: int, mono_then: int, boot_then: str, now_ms: int) -> int:
        """Real time since the stored ride, or -1 when it cannot be trusted."""
        if boot_then == self._boot:
            return self._clock() - mono_then
        elapsed = now_ms - wall_then
        if elapsed < -self.rule.max_skew_s * 1000:
            return -1  # the wall clock went far back: do not let it stretch the lockout
        return max(elapsed, 0)

    @property
    def reason(self) -> Reason:
        return self.rule.reason

    def refuses(self, card_id: int, now_ms: int) -> bool:
        """True when ``card_id`` rode here less than the window ago, or, under the venue
        rule, entered here earlier on this service day (reads only)."""
        row = self._backend.get(self.key, sql_int(card_id))
        if row is None:
            return False
        offset = self.rule.service_day_offset_min
        if offset is not None:
            # A clock set back into an earlier day is the clock guard's CLOCK_FAULT.
            try:
                return bool(service_day(row[0], offset) == service_day(now_ms, offset))
            except (OverflowError, ValueError):  # a damaged row must not block free entry
                return False
        elapsed = self._elapsed_ms(row[0], row[1], row[2], now_ms)
        return 0 <= elapsed < self.rule.window_s * 1000

    def record(self, card_id: int, now_ms: int) -> None:
        """Remember that ``card_id`` rode here now. Called once the ride log holds the
        ride (``farecore.gate.runtime``). The first after the store is made and every
        1,000th after it also forget the rows that can no longer refuse, in the same
        transaction: a gate restarted each day with fewer rides than that still forgets,
        and its state (which a station journal replays at each open) stays small."""
        if self.rule.service_day_offset_min is not None:
            # A clock stepped back (within its tolerance) across midnight must not put an
            # earlier day's entry over a later one: that would admit the card twice then.
            stored = self._backend.get(self.key, sql_int(card_id))
            if stored is not None and stored[0] > now_ms:
                return
        row = (self.key, sql_int(card_id), now_ms, self._clock(), self._boot)
        self._writes += 1
        prune = self._prune_args(now_ms) if self._writes % 1000 == 1 else None
        self._backend.put(row, prune)

    def _prune_args(self, now_ms: int) -> PruneArgs:
        offset = self.rule.service_day_offset_min
        if offset is not None:
            # Entries before yesterday can never refuse again: a day of margin, since an
            # entrance whose clock runs fast must not wipe today's entries for all of them.
            start, _ = day_bounds_ms(service_day(now_ms, offset), offset)
            return (self.key, start - 86_400_000, self._boot, self._clock() + 1)
        # Rows older than the window plus skew on both clocks can never refuse again.
        horizon = (self.rule.window_s + self.rule.max_skew_s) * 1000
        return (self.key, now_ms - horizon, self._boot, self._clock() - horizon)

    def close(self) -> None:
        """Close the store's file (a station's state closes with the station journal)."""
        self._backend.close()


def _state_key(rule: PassbackRule, place: str, terminal_id: int | None) -> str:
    if rule.scope == "terminal" and terminal_id is None:
        raise ConfigError("passback scope 'terminal' needs the terminal id")
    return place if rule.scope == "place" else f"{place}#{terminal_id}"


def _open_store(path: str | os.PathLike[str], patience_s: float = 10.0) -> sqlite3.Connection:
    """Connect and set up the station store, waiting while another gate holds it.

    Several gate processes of a station open one store, often at the same moment.
    Switching an SQLite file to WAL can answer "database is locked" at once, without
    waiting on the busy timeout, so the set-up is retried for up to ``patience_s``.
    """
    deadline = time.monotonic() + patience_s
    delay = 0.005
    while True:
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(path, timeout=patience_s, check_same_thread=False)
            make_durable(db)
            with db:
                db.execute(PASSBACK_TABLE)
            reserve_wal(db, path)
            return db
        except sqlite3.OperationalError as exc:
            if db is not None:
                db.close()
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise JournalError(f"{path}: cannot open the passback store: {exc}") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            raise JournalError(f"{path}: cannot open the passback store: {exc}") from None
