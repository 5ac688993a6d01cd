"""The year's lanes and nights on a Dask cluster give the local pool's bytes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from year_support import settlement_files

from sim.population import FraudMix
from sim.year import run_year
from sim.year_world import YearOptions

distributed = pytest.importorskip("distributed")

MIX = FraudMix.parse("revoked_during=0.2,passback=0.05,pulled=0.04")


def _options(out: Path, scheduler: str | None = None) -> YearOptions:
    return YearOptions(
        out=out, days=2, scale=0.003, gates=10, workers=2, mix=MIX, scheduler=scheduler
    )


def test_a_dask_cluster_runs_the_same_days(tmp_path: Path) -> None:
    local = run_year(_options(tmp_path / "local"), io.StringIO(), io.StringIO())
    assert local["ok"]
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",  # a scheduler address as a user would give it
        dashboard_address=":0",
        silence_logs=50,
    ) as cluster:
        stream = io.StringIO()
        dasked = run_year(_options(tmp_path / "dask", cluster.scheduler_address), stream, stream)
    assert dasked["ok"], stream.getvalue()
    assert settlement_files(tmp_path / "dask") == settlement_files(tmp_path / "local")
    assert {k: v for k, v in dasked.items() if not k.endswith("seconds")} == {
        k: v for k, v in local.items() if not k.endswith("seconds")
    }


def test_an_unreachable_scheduler_is_one_clear_error(tmp_path: Path) -> None:
    from sim.world import SimError

    # (An address where nothing listens fails the same way, after the client's 20 s.)
    with pytest.raises(SimError, match="scheduler"):
        run_year(_options(tmp_path / "x", "not an address"), io.StringIO(), io.StringIO())
    assert not (tmp_path / "x").exists()  # nothing written
