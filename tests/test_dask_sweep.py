"""sweep.runner dask: the points on a Dask LocalCluster of two worker processes, against the threads.

The end-to-end test runs one sweep on threads and the same on a LocalCluster that the flow starts
(sweep.dask_address empty), both logging to one SQLite store (MLflow's SQLite sessions take writers
from several processes). The unit tests check the worker's cache and the section's checks.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.params import SweepParams
from helpers import make_checkpoint


def small_params(tmp_path: Path, **overrides) -> SweepParams:
    values = dict(out=str(tmp_path / "sweep.json"), table=str(tmp_path / "sweep.csv"), device="cpu", num_samples=48,
                  batch_size=48, z_exp=5.0, workers=2, stats_cache=str(tmp_path / "fid-stats"),
                  solvers=[dict(method="dopri5", tolerances=[1e-2]), dict(method="euler", steps=[3, 6]),
                           dict(method="heun2", steps=[2, 3])])
    return SweepParams(**{**values, **overrides})


@pytest.mark.slow
def test_local_cluster_gives_the_threads_table_loading_once_per_worker(prefect_test_env, tracking, digits, trained,
                                                                        tmp_path):
    from flows.sweep import run_sweep

    threads = run_sweep(small_params(tmp_path / "threads"), data_dir=str(digits), checkpoints=[str(trained)])
    params = small_params(tmp_path / "dask", runner="dask")
    started = time.time()
    result = run_sweep(params, data_dir=str(digits), checkpoints=[str(trained)])

    table = result.table
    assert list(table["solver"]) == list(threads.table["solver"]) and list(table["nfe"]) == list(threads.table["nfe"])
    for ours, theirs in zip(table["fid"], threads.table["fid"]):  # same prior draw, same network, same reference
        assert math.isfinite(ours) and ours == pytest.approx(theirs, rel=1e-6, abs=1e-6)
    assert table["kid"].tolist() == pytest.approx(threads.table["kid"].tolist(), rel=1e-6, abs=1e-9)

    parent = mlflow.get_run(result.run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["runner"] == "dask"
    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(table["run_id"])
    assert all(r.info.status == "FINISHED" and r.data.tags["attempt"] == "1" for r in children)
    pids = {r.data.tags["worker_pid"] for r in children}
    assert len(pids) <= 2 and str(os.getpid()) not in pids  # worker processes, not this one
    # Each worker loaded the checkpoint and built the scorer once, whatever number of points it ran.
    assert {(r.data.tags["worker_models_loaded"], r.data.tags["worker_scorers_built"]) for r in children} == {("1", "1")}
    # The reference statistics were computed once, by the flow, before any point started: one cache
    # file, written before the first child run began, never rewritten by a worker.
    (cache,) = Path(params.stats_cache).glob("*.npz")
    first_child = min(r.info.start_time for r in children) / 1000
    assert started <= cache.stat().st_mtime <= first_child


def test_worker_cache_loads_each_checkpoint_once_and_again_when_it_changes(tmp_path, monkeypatch):
    import flows.sweep_dask as sweep_dask

    monkeypatch.setattr(sweep_dask, "_CACHE", type(sweep_dask._CACHE)())
    monkeypatch.setattr(sweep_dask, "BUILT", type(sweep_dask.BUILT)())
    first = make_checkpoint(tmp_path / "a.pt")
    model = sweep_dask.worker_model(str(first), "cpu")
    assert sweep_dask.worker_model(str(first), "cpu") is model and sweep_dask.BUILT["model"] == 1
    make_checkpoint(first, seed=1)  # the same path, rewritten: a new model
    os.utime(first, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert sweep_dask.worker_model(str(first), "cpu") is not model and sweep_dask.BUILT["model"] == 2
    for seed in range(sweep_dask.CACHE_SIZE + 1):  # older entries go: the cache stays small
        sweep_dask.worker_model(str(make_checkpoint(tmp_path / f"m{seed}.pt", seed=seed)), "cpu")
    assert len(sweep_dask._CACHE) == sweep_dask.CACHE_SIZE


def test_a_retry_goes_on_in_the_run_of_the_lost_attempt(tracking, tmp_path):
    from pfgm.sampling import SamplerSettings as Sampler
    from flows.sweep_runs import Parent
    from pfgm.sweeps import Point
    from flows.sweep_dask import earlier_attempt

    client = MlflowClient()
    with mlflow.start_run() as run:
        parent = Parent(run_id=run.info.run_id, experiment_id=run.info.experiment_id)
    point = Point(checkpoint="ckpt", solver="Euler 3 steps", method="euler", sampler=Sampler(method="euler", steps=3))
    assert earlier_attempt(client, parent, point) == (None, 0)
    lost = client.create_run(parent.experiment_id, run_name=point.solver,
                             tags={"mlflow.parentRunId": parent.run_id, "solver": point.solver, "attempt": "1"})
    other = Point(checkpoint="ckpt", solver="Euler 6 steps", method="euler", sampler=Sampler(method="euler", steps=6))
    assert earlier_attempt(client, parent, point) == (lost.info.run_id, 1)  # its params never came
    assert earlier_attempt(client, parent, other) == (None, 0)
    client.log_param(lost.info.run_id, "checkpoint", "another")
    assert earlier_attempt(client, parent, point) == (None, 0)


@pytest.mark.parametrize("section, message", [
    (dict(dask_address="tcp://127.0.0.1:8786"), "needs runner: dask"),
    (dict(runner="dask", dask_address="127.0.0.1:8786"), "tcp://"),
    (dict(runner="ray"), "'threads' or 'dask'"),
])
def test_runner_settings_are_checked(tmp_path, section, message):
    from flows.params import ParamsError, load_section

    path = tmp_path / "params.yaml"
    path.write_text("sweep:\n" + "".join(f"  {key}: {value}\n" for key, value in section.items()))
    with pytest.raises(ParamsError, match=f"sweep.{next(reversed(section))}.*{message}"):
        load_section(path, "sweep")


def test_dask_runner_is_a_single_threaded_local_cluster_or_the_given_scheduler():
    from flows.sweep import task_runner

    local = task_runner(SweepParams(runner="dask", workers=3))
    assert str(local.cluster_class) == "distributed.LocalCluster"
    assert local.cluster_kwargs["n_workers"] == 3 and local.cluster_kwargs["threads_per_worker"] == 1
    assert local.cluster_kwargs["host"] == "127.0.0.1" and local.cluster_kwargs["processes"] is True
    remote = task_runner(SweepParams(runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert remote.address == "tcp://10.0.0.5:8786"
    assert type(task_runner(SweepParams())).__name__ == "ThreadPoolTaskRunner"
