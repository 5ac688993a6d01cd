"""A gate follows its package: publish, poll, verify, apply; never back, never waiting."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nginx_server import nginx_serving
from package_support import Publisher, publishing_entry

from farecore.card.keys import Keyring, SigningKey, save_signing_key
from farecore.errors import ConfigError
from farecore.fleet.gatepackage import GatePackage
from farecore.fleet.publish import PublishInputs, publish
from farecore.gate.config import load_gate_config
from farecore.gate.wiring import WiredGate, build_gate
from readers.virtual import VirtualReader
from sim.issuer import derive_key

CARD = 5


def _config(root: Path, source: str, extra: str = "") -> Path:
    cfg = root / "gate.toml"
    cfg.write_text(
        '[terminal]\nid = 77\noperator = "qd-bus"\nline = "1"\nplace = "bus-1"\nrole = "bus"\n'
        '[policy]\nregions = [370200]\n[keyring]\npath = "keyring.json"\n'
        '[revocation]\nsigner = "revocation.pub"\n[journal]\npath = "journal.sqlite"\n'
        f'[package]\nsource = "{source}"\npoll_s = 1\ntimeout_s = 2\n{extra}'
    )
    return cfg


def _publish(pub: Publisher, generation: int, revoked: list[int], **kw: object) -> None:
    inputs = PublishInputs(pub.keyring, pub.table(generation, revoked), pub.signer())
    publish(pub.out, inputs, pub.publishing, **kw)  # type: ignore[arg-type]


class Running:
    def __init__(self, wired: WiredGate, reader: VirtualReader, package: GatePackage) -> None:
        self.wired, self.reader, self.package = wired, reader, package
        assert package.follower is not None
        self.follower = package.follower

    def tap(self, card_id: int, pub: Publisher) -> str:
        decision = self.wired.gate.process(self.reader.tap(pub.issuer.card(card_id)))
        self.reader.remove()
        return decision.reason.name if decision.reason else "ACCEPT"


@contextlib.contextmanager
def running_gate(cfg_path: Path, *, start: bool = False) -> Iterator[Running]:
    cfg = load_gate_config(cfg_path)
    package = GatePackage(cfg)
    reader = VirtualReader("pkg")
    with build_gate(package.for_config(), reader, revocation_poll_s=None) as wired:
        follower = package.follow([wired], start=start)
        try:
            yield Running(wired, reader, package)
        finally:
            follower.close()


@pytest.fixture
def pub(tmp_path: Path) -> Publisher:
    p = Publisher.make(tmp_path / "office")
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    shutil.copy(p.keyring, gate_dir / "keyring.json")
    shutil.copy(p.revocation_pub, gate_dir / "revocation.pub")
    return p


def test_a_published_revocation_reaches_a_gate_from_a_directory(
    pub: Publisher, tmp_path: Path
) -> None:
    _publish(pub, 1, [])
    with running_gate(_config(tmp_path / "gate", str(pub.out))) as gate:
        assert gate.follower.version == 1
        assert gate.tap(CARD, pub) == "ACCEPT"
        assert gate.follower.poll() is False  # nothing new
        _publish(pub, 2, [CARD])
        assert gate.follower.poll() is True
        assert gate.follower.version == 2
        assert gate.wired.revocation is not None and gate.wired.revocation.generation == 2
        assert gate.tap(CARD, pub) == "REVOKED"


def test_rollback_tamper_and_foreign_signatures_are_refused(pub: Publisher, tmp_path: Path) -> None:
    _publish(pub, 1, [])
    _publish(pub, 2, [CARD])
    with running_gate(_config(tmp_path / "gate", str(pub.out))) as gate:
        assert gate.follower.version == 2
        # The old manifest put back: a rollback.
        shutil.copy(pub.out / "history" / "1.json", pub.out / "package.json")
        assert gate.follower.poll() is False
        assert "rollback" in (gate.follower.last_error or "")
        # A newer manifest whose table bytes were swapped after signing.
        _publish(pub, 3, [CARD, 6])
        manifest = json.loads(json.loads((pub.out / "package.json").read_text())["signed"])
        [base] = [f for f in manifest["files"] if f["role"] == "revocation_base"]
        target = pub.out / "files" / base["sha256"]
        target.chmod(0o644)
        shutil.copy(pub.table(9, []), target)
        assert gate.follower.poll() is False
        assert "SHA-256" in (gate.follower.last_error or "")
        # Signed by a key the gate's keyring does not hold.
        stranger = SigningKey("publishing", 501, derive_key("stranger", "publishing"))
        inputs = PublishInputs(pub.keyring, pub.table(4, [CARD]), pub.signer())
        with pytest.raises(ConfigError, match="not an active publishing key"):
            publish(pub.out, inputs, stranger)
        assert gate.follower.version == 2
        assert gate.tap(CARD, pub) == "REVOKED"
        assert gate.tap(6, pub) == "ACCEPT"


def test_a_restarted_gate_starts_on_its_package_and_never_goes_back(
    pub: Publisher, tmp_path: Path
) -> None:
    _publish(pub, 1, [])
    _publish(pub, 2, [CARD])
    cfg = _config(tmp_path / "gate", str(pub.out))
    with running_gate(cfg) as gate:
        assert gate.follower.version == 2
    # The source now serves version 1 again, and then goes away.
    shutil.copy(pub.out / "history" / "1.json", pub.out / "package.json")
    with running_gate(cfg) as gate:
        assert gate.follower.version == 2
        assert gate.follower.poll() is False
        assert gate.tap(CARD, pub) == "REVOKED"
    shutil.rmtree(pub.out)
    with running_gate(cfg) as gate:  # starts on its own copies
        assert gate.follower.version == 2
        assert gate.follower.poll() is False
        assert "package.json" in (gate.follower.last_error or "")
        assert gate.tap(CARD, pub) == "REVOKED"


def test_a_gate_with_no_package_and_no_source_does_not_start(
    pub: Publisher, tmp_path: Path
) -> None:
    cfg = _config(tmp_path / "gate", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="no revocation table to start on"), running_gate(cfg):
        pass


def test_a_new_publishing_key_is_rolled_out_by_the_old_one(pub: Publisher, tmp_path: Path) -> None:
    _publish(pub, 1, [])
    with running_gate(_config(tmp_path / "gate", str(pub.out))) as gate:
        new_key = SigningKey("publishing", 502, derive_key("fleet", "publishing-2"))
        save_signing_key(new_key, pub.root / "publisher-2")
        ring = Keyring.load(pub.keyring).add_publisher(publishing_entry(new_key))
        ring.save(pub.keyring)
        with pytest.raises(ConfigError, match="not an active publishing key"):
            publish(pub.out, PublishInputs(pub.keyring, pub.table(2, []), pub.signer()), new_key)
        _publish(pub, 2, [])  # the old key carries the keyring with the new one
        assert gate.follower.poll() is True
        ring.revoke_publisher(pub.publishing.key_id).save(pub.keyring)
        publish(pub.out, PublishInputs(pub.keyring, pub.table(3, [CARD]), pub.signer()), new_key)
        assert gate.follower.poll() is True
        assert gate.tap(CARD, pub) == "REVOKED"
        # The old key is revoked in the keyring the gates now hold: nothing it signs passes.
        with pytest.raises(ConfigError, match="not an active publishing key"):
            _publish(pub, 4, [])
        assert gate.follower.version == 3


def test_taps_never_wait_on_the_network(pub: Publisher, tmp_path: Path) -> None:
    """Over a real nginx: the gate taps all along; a revocation published mid-way is in
    force within a poll or two; with the server frozen (its requests hang until the
    follower's timeout), every tap still takes milliseconds."""
    _publish(pub, 1, [])
    with nginx_serving(pub.out, tmp_path / "nginx") as server:
        cfg = _config(tmp_path / "gate", server.url)
        with running_gate(cfg, start=True) as gate:
            assert gate.follower.version == 1
            results: list[tuple[str, float]] = []
            stop = threading.Event()

            def taps() -> None:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    results.append((gate.tap(CARD, pub), time.perf_counter() - t0))
                    time.sleep(0.005)

            tapper = threading.Thread(target=taps)
            tapper.start()
            try:
                time.sleep(0.3)
                _publish(pub, 2, [CARD])
                deadline = time.monotonic() + 10
                while gate.follower.version != 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert gate.follower.version == 2
                server.pause()
                polls = gate.follower.polls
                deadline = time.monotonic() + 10
                while gate.follower.failures == 0 and time.monotonic() < deadline:
                    time.sleep(0.05)  # a poll hung for its whole timeout, then failed
                assert gate.follower.polls > polls and gate.follower.failures > 0
                server.resume()
            finally:
                stop.set()
                tapper.join()
    reasons = [r for r, _ in results]
    assert reasons[0] == "ACCEPT" and reasons[-1] == "REVOKED"
    switch = reasons.index("REVOKED")
    assert set(reasons[:switch]) == {"ACCEPT"} and set(reasons[switch:]) == {"REVOKED"}
    assert max(t for _, t in results) < 0.5, max(t for _, t in results)


def test_the_gates_of_a_station_controller_follow_one_source(
    pub: Publisher, tmp_path: Path
) -> None:
    """One follower for a controller's gates: a package goes in force for all of them, and
    their shared credential cache is replaced by one new cache for all."""
    from farecore.gate.wiring import Station
    from farecore.journal.station import StationJournal

    _publish(pub, 1, [])
    gate_dir = tmp_path / "gate"
    cfg = load_gate_config(_config(gate_dir, str(pub.out)))
    package = GatePackage(cfg)
    base = package.for_config()
    with contextlib.ExitStack() as stack:
        journal = StationJournal.open(gate_dir / "station.sqlite", [77, 78])
        stack.callback(journal.close)
        station = Station(journal)
        gates = []
        for tid in (77, 78):
            one = dataclasses.replace(
                base, terminal_id=tid, state_dir=gate_dir / f"state-{tid}", journal=None
            )
            reader = VirtualReader(f"st-{tid}")
            wired = build_gate(one, reader, station=station, revocation_poll_s=None)
            stack.callback(wired.close)
            gates.append((wired, reader))
        follower = package.follow([w for w, _ in gates], shared_cache=True, start=False)
        stack.callback(follower.close)
        for wired, reader in gates:
            assert wired.gate.process(reader.tap(pub.issuer.card(CARD))).accepted
            reader.remove()
        _publish(pub, 2, [CARD])
        assert follower.poll() is True
        caches = {id(w.gate.validator._trust[2]) for w, _ in gates}
        assert len(caches) == 1
        for wired, reader in gates:
            decision = wired.gate.process(reader.tap(pub.issuer.card(CARD)))
            reader.remove()
            assert decision.reason is not None and decision.reason.name == "REVOKED"
            assert decision.revocation_generation == 2


def test_followers_sharing_one_cache_all_take_the_package(pub: Publisher, tmp_path: Path) -> None:
    """The gates of one host may share a package cache: eight followers fetching the same
    files at the same moment must all end on the new version (none refuses it because
    another's download or prune got in its way)."""
    from farecore.fleet.follow import DirectorySource, PackageCache, PackageFollower

    _publish(pub, 1, [])
    cache = PackageCache(tmp_path / "shared-cache")
    ring = Keyring.load(pub.keyring)
    barrier = threading.Barrier(8)
    followers = [
        PackageFollower(DirectorySource(pub.out), cache, ring, lambda p: None, poll_s=0)
        for _ in range(8)
    ]

    def poll(f: PackageFollower) -> None:
        barrier.wait()
        f.poll()

    for round_ in (1, 2):
        if round_ == 2:
            _publish(pub, 2, [CARD, 6, 7])
        threads = [threading.Thread(target=poll, args=(f,)) for f in followers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [f.version for f in followers] == [round_] * 8, [f.last_error for f in followers]


def test_the_cache_never_vouches_for_itself(pub: Publisher, tmp_path: Path) -> None:
    """A package written into the gate's cache with a keyring of its own, signed by a key
    the configured keyring never held, is not started on: the packages kept there are
    verified in a chain from the configured keyring at every start."""
    _publish(pub, 1, [])
    cfg = _config(tmp_path / "gate", str(pub.out))
    with running_gate(cfg) as gate:
        assert gate.follower.version == 1
    # An attacker with write access to the cache (not to the configured keyring).
    evil = SigningKey("publishing", 666, derive_key("evil", "publishing"))
    evil_ring = Keyring.load(pub.keyring).add_publisher(publishing_entry(evil))
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    evil_ring.save(evil_dir / "keyring.json")
    inputs = PublishInputs(evil_dir / "keyring.json", pub.table(9, []), pub.signer())
    forged = publish(evil_dir / "pkg", inputs, evil, version=99)
    cache = tmp_path / "gate" / "state" / "package"
    for f in forged.manifest.files:
        target = cache / "files" / f.sha256
        if not target.exists():
            shutil.copy(evil_dir / "pkg" / f.path, target)
    (cache / "adopted-77" / "99.json").write_bytes(forged.raw)
    shutil.rmtree(pub.out)  # and the source is down: the gate starts on what it holds
    with running_gate(cfg) as gate:
        assert gate.follower.version == 1
        assert gate.tap(CARD, pub) == "ACCEPT"


def test_a_bad_download_is_fetched_again_not_refused(pub: Publisher, tmp_path: Path) -> None:
    """Bytes that do not match the signed SHA-256 are the server's fault: the package is
    fetched again at the next poll, not refused until the next publish."""
    _publish(pub, 1, [])
    with running_gate(_config(tmp_path / "gate", str(pub.out))) as gate:
        _publish(pub, 2, [CARD])
        manifest = json.loads(json.loads((pub.out / "package.json").read_text())["signed"])
        [base] = [f for f in manifest["files"] if f["role"] == "revocation_base"]
        target = pub.out / "files" / base["sha256"]
        good = target.read_bytes()
        target.chmod(0o644)
        target.write_bytes(good[: len(good) // 2])  # a cut transfer
        assert gate.follower.poll() is False
        assert "SHA-256 or size" in (gate.follower.last_error or "")
        assert gate.follower.refusals == 0
        target.write_bytes(good)
        assert gate.follower.poll() is True
        assert gate.tap(CARD, pub) == "REVOKED"


def test_a_gate_stopped_between_table_and_package_still_starts(
    pub: Publisher, tmp_path: Path
) -> None:
    """Stopped after version 2's table went in force but before version 2 was kept as in
    force: the gate starts on version 1's keyring with version 2's table (its marks), and
    takes version 2 again as soon as it can."""
    _publish(pub, 1, [])
    cfg = _config(tmp_path / "gate", str(pub.out))
    with running_gate(cfg) as gate:
        _publish(pub, 2, [CARD])
        assert gate.follower.poll() is True
    (tmp_path / "gate" / "state" / "package" / "adopted-77" / "2.json").unlink()
    moved = tmp_path / "pkg-away"
    pub.out.rename(moved)  # the source is down at the restart
    with running_gate(cfg) as gate:
        assert gate.follower.version == 1
        assert gate.wired.revocation is not None and gate.wired.revocation.generation == 2
        assert gate.tap(CARD, pub) == "REVOKED"
        moved.rename(pub.out)
        assert gate.follower.poll() is True
        assert gate.follower.version == 2


def test_a_gate_away_during_a_key_handover_follows_the_history(
    pub: Publisher, tmp_path: Path
) -> None:
    """A bus offline while version 2 handed the publishing key over meets version 3,
    signed by the new key: it walks history/2.json, verified under the keyring it holds,
    to the keyring that trusts the new key. A forged history file does not get it there."""
    _publish(pub, 1, [])
    with running_gate(_config(tmp_path / "gate", str(pub.out))) as gate:
        new_key = SigningKey("publishing", 502, derive_key("fleet", "publishing-2"))
        ring = Keyring.load(pub.keyring).add_publisher(publishing_entry(new_key))
        ring.save(pub.keyring)
        _publish(pub, 2, [])  # signed by the old key; the gate never sees it
        ring.revoke_publisher(pub.publishing.key_id).save(pub.keyring)
        publish(pub.out, PublishInputs(pub.keyring, pub.table(3, [CARD]), pub.signer()), new_key)
        good = (pub.out / "history" / "2.json").read_bytes()
        # First with version 2's history replaced by one signed by a stranger.
        from farecore.fleet.package import parse_package, sign_package

        stranger = SigningKey("publishing", 501, derive_key("stranger", "publishing"))
        forged = sign_package(parse_package(good).manifest, stranger)
        (pub.out / "history" / "2.json").write_bytes(forged)
        assert gate.follower.poll() is False
        assert "502" in (gate.follower.last_error or "")
        # The history restored, the next package goes through.
        (pub.out / "history" / "2.json").write_bytes(good)
        publish(pub.out, PublishInputs(pub.keyring, pub.table(4, [CARD]), pub.signer()), new_key)
        assert gate.follower.poll() is True
        assert gate.follower.version == 4
        assert gate.tap(CARD, pub) == "REVOKED"
