"""Stage `sweep`: score a trained model under a grid of sampler settings, one MLflow run per point.

    python -m flows.sweep --params params.yaml

Reads `data` (data.out), `train` (train.out: the default checkpoint <train.out>/model.pt) and `sweep`.
For every checkpoint (sweep.checkpoints, or <train.out>/model.pt) and every sampler setting of the grid
(PFGM: each solver of sweep.solvers with each of its tolerances or step counts; PFGM++: EDM's Heun
sampler with each of sweep.heun_steps) the flow
  1. draws num_samples samples (pfgm.sweeps.draw), seeded by sweep.seed, so every point starts from
     the same prior draw; measures the NFE of each batch's solve (mean and max) and the seconds per sample;
  2. scores them by FID and KID against the sweep.fid_reference split (pfgm.metrics.FidScorer, built
     as the evaluate stage builds it from sweep.fid_mode, sweep.quantize and sweep.stats_cache: the
     reference features are read from the cache or computed once per sweep and shared by every
     point); 2D points get no FID (NaN in the table);
  3. logs a child MLflow run with the setting as params, the metrics and a samples grid (flows.sweep_runs).
The parent run (run name "sweep", tag stage=sweep) holds the sweep-wide params, the whole table as CSV
and markdown, and a summary; the table (its columns: pfgm.sweeps) is also written to sweep.table and
the summary (flat JSON for `dvc metrics show`) to sweep.out.

A diverging solver is a result, not a crash: its point gets fid NaN, its child run is tagged
diverged=true, and the sweep goes on (unlike the evaluate stage, the sweep does not fail on NaN
metrics). Any other error fails its point's child run and, once the other points have finished, the
sweep (parent FAILED). Points run on sweep.workers threads, or on Dask worker processes
(sweep.runner: dask, flows.sweep_dask). Invalid settings fail before any MLflow run, naming the key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.checks import check_sweep
from flows.cli import command_line
from flows.common import MODEL_FILE, check_model_fits, fid_scorer, resolve_features
from flows.params import ParamsError, SweepParams, load_sections, params_parser
from flows.sweep_runs import Parent, log_parent, score_point, sweep_params
from flows.tracking import configure, resolve_device
from pfgm import data as pdata
from pfgm import metrics as pmetrics
from pfgm import sweeps as psweeps
from pfgm.files import write_json
from pfgm.sampling import SamplerSettings, TrainedModel, load_trained
from pfgm.sweeps import COLUMNS, Plan, Point


@dataclass(frozen=True)
class SweepResult:
    """The table (one row per point, COLUMNS first), the summary written to sweep.out, the parent run."""
    table: pd.DataFrame
    summary: dict[str, Any]
    run_id: str


def grid_samplers(params: SweepParams, objective: str) -> psweeps.Labelled:
    """(label, sampler) of every setting the sweep gives a model of this objective, in params order."""
    base = SamplerSettings(z_min=params.z_min, z_exp=params.z_exp, clip_prior=params.clip_prior)
    if objective == "pfgmpp":
        return psweeps.edm_heun_settings(params.heun_steps, base)
    return [setting for grid in params.solvers
            for setting in psweeps.solver_settings(grid.method, base, tolerances=grid.tolerances, steps=grid.steps,
                                                   schedule=grid.schedule, rho=grid.rho)]


def check_inputs(params: SweepParams, data_dir: str, checkpoints: list[str],
                 labels: list[str] | None = None) -> Plan:
    """Every check that can fail before an MLflow run: files, features, Inception, the checkpoints."""
    if not checkpoints:
        raise ParamsError("sweep.checkpoints: nothing to sweep")
    labels = psweeps.checkpoint_labels(checkpoints, labels)
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
        points += psweeps.model_points(label, model, grid_samplers(params, model.objective))
    return Plan(kind=manifest["kind"], name=manifest["name"], features=features, models=models, points=tuple(points),
                paths=paths)


# Networks and tensors travel in memory: NO_CACHE spares Prefect hashing them.
@task(cache_policy=NO_CACHE, task_run_name="{point.solver}")
def evaluate_point(point: Point, model: TrainedModel, *, params: SweepParams, scorer: pmetrics.FidScorer | None,
                   kind: str, parent: Parent) -> dict[str, Any]:
    """score_point on a thread of this process, with the model and scorer the flow loaded."""
    return score_point(point, model, params=params, scorer=scorer, kind=kind, parent=parent)


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
    scorer = fid_scorer(params, plan.features, data_dir) if plan.features is not None else None
    client = MlflowClient()
    with mlflow.start_run(run_name="sweep", tags={"stage": "sweep", "data": plan.name, **(tags or {})}) as run:
        parent = Parent(run_id=run.info.run_id, experiment_id=run.info.experiment_id,
                        tracking_uri=mlflow.get_tracking_uri())
        mlflow.log_params(sweep_params(params, plan, data_dir))
        table = psweeps.sweep_table(_run_points(plan, params, scorer, parent, data_dir))
        summary = psweeps.summarize(table, parent.run_id)
        log_parent(client, parent, table, summary)
    Path(params.table).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(params.table, index=False)
    write_json(params.out, summary)
    logger.info("sweep of %d points:\n%s", len(table), psweeps.markdown_table(table[list(COLUMNS[:-1])]))
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
