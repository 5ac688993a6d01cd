"""The settlement on Dask gives the same bytes as in-process and --jobs 2.

Real parts: a LocalCluster of two worker processes with one thread each, real batch files
(some tampered), a worker process killed with SIGKILL mid-run, a batch path that a worker
cannot read.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from settle_world import DAY, World, random_day

from farecore.errors import SettlementError
from farecore.settlement import find_batches, load_inputs, run_settlement
from farecore.settlement.cluster import DaskSettings, map_on_dask

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


def test_killing_a_worker_mid_run_changes_nothing(world: World, tmp_path: Path, cluster) -> None:  # type: ignore[no-untyped-def]
    paths = _world_with_tampering(world)
    # More units than workers, so that work is still queued when a worker dies.
    for i in range(24):
        copy = world.batches / f"copy-{i:02d}"
        copy.mkdir()
        shutil.copy(paths[i % len(paths)], copy / Path(paths[i % len(paths)]).name)
    expected = _settle(world, tmp_path / "one")
    client = distributed.Client(cluster.scheduler_address)
    try:
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        killed: list[int] = []

        def progress(done: int, total: int) -> None:
            if done == 3 and not killed:
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        on_dask = _settle(
            world,
            tmp_path / "dask",
            map_units=map_on_dask(DaskSettings(scheduler=cluster.scheduler_address)),
            progress=progress,
        )
    finally:
        client.close()
    assert killed == [victim]
    assert on_dask == expected


def test_a_batch_gone_before_the_night_is_named_and_the_rest_settles(
    world: World, tmp_path: Path, cluster
) -> None:  # type: ignore[no-untyped-def]
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
    world: World, tmp_path: Path, cluster
) -> None:  # type: ignore[no-untyped-def]
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
