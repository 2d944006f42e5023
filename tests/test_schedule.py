"""flows.schedule: the champion's sweep as a Prefect deployment on a cron schedule, run by a Runner."""
from __future__ import annotations

import asyncio
import signal
import tempfile
from pathlib import Path

import mlflow
import pytest

from flows.registry import log_pyfunc, register
from flows.tracking import configure
from helpers import make_checkpoint

CRON = "0 3 * * *"


@pytest.fixture
def tracking(store, tmp_path, monkeypatch):
    """The module's store; temporary files (the Runner's, the flow's) stay under tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    configure(root=store)
    yield store
    while mlflow.active_run() is not None:
        mlflow.end_run()


def write_params(tmp_path: Path, digits: Path, model_name: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(f"data:\n  out: {digits}\nevaluate:\n  model_name: {model_name}\n"
                    "sweep:\n  device: cpu\n  num_samples: 16\n  batch_size: 16\n  workers: 2\n"
                    "  solvers:\n    - {method: euler, steps: [2, 3]}\n")
    return path


def register_champion(checkpoint: Path, model_name: str) -> str:
    """Log `checkpoint` as the pyfunc model of a finished run and register it as the champion."""
    with mlflow.start_run(run_name="evaluate") as run:
        mlflow.log_metric("fid", 1.0)
        info = log_pyfunc(checkpoint)
    version, promoted = register(info.model_uri, model_name, run_id=run.info.run_id, metrics={"fid": 1.0},
                                 champion_metric="fid")
    assert promoted
    return str(version.version)


def test_no_champion_names_the_model(prefect_test_env, tracking, digits, tmp_path):
    from flows.schedule import evaluate_champion

    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    with pytest.raises(ValueError, match="'schedule-nobody'.*run the pipeline first"):
        evaluate_champion(params_path=str(write_params(tmp_path, digits, "schedule-nobody")))
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before


def test_serve_command_serves_the_flow_on_its_cron(tracking, tmp_path, monkeypatch):
    import flows.schedule as schedule

    served = {}
    monkeypatch.setattr(schedule.evaluate_champion, "serve", lambda **kwargs: served.update(kwargs))
    schedule.main(["serve", "--params", "params.yaml", "--cron", "*/5 * * * *"])
    assert served["name"] == "nightly" and served["cron"] == "*/5 * * * *"
    assert served["parameters"] == {"params_path": str(tmp_path / "params.yaml"), "root": str(tmp_path)}


def test_deployment_on_cron_runs_the_champion_sweep(prefect_test_env, tracking, digits, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.runner import Runner

    from flows.schedule import DEPLOYMENT, deployment_parameters, evaluate_champion

    version = register_champion(make_checkpoint(tmp_path / "model.pt"), "schedule-champion")
    params = write_params(tmp_path, digits, "schedule-champion")

    # What `python -m flows.schedule serve` does, with a runner that stops after one poll.
    runner = Runner(name="test-schedule", pause_on_shutdown=False)
    deployment_id = runner.add_flow(evaluate_champion, name=DEPLOYMENT, cron=CRON,
                                    parameters=deployment_parameters(str(params), root=str(tracking)))

    async def stored_deployment():
        async with get_client() as client:
            return await client.read_deployment(deployment_id)

    deployment = asyncio.run(stored_deployment())
    assert [s.schedule.cron for s in deployment.schedules] == [CRON] and deployment.schedules[0].active
    assert deployment.parameters["params_path"] == str(params)

    flow_run = run_deployment(deployment_id, timeout=0, as_subflow=False)
    sigterm = signal.getsignal(signal.SIGTERM)  # the runner installs its own handler
    try:
        asyncio.run(runner.start(run_once=True))  # runs the due flow run in a subprocess, waits for it
    finally:
        signal.signal(signal.SIGTERM, sigterm)

    async def finished_run():
        async with get_client() as client:
            return await client.read_flow_run(flow_run.id)

    assert asyncio.run(finished_run()).state.type == StateType.COMPLETED
    parents = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                 filter_string=f"tags.stage = 'sweep' and tags.model_version = '{version}' "
                                               "and tags.model_name = 'schedule-champion'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    points = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert sorted(r.info.run_name for r in points) == ["Euler 2 steps", "Euler 3 steps"]
    assert all(r.data.params["checkpoint"] == f"models:/schedule-champion/{version}" for r in points)
    assert not (tmp_path / "metrics").exists()  # the schedule leaves the DVC outputs alone
