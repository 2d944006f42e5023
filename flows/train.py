"""Stage `train`: train a field network on the prepared data as configured by params.yaml `train`.

    python -m flows.train --params params.yaml [--history metrics/train_history.csv]

A Prefect flow over pfgm.training, tracked in one MLflow run. Checkpoints go to `train.out` every
`checkpoint_every` steps and the final model to `train.out/model.pt` (same format). Re-run after an
interruption, the flow finds its latest checkpoint of the same fingerprint, restores it and continues
the same MLflow run; a different fingerprint (params or data changed) deletes the stale checkpoints
and starts a new run. Returns a summary: run id, model path, final loss, steps, hyperparameters.

The checkpoint `metadata` (what later stages may rely on):
    hyperparameters  {M, z_max, upper_norm} for the data (pfgm.perturb.hyperparameters; M from
                     train.M when given), plus gamma for pfgm and D for pfgmpp
    objective        "pfgm" | "pfgmpp"
    data             {name, sha256 (of train.npy, from the manifest), kind, shape}
    fingerprint      sha256 of the train section (less `out`) and the data's sha256
    mlflow_run_id    the run that trained it

Metrics (loss, grad_norm, images_per_s, lr per step) are held in memory and written with
`MlflowClient.log_batch` just before each checkpoint is written, at the end, and on failure. Each batch
also sets the tag `pfgm.logged_through` (its last step), and records at or below it are never
written again, so the steps a resumed run re-trains are logged once and the history has no gap.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from torch import Tensor

from flows.checks import check_train
from flows.cli import command_line
from flows.common import MODEL_FILE
from flows.params import DataParams, TrainParams, load_section, params_parser
from flows.tracking import configure, log_dataset
from flows.train_runs import (Resume, RunTracker, clear_stale, describe_run, fail_run, find_resume, open_run,
                              refuse_imported, setup, write_history)
from pfgm import data as pdata
from pfgm import training
from pfgm.training import Setup, TrainConfig, TrainState
from pfgm.training.preview import make_sampler


# Tensors, networks and states travel between tasks in memory: hashing them for Prefect's cache
# keys would cost a pass over them for nothing, hence NO_CACHE.
@task(cache_policy=NO_CACHE)
def load_charges(data: DataParams) -> tuple[Tensor, dict]:
    """The train split of the prepared folder data.out (checksum verified), (B, *S) in [-1, 1], and its manifest."""
    return pdata.load_split(data.out, "train"), pdata.read_manifest(data.out)


@task(cache_policy=NO_CACHE)
def fit(state: TrainState, loss_fn, charges: Tensor, config: TrainConfig, out: str, metadata: dict,
        tracker: RunTracker) -> list[dict]:
    """Train from state.step up to config.steps, checkpointing into `out`; returns this call's history."""
    return training.train(state, loss_fn, charges, config, checkpoint_dir=out, metadata=metadata,
                          progress=sys.stderr.isatty(), on_step=tracker.on_step,
                          on_checkpoint=tracker.on_checkpoint)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def log_model(run_id: str, path: str) -> None:
    """Upload the final checkpoint as the run's artifact checkpoint/model.pt (the upload can fail)."""
    MlflowClient().log_artifact(run_id, path, "checkpoint")


def fit_and_save(state: TrainState, built: Setup, charges: Tensor, out: Path, tracker: RunTracker
                 ) -> tuple[list[dict], Path]:
    """Train up to the configured steps, then write out/model.pt and upload it to the run.
    Returns this call's history and the model's path."""
    metadata = {**built.metadata, "mlflow_run_id": tracker.run_id}
    trained = fit(state, built.loss_fn, charges, built.config, str(out), metadata, tracker)
    tracker.finish(state.step)
    model = training.save_checkpoint(out / MODEL_FILE, state, config=built.config, metadata=metadata)
    log_model(tracker.run_id, str(model))
    return trained, model


def _summary(run_id: str, model: Path, loss: float | None, steps: int, hp: dict, history_length: int,
             resumed_from: int | None) -> dict[str, Any]:
    return dict(run_id=run_id, model=str(model), loss=loss, steps=steps, hyperparameters=hp,
                history_length=history_length, resumed_from=resumed_from)


def already_trained(client: MlflowClient, resume: Resume, hp: dict, history: str | None) -> dict[str, Any]:
    """The summary of a complete run (model.pt written, run FINISHED), its history written when asked."""
    run_id = resume.run.info.run_id
    get_run_logger().info("%s is complete (run %s): nothing to do", resume.path, run_id)
    if history is not None:
        write_history(client, run_id, Path(history))
    return _summary(run_id, resume.path, resume.run.data.metrics.get("loss"), int(resume.payload["step"]), hp, 0,
                    None)


@flow(name="train-model")
def train(params: TrainParams, data: DataParams, root: str = ".", history: str | None = None) -> dict[str, Any]:
    """Train as configured by the `train` section on the prepared folder `data.out`.

    root: where the default MLflow store lives (`flows.tracking.configure`).
    history: when given, a CSV of the run's whole metric history is written there (a DVC plot).
    Returns run_id, model (path of model.pt), loss (final), steps, hyperparameters, history_length
    (steps trained by this call) and resumed_from (the checkpoint step resumed from, or None).
    """
    charges, manifest = load_charges(data)
    built = setup(params, charges, manifest)  # every ParamsError comes before any run exists
    out = Path(params.out)
    refuse_imported(out)
    experiment_id = configure(root)
    client = MlflowClient()
    resume = find_resume(out, built.metadata["fingerprint"], client, experiment_id)
    if resume is not None and resume.complete:
        return already_trained(client, resume, built.hyperparameters, history)
    if resume is None:
        clear_stale(out)
    charges = charges.to(built.device)

    state, run_id, logged_through = open_run(params, built, manifest, resume)
    resumed_from = state.step if resume is not None else None
    sampler = make_sampler(state, built.hyperparameters, params.objective, manifest, params.seed)
    tracker = RunTracker(client, run_id, logged_through=logged_through, config=built.config,
                         sample_every=params.sample_every, sampler=sampler, kind=manifest["kind"])
    try:
        describe_run(params, built, manifest, resume, state.step)
        log_dataset(data.out, manifest, context="training")
        trained, model = fit_and_save(state, built, charges, out, tracker)
        if history is not None:
            write_history(client, run_id, Path(history))
    except BaseException as err:
        fail_run(tracker, err)
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    loss = trained[-1]["loss"] if trained else client.get_run(run_id).data.metrics.get("loss")
    get_run_logger().info("trained %d steps (run %s): final loss %.4g; wrote %s", len(trained), run_id, loss, model)
    return _summary(run_id, model, loss, state.step, built.hyperparameters, len(trained), resumed_from)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: read params.yaml's `train` and `data` sections, run the flow, print the summary."""
    parser = params_parser(__doc__)
    parser.add_argument("--history", default=None, help="also write the metric history as CSV to this file")
    args = parser.parse_args(argv)
    params = load_section(args.params, "train")
    data = load_section(args.params, "data")
    check_train(params, data)  # before Prefect starts: bad input is one line
    result = train(params, data, history=args.history)
    print(json.dumps(result, sort_keys=True))
    return result


if __name__ == "__main__":
    command_line(main)
