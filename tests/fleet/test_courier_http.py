"""The courier against a real ``farecore collect`` process: hand-in, resume, heads, backoff."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_collect_support import (
    DAY,
    TID,
    TZ,
    CutProxy,
    batch_of,
    collect_process,
    day_ms,
    tapper,
    terminal_key,
    write_register,
)

from farecore.errors import ConfigError
from farecore.fleet.collect_protocol import UploadRefused, parse_batch_name
from farecore.fleet.upload import Courier, CourierSettings
from farecore.fleet.upload_state import CourierState
from farecore.journal.batch import verify_batch
from farecore.journal.heads import parse_head, verify_head


def settings(tmp: Path, to: str, **more: object) -> CourierSettings:
    return CourierSettings(
        destination=to,
        state=tmp / "state" / "upload.json",
        spool=tmp / "state" / "outbox",
        utc_offset_min=TZ,
        since=DAY,
        **more,  # type: ignore[arg-type]
    )


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def stored(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "batches" / str(TID)).glob("*"))


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "journal.sqlite"
    with tapper(path) as t:
        t.day(DAY, 60, seed=1)
        t.day(DAY + dt.timedelta(days=1), 40, seed=2)
    return path


@pytest.fixture
def register(tmp_path: Path) -> Path:
    return write_register(tmp_path / "terminals.csv", [terminal_key()])


def test_closed_days_are_handed_in_and_acknowledged(
    tmp_path: Path, journal: Path, register: Path
) -> None:
    root = tmp_path / "point"
    clock = Clock(day_ms(DAY + dt.timedelta(days=2), 0.5))  # two days closed, the third not
    with collect_process(root, register) as cp:
        with Courier(settings(tmp_path, cp.url), terminal_key(), journal, clock_ms=clock) as c:
            acks = c.run_once()
            assert [a.name for a in acks] == [
                f"{TID}-{DAY}.fcb",
                f"{TID}-{DAY + dt.timedelta(days=1)}.fcb",
            ]
            assert c.records_pending == 0 and c.last_error is None
            assert c.last_upload_time == clock.ms / 1000
            assert c.run_once() == []  # nothing new is closed
        log = cp.log()
    assert stored(root) == [a.name for a in acks]
    for ack in acks:
        data = (root / "batches" / str(TID) / ack.name).read_bytes()
        assert hashlib.sha256(data).digest() == ack.sha256
        batch = verify_batch(data, terminal_key().public())
        assert (batch.first_seq, batch.last_seq, batch.tail_hash) == (
            ack.first_seq,
            ack.last_seq,
            ack.tail_hash,
        )
    assert acks[0].count == 60 and acks[1].first_seq == 61 and acks[1].count == 40
    state = CourierState.load(tmp_path / "state" / "upload.json", TID, TZ)
    assert state is not None and [h.sha256 for h in state.handed] == [a.sha256 for a in acks]
    assert list((tmp_path / "state" / "outbox").iterdir()) == []  # the spool is empty
    head = parse_head((root / "heads" / str(TID) / "latest.json").read_bytes(), "latest")
    assert verify_head(head, terminal_key().public()).seq == 100
    assert head.head.records_pending == 0  # signed after this pass handed both days in
    assert log.count("accepted") == 2


def test_an_upload_cut_mid_body_resumes_from_the_offset_the_point_holds(
    tmp_path: Path, journal: Path, register: Path
) -> None:
    """The "upload interrupted and then resumed" test: the connection dies in the middle
    of a chunk's body; the next pass asks the point what it holds and sends only the rest."""
    data = batch_of(journal, DAY)
    root = tmp_path / "point"
    clock = Clock(day_ms(DAY + dt.timedelta(days=1), 1))
    with collect_process(root, register) as cp:
        proxy = CutProxy(cp.port)
        proxy.cut_after = 2 * 4096 + 1500  # well into the third chunk (two PUTs, a GET)
        s = settings(tmp_path, proxy.url, chunk_bytes=4096, timeout_s=5)
        with Courier(s, terminal_key(), journal, clock_ms=clock) as c:
            with pytest.raises((OSError, Exception)) as failed:
                _cut(proxy, c)
            assert not isinstance(failed.value, AssertionError)
            sent_before = c.point.bytes_sent
            assert sent_before == 2 * 4096  # two chunks acknowledged with 202
            held = _held_offset(root, data)
            assert 2 * 4096 < held < 3 * 4096  # the cut chunk's first bytes are kept
            assert CourierState.load(s.state, TID, TZ).handed == []  # type: ignore[union-attr]
            proxy.relay_all()
            acks = c.hand_in()
            assert c.point.bytes_sent - sent_before == len(data) - held
        proxy.close()
    assert [a.sha256 for a in acks] == [hashlib.sha256(data).digest()]
    assert (root / "batches" / str(TID) / f"{TID}-{DAY}.fcb").read_bytes() == data
    assert list((root / "incoming" / str(TID)).glob("*.part")) == []
    assert "interrupted at offset" in cp.log()


def _cut(proxy: CutProxy, courier: Courier) -> None:
    """Hand in until the proxy holds; then drop the connections (the point sees its
    client vanish mid-body) and let the courier's pass fail."""
    import threading

    errors: list[BaseException] = []

    def run() -> None:
        try:
            courier.hand_in()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    assert proxy.held.wait(20)
    time.sleep(0.2)  # the point has read what was forwarded
    proxy.drop()
    t.join(30)
    assert not t.is_alive()
    if errors:
        raise errors[0]


def _held_offset(root: Path, data: bytes) -> int:
    """What the point holds of the upload of ``data``, waiting for it to settle."""
    part = root / "incoming" / str(TID) / f"{TID}-{DAY}.fcb.part"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if part.exists() and part.stat().st_size > 2 * 4096:
            time.sleep(0.2)
            size = part.stat().st_size
            assert part.read_bytes() == data[:size]
            return size
        time.sleep(0.05)
    raise AssertionError("no partial upload held")


_COURIER_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_collect_support import TID, TZ, DAY, day_ms, terminal_key
from farecore.fleet.upload import Courier, CourierSettings
import datetime as dt
s = CourierSettings(destination=sys.argv[2], state=Path(sys.argv[3]), spool=Path(sys.argv[4]),
                    utc_offset_min=TZ, since=DAY, chunk_bytes=4096, timeout_s=30)
now = day_ms(DAY + dt.timedelta(days=1), 1)
with Courier(s, terminal_key(), sys.argv[5], clock_ms=lambda: now) as c:
    acks = c.hand_in()
print(" ".join(a.name for a in acks), flush=True)
"""


def _courier_process(tmp: Path, url: str, journal: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _COURIER_SCRIPT,
            str(Path(__file__).parent),
            url,
            str(tmp / "state" / "upload.json"),
            str(tmp / "state" / "outbox"),
            str(journal),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_courier_killed_mid_upload_resumes_in_its_next_life(
    tmp_path: Path, journal: Path, register: Path
) -> None:
    """SIGKILL the courier's process in the middle of a chunk: nothing is acknowledged,
    the spooled batch stays, and a new process sends only the bytes the point lacks."""
    root = tmp_path / "point"
    with collect_process(root, register) as cp:
        proxy = CutProxy(cp.port)
        proxy.cut_after = 4096 + 2000
        first = _courier_process(tmp_path, proxy.url, journal)
        assert proxy.held.wait(30), first.communicate()
        time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        proxy.drop()
        spooled = (tmp_path / "state" / "outbox" / f"{TID}-{DAY}.fcb").read_bytes()
        held = _held_offset_any(root)
        assert 4096 < held < 2 * 4096
        state = CourierState.load(tmp_path / "state" / "upload.json", TID, TZ)
        assert state is not None and state.handed == []
        proxy.relay_all()
        second = _courier_process(tmp_path, proxy.url, journal)
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        proxy.close()
    assert out.split() == [f"{TID}-{DAY}.fcb"]
    assert (root / "batches" / str(TID) / f"{TID}-{DAY}.fcb").read_bytes() == spooled
    state = CourierState.load(tmp_path / "state" / "upload.json", TID, TZ)
    assert state is not None and [h.sha256 for h in state.handed] == [
        hashlib.sha256(spooled).digest()
    ]


def _held_offset_any(root: Path) -> int:
    part = root / "incoming" / str(TID) / f"{TID}-{DAY}.fcb.part"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if part.exists() and part.stat().st_size > 4096:
            time.sleep(0.2)
            return part.stat().st_size
        time.sleep(0.05)
    raise AssertionError("no partial upload held")


def test_a_batch_the_point_refuses_stays_pending(tmp_path: Path, journal: Path) -> None:
    """The register holds another key for the terminal: the point keeps the batch in
    rejected/ with its reason, and the gate keeps the day to hand in again."""
    wrong = write_register(tmp_path / "terminals.csv", [terminal_key(TID, _p256())])
    root = tmp_path / "point"
    clock = Clock(day_ms(DAY + dt.timedelta(days=1), 1))
    with collect_process(root, wrong) as cp:
        with Courier(settings(tmp_path, cp.url), terminal_key(), journal, clock_ms=clock) as c:
            with pytest.raises(UploadRefused) as refused:
                c.run_once()
            assert refused.value.status == 422
            assert "signature" in (c.last_error or "")
            assert c.records_pending == 100
        log = cp.log()
    assert stored(root) == []
    why = list((root / "rejected" / str(TID)).glob("*.why"))
    assert len(why) == 1 and "signature" in why[0].read_text()
    assert why[0].with_suffix(".bad").read_bytes() == batch_of(journal, DAY)
    state = CourierState.load(tmp_path / "state" / "upload.json", TID, TZ)
    assert state is not None and state.handed == []
    assert (tmp_path / "state" / "outbox" / f"{TID}-{DAY}.fcb").exists()
    assert "refused PUT" in log


def _p256():  # type: ignore[no-untyped-def]
    from farecore.card.crypto import Algorithm

    return Algorithm.P256


def test_the_thread_hands_in_backs_off_and_recovers(
    tmp_path: Path, journal: Path, register: Path
) -> None:
    """The point is down at first: the courier's thread fails, backs off (bounded,
    jittered), and hands the days in once the point is up."""
    root = tmp_path / "point"
    clock = Clock(day_ms(DAY + dt.timedelta(days=2), 1))
    proxy_port = _free_port()
    s = settings(
        tmp_path,
        f"http://127.0.0.1:{proxy_port}/",
        poll_s=0.05,
        timeout_s=2,
        backoff_min_s=0.05,
        backoff_max_s=0.2,
    )
    c = Courier(s, terminal_key(), journal, clock_ms=clock, jitter=lambda: 1.0)
    c.start()
    try:
        _wait(lambda: c.last_error is not None, 10)
        assert c.status().closed_days_pending == 2
        assert "Connection refused" in (c.last_error or "") or "refused" in (c.last_error or "")
        with collect_process(
            root,
            register,
        ) as cp:
            proxy = CutProxy(cp.port, proxy_port)
            try:
                _wait(lambda: c.status().batches_handed_in == 2 and c.last_error is None, 20)
                assert c.status().closed_days_pending == 0
            finally:
                proxy.close()
    finally:
        c.close()
    assert len(stored(root)) == 2
    assert c.status().clock_offset_s is not None


def _wait(cond, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_clock_offset_is_measured_against_the_point(
    tmp_path: Path, journal: Path, register: Path
) -> None:
    root = tmp_path / "point"
    ahead_ms = 7_000
    with collect_process(root, register) as cp:
        s = settings(tmp_path, cp.url)
        with Courier(
            s, terminal_key(), journal, clock_ms=lambda: time.time_ns() // 1_000_000 + ahead_ms
        ) as c:
            assert c.clock_offset_s is None
            c.send_head()
            offset = c.clock_offset_s
    assert offset is not None and abs(offset - ahead_ms / 1000) < 0.5


def test_settings_refuse_nonsense(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        settings(tmp_path, "http://x/", head_interval_s=0)
    with pytest.raises(ConfigError):
        Courier(settings(tmp_path, "ftp://x/"), terminal_key(), tmp_path / "j.sqlite")
    with pytest.raises(ConfigError):
        Courier(settings(tmp_path, "http://x/?a=1"), terminal_key(), tmp_path / "j.sqlite")


def test_batch_names_are_canonical() -> None:
    name = parse_batch_name(f"{TID}-{DAY}+61.fcb")
    assert (name.terminal, name.day, name.first_seq) == (TID, DAY, 61)
    assert json.dumps(name.text) == json.dumps(f"{TID}-{DAY}+61.fcb")
    assert os.path.basename(name.text) == name.text
