"""The settlement on Dask gives the same bytes as in-process and --jobs 2, or stops the
night with one line and writes nothing.

Real parts: LocalClusters of worker processes with one thread each, a scheduler and a
worker as separate ``dask`` processes, real batch files (some tampered), a batch path
that a worker cannot read, and worker processes or a scheduler killed with SIGKILL at a
point of the night a worker plugin chooses, so that the machine's load cannot move it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from settle_world import DAY, World, random_day, settle_cli

from farecore.errors import SettlementError
from farecore.settlement import find_batches, load_inputs, run_settlement
from farecore.settlement.cluster import DaskSettings, map_on_dask
from farecore.settlement.ledger import Ledger

distributed = pytest.importorskip("dask.distributed")

OUTPUTS = ("totals.csv", "rides.parquet", "anomalies.json", "manifest.json")


def _world_with_tampering(world: World) -> list[str]:
    random_day(world, n_cards=40, n_taps=300, seed=11)
    exported = world.export()
    # One byte flipped in a copy of a batch, and a batch ingested twice.
    tampered = bytearray(exported[0].read_bytes())
    tampered[len(tampered) // 2] ^= 0x01
    (world.batches / "tampered.fcb").write_bytes(bytes(tampered))
    (world.batches / "again").mkdir()
    shutil.copy(exported[1], world.batches / "again" / exported[1].name)
    return find_batches(world.batches)


def _settle(world: World, out: Path, **kwargs: object) -> dict[str, bytes]:
    inputs = load_inputs(
        DAY, world.root / "terminals.csv", world.root / "keyring.json", world.root / "fares.toml"
    )
    run_settlement(inputs, find_batches(world.batches), out, **kwargs)  # type: ignore[arg-type]
    return {name: (out / name).read_bytes() for name in OUTPUTS}


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as c:
        yield c


def test_dask_is_byte_identical_to_in_process_and_two_jobs(
    world: World, tmp_path: Path, cluster: object
) -> None:
    _world_with_tampering(world)
    in_process = _settle(world, tmp_path / "one")
    two_jobs = _settle(world, tmp_path / "two", jobs=2)
    on_dask = _settle(
        world,
        tmp_path / "dask",
        map_units=map_on_dask(DaskSettings(scheduler=cluster.scheduler_address)),  # type: ignore[attr-defined]
    )
    assert in_process == two_jobs == on_dask
    assert b"batch_rejected" in in_process["anomalies.json"]


def test_a_local_cluster_started_for_the_run_gives_the_same_bytes(
    world: World, tmp_path: Path
) -> None:
    _world_with_tampering(world)
    links: list[str] = []
    on_dask = _settle(
        world,
        tmp_path / "dask",
        map_units=map_on_dask(DaskSettings(n_workers=2, on_ready=links.append)),
    )
    assert on_dask == _settle(world, tmp_path / "one")
    assert links and links[0].startswith("http")


class _DieOnce(distributed.WorkerPlugin):  # type: ignore[misc,name-defined]
    """SIGKILLs ``pid`` (by default the worker process it runs in) as a unit starts
    executing on a worker that holds ``after`` finished units: a real death with a unit
    in flight, at a point the test chooses, not the machine's load. ``marker`` (created
    with O_EXCL) makes it happen once, the workers the nannies start again included."""

    def __init__(self, marker: Path, after: int, pid: int | None = None) -> None:
        self.marker = str(marker)
        self.after = after
        self.pid = pid
        self.name = f"die-once-{marker.name}"

    def setup(self, worker: Any) -> None:
        self.worker = worker

    def transition(self, key: object, start: str, finish: str, **kwargs: object) -> None:
        if finish != "executing" or not str(key).startswith("settle_unit_on_worker"):
            return
        held = sum(
            1
            for ts in self.worker.state.tasks.values()
            if ts.state == "memory" and str(ts.key).startswith("settle_unit_on_worker")
        )
        if held < self.after:
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{os.getpid()} {self.worker.address}".encode())
        os.close(fd)
        os.kill(self.pid or os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def _own_cluster(n_workers: int, **config: object) -> Iterator[Any]:
    """A LocalCluster for one test, so that a worker killed in it cannot touch another."""
    import dask

    with (
        dask.config.set(config),
        distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as c,
        distributed.Client(c.scheduler_address) as client,
    ):
        yield c, client


def _copies(world: World, paths: list[str]) -> None:
    # Each copy holds the bytes of a batch already in the night, so the survey takes
    # them as one batch each: they prove that a name does not make a second unit.
    for i in range(24):
        copy = world.batches / f"copy-{i:02d}"
        copy.mkdir()
        shutil.copy(paths[i % len(paths)], copy / Path(paths[i % len(paths)]).name)


def _removals(cluster: Any, address: str) -> list[dict[str, Any]]:
    return [
        e
        for _, e in cluster.scheduler.get_events(address)
        if isinstance(e, dict) and e.get("action") == "remove-worker"
    ]


def _settle_with_a_death(world: World, out: Path, cluster: Any, client: Any, marker: Path) -> Any:
    """Settle the night on ``cluster``; the first worker to start its second unit is
    SIGKILLed as it starts it (and notes its address in ``marker``)."""
    client.register_plugin(_DieOnce(marker, after=1))
    return _settle(
        world, out, map_units=map_on_dask(DaskSettings(scheduler=cluster.scheduler_address))
    )


def test_killing_a_worker_mid_run_changes_nothing(world: World, tmp_path: Path) -> None:
    paths = _world_with_tampering(world)
    _copies(world, paths)
    expected = _settle(world, tmp_path / "one")
    marker = tmp_path / "died"
    with _own_cluster(2) as (cluster, client):
        # 9 units on 2 one-thread workers: one of them starts a second unit, and dies.
        on_dask = _settle_with_a_death(world, tmp_path / "dask", cluster, client, marker)
        _, address = marker.read_text().split()
        [removed] = _removals(cluster, address)
    # The scheduler saw it die with a unit running, which then ran again elsewhere.
    assert any(k.startswith("settle_unit_on_worker") for k in removed["processing-tasks"])
    assert on_dask == expected


def test_the_only_worker_holding_the_nights_config_dying_changes_nothing(
    world: World, tmp_path: Path
) -> None:
    """Every worker holding the night's shared configuration dies (here the only one;
    on a bigger cluster, Dask keeps one copy once few units need it): the worker that
    replaces it must still get it, not cancel every unit left."""
    _world_with_tampering(world)
    expected = _settle(world, tmp_path / "one")
    marker = tmp_path / "died"
    with _own_cluster(1) as (cluster, client):
        on_dask = _settle_with_a_death(world, tmp_path / "dask", cluster, client, marker)
    assert marker.exists()
    assert on_dask == expected


def test_a_unit_that_kills_its_workers_stops_the_night_in_one_line(
    world: World, tmp_path: Path
) -> None:
    """Dask gives up on a unit whose workers died (``allowed-failures``, 0 here): the
    operator gets exit 2, one line naming the batch, and nothing written or recorded."""
    _world_with_tampering(world)
    with _own_cluster(1, **{"distributed.scheduler.allowed-failures": 0}) as (cluster, client):
        client.register_plugin(_DieOnce(tmp_path / "died", after=0))
        r = settle_cli(world, tmp_path, "--scheduler", cluster.scheduler_address)
    line = _the_error(r)
    assert "Dask gave up on the unit of batch file " in line and ".fcb" in line, line
    assert (tmp_path / "died").exists()
    _nothing_written(tmp_path)


def test_the_scheduler_dying_mid_night_stops_it_in_one_line(world: World, tmp_path: Path) -> None:
    """A scheduler and a worker as separate processes; the scheduler is SIGKILLed as the
    worker starts its second unit, so the night cannot have every partial."""
    import subprocess
    import sys

    _world_with_tampering(world)
    dask_cli = str(Path(sys.executable).parent / "dask")
    where = tmp_path / "scheduler.json"
    # The worker unpickles _DieOnce from this module.
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    quiet = subprocess.DEVNULL
    scheduler = subprocess.Popen(
        [dask_cli, "scheduler", "--scheduler-file", str(where), "--host", "127.0.0.1",
         "--port", "0", "--dashboard-address", ":0"], stderr=quiet,
    )  # fmt: skip
    procs = [scheduler]
    try:
        address = _address_in(where, scheduler)
        worker = subprocess.Popen(
            [dask_cli, "worker", address, "--nthreads", "1", "--no-nanny"],
            stderr=quiet, env={**os.environ, "PYTHONPATH": path},
        )  # fmt: skip
        procs.append(worker)
        with distributed.Client(address, timeout="120s") as client:
            client.wait_for_workers(1, timeout=120)
            client.register_plugin(_DieOnce(tmp_path / "died", after=1, pid=scheduler.pid))
        r = settle_cli(world, tmp_path, "--scheduler", address)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert f"lost the Dask scheduler at {address} during the night" in _the_error(r)
    assert (tmp_path / "died").exists()
    _nothing_written(tmp_path)


def _address_in(scheduler_file: Path, scheduler: Any) -> str:
    """The address a ``dask scheduler`` wrote (not atomically) to its file."""
    import json
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and scheduler.poll() is None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return str(json.loads(scheduler_file.read_text())["address"])
        time.sleep(0.05)
    raise AssertionError(f"no scheduler address in {scheduler_file}")


def _the_error(r: Any) -> str:
    """Exit 2 and one error line, the last; any other line is Dask's own, logged through
    the command's stderr (a loaded machine adds "event loop was unresponsive" lines)."""
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert [x for x in lines if x.startswith("farecore: error: ")] == lines[-1:], r.stderr
    assert all(x.startswith("farecore") for x in lines) and "Traceback" not in r.stderr
    return str(lines[-1])


def _nothing_written(tmp_path: Path) -> None:
    assert not any((tmp_path / "out").iterdir())
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.last_night() is None


def test_a_batch_gone_before_the_night_is_named_and_the_rest_settles(
    world: World, tmp_path: Path, cluster: Any
) -> None:
    paths = _world_with_tampering(world)
    inputs = load_inputs(
        DAY, world.root / "terminals.csv", world.root / "keyring.json", world.root / "fares.toml"
    )
    os.unlink(paths[0])  # listed, then gone before anything reads it
    result = run_settlement(
        inputs,
        paths,
        tmp_path / "out",
        map_units=map_on_dask(DaskSettings(scheduler=cluster.scheduler_address)),
    )
    name = os.path.basename(paths[0])
    [gone] = [a for a in result.anomalies if a.kind == "batch_rejected" and a.file == name]
    assert "cannot stat" in gone.detail and gone.file == name
    assert (tmp_path / "out" / "manifest.json").exists()


def test_a_batch_its_unit_cannot_read_stops_the_night(world: World, tmp_path: Path) -> None:
    # Readable when the night began, gone where its unit runs (a worker without the
    # shared filesystem): a setup fault, not the file's, so nothing is written.
    from farecore.settlement import map_in_process

    paths = _world_with_tampering(world)
    inputs = load_inputs(
        DAY, world.root / "terminals.csv", world.root / "keyring.json", world.root / "fares.toml"
    )

    def elsewhere(ps, cfg):  # type: ignore[no-untyped-def]
        os.unlink(ps[0])
        yield from map_in_process(ps, cfg)

    with pytest.raises(SettlementError) as err:
        run_settlement(inputs, paths, tmp_path / "out", map_units=elsewhere)
    assert paths[0] in str(err.value) and "shared filesystem" in str(err.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_on_a_local_cluster_matches_in_process(world: World, tmp_path: Path) -> None:
    import subprocess
    import sys

    _world_with_tampering(world)
    common = [
        sys.executable, "-m", "farecore", "settle", "--batches", str(world.batches),
        "--terminals", str(world.root / "terminals.csv"),
        "--keyring", str(world.root / "keyring.json"),
        "--fares", str(world.root / "fares.toml"), "--day", DAY.isoformat(),
    ]  # fmt: skip
    plain = subprocess.run(
        [*common, "--out", str(tmp_path / "a"), "--ledger", str(tmp_path / "a.sqlite")],
        capture_output=True,
        text=True,
    )
    assert plain.returncode == 3, plain.stderr  # the tampered batches need review
    where = ["--out", str(tmp_path / "b"), "--ledger", str(tmp_path / "b.sqlite")]
    on_dask = subprocess.run(
        [*common, *where, "--dask-workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert on_dask.returncode == 3, on_dask.stderr
    assert "Dask dashboard at http" in on_dask.stderr
    for name in OUTPUTS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_without_dask_the_options_name_the_extra(world: World, tmp_path: Path) -> None:
    import subprocess
    import sys

    _world_with_tampering(world)
    # A real interpreter in which importing dask fails, as on a machine without the extra.
    code = (
        "import sys; sys.modules['dask'] = None; sys.modules['dask.distributed'] = None\n"
        "from farecore.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "settle",
            "--batches",
            str(world.batches),
            "--terminals",
            str(world.root / "terminals.csv"),
            "--keyring",
            str(world.root / "keyring.json"),
            "--fares",
            str(world.root / "fares.toml"),
            "--day",
            DAY.isoformat(),
            "--out",
            str(tmp_path / "x"),
            "--ledger",
            str(tmp_path / "ledger.sqlite"),
            "--scheduler",
            "tcp://127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "pip install 'farecore[dask]'" in r.stderr and "Traceback" not in r.stderr


def test_a_list_the_workers_do_not_see_as_checked_stops_the_night(
    world: World, tmp_path: Path, cluster: Any
) -> None:
    """The issuer's list (``--issued``) as each Dask worker reads it must be the file the
    night checked; one replaced in between stops the night, naming the worker."""
    from farecore.decide.issued import build_issued_list

    random_day(world, n_cards=12, n_taps=40, seed=12)
    world.export()
    listed = tmp_path / "issued-1.fil"
    creds = [(f"card {c}", world.card(c).credential) for c in sorted(world.cards)]
    build_issued_list(creds, world.issuer.key, 1, 1_760_000_000, listed)
    root = world.root
    inputs = load_inputs(
        DAY, root / "terminals.csv", root / "keyring.json", root / "fares.toml",
        issued_lists=[listed],
    )  # fmt: skip
    dask = map_on_dask(DaskSettings(scheduler=cluster.scheduler_address))
    listed_too = _settle_listed(inputs, world, tmp_path / "dask", dask)
    assert listed_too == _settle(world, tmp_path / "plain") | {
        "manifest.json": listed_too["manifest.json"]
    }
    # A worker holding the checked bytes already may use them; one that must read the
    # file again finds another list there.
    build_issued_list(creds[:3], world.issuer.key, 2, 1_760_000_000, listed)
    inputs = load_inputs(
        DAY, root / "terminals.csv", root / "keyring.json", root / "fares.toml",
        issued_lists=[listed],
    )  # fmt: skip
    build_issued_list(creds[:4], world.issuer.key, 3, 1_760_000_000, listed)
    with pytest.raises(SettlementError, match=r"not the file the night checked .*\(on worker "):
        run_settlement(inputs, find_batches(world.batches), tmp_path / "late", map_units=dask)
    assert not any((tmp_path / "late").iterdir())  # made early, and left empty


def _settle_listed(inputs: object, world: World, out: Path, dask: object) -> dict[str, bytes]:
    run_settlement(inputs, find_batches(world.batches), out, map_units=dask)  # type: ignore[arg-type]
    return {name: (out / name).read_bytes() for name in OUTPUTS}
