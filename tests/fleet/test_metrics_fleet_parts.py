"""The fleet's other parts in a gate's metrics: the package follower and the journal courier.

A real gate follows a real published package (from a directory) and a real courier hands
its journal in to a directory collection point; the endpoint shows the package version
and table generation in force, the records and closed days not yet handed in and the last
upload.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
import urllib.request
from pathlib import Path

from gate_process import write_gate_config
from package_support import Publisher
from prometheus_client.parser import text_string_to_metric_families

from farecore.card.keys import SigningKey
from farecore.fleet.gatepackage import GatePackage
from farecore.fleet.metrics import watch_courier, watch_follower, watch_gate
from farecore.fleet.metrics_http import MetricsService, start_gate_metrics
from farecore.fleet.publish import PublishInputs, publish
from farecore.fleet.upload import Courier, CourierSettings, service_day
from farecore.gate.config import load_gate_config
from farecore.gate.wiring import build_gate
from farecore.journal.batch_header import day_bounds_ms
from readers.virtual import VirtualReader
from sim.deck import Deck
from sim.issuer import derive_key


def gauges(service: MetricsService, terminal: str) -> dict[str, float]:
    """This terminal's unlabelled-beyond-terminal samples, by name."""
    assert service.address is not None
    host, port = service.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels == {"terminal": terminal}
    }


def test_the_package_in_force_and_its_table_show_at_each_scrape(tmp_path: Path) -> None:
    pub = Publisher.make(tmp_path / "office")
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    shutil.copy(pub.keyring, gate_dir / "keyring.json")
    shutil.copy(pub.revocation_pub, gate_dir / "revocation.pub")
    (gate_dir / "gate.toml").write_text(
        '[terminal]\nid = 77\noperator = "qd-bus"\nline = "1"\nplace = "bus-1"\nrole = "bus"\n'
        '[policy]\nregions = [370200]\n[keyring]\npath = "keyring.json"\n'
        '[revocation]\nsigner = "revocation.pub"\n[journal]\npath = "journal.sqlite"\n'
        f'[package]\nsource = "{pub.out}"\npoll_s = 1\n'
    )
    made = int(time.time()) - 600
    publish(
        pub.out, PublishInputs(pub.keyring, pub.table(3, [], made), pub.signer()), pub.publishing
    )
    cfg = load_gate_config(gate_dir / "gate.toml")
    package = GatePackage(cfg)
    service = start_gate_metrics("127.0.0.1:0")
    try:
        with build_gate(package.for_config(), VirtualReader(), revocation_poll_s=None) as wired:
            follower = package.follow([wired], start=False)
            try:
                watch_gate(service.metrics, wired, cfg)
                watch_follower(service.metrics, cfg.terminal_id, follower)
                first = gauges(service, "77")
                table = pub.table(4, [5], made + 60)
                publish(pub.out, PublishInputs(pub.keyring, table, pub.signer()), pub.publishing)
                assert follower.poll()
                second = gauges(service, "77")
            finally:
                follower.close()
    finally:
        service.close()
    assert first["farecore_package_version"] == 1
    assert first["farecore_revocation_generation"] == 3
    assert first["farecore_revocation_table_created_timestamp_seconds"] == made
    assert second["farecore_package_version"] == 2
    assert second["farecore_revocation_generation"] == 4
    assert second["farecore_revocation_table_created_timestamp_seconds"] == made + 60


def test_the_courier_s_backlog_and_last_upload_show_at_each_scrape(tmp_path: Path) -> None:
    seed = "fleet-courier"
    deck = Deck.from_seed(seed)
    cfg = load_gate_config(write_gate_config(deck, tmp_path, 1001, seed))
    assert cfg.journal is not None
    point = tmp_path / "point"
    point.mkdir()
    settings = CourierSettings(str(point), tmp_path / "courier.json", tmp_path / "spool")
    # The rides are at noon two service days ago, and the courier's clock at noon today:
    # two days have closed (whatever the hour the test runs at), today's is open.
    offset = settings.utc_offset_min
    ride_day = service_day(int(time.time() * 1000), offset) - dt.timedelta(days=2)
    noon = day_bounds_ms(ride_day, offset)[0] + 12 * 3_600_000
    now_ms = noon + 2 * 86_400_000
    ticks = iter(range(1, 1000))
    reader = VirtualReader()
    with build_gate(
        cfg, reader, revocation_poll_s=None, clock_ms=lambda: noon + 1000 * next(ticks)
    ) as wired:
        for n in range(3):
            wired.gate.process(reader.tap(deck.card("good", 50 + n)))
            reader.remove()
    key = SigningKey("terminal", 1001, derive_key(seed, "terminal-1001"))
    service = start_gate_metrics("127.0.0.1:0")
    courier = Courier(settings, key, cfg.journal, clock_ms=lambda: now_ms)
    try:
        watch_courier(service.metrics, courier)
        before = gauges(service, "1001")  # nothing known until the courier's first pass
        courier.send_head()
        waiting = gauges(service, "1001")
        assert courier.run_once()  # the closed days are handed in and acknowledged
        after = gauges(service, "1001")
    finally:
        courier.close()
        service.close()
    assert "farecore_journal_pending_records" not in before
    assert "farecore_journal_closed_days_pending" not in before
    assert waiting["farecore_journal_pending_records"] == 3
    assert waiting["farecore_journal_closed_days_pending"] == 2
    assert "farecore_journal_last_upload_timestamp_seconds" not in waiting
    assert after["farecore_journal_pending_records"] == 0
    assert after["farecore_journal_closed_days_pending"] == 0
    assert after["farecore_journal_last_upload_timestamp_seconds"] == now_ms / 1000
