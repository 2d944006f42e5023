"""Stage `sweep`: score a trained model under a grid of sampler settings, one MLflow run per point.

    python -m flows.sweep --params params.yaml

Reads `data` (data.out), `train` (train.out: the default checkpoint <train.out>/model.pt) and `sweep`.
For every checkpoint (sweep.checkpoints, or <train.out>/model.pt) and every sampler setting of the grid
(PFGM: each solver of sweep.solvers with each of its tolerances or step counts; PFGM++: EDM's Heun
sampler with each of sweep.heun_steps) the flow
  1. draws num_samples samples with pfgm.sampling.generate, seeded by sweep.seed, so every point
     starts from the same prior draw; measures the NFE of each batch's solve (mean and max) and the
     seconds per sample;
  2. scores them by FID and KID against the sweep.fid_reference split (pfgm.metrics.FidScorer, built
     as the evaluate stage builds it from sweep.fid_mode, sweep.quantize and sweep.stats_cache: the
     reference features are read from the cache or computed once per sweep and shared by every
     point); 2D points get no FID (NaN in the table);
  3. logs a child MLflow run (tag mlflow.parentRunId = the sweep's run) with the setting as params, the
     metrics and a samples grid.
The parent run (run name "sweep", tag stage=sweep) holds the sweep-wide params, the whole table as CSV
and markdown, and a summary; the table is also written to sweep.table and the summary (flat JSON for
`dvc metrics show`) to sweep.out. Table columns, in this order (more may follow at the end):
    checkpoint, solver, method, steps, rtol, atol, nfe, nfe_max, seconds_per_sample, fid, run_id
then objective, nonfinite_samples, kid, schedule, rho (the fixed-step grid).
`solver` is a label ("RK45 tol=1e-4", "Euler 20 steps", "DPM-Solver++(2M) [rho 5] 6 steps", "EDM Heun
18 steps"); `method` the pfgm.ode method (or "edm_heun" for EDM's sampler); rtol = atol for adaptive methods,
steps for fixed-step ones, the other empty.

A diverging solver is a result, not a crash: a point whose samples hold any non-finite value gets
fid NaN, its child run is tagged diverged=true (and logs nonfinite_samples), and the sweep goes on.
Unlike the evaluate stage, the sweep therefore does not fail on NaN metrics. Any other error fails
its point's child run (FAILED) and, once the other points have finished, the sweep (parent FAILED).

Concurrency: points run on Prefect's ThreadPoolTaskRunner (sweep.workers threads). Each child run is
written with MlflowClient and its explicit run id (MLflow's active-run stack is per thread). The
writes need no lock of ours: MLflow's SQLite sessions wait up to 20 s for SQLite's single write lock
(PRAGMA busy_timeout), and 6 threads writing 3,000 small records to one SQLite store here raised no
"database is locked" and lost nothing (tests/test_sweep_flow.py checks that no run or metric is
lost). The timed solves do take turns (`SAMPLING_LOCK`), so that seconds_per_sample measures one
solve rather than the contention between parallel ones; the scoring, drawing and logging of the
other points overlap them.
Invalid settings fail before any MLflow run, with a message naming the key.
"""
from __future__ import annotations

import json
import math
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.checks import check_sweep
from flows.cli import command_line
from flows.common import MODEL_FILE, check_model_fits, fid_scorer, resolve_features
from flows.params import ParamsError, SweepParams, load_sections, params_parser
from flows.tracking import configure, resolve_device
from pfgm import data as pdata
from pfgm import metrics as pmetrics
from pfgm.files import write_json
from pfgm.viz import samples_figure
from pfgm.ode import ADAPTIVE_METHODS
from pfgm.sampling import Generated, SamplerSettings, SolveDiverged, TrainedModel, generate, load_trained, sampler_for

#: The table's contract with its readers (the report flow): these columns, in this order, first.
COLUMNS = ("checkpoint", "solver", "method", "steps", "rtol", "atol", "nfe", "nfe_max", "seconds_per_sample",
           "fid", "run_id")
EXTRA_COLUMNS = ("objective", "nonfinite_samples", "kid", "schedule", "rho")
#: Display names of the solvers: euler and heun are the official steps in z, torchdiffeq's Euler and
#: Heun (heun2) step in ln z, dopri5 is RK45, edm_heun is EDM's Heun of PFGM++ models.
SOLVER_NAMES = {"dopri5": "RK45", "scipy_rk45": "scipy RK45", "euler": "Euler", "heun": "Heun",
                "dpmpp_2m": "DPM-Solver++(2M)", "euler_ln_z": "Euler (ln z)", "heun2": "Heun (ln z)",
                "edm_heun": "EDM Heun"}

SAMPLING_LOCK = threading.Lock()


@dataclass(frozen=True)
class Point:
    """One setting of the grid for one checkpoint; `method` is the solver actually used."""
    checkpoint: str
    solver: str
    method: str
    sampler: SamplerSettings


@dataclass(frozen=True)
class Plan:
    """What the checks before any run decided: the data's kind, FID features, models and points."""
    kind: str
    name: str
    features: str | None
    models: dict[str, TrainedModel]
    points: tuple[Point, ...]
    paths: dict[str, str] = field(default_factory=dict)  # label -> checkpoint file (Dask workers load it)


@dataclass(frozen=True)
class Parent:
    """The sweep's MLflow run, as the workers (threads or Dask processes) need it."""
    run_id: str
    experiment_id: str
    tracking_uri: str | None = None  # explicit: a Dask worker process has no configured tracking URI


@dataclass(frozen=True)
class SweepResult:
    """The table (one row per point, COLUMNS first), the summary written to sweep.out, the parent run."""
    table: pd.DataFrame
    summary: dict[str, Any]
    run_id: str


def short_float(value: float) -> str:
    """1e-4 -> "1e-4", 2.5e-3 -> "2.5e-3" (labels read better without Python's "1e-04")."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def solver_label(method: str, *, steps: int | None = None, tolerance: float | None = None,
                 rho: float | None = None) -> str:
    """A human label: "RK45 tol=1e-4", "Euler 20 steps", "DPM-Solver++(2M) [rho 5] 6 steps" (a power grid)."""
    name = SOLVER_NAMES.get(method, method) + (f" [rho {rho:g}]" if rho is not None else "")
    return f"{name} tol={short_float(tolerance)}" if steps is None else f"{name} {steps} steps"


def grid_samplers(params: SweepParams, objective: str) -> list[tuple[str, SamplerSettings]]:
    """(label, sampler) of every setting the sweep gives a model of this objective, in params order."""
    common = dict(z_min=params.z_min, z_exp=params.z_exp, clip_prior=params.clip_prior)
    if objective == "pfgmpp":
        return [(solver_label("edm_heun", steps=n), SamplerSettings(method="edm_heun", steps=n, **common))
                for n in params.heun_steps]
    settings = []
    for grid in params.solvers:
        if grid.method in ADAPTIVE_METHODS:
            settings += [(solver_label(grid.method, tolerance=tol),
                          SamplerSettings(method=grid.method, rtol=tol, atol=tol, **common)) for tol in grid.tolerances]
        else:
            settings += [(solver_label(grid.method, steps=n, rho=grid.rho),
                          SamplerSettings(method=grid.method, steps=n, schedule=grid.schedule, rho=grid.rho, **common))
                         for n in grid.steps]
    return settings


def check_inputs(params: SweepParams, data_dir: str, checkpoints: list[str],
                 labels: list[str] | None = None) -> Plan:
    """Every check that can fail before an MLflow run: files, features, Inception, the checkpoints."""
    if not checkpoints:
        raise ParamsError("sweep.checkpoints: nothing to sweep")
    labels = list(labels) if labels is not None else list(checkpoints)
    if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
        raise ValueError(f"need one distinct label per checkpoint, got {labels} for {checkpoints}")
    missing = [path for path in checkpoints if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"sweep.checkpoints (or train.out): no trained model at {missing} "
                                "(run the train stage first)")
    manifest = pdata.read_manifest(data_dir)
    features = resolve_features(params, manifest, section="sweep")
    if features == "inception":
        pmetrics.ensure_weights(params.fid_mode, params.inception_path, download=params.download_weights)
    device = resolve_device(params.device)
    models, points, paths = {}, [], {}
    for path, label in zip(checkpoints, labels):
        model = load_trained(path, device=device)
        check_model_fits(model, path, z_min=params.z_min, section="sweep", manifest=manifest, data_dir=data_dir)
        models[label], paths[label] = model, str(path)
        points += [Point(checkpoint=label, solver=name, method=sampler_for(model, sampler).method,
                         sampler=sampler) for name, sampler in grid_samplers(params, model.objective)]
    return Plan(kind=manifest["kind"], name=manifest["name"], features=features, models=models, points=tuple(points),
                paths=paths)


def solver_setting(point: Point) -> dict[str, Any]:
    """steps (fixed-step methods) or rtol and atol (adaptive ones); the keys that do not apply are None."""
    sampler = point.sampler
    if point.method in ADAPTIVE_METHODS:
        return dict(steps=None, rtol=sampler.rtol, atol=sampler.atol)
    return dict(steps=sampler.steps, rtol=None, atol=None)


def grid_setting(point: Point) -> dict[str, Any]:
    """schedule and rho of a fixed-step point (None for adaptive methods and EDM's own sigma grid)."""
    if point.method in ADAPTIVE_METHODS or point.method == "edm_heun":
        return dict(schedule=None, rho=None)
    return dict(schedule=point.sampler.schedule, rho=point.sampler.rho)


def point_params(point: Point, model: TrainedModel, params: SweepParams) -> dict[str, Any]:
    """The child run's params; settings that do not apply to the method (None) are left out."""
    sampler = point.sampler
    values = dict(solver=point.solver, method=point.method, **solver_setting(point), **grid_setting(point),
                  checkpoint=point.checkpoint,
                  objective=model.objective, num_samples=params.num_samples, batch_size=params.batch_size,
                  seed=params.seed, z_min=sampler.z_min, z_exp=sampler.z_exp, clip_prior=sampler.clip_prior)
    return {key: value for key, value in values.items() if value is not None}


def _start_child(client: MlflowClient, parent: Parent, point: Point, params: dict[str, Any],
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


def _finish_child(client: MlflowClient, run_id: str, metrics: dict[str, float], diverged: bool, figure) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "samples.png"
        figure.savefig(path)
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                         tags=[RunTag("diverged", str(diverged).lower())])
        client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")


def draw_point(point: Point, model: TrainedModel, params: SweepParams) -> tuple[Generated, str | None]:
    """The point's samples (num_samples, *S), timed while no other solve runs, and why the solver gave up.

    A solver that gives up (a diverged point, not a failed sweep) yields all-NaN samples, no NFE and
    the error message; other errors propagate.
    """
    generator = torch.Generator().manual_seed(params.seed)
    with SAMPLING_LOCK:
        start = time.perf_counter()
        try:
            return generate(model, params.num_samples, point.sampler, batch_size=params.batch_size,
                            generator=generator), None
        except SolveDiverged as err:
            x = torch.full((params.num_samples, *model.shape), math.nan)
            return Generated(x=x, nfe=[], seconds=time.perf_counter() - start), str(err)


def point_metrics(generated: Generated, scorer: pmetrics.FidScorer | None, num_samples: int) -> dict[str, float]:
    """nfe (mean over batches), nfe_max, seconds_per_sample, nonfinite_samples and (images) fid and kid."""
    nonfinite = (~torch.isfinite(generated.x)).flatten(1).any(1).sum()
    metrics = dict(nfe=float(np.mean(generated.nfe)) if generated.nfe else math.nan,
                   nfe_max=float(max(generated.nfe, default=math.nan)),
                   seconds_per_sample=generated.seconds / num_samples, nonfinite_samples=float(nonfinite))
    if scorer is not None:
        metrics |= scorer.sample_scores(generated.x)
    return metrics


def _row(point: Point, model: TrainedModel, metrics: dict[str, float], run_id: str) -> dict[str, Any]:
    return dict(checkpoint=point.checkpoint, solver=point.solver, method=point.method, **solver_setting(point),
                nfe=metrics["nfe"], nfe_max=metrics["nfe_max"], seconds_per_sample=metrics["seconds_per_sample"],
                fid=metrics.get("fid", math.nan), run_id=run_id, objective=model.objective,
                nonfinite_samples=int(metrics["nonfinite_samples"]), kid=metrics.get("kid", math.nan),
                **grid_setting(point))


def score_point(point: Point, model: TrainedModel, *, params: SweepParams, scorer: pmetrics.FidScorer | None,
                kind: str, parent: Parent, run_id: str | None = None,
                tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Sample, time and score one point in a child run of `parent` (new, or `run_id`); returns its table row."""
    client = MlflowClient(parent.tracking_uri)
    run_id = _start_child(client, parent, point, point_params(point, model, params), run_id=run_id, tags=tags)
    try:
        generated, gave_up = draw_point(point, model, params)
        if gave_up:
            client.set_tag(run_id, "solver_error", gave_up[:500])
        metrics = point_metrics(generated, scorer, params.num_samples)
        _finish_child(client, run_id, metrics, metrics["nonfinite_samples"] > 0, samples_figure(generated.x, kind))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return _row(point, model, metrics, run_id)


# Networks and tensors travel in memory: NO_CACHE spares Prefect hashing them.
@task(cache_policy=NO_CACHE, task_run_name="{point.solver}")
def evaluate_point(point: Point, model: TrainedModel, *, params: SweepParams, scorer: pmetrics.FidScorer | None,
                   kind: str, parent: Parent) -> dict[str, Any]:
    """score_point on a thread of this process, with the model and scorer the flow loaded."""
    return score_point(point, model, params=params, scorer=scorer, kind=kind, parent=parent)


def sweep_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> the table: COLUMNS then EXTRA_COLUMNS; steps as nullable integers (empty when adaptive)."""
    table = pd.DataFrame(rows, columns=[*COLUMNS, *EXTRA_COLUMNS])
    table["steps"] = table["steps"].astype("Int64")
    table["nfe_max"] = table["nfe_max"].astype(float).round().astype("Int64")
    for column in ("rtol", "atol", "fid", "nfe", "seconds_per_sample", "kid", "rho"):
        table[column] = table[column].astype(float)
    return table


def markdown_table(table: pd.DataFrame) -> str:
    """The table as GitHub markdown (numbers to 4 significant digits; empty cells for missing values)."""
    def cell(value: Any) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.astype(object).itertuples(index=False)]
    return "\n".join(lines) + "\n"


def summarize(table: pd.DataFrame, run_id: str) -> dict[str, Any]:
    """Flat summary for `dvc metrics show`: counts, and the best finite FID with its setting."""
    summary: dict[str, Any] = dict(points=len(table), diverged_points=int((table["nonfinite_samples"] > 0).sum()),
                                   nfe_min=float(table["nfe"].min()), run_id=run_id)
    scored = table[np.isfinite(table["fid"])]
    if len(scored):
        best = scored.loc[scored["fid"].idxmin()]
        summary.update(fid_best=float(best["fid"]), fid_best_solver=best["solver"], fid_best_nfe=float(best["nfe"]),
                       fid_best_seconds_per_sample=float(best["seconds_per_sample"]),
                       fid_best_checkpoint=best["checkpoint"])
    return summary


def _log_parent(client: MlflowClient, parent: Parent, table: pd.DataFrame, summary: dict[str, Any]) -> None:
    numeric = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
    now = int(time.time() * 1000)
    with tempfile.TemporaryDirectory() as folder:
        table.to_csv(Path(folder) / "sweep.csv", index=False)
        (Path(folder) / "sweep.md").write_text(markdown_table(table))
        client.log_batch(parent.run_id, metrics=[Metric(k, v, now, 0) for k, v in numeric.items()])
        client.log_artifact(parent.run_id, str(Path(folder) / "sweep.csv"))
        client.log_artifact(parent.run_id, str(Path(folder) / "sweep.md"))


def _sweep_params(params: SweepParams, plan: Plan, data_dir: str) -> dict[str, Any]:
    return dict(num_samples=params.num_samples, batch_size=params.batch_size, seed=params.seed,
                z_min=params.z_min, z_exp=params.z_exp, clip_prior=params.clip_prior, workers=params.workers,
                runner=params.runner, dask_address=params.dask_address or None, features=plan.features, data_dir=data_dir, checkpoints=",".join(plan.models),
                points=len(plan.points), **_fid_params(params, plan.features))


def _fid_params(params: SweepParams, features: str | None) -> dict[str, Any]:
    """How every point's FID is measured (the Inception mode does not apply to the digits CNN)."""
    if features is None:
        return {}
    return dict(fid_reference=params.fid_reference, fid_mode=params.fid_mode if features == "inception" else None,
                quantize=params.quantize, stats_cache=params.stats_cache)


def _run_points(plan: Plan, params: SweepParams, scorer: pmetrics.FidScorer | None, parent: Parent,
                data_dir: str) -> list[dict[str, Any]]:
    """Submit every point, wait for all of them (none is left running), then raise the first failure.

    Dask workers get paths, not the loaded model and scorer: each loads them once (flows.sweep_dask).
    """
    if params.runner == "dask":
        from flows.sweep_dask import submit_points

        futures = submit_points(plan, params, parent, data_dir)
    else:
        futures = [evaluate_point.submit(point, plan.models[point.checkpoint], params=params, scorer=scorer,
                                         kind=plan.kind, parent=parent) for point in plan.points]
    wait(futures)
    return [future.result() for future in futures]


@flow(name="sweep")
def sweep(params: SweepParams, data_dir: str, checkpoints: list[str], labels: list[str] | None = None,
          tags: dict[str, str] | None = None) -> SweepResult:
    """Sweep the sampler grid of `params` over `checkpoints` against the prepared data at <data_dir>.

    `labels` name the checkpoints in the table and the runs (default: their paths); `tags` go on the
    parent run. Run with `run_sweep` to get sweep.workers threads. Returns the table, the summary
    (also written to params.out, the table to params.table) and the parent run id.
    """
    logger = get_run_logger()
    plan = check_inputs(params, data_dir, checkpoints, labels)
    if plan.features is None:
        logger.info("%s is 2D points: no FID (no meaningful feature space); NFE and timing only", plan.name)
    scorer = None
    if plan.features is not None:
        scorer = fid_scorer(params, plan.features, data_dir)
    client = MlflowClient()
    with mlflow.start_run(run_name="sweep", tags={"stage": "sweep", "data": plan.name, **(tags or {})}) as run:
        parent = Parent(run_id=run.info.run_id, experiment_id=run.info.experiment_id,
                        tracking_uri=mlflow.get_tracking_uri())
        mlflow.log_params(_sweep_params(params, plan, data_dir))
        table = sweep_table(_run_points(plan, params, scorer, parent, data_dir))
        summary = summarize(table, parent.run_id)
        _log_parent(client, parent, table, summary)
    Path(params.table).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(params.table, index=False)
    write_json(params.out, summary)
    logger.info("sweep of %d points:\n%s", len(table), markdown_table(table[list(COLUMNS[:-1])]))
    return SweepResult(table=table, summary=summary, run_id=parent.run_id)


def run_sweep(params: SweepParams, data_dir: str, checkpoints: list[str], labels: list[str] | None = None,
              tags: dict[str, str] | None = None) -> SweepResult:
    """The sweep flow on its task runner: params.workers threads, or Dask (sweep.runner)."""
    return sweep.with_options(task_runner=task_runner(params))(params, data_dir=data_dir, checkpoints=checkpoints,
                                                  labels=labels, tags=tags)


def task_runner(params: SweepParams):
    """ThreadPoolTaskRunner of params.workers threads, or a DaskTaskRunner (flows.sweep_dask)."""
    if params.runner == "dask":
        from flows.sweep_dask import dask_task_runner

        return dask_task_runner(params)
    return ThreadPoolTaskRunner(max_workers=params.workers)


def default_checkpoints(params: SweepParams, train_out: str) -> list[str]:
    """sweep.checkpoints, or <train.out>/model.pt when it is empty."""
    return list(params.checkpoints) or [str(Path(train_out) / MODEL_FILE)]


def main(argv: list[str] | None = None) -> SweepResult:
    """Command line: read the data, train and sweep sections, run the sweep, print the summary."""
    args = params_parser(__doc__).parse_args(argv)
    data, train, params = load_sections(args.params, "data", "train", "sweep")
    check_sweep(data, train, params)  # before MLflow and Prefect start: bad input is one line
    configure()
    result = run_sweep(params, data_dir=data.out, checkpoints=default_checkpoints(params, train.out))
    print(json.dumps(result.summary, sort_keys=True))
    return result


if __name__ == "__main__":
    command_line(main)
