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

import csv
import dataclasses
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.entities import Metric, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from torch import Tensor, nn

from flows.checks import check_train
from flows.cli import command_line
from flows.common import MODEL_FILE
from flows.params import DataParams, ParamsError, TrainParams, load_section, params_parser
from flows.tracking import configure, log_dataset, resolve_device, train_run_name
from pfgm import data as pdata
from pfgm import training, viz
from pfgm.files import atomic_write
from pfgm.sampling import TrainedModel, preview_settings, sampler_for
from pfgm.training import DivergenceError, PFGMLoss, PFGMppLoss, RunError, RunSpec, TrainConfig, TrainState

METRICS = ("loss", "grad_norm", "images_per_s", "lr")
WATERMARK = "pfgm.logged_through"  # tag: the last step whose metrics the run holds
RESUMED = "pfgm.resumed_from"  # tag: the checkpoint steps the run was resumed from, comma-separated
STEPS_PER_BATCH = 200  # 4 metrics + 1 tag per step stays under MLflow's 1000 entities per log_batch
SAMPLE_IMAGES, SAMPLE_POINTS = 16, 512


# ---------------------------------------------------------------------------------------------------
# Plain functions: settings from params, checked before anything is tracked or written.

def _invalid(key: str, message: str) -> ParamsError:
    return ParamsError(f"invalid params: {key}: {message}")


def train_config(params: TrainParams) -> TrainConfig:
    """TrainConfig from the train section, key for key."""
    values = {field.name: getattr(params, field.name) for field in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**{**values, "betas": tuple(values["betas"])})
    except ValueError as err:  # its messages already name the key: "train.lr must be ..."
        raise ParamsError(f"invalid params: {err}") from None


def fingerprint(params: TrainParams, data_sha256: str) -> str:
    """sha256 of the train section (less `out`: where, not what) and the training data's sha256."""
    section = params.model_dump(mode="json", exclude={"out"})
    text = json.dumps({"train": section, "data_sha256": data_sha256}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def flat_params(params: TrainParams, hp: dict, data_name: str) -> dict[str, str]:
    """MLflow params: the train section flattened (network_kwargs.hidden, ...), hyperparameters.*, data.name."""
    section = params.model_dump(mode="json")
    kwargs = section.pop("network_kwargs")
    flat = {**section, **{f"network_kwargs.{k}": v for k, v in kwargs.items()},
            **{f"hyperparameters.{k}": v for k, v in hp.items()}, "data.name": data_name}
    return {key: str(value) for key, value in flat.items()}


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a run is built from, checked before any MLflow run exists."""
    net: nn.Module
    config: TrainConfig
    loss_fn: PFGMLoss | PFGMppLoss
    hyperparameters: dict
    device: torch.device
    metadata: dict  # the checkpoint metadata, less mlflow_run_id


def setup(params: TrainParams, charges: Tensor, manifest: dict) -> Setup:
    """Validate the section against the data and build network, loss and config (seeded here, once).

    charges: (B, *S) training data in [-1, 1]. Raises ParamsError naming the key.
    """
    try:
        device = resolve_device(params.device)
    except (RuntimeError, ValueError) as err:
        raise _invalid("train.device", str(err)) from None
    config = train_config(params)
    try:
        training.check_data(params.batch_size, params.flip, manifest)
        run = training.build_run(RunSpec.from_attributes(params), charges, manifest, seed=params.seed)
    except RunError as err:
        raise _invalid(f"train.{err.key}", err.message) from None
    data_sha256 = manifest["files"]["train.npy"]
    metadata = dict(hyperparameters=run.hyperparameters, objective=params.objective,
                    data=dict(name=manifest["name"], sha256=data_sha256, kind=manifest["kind"],
                              shape=list(manifest["shape"])),
                    fingerprint=fingerprint(params, data_sha256))
    return Setup(net=run.net, config=config, loss_fn=run.loss_fn, hyperparameters=run.hyperparameters,
                 device=device, metadata=metadata)


# ---------------------------------------------------------------------------------------------------
# Plain functions: checkpoints of this run in train.out.

@dataclasses.dataclass(frozen=True)
class Resume:
    """The newest checkpoint of this fingerprint in train.out, loaded, and the MLflow run that wrote it."""
    path: Path
    payload: dict
    run: Run

    @property
    def complete(self) -> bool:
        """model.pt is written and its run FINISHED: nothing is left to do."""
        return self.path.name == MODEL_FILE and self.run.info.status == "FINISHED"


def find_resume(out: Path, fingerprint: str, client: MlflowClient, experiment_id: str) -> Resume | None:
    """What to continue in `out` (model.pt first, else the latest checkpoint), or None when its
    fingerprint differs or its run no longer exists (undeleted, in this experiment)."""
    for path in (out / MODEL_FILE, training.latest_checkpoint(out)):
        if path is not None and path.exists():
            payload = training.load_checkpoint(path)
            metadata = json.loads(payload["metadata"])
            if metadata.get("fingerprint") != fingerprint or not metadata.get("mlflow_run_id"):
                return None
            try:
                run = client.get_run(metadata["mlflow_run_id"])
            except MlflowException:
                return None
            if run.info.lifecycle_stage != "active" or run.info.experiment_id != experiment_id:
                return None
            return Resume(path=path, payload=payload, run=run)
    return None


def refuse_imported(out: Path) -> None:
    """ValueError when out/model.pt is an imported official checkpoint (flows.import_official):
    training there would replace the released weights with a fresh run's."""
    path = out / MODEL_FILE
    if path.is_file() and "official" in json.loads(training.load_checkpoint(path).get("metadata") or "{}"):
        raise ParamsError(f"invalid params: train.out: {path} holds an imported official checkpoint; training "
                          "would replace it. Evaluate or sweep that folder, and train into another train.out")


def clear_stale(out: Path) -> list[Path]:
    """Delete our files in `out` (model.pt, checkpoints, leftover temporaries); return what went."""
    stale = [p for pattern in (MODEL_FILE, "checkpoint_*.pt", f".{MODEL_FILE}.*.tmp", ".checkpoint_*.tmp")
             for p in out.glob(pattern)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def open_run(params: TrainParams, built: Setup, manifest: dict, resume: Resume | None
             ) -> tuple[TrainState, str, int]:
    """Reopen resume.run with the checkpoint's state, or start a new tagged run with a fresh state.

    Returns the state, the run id and the run's watermark (the last step whose metrics it holds).
    """
    if resume is not None:
        state = training.restore_state(resume.payload, built.config, device=built.device)
        run = mlflow.start_run(run_id=resume.run.info.run_id)
        return state, run.info.run_id, int(resume.run.data.tags.get(WATERMARK, 0))
    generator = torch.Generator(device=built.device).manual_seed(params.seed)
    state = training.create_state(built.net.to(built.device), built.config, generator)
    tags = dict(objective=params.objective, data=manifest["name"], network=params.network,
                fingerprint=built.metadata["fingerprint"])
    name = train_run_name(manifest["name"], params.network, params.objective, built.hyperparameters,
                          steps=params.steps, lr=params.lr, batch_size=params.batch_size)
    run = mlflow.start_run(run_name=name, tags=tags)
    return state, run.info.run_id, 0


def describe_run(params: TrainParams, built: Setup, manifest: dict, resume: Resume | None, step: int) -> None:
    """A new run gets its params; a reopened one notes the step it resumed from and drops its failure tag."""
    if resume is None:
        mlflow.log_params(flat_params(params, built.hyperparameters, manifest["name"]))
        return
    earlier = resume.run.data.tags.get(RESUMED)
    mlflow.set_tag(RESUMED, f"{earlier},{step}" if earlier else str(step))
    if "failure" in resume.run.data.tags:  # the run goes on; the interruption is in RESUMED
        mlflow.delete_tag("failure")


# ---------------------------------------------------------------------------------------------------
# Plain functions: sample grids of the EMA network.

def ema_samples(net: nn.Module, hp: dict, objective: str, shape: tuple[int, ...], n: int,
                generator: torch.Generator) -> Tensor:
    """n samples (n, *S) of `net`, cheaply (pfgm.sampling.preview_settings: PFGM Euler 20 steps from
    z_max to 1e-3, prior clipped to upper_norm; PFGM++ Heun, 10 steps). Draws only from `generator`."""
    model = TrainedModel(net=net, shape=shape, objective=objective, hyperparameters=hp)
    sampler = sampler_for(model, preview_settings(objective))
    return sampler.solve(sampler.prior(n, generator)).samples


# ---------------------------------------------------------------------------------------------------
# The MLflow side of one training run.

class RunTracker:
    """Buffered per-step metrics and sample grids for the MLflow run `run_id`.

    `on_step` only appends to a list; records go out in `flush`, a few log_batch calls, each with the
    watermark tag of its last step, so no step is ever written twice.
    """

    def __init__(self, client: MlflowClient, run_id: str, *, logged_through: int, config: TrainConfig,
                 sample_every: int, sampler: Callable[[], Tensor], kind: str):
        self.client, self.run_id, self.logged_through = client, run_id, logged_through
        self.config, self.sample_every, self.sampler, self.kind = config, sample_every, sampler, kind
        self.pending: list[tuple[int, dict]] = []
        self.last: dict | None = None
        self.sampled_at: int | None = None

    def on_step(self, record: dict) -> None:
        """Buffer a record; flush just before the loop writes a checkpoint for this step."""
        self.last = record
        if record["step"] > self.logged_through:
            self.pending.append((int(time.time() * 1000), record))
        if record["step"] % self.config.checkpoint_every == 0:
            # A crash after this flush and before the write re-trains these steps, which the watermark
            # then skips; flushing after the write instead could lose them for good.
            self.flush()

    def on_checkpoint(self, path: Path) -> None:
        """After a checkpoint: drop older ones (the folder is a DVC output; only the newest is needed to
        resume), and a sample grid when a multiple of sample_every was passed since the last one."""
        step = self.last["step"]
        get_run_logger().info("step %d: loss %.4g, checkpoint %s", step, self.last["loss"], path.name)
        for older in path.parent.glob("checkpoint_*.pt"):
            if older.name < path.name:  # zero-padded step numbers sort as numbers
                older.unlink()
        if step % self.sample_every < self.config.checkpoint_every:
            self.log_samples(step)

    def flush(self) -> None:
        """Write the buffered records (steps in order) in batches under MLflow's per-call limit."""
        while self.pending:
            chunk = self.pending[:STEPS_PER_BATCH]
            metrics = [Metric(key, float(record[key]), stamp, record["step"])
                       for stamp, record in chunk for key in METRICS]
            last = chunk[-1][1]["step"]
            self.client.log_batch(self.run_id, metrics=metrics, tags=[RunTag(WATERMARK, str(last))])
            self.logged_through = last
            del self.pending[:STEPS_PER_BATCH]

    def log_samples(self, step: int) -> None:
        """Log a PNG of EMA samples as samples/step_<step>.png."""
        with tempfile.TemporaryDirectory() as folder:
            path = viz.save_samples(self.sampler(), self.kind, Path(folder) / f"step_{step:08d}.png")
            self.client.log_artifact(self.run_id, str(path), "samples")
        self.sampled_at = step


def write_history(client: MlflowClient, run_id: str, path: Path) -> Path:
    """The run's whole metric history as CSV, one row per step (step, loss, grad_norm, lr, images_per_s),
    written atomically."""
    rows: dict[int, dict] = {}
    for key in METRICS:
        for metric in client.get_metric_history(run_id, key):
            rows.setdefault(metric.step, {"step": metric.step})[key] = metric.value
    with atomic_write(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["step", *METRICS])
        writer.writeheader()
        writer.writerows(rows[step] for step in sorted(rows))
    return path


def make_sampler(state: TrainState, hp: dict, objective: str, manifest: dict, seed: int) -> Callable[[], Tensor]:
    """A function drawing a fixed set of EMA samples; training's random streams are left untouched."""
    shape = tuple(manifest["shape"])
    n = SAMPLE_IMAGES if manifest["kind"] == "image" else SAMPLE_POINTS

    def draw() -> Tensor:
        net = state.ema.module
        device = next(net.parameters()).device
        was_training = net.training
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            net.eval()  # no dropout: it would draw from the global RNG the checkpoint restores
            try:
                generator = torch.Generator(device=device).manual_seed(seed)
                return ema_samples(net, hp, objective, shape, n, generator)
            finally:
                net.train(was_training)

    return draw


def _record_failure(client: MlflowClient, tracker: RunTracker | None, run_id: str, err: BaseException) -> None:
    """Flush what was trained and say why the run stopped; never masks the original error."""
    logger = get_run_logger()
    try:
        if tracker is not None:
            tracker.flush()
        message = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
        client.set_tag(run_id, "failure", message[:5000])
        if isinstance(err, DivergenceError):
            client.log_text(run_id, message, "failure.txt")
    except Exception as secondary:  # noqa: BLE001 - the original error matters more
        logger.warning("could not record the failure in MLflow: %s", secondary)


# ---------------------------------------------------------------------------------------------------
# Tasks and the flow.

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


def _summary(run_id: str, model: Path, loss: float | None, steps: int, hp: dict, history_length: int,
             resumed_from: int | None) -> dict[str, Any]:
    return dict(run_id=run_id, model=str(model), loss=loss, steps=steps, hyperparameters=hp,
                history_length=history_length, resumed_from=resumed_from)


@flow(name="train-model")
def train(params: TrainParams, data: DataParams, root: str = ".", history: str | None = None) -> dict[str, Any]:
    """Train as configured by the `train` section on the prepared folder `data.out`.

    root: where the default MLflow store lives (`flows.tracking.configure`).
    history: when given, a CSV of the run's whole metric history is written there (a DVC plot).
    Returns run_id, model (path of model.pt), loss (final), steps, hyperparameters, history_length
    (steps trained by this call) and resumed_from (the checkpoint step resumed from, or None).
    """
    logger = get_run_logger()
    charges, manifest = load_charges(data)
    built = setup(params, charges, manifest)  # every ParamsError comes before any run exists
    out = Path(params.out)
    refuse_imported(out)
    experiment_id = configure(root)
    client = MlflowClient()
    resume = find_resume(out, built.metadata["fingerprint"], client, experiment_id)
    if resume is not None and resume.complete:
        logger.info("%s is complete (run %s): nothing to do", resume.path, resume.run.info.run_id)
        if history is not None:
            write_history(client, resume.run.info.run_id, Path(history))
        return _summary(resume.run.info.run_id, resume.path, resume.run.data.metrics.get("loss"),
                        int(resume.payload["step"]), built.hyperparameters, 0, None)
    if resume is None:
        for path in clear_stale(out):
            logger.info("removed %s: another fingerprint, or its MLflow run is gone", path)
    charges = charges.to(built.device)

    state, run_id, logged_through = open_run(params, built, manifest, resume)
    resumed_from = state.step if resume is not None else None
    if resume is not None:
        logger.info("resuming run %s from %s (step %d)", run_id, resume.path.name, state.step)
    metadata = {**built.metadata, "mlflow_run_id": run_id}
    tracker = None
    try:
        describe_run(params, built, manifest, resume, state.step)
        log_dataset(data.out, manifest, context="training")
        tracker = RunTracker(client, run_id, logged_through=logged_through, config=built.config,
                             sample_every=params.sample_every, kind=manifest["kind"],
                             sampler=make_sampler(state, built.hyperparameters, params.objective, manifest,
                                                  params.seed))
        trained = fit(state, built.loss_fn, charges, built.config, str(out), metadata, tracker)
        tracker.flush()
        if tracker.sampled_at != state.step:
            tracker.log_samples(state.step)
        model = training.save_checkpoint(out / MODEL_FILE, state, config=built.config, metadata=metadata)
        log_model(run_id, str(model))
        if history is not None:
            write_history(client, run_id, Path(history))
    except BaseException as err:
        _record_failure(client, tracker, run_id, err)
        status = RunStatus.KILLED if isinstance(err, KeyboardInterrupt) else RunStatus.FAILED
        mlflow.end_run(RunStatus.to_string(status))
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    loss = trained[-1]["loss"] if trained else client.get_run(run_id).data.metrics.get("loss")
    logger.info("trained %d steps (run %s): final loss %.4g; wrote %s", len(trained), run_id, loss, model)
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
