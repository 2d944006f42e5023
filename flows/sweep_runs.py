"""The sweep's MLflow runs: one child run per point under the sweep's parent run (flows.sweep).

`score_point` is one point from start to end, wherever it runs (a thread of the flow, or a Dask
worker process, flows.sweep_dask): it opens the child run (tag mlflow.parentRunId = the sweep's run)
with the setting as params, draws and scores the point with pfgm.sweeps, logs the metrics and a
samples grid, and returns the point's table row. A point whose solver gives up is a result (tag
diverged=true, solver_error); any other error ends its child run FAILED and propagates.

Concurrency: each child run is written with MlflowClient and its explicit run id (MLflow's active-run
stack is per thread). The writes need no lock of ours: MLflow's SQLite sessions wait up to 20 s for
SQLite's single write lock (PRAGMA busy_timeout), and 6 threads writing 3,000 small records to one
SQLite store here raised no "database is locked" and lost nothing (tests/test_sweep_flow.py checks
that no run or metric is lost). The timed solves do take turns (`SAMPLING_LOCK`), so that
seconds_per_sample measures one solve rather than the contention between parallel ones; the scoring,
drawing and logging of the other points overlap them.
"""
from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from flows.params import SweepParams
from pfgm import sweeps as psweeps
from pfgm.metrics import FidScorer
from pfgm.sampling import TrainedModel
from pfgm.sweeps import Plan, Point
from pfgm.viz import samples_figure

SAMPLING_LOCK = threading.Lock()


@dataclass(frozen=True)
class Parent:
    """The sweep's MLflow run, as the workers (threads or Dask processes) need it."""
    run_id: str
    experiment_id: str
    tracking_uri: str | None = None  # explicit: a Dask worker process has no configured tracking URI


def point_params(point: Point, model: TrainedModel, params: SweepParams) -> dict[str, Any]:
    """The child run's params; settings that do not apply to the method (None) are left out."""
    sampler = point.sampler
    values = dict(solver=point.solver, method=point.method, **psweeps.solver_setting(point),
                  **psweeps.grid_setting(point), checkpoint=point.checkpoint,
                  objective=model.objective, num_samples=params.num_samples, batch_size=params.batch_size,
                  seed=params.seed, z_min=sampler.z_min, z_exp=sampler.z_exp, clip_prior=sampler.clip_prior)
    return {key: value for key, value in values.items() if value is not None}


def sweep_params(params: SweepParams, plan: Plan, data_dir: str) -> dict[str, Any]:
    """The parent run's params: the sweep-wide settings, the checkpoints' labels and the number of points."""
    return dict(num_samples=params.num_samples, batch_size=params.batch_size, seed=params.seed,
                z_min=params.z_min, z_exp=params.z_exp, clip_prior=params.clip_prior, workers=params.workers,
                runner=params.runner, dask_address=params.dask_address or None, features=plan.features,
                data_dir=data_dir, checkpoints=",".join(plan.models), points=len(plan.points),
                **_fid_params(params, plan.features))


def _fid_params(params: SweepParams, features: str | None) -> dict[str, Any]:
    """How every point's FID is measured (the Inception mode does not apply to the digits CNN)."""
    if features is None:
        return {}
    return dict(fid_reference=params.fid_reference, fid_mode=params.fid_mode if features == "inception" else None,
                quantize=params.quantize, stats_cache=params.stats_cache)


def start_child(client: MlflowClient, parent: Parent, point: Point, params: dict[str, Any],
                run_id: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Create the point's child run, or go on in `run_id` (a retry after a lost Dask worker): the same
    params again (MLflow accepts an identical value) and the new tags."""
    tags = {"mlflow.parentRunId": parent.run_id, "stage": "sweep-point", "solver": point.solver, **(tags or {})}
    if run_id is None:
        run_id = client.create_run(parent.experiment_id, run_name=point.solver, tags=tags).info.run_id
    else:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run_id


def finish_child(client: MlflowClient, run_id: str, metrics: dict[str, float], diverged: bool, figure) -> None:
    """Log the point's metrics, its diverged tag and its samples grid (samples.png), and end it FINISHED."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "samples.png"
        figure.savefig(path)
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                         tags=[RunTag("diverged", str(diverged).lower())])
        client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")


def log_parent(client: MlflowClient, parent: Parent, table: pd.DataFrame, summary: dict[str, Any]) -> None:
    """The parent run's numeric summary as metrics, and the table as sweep.csv and sweep.md."""
    numeric = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
    now = int(time.time() * 1000)
    with tempfile.TemporaryDirectory() as folder:
        table.to_csv(Path(folder) / "sweep.csv", index=False)
        (Path(folder) / "sweep.md").write_text(psweeps.markdown_table(table))
        client.log_batch(parent.run_id, metrics=[Metric(k, v, now, 0) for k, v in numeric.items()])
        client.log_artifact(parent.run_id, str(Path(folder) / "sweep.csv"))
        client.log_artifact(parent.run_id, str(Path(folder) / "sweep.md"))


def score_point(point: Point, model: TrainedModel, *, params: SweepParams, scorer: FidScorer | None,
                kind: str, parent: Parent, run_id: str | None = None,
                tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Sample, time and score one point in a child run of `parent` (new, or `run_id`); returns its table row."""
    client = MlflowClient(parent.tracking_uri)
    run_id = start_child(client, parent, point, point_params(point, model, params), run_id=run_id, tags=tags)
    try:
        with SAMPLING_LOCK:
            generated, gave_up = psweeps.draw(model, point.sampler, num_samples=params.num_samples,
                                              batch_size=params.batch_size, seed=params.seed)
        if gave_up:
            client.set_tag(run_id, "solver_error", gave_up[:500])
        metrics = psweeps.point_metrics(generated, scorer, params.num_samples)
        finish_child(client, run_id, metrics, metrics["nonfinite_samples"] > 0, samples_figure(generated.x, kind))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return psweeps.table_row(point, model.objective, metrics, run_id)
