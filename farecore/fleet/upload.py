"""The gate's courier: hands each closed service day's batch, and its signed chain head,
in to the collection point.

On its own thread, never on the tap path, and reading the journal only through
read-only connections of its own (``JournalReader``, ``export_batch``,
``journal_head``), a courier:

1. exports every closed service day not yet acknowledged, oldest first (a day is closed
   once the gate's clock is ``close_after_s`` past its end; a bus a week away from the
   depot hands in all seven days when it gets a connection);
2. keeps each export in its spool until it is acknowledged, so a resumed upload sends
   the very bytes it started with, and uploads it, resuming from the offset the point
   reports;
3. records the acknowledgement in its state file (``farecore.fleet.upload_state``) only
   once the point's acknowledgement names exactly the batch sent: its SHA-256, terminal,
   day, records and chain ends;
4. every ``head_interval_s`` signs and sends the journal's chain head
   (``farecore.journal.heads``);
5. measures the gate's clock offset against the point from each reply;
6. backs off after a failure, for a bounded, jittered time.

Each batch continues the chain of the one acknowledged before it. Records stamped in a
day whose batch is already handed in (a clock stepped back across midnight) would fall
between two batches; they go in a continuation batch of that day
(``<terminal>-<day>+<first seq>.fcb``) before the next day's. A journal that no longer
holds the chain handed in (rewritten) stops the courier with an error, loudly.

Nothing here deletes a journal record. A courier reads its gate's clock (``clock_ms``),
the monotonic clock for its timers, and nothing else.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import http.client
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farecore.atomicfile import write_atomic
from farecore.card.keys import SigningKey
from farecore.closing import Closing
from farecore.errors import (
    BadSignature,
    BatchRejected,
    ConfigError,
    FarecoreError,
    JournalError,
    MalformedInput,
)
from farecore.fleet.collect import HEADER_BYTES, Conflict, claimed_ack
from farecore.fleet.collect_protocol import MAX_BATCH_BYTES, Ack, BatchName, UploadRefused
from farecore.fleet.upload_dest import DirectoryPoint, HttpPoint, open_point
from farecore.fleet.upload_state import CourierState
from farecore.gate.config import SCHEMA
from farecore.journal.batch import (
    QINGDAO_UTC_OFFSET_MIN,
    BatchRows,
    day_bounds_ms,
    encode_batch,
    export_batch,
    parse_day,
    verify_batch_rows,
)
from farecore.journal.batch_header import parse_utc_offset, service_day
from farecore.journal.heads import ChainHead, journal_head, sign_head
from farecore.journal.reader import JournalReader
from farecore.strictkeys import check_keys

__all__ = [
    "UPLOAD_KEYS",
    "Courier",
    "CourierSettings",
    "CourierStatus",
    "courier_settings",
    "service_day",
]

_log = logging.getLogger(__name__)

# What a pass can fail with and still be retried later: the point, the network, a disk.
_RETRYABLE = (FarecoreError, OSError, http.client.HTTPException)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _nothing() -> int | None:
    return None


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, FarecoreError) else f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class CourierSettings:
    """How a courier hands in (the ``[upload]`` table of a gate's configuration)."""

    destination: str  # http(s):// URL of a ``farecore collect``, or a directory
    state: Path
    spool: Path
    utc_offset_min: int = QINGDAO_UTC_OFFSET_MIN
    head_interval_s: float = 300.0
    close_after_s: int = 600
    poll_s: float = 60.0
    since: dt.date | None = None
    chunk_bytes: int = 1 << 20
    timeout_s: float = 30.0
    ca: Path | None = None
    backoff_min_s: float = 5.0
    backoff_max_s: float = 600.0

    def __post_init__(self) -> None:
        checks = (
            ("tz", -14 * 60 <= self.utc_offset_min <= 14 * 60),
            ("head_interval_s", 1 <= self.head_interval_s <= 86_400),
            ("close_after_s", 0 <= self.close_after_s <= 86_400),
            ("poll_s", 0.01 <= self.poll_s <= 86_400),
            ("chunk_bytes", 1024 <= self.chunk_bytes <= 64 << 20),
            ("timeout_s", 0.1 <= self.timeout_s <= 3600),
            ("backoff", 0 < self.backoff_min_s <= self.backoff_max_s <= 86_400),
        )
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"upload.{name} is out of range")
        if not self.destination:
            raise ConfigError("upload.to names no collection point")


UPLOAD_KEYS = SCHEMA["upload"]  # the keys gate.toml may hold in [upload]


def courier_settings(
    table: Mapping[str, Any], *, base: Path, state_dir: Path, terminal_id: int
) -> CourierSettings:
    """The ``[upload]`` table of a gate configuration, checked (ConfigError naming the
    key). Paths are relative to ``base``, the configuration's directory; the state file
    and spool default to ``upload-<id>.json`` and ``outbox-<id>/`` in ``state_dir``."""
    check_keys(table, "upload", UPLOAD_KEYS)

    def text(key: str) -> str | None:
        value = table.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"upload.{key} must be a non-empty string")
        return value

    def number(key: str, default: float, integer: bool = False) -> Any:
        value = table.get(key, default)
        kinds = (int,) if integer else (int, float)
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ConfigError(f"upload.{key} must be a {'whole ' if integer else ''}number")
        return value

    destination = text("to")
    if destination is None:
        raise ConfigError("upload.to is required: the collection point's URL or directory")
    if not destination.startswith(("http://", "https://")):
        destination = str(base / destination)
    tz = text("tz") or "+08:00"
    since = text("since")
    ca = text("ca")
    state = text("state")
    spool = text("spool")
    try:
        offset = parse_utc_offset(tz)
    except ConfigError as exc:
        raise ConfigError(f"upload.tz: {exc}") from None
    try:
        since_day = None if since is None else parse_day(since)
    except MalformedInput as exc:
        raise ConfigError(f"upload.since: {exc}") from None
    return CourierSettings(
        destination=destination,
        state=base / state if state else state_dir / f"upload-{terminal_id}.json",
        spool=base / spool if spool else state_dir / f"outbox-{terminal_id}",
        utc_offset_min=offset,
        head_interval_s=float(number("head_interval_s", 300.0)),
        close_after_s=int(number("close_after_s", 600, integer=True)),
        poll_s=float(number("poll_s", 60.0)),
        since=since_day,
        chunk_bytes=int(number("chunk_bytes", 1 << 20, integer=True)),
        timeout_s=float(number("timeout_s", 30.0)),
        ca=None if ca is None else base / ca,
    )


@dataclass(frozen=True, slots=True)
class CourierStatus:
    """What the metrics show of a courier (``Courier.status``)."""

    records_pending: int | None  # records after the last acknowledged one (None: not known yet)
    last_upload_time: float | None  # Unix seconds (gate clock) of the last acknowledgement
    clock_offset_s: float | None  # gate clock minus the point's
    last_error: str | None  # the last pass's failure; None once a pass succeeds
    last_head_time: float | None  # Unix seconds (gate clock) of the last head sent
    batches_handed_in: int  # acknowledged by this courier since it started
    bytes_sent: int
    closed_days_pending: int | None  # closed service days not yet acknowledged


class Courier(Closing):
    """Hands one terminal's journal in to a collection point (see the module's text).

    ``journal`` is the terminal's journal file, or a station journal with
    ``terminal_id`` naming the terminal. ``key`` is the terminal's signing key.
    ``clock_ms`` is the gate's clock; ``package_version`` and ``revocation_generation``
    say what the gate has in force, for the heads. ``start`` runs it on its own thread;
    ``run_once``, ``hand_in`` and ``send_head`` do one step on the caller's.
    """

    def __init__(
        self,
        settings: CourierSettings,
        key: SigningKey,
        journal: str | Path,
        *,
        terminal_id: int | None = None,
        clock_ms: Callable[[], int] = _wall_ms,
        package_version: Callable[[], int | None] = _nothing,
        revocation_generation: Callable[[], int | None] = _nothing,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if key.role != "terminal":
            raise ConfigError(f"a courier signs with a terminal key, not a {key.role} key")
        self.terminal = key.key_id if terminal_id is None else terminal_id
        if key.key_id != self.terminal:
            raise ConfigError(f"the key is terminal {key.key_id}'s, not terminal {self.terminal}'s")
        self.settings = settings
        self.journal = Path(journal)
        self._key = key
        self._public = key.public().key()
        self._clock_ms = clock_ms
        self._package_version = package_version
        self._revocation_generation = revocation_generation
        self._monotonic = monotonic
        self._jitter = jitter
        self.point: HttpPoint | DirectoryPoint = open_point(
            settings.destination,
            utc_offset_min=settings.utc_offset_min,
            key=self._public,
            clock_ms=clock_ms,
            chunk_bytes=settings.chunk_bytes,
            timeout_s=settings.timeout_s,
            ca=settings.ca,
        )
        self._state: CourierState | None = None
        self._pass = threading.Lock()  # one pass at a time: the thread's, or a caller's
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._head_seq: int | None = None
        self._head_due = 0.0
        self._head_sent = False
        self._failures = 0
        self._handed_in = 0
        self.last_upload_time: float | None = None
        self.last_head_time: float | None = None
        self.last_error: str | None = None

    # -- what the metrics read ---------------------------------------------------------

    @property
    def records_pending(self) -> int | None:
        """Records in the journal after the last one acknowledged, as of the last head."""
        if self._head_seq is None:
            return None
        last = self._state.last if self._state is not None else None
        return max(0, self._head_seq - (last.last_seq if last is not None else 0))

    @property
    def closed_days_pending(self) -> int | None:
        """Service days over (past ``close_after_s``) whose batch is not acknowledged:
        unlike ``records_pending``, 0 while only the open day's records wait."""
        state = self._state
        if state is None:
            return None
        last = state.last
        first = state.since if last is None else last.day + dt.timedelta(days=1)
        s = self.settings
        closed_until = service_day(self._clock_ms() - s.close_after_s * 1000, s.utc_offset_min)
        return max(0, (closed_until - first).days)

    @property
    def clock_offset_s(self) -> float | None:
        offset = self.point.clock_offset_ms()
        return None if offset is None else offset / 1000

    def status(self) -> CourierStatus:
        return CourierStatus(
            self.records_pending,
            self.last_upload_time,
            self.clock_offset_s,
            self.last_error,
            self.last_head_time,
            self._handed_in,
            self.point.bytes_sent,
            self.closed_days_pending,
        )

    # -- the thread --------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the courier is running already")
        self._thread = threading.Thread(
            target=self._run, name=f"courier-{self.terminal}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (a pass in flight ends at its next network step), then send a
        last chain head: the point then knows how far the journal reached when the gate
        stopped (bounded by ``timeout_s``; a failure is logged, not raised)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.settings.timeout_s * 2 + 5)
            self._thread = None
            # Only to a point that answered the last pass: a gate stopping while the
            # network is down does not wait a timeout for it.
            if self.last_error is None:
                try:
                    self.send_head()
                except Exception as exc:  # stopping must not fail on the network
                    _log.warning("last chain head not sent: %s", exc)
        self.point.close()

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            try:
                self.run_once()
                delay = min(self.settings.poll_s, max(0.01, self._head_due - self._monotonic()))
            except Exception as exc:  # the thread outlives any one failure
                delay = self._backoff()
                known = isinstance(exc, _RETRYABLE)
                log = _log.warning if known else _log.error
                log("hand-in failed, next try in %.0f s: %s", delay, self.last_error)
            if self._stop.is_set():
                break

    def _backoff(self) -> float:
        self._failures += 1
        s = self.settings
        top = min(s.backoff_max_s, s.backoff_min_s * 2 ** min(self._failures - 1, 30))
        return float(top * (0.5 + 0.5 * self._jitter()))

    # -- one pass ----------------------------------------------------------------------

    def run_once(self) -> list[Ack]:
        """Hand in every closed day, then send the head if it is due; raise the first
        failure (after trying both)."""
        with self._pass:
            failed: list[Exception] = []
            try:
                acks = self._hand_in()
            except Exception as exc:
                failed.append(exc)
                acks = []
            if self._monotonic() >= self._head_due or not self._head_sent:
                try:
                    self._send_head()
                except Exception as exc:
                    failed.append(exc)
            if failed:
                self.last_error = "; ".join(map(_describe, failed))
                raise failed[0]
            self.last_error = None
            self._failures = 0
            return acks

    def hand_in(self) -> list[Ack]:
        """Hand in every closed day not yet acknowledged; return the acknowledgements."""
        with self._pass:
            return self._hand_in()

    def send_head(self) -> ChainHead:
        """Sign and send the journal's chain head now."""
        with self._pass:
            return self._send_head()

    def _send_head(self) -> ChainHead:
        state = self._load_state()
        _, seq, own = journal_head(self.journal, self.terminal)
        self._head_seq = seq
        last = state.last
        pending = max(0, seq - (last.last_seq if last is not None else 0))
        now = self._clock_ms()
        head = ChainHead(
            self.terminal,
            seq,
            own,
            now,
            self._package_version(),
            self._revocation_generation(),
            pending,
        )
        # The next is due an interval on, whether or not this one gets through.
        self._head_due = self._monotonic() + self.settings.head_interval_s
        self.point.send_head(self.terminal, sign_head(head, self._key))
        self._head_sent = True
        self.last_head_time = now / 1000
        return head

    def _load_state(self) -> CourierState:
        if self._state is not None:
            return self._state
        s = self.settings
        state = CourierState.load(s.state, self.terminal, s.utc_offset_min)
        if state is None:
            since = s.since or self._first_day()
            state = CourierState(s.state, self.terminal, s.utc_offset_min, since, [])
            state.save()
            _log.info("terminal %d hands in its batches from %s on", self.terminal, since)
        self._state = state
        return state

    def _first_day(self) -> dt.date:
        """The day of the journal's first record, or today's for an empty journal."""
        with JournalReader(self.journal, self.terminal) as reader:
            first = next(iter(reader.rows(1)), None)
        time_ms = first[0].time_ms if first is not None else self._clock_ms()
        return service_day(time_ms, self.settings.utc_offset_min)

    def _closed(self, day: dt.date) -> bool:
        end = day_bounds_ms(day, self.settings.utc_offset_min)[1]
        return self._clock_ms() >= end + self.settings.close_after_s * 1000

    def _hand_in(self) -> list[Ack]:
        state = self._load_state()
        acks: list[Ack] = []
        while True:
            last = state.last
            day = state.since if last is None else last.day + dt.timedelta(days=1)
            if not self._closed(day):
                return acks
            name = BatchName(self.terminal, day, None)
            data, batch = self._spooled(name, functools.partial(self._export, day))
            if last is not None and batch.first_seq > last.last_seq + 1:
                acks.append(self._continuation(state, batch.first_seq - 1))
                last = state.last
                assert last is not None
            if last is not None and (
                batch.first_seq != last.last_seq + 1 or batch.prev_hash != last.tail_hash
            ):
                raise JournalError(
                    f"{self.journal}: the batch of {day} (seq {batch.first_seq}) does not "
                    f"continue the chain handed in up to seq {last.last_seq} ({last.name}): "
                    "the journal was rewritten; nothing more is handed in"
                )
            acks.append(self._deliver(state, name, data, batch))

    def _export(self, day: dt.date) -> bytes:
        return export_batch(
            self.journal, day, self._key, self.settings.utc_offset_min, self.terminal
        )

    def _continuation(self, state: CourierState, last_seq: int) -> Ack:
        """Hand in the records after the last batch acknowledged and before the next
        day's: stamped in a day already handed in, they go as that day's continuation."""
        last = state.last
        assert last is not None
        first = last.last_seq + 1
        name = BatchName(self.terminal, last.day, first)

        def build() -> bytes:
            with JournalReader(self.journal, self.terminal) as reader:
                if reader.hash_of(first - 1) != last.tail_hash:
                    raise JournalError(
                        f"{self.journal}: record {first - 1} is not the one handed in "
                        f"({last.name}): the journal was rewritten"
                    )
                records = list(reader.records(first, last_seq))
                credentials = reader.credentials(
                    r.credential_sha256 for r in records if r.credential_sha256 is not None
                )
            return encode_batch(
                records,
                credentials,
                terminal_id=self.terminal,
                day=last.day,
                utc_offset_min=self.settings.utc_offset_min,
                first_seq=first,
                prev_hash=last.tail_hash,
                key=self._key,
            )

        _log.warning(
            "terminal %d: records %d..%d are stamped in %s, whose batch is handed in "
            "already (the clock stepped back): they go as %s",
            self.terminal,
            first,
            last_seq,
            last.day,
            name.text,
        )
        data, batch = self._spooled(name, build)
        return self._deliver(state, name, data, batch)

    def _spooled(self, name: BatchName, make: Callable[[], bytes]) -> tuple[bytes, Ack]:
        """The batch ``name`` from the spool (as first made: a resumed upload sends the
        same bytes), or made now and spooled; with the acknowledgement it should get."""
        path = self.settings.spool / name.text
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_BATCH_BYTES + 1)
            return data, self._expected(name, data, self._check(name, data))
        except FileNotFoundError:
            pass
        except (FarecoreError, OSError) as exc:
            _log.warning("spooled %s is not usable, made again: %s", path, exc)
        # Made from the journal's checked chain and signed here: its header is read, not
        # verified again (the decoding would hold the interpreter from the taps twice).
        data = make()
        try:
            sent = claimed_ack(data[:HEADER_BYTES], hashlib.sha256(data).digest(), len(data), name)
        except BatchRejected as exc:
            raise JournalError(f"batch {name.text} as made: {exc}") from None
        write_atomic(path, data)
        return data, sent

    def _expected(self, name: BatchName, data: bytes, batch: BatchRows) -> Ack:
        return Ack(
            terminal=self.terminal,
            name=name.text,
            day=name.day,
            sha256=hashlib.sha256(data).digest(),
            size=len(data),
            count=len(batch.rows),
            first_seq=batch.first_seq,
            last_seq=batch.last_seq,
            prev_hash=batch.prev_hash,
            tail_hash=batch.tail_hash,
        )

    def _check(self, name: BatchName, data: bytes) -> BatchRows:
        if len(data) > MAX_BATCH_BYTES:
            raise JournalError(f"batch {name.text} is larger than {MAX_BATCH_BYTES} bytes")
        try:
            batch = verify_batch_rows(data, self._public)
        except (MalformedInput, BadSignature) as exc:
            raise JournalError(f"batch {name.text}: {exc}") from None
        if (
            batch.terminal_id != self.terminal
            or batch.day != name.day
            or batch.utc_offset_min != self.settings.utc_offset_min
            or (name.first_seq is not None and batch.first_seq != name.first_seq)
        ):
            raise JournalError(f"batch {name.text} is not the batch its name says")
        return batch

    def _deliver(self, state: CourierState, name: BatchName, data: bytes, sent: Ack) -> Ack:
        try:
            ack = self.point.hand_in(name, data)
        except Conflict as exc:
            if not exc.existing.same_records(sent):
                raise UploadRefused(
                    f"{name.text}: the collection point holds a different batch under this "
                    f"name (seq {exc.existing.first_seq}..{exc.existing.last_seq}, sha256 "
                    f"{exc.existing.sha256.hex()[:16]}…); this one stays in the journal",
                    409,
                ) from None
            # The same records signed again (a P-256 signature differs each time): the
            # point's verified copy stands for them.
            _log.warning("%s: the point's copy has other signature bytes; it stands", name.text)
            ack = exc.existing
        else:
            if ack != sent:
                raise UploadRefused(
                    f"{name.text}: the acknowledgement does not name the batch sent "
                    f"(sha256 {ack.sha256.hex()[:16]}…, seq {ack.first_seq}..{ack.last_seq})",
                    502,
                )
        now = self._clock_ms()
        state.record(ack, now)  # durable before anything counts it handed in
        self._spool_done(name)
        self._handed_in += 1
        self.last_upload_time = now / 1000
        _log.info(
            "handed in %s: %d records, seq %d..%d",
            name.text,
            ack.count,
            ack.first_seq,
            ack.last_seq,
        )
        return ack

    def _spool_done(self, name: BatchName) -> None:
        try:
            (self.settings.spool / name.text).unlink()
        except FileNotFoundError:
            pass
