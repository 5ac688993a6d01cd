"""A real gate's metrics, served over HTTP in its own process and scraped as Prometheus would.

Each test builds a gate from its configuration with the real wiring (``build_gate``) on a
virtual reader, hangs it on ``farecore.fleet.metrics`` and reads the endpoint with urllib
and prometheus_client's parser: what a tap, a lost reader, a new table or a clock fault
does to the numbers.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from gate_process import write_gate_config
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from farecore.card.keys import SigningKey
from farecore.decide.decision import Decision, Reason
from farecore.decide.revocation import build_table
from farecore.errors import ConfigError
from farecore.fleet import metrics_http
from farecore.fleet.metrics import METRICS, sample_names, watch_gate
from farecore.fleet.metrics_http import MetricsService, parse_listen, start_gate_metrics
from farecore.gate.config import load_gate_config
from farecore.gate.controller import StationController
from farecore.gate.observe import NO_OBSERVER
from farecore.gate.runtime import Gate
from farecore.gate.wiring import Station, WiredGate, build_gate
from farecore.journal.station import StationJournal
from readers.virtual import VirtualReader
from sim.deck import Deck
from sim.issuer import derive_key

SEED = "fleet-metrics"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(service: MetricsService) -> Samples:
    """GET /metrics and parse it; every sample by (name, labels)."""
    assert service.address is not None
    host, port = service.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = reply.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


@contextmanager
def watched_gate(
    tmp_path: Path, terminal_id: int = 1001, **build: object
) -> Iterator[tuple[WiredGate, VirtualReader, MetricsService]]:
    """A gate built from its configuration, its metrics served on a free port."""
    deck = Deck.from_seed(SEED)
    cfg = load_gate_config(write_gate_config(deck, tmp_path, terminal_id, SEED))
    reader = VirtualReader(f"gate-{terminal_id}")
    service = start_gate_metrics("127.0.0.1:0")
    try:
        with build_gate(cfg, reader, revocation_poll_s=None, **build) as wired:  # type: ignore[arg-type]
            watch_gate(service.metrics, wired, cfg)
            yield wired, reader, service
    finally:
        service.close()


def tap(wired: WiredGate, reader: VirtualReader, kind: str, card_id: int) -> Decision:
    deck = Deck.from_seed(SEED)
    decision = wired.gate.process(reader.tap(deck.card(kind, card_id)))
    reader.remove()
    return decision


def test_taps_by_decision_and_reason_and_their_latency(tmp_path: Path) -> None:
    with watched_gate(tmp_path) as (wired, reader, service):
        kinds = ["good", "good", "good_p256", "expired", "forged", "revoked", "wrong_region"]
        decisions = [tap(wired, reader, kind, 100 + n) for n, kind in enumerate(kinds)]
        assert [d.label for d in decisions] == [Deck.expected[k] for k in kinds]
        got = scrape(service)
    t = "1001"
    assert value(got, "farecore_taps_total", terminal=t, decision="ACCEPT", reason="none") == 3
    for reason in ("EXPIRED", "BAD_CREDENTIAL_SIGNATURE", "REVOKED", "WRONG_REGION"):
        assert value(got, "farecore_taps_total", terminal=t, decision="DENY", reason=reason) == 1
    # Every reason's series is there from the start, at 0 until its first deny.
    assert value(got, "farecore_taps_total", terminal=t, decision="DENY", reason="PASSBACK") == 0
    denies = [
        value(got, "farecore_taps_total", terminal=t, decision="DENY", reason=r.name)
        for r in Reason
    ]
    assert sum(d for d in denies if d is not None) == 4
    assert None not in denies
    count = value(got, "farecore_tap_duration_seconds_count", terminal=t)
    total = value(got, "farecore_tap_duration_seconds_sum", terminal=t)
    assert count == len(kinds)
    assert total == pytest.approx(sum(d.timings.total_us for d in decisions) / 1e6)
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in got.items()
        if name == "farecore_tap_duration_seconds_bucket"
    )
    assert buckets[-1] == (float("inf"), len(kinds))
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
    # Every sample name on the page is one the module says it exports.
    assert {name for name, _ in got} <= sample_names()


def test_what_the_gate_is_and_follows(tmp_path: Path) -> None:
    with watched_gate(tmp_path) as (wired, _, service):
        got = scrape(service)
        assert wired.revocation is not None
        table = wired.revocation.snapshot()
    t = "1001"
    assert value(got, "farecore_gate_info", terminal=t, place="wusi", role="bus") == 1
    assert value(got, "farecore_reader_up", terminal=t) == 1
    assert value(got, "farecore_reader_reconnects_total", terminal=t) == 0
    assert value(got, "farecore_revocation_generation", terminal=t) == 1
    created = value(got, "farecore_revocation_table_created_timestamp_seconds", terminal=t)
    assert created == table.created_at
    assert value(got, "farecore_revocation_max_age_seconds", terminal=t) == 172_800
    assert value(got, "farecore_revocation_tables_refused_total", terminal=t) == 0
    assert value(got, "farecore_clock_tolerance_seconds", terminal=t) == 300
    assert value(got, "farecore_clock_fault", terminal=t) == 0
    # What no part of the fleet has reported yet is absent, not 0.
    for name in (
        "farecore_package_version",
        "farecore_journal_pending_records",
        "farecore_journal_closed_days_pending",
    ):
        assert value(got, name, terminal=t) is None


def test_a_new_table_and_a_refused_one_show_at_the_next_scrape(tmp_path: Path) -> None:
    with watched_gate(tmp_path) as (wired, _, service):
        hot = wired.revocation
        assert hot is not None
        signer = SigningKey("revocation", 77, derive_key(SEED, "revocation"))
        made = int(time.time()) + 5
        build_table([4242, 77], [1_790_000_000] * 2, [2, 2], signer, 2, made, tmp_path / "t.frt")
        assert hot.poll()
        got = scrape(service)
        assert value(got, "farecore_revocation_generation", terminal="1001") == 2
        stamp = value(got, "farecore_revocation_table_created_timestamp_seconds", terminal="1001")
        assert stamp == made
        (tmp_path / "t.frt").write_bytes(b"not a table")
        assert not hot.poll()
        got = scrape(service)
    assert value(got, "farecore_revocation_tables_refused_total", terminal="1001") == 1
    assert value(got, "farecore_revocation_generation", terminal="1001") == 2


def test_a_clock_fault_shows_and_every_tap_is_counted_as_one(tmp_path: Path) -> None:
    behind_ms = (int(time.time()) - 3600) * 1000  # an hour behind the table's creation
    with watched_gate(tmp_path, clock_ms=lambda: behind_ms) as (wired, reader, service):
        assert tap(wired, reader, "good", 5).label == "CLOCK_FAULT"
        got = scrape(service)
    assert value(got, "farecore_clock_fault", terminal="1001") == 1
    t = "1001"
    assert value(got, "farecore_taps_total", terminal=t, decision="DENY", reason="CLOCK_FAULT") == 1


def test_the_reader_lost_and_back_is_a_reconnect(tmp_path: Path) -> None:
    with watched_gate(tmp_path) as (wired, reader, service):
        loop = threading.Thread(target=wired.gate.run, kwargs={"poll_s": 0.02})
        loop.start()
        try:

            def up() -> float | None:
                return value(scrape(service), "farecore_reader_up", terminal="1001")

            for n in (1, 2):
                reader.close()  # the loop's next wait raises ReaderIOError
                wait_for(lambda: up() == 0, "reader_up 0 after the reader closed")
                reader.open()
                wait_for(lambda: up() == 1, "reader_up 1 after it opened again")
                got = scrape(service)
                assert value(got, "farecore_reader_reconnects_total", terminal="1001") == n
            reader.present(Deck.from_seed(SEED).card("good", 9))
            wait_for(lambda: wired.gate.taps == 1, "the tap after the reconnect")
        finally:
            wired.gate.stop()
            reader.remove()
            loop.join(10)
        assert not loop.is_alive()
        got = scrape(service)
    assert value(got, "farecore_taps_total", terminal="1001", decision="ACCEPT", reason="none") == 1


def test_the_follower_and_the_courier_set_their_figures(tmp_path: Path) -> None:
    with watched_gate(tmp_path) as (_, _, service):
        g = service.metrics.gate(1001)
        assert service.metrics.gate(1001) is g
        g.package(17)
        g.journal_pending(1234)
        g.closed_days_pending(2)
        g.uploaded(1_796_000_000.5)
        g.clock_offset(-2.25)
        got = scrape(service)
        for bad in (
            lambda: g.package(-1),
            lambda: g.journal_pending(True),
            lambda: g.journal_pending(1.5),  # type: ignore[arg-type]
            lambda: g.closed_days_pending(-1),
            lambda: g.closed_days_pending(False),
            lambda: g.uploaded(float("nan")),
            lambda: g.clock_offset(float("inf")),
            lambda: service.metrics.gate(-1),
            lambda: service.metrics.gate(1 << 64),
        ):
            with pytest.raises(ValueError):
                bad()
        assert scrape(service) == got  # a refused value changes nothing
    t = "1001"
    assert value(got, "farecore_package_version", terminal=t) == 17
    assert value(got, "farecore_journal_pending_records", terminal=t) == 1234
    assert value(got, "farecore_journal_closed_days_pending", terminal=t) == 2
    assert (
        value(got, "farecore_journal_last_upload_timestamp_seconds", terminal=t) == 1_796_000_000.5
    )
    assert value(got, "farecore_clock_offset_seconds", terminal=t) == -2.25


def test_a_station_controller_serves_every_gate_with_its_terminal_label(tmp_path: Path) -> None:
    deck = Deck.from_seed(SEED)
    terminals = (2001, 2002)
    journal = StationJournal.open(tmp_path / "station.sqlite", list(terminals))
    station = Station(journal)
    service = start_gate_metrics("127.0.0.1:0")
    gates = []
    try:
        for tid in terminals:
            d = tmp_path / str(tid)
            d.mkdir()
            cfg = load_gate_config(write_gate_config(deck, d, tid, SEED))
            reader = VirtualReader()
            wired = build_gate(cfg, reader, station=station, revocation_poll_s=None)
            gates.append((wired, reader))
            watch_gate(service.metrics, wired, cfg)
        controller = StationController(journal, max_group=4)
        plan = [(0, "good"), (1, "good"), (1, "good"), (0, "expired"), (1, "revoked")]
        for n, (g, kind) in enumerate(plan):
            wired, reader = gates[g]
            controller.tap(wired.gate, reader.tap(deck.card(kind, 300 + n)))
            reader.remove()
        got_before = scrape(service)
        controller.flush()
        got = scrape(service)
    finally:
        for wired, _ in gates:
            wired.close()
        journal.close()
        service.close()
    accept = {"decision": "ACCEPT", "reason": "none"}
    # A tap counts once its gate has opened, that is once its ride is durable.
    assert sum(v for (n, _), v in got_before.items() if n == "farecore_taps_total") < 5
    assert value(got, "farecore_taps_total", terminal="2001", **accept) == 1
    assert value(got, "farecore_taps_total", terminal="2002", **accept) == 2
    deny = {"decision": "DENY"}
    assert value(got, "farecore_taps_total", terminal="2001", reason="EXPIRED", **deny) == 1
    assert value(got, "farecore_taps_total", terminal="2002", reason="REVOKED", **deny) == 1
    for tid in terminals:
        assert value(got, "farecore_reader_up", terminal=str(tid)) == 1


def test_a_gate_without_metrics_has_the_empty_observer_and_a_failing_one_never_stops_it() -> None:
    deck = Deck.from_seed(SEED)
    reader = VirtualReader()
    gate = Gate(reader, deck.validator())
    assert gate.observer is NO_OBSERVER

    class Broken:
        def decided(self, decision: Decision) -> None:
            raise OSError("No space left on device")

        def reader_lost(self, detail: str) -> None:
            raise OSError("No space left on device")

        def reader_back(self) -> None:
            raise OSError("No space left on device")

    gate.observer = Broken()
    assert gate.process(reader.tap(deck.card("good", 1))).accepted
    assert gate.taps == 1


def test_the_endpoint_answers_only_metrics_and_closes_cleanly() -> None:
    service = start_gate_metrics("127.0.0.1:0")
    assert service.address is not None
    host, port = service.address
    base = f"http://{host}:{port}"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{base}/admin", timeout=10)
    assert err.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(f"{base}/metrics", b"x"), timeout=10)
    assert err.value.code == 501
    head = urllib.request.Request(f"{base}/metrics", method="HEAD")
    with urllib.request.urlopen(head, timeout=10) as reply:
        assert reply.status == 200 and reply.read() == b""
    service.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=2)
    again = start_gate_metrics(f"127.0.0.1:{port}")  # the address is free again
    again.close()


def test_peers_that_hold_connections_cannot_take_every_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The idle peers must hold their slots for the whole check: with the handler's 5 s
    # timeout, a loaded machine could free them first and the ninth would be answered.
    monkeypatch.setattr(metrics_http._Handler, "timeout", 120)
    service = start_gate_metrics("127.0.0.1:0")
    assert service.address is not None
    idle = []
    try:
        for _ in range(8):  # as many as the server answers at once, each sending nothing
            idle.append(socket.create_connection(service.address, timeout=5))
        wait_for(lambda: _refused(service.address), "a ninth connection closed unanswered")
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: not _refused(service.address), "the endpoint answers again")
    assert scrape(service) is not None
    service.close()


def _refused(address: tuple[str, int] | None) -> bool:
    assert address is not None
    with socket.create_connection(address, timeout=5) as s:
        try:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            return s.recv(16) == b""
        except ConnectionResetError:  # closed with our request unread
            return True


def test_a_taken_address_is_a_config_error_for_a_lone_gate() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"metrics.listen 127.0.0.1:{port}: cannot listen"):
            start_gate_metrics(f"127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("gate-7.local:80", ("gate-7.local", 80)),
    ],
)
def test_listen_addresses(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize(
    "text",
    ["", "9464", ":9464", "127.0.0.1", "127.0.0.1:65536", "[::1:9464", "a b:1", "h:-1", "h:1\n"],
)
def test_bad_listen_addresses_are_named(text: str) -> None:
    with pytest.raises(ConfigError, match="metrics.listen must be HOST:PORT"):
        parse_listen(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_listen_text_is_an_address_or_a_config_error(text: str) -> None:
    try:
        host, port = parse_listen(text)
    except ConfigError:
        return
    assert 0 <= port <= 65535 and host and f":{port}" in text


def test_the_metric_table_follows_prometheus_naming() -> None:
    for name, (kind, labels, doc) in METRICS.items():
        assert name.startswith("farecore_") and doc
        assert "terminal" not in labels
        assert not name.endswith("_total"), "counters get _total from the client"
        if "seconds" in name:
            assert name.endswith("_seconds")
        assert kind in ("counter", "gauge", "histogram")


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=2048))
def test_garbage_from_a_peer_never_stops_the_endpoint(garbage: bytes) -> None:
    service = _SHARED.get()
    assert service.address is not None
    with socket.create_connection(service.address, timeout=5) as s:
        try:
            s.sendall(garbage + b"\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        except OSError:
            pass  # the server may close on us before it reads it all
    assert scrape(service)  # and it still serves


class _Shared:
    """One endpoint for every hypothesis example (each would otherwise start one)."""

    service: MetricsService | None = None

    def get(self) -> MetricsService:
        if self.service is None:
            self.service = start_gate_metrics("127.0.0.1:0")
            self.service.metrics.gate(9).attach("p", "bus")
        return self.service


_SHARED = _Shared()


@pytest.fixture(autouse=True, scope="module")
def _close_shared() -> Iterator[None]:
    yield
    if _SHARED.service is not None:
        _SHARED.service.close()


def test_a_process_that_only_sets_fleet_figures_says_nothing_of_the_reader() -> None:
    # A courier's process: its figures appear, the gate's live gauges do not (in
    # multi-process mode even an unset gauge would be written as 0: "reader down").
    from prometheus_client import generate_latest

    from farecore.fleet.metrics import FleetMetrics

    metrics = FleetMetrics()
    metrics.gate(5).journal_pending(3)
    text = generate_latest(metrics.registry).decode()
    assert 'farecore_journal_pending_records{terminal="5"} 3.0' in text
    for name in ("farecore_reader_up{", "farecore_gate_info{", "farecore_clock_fault{"):
        assert name not in text


def test_one_address_for_every_process_of_a_host_needs_a_fixed_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a fixed port"):
        start_gate_metrics("127.0.0.1:0", tmp_path)
