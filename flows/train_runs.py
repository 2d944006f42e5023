"""The MLflow side of the `train` stage (flows.train): one run per fingerprint, reopened on resume.

A run is found again through its checkpoints: their metadata name the fingerprint and the MLflow run
that wrote them (`find_resume`). A new run gets the train section as params (`flat_params`) and tags
saying what it trains; a reopened one notes in RESUMED the steps it resumed from. Metrics are
buffered by `RunTracker` and written in `log_batch` calls, each setting WATERMARK to its last step,
so the steps a resumed run re-trains are logged once. Settings reach pfgm.training as plain values
(`setup`), and its errors come back as ParamsError naming the `train.` key.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import get_run_logger
from torch import Tensor

from flows.common import MODEL_FILE
from flows.params import ParamsError, TrainParams
from flows.tracking import resolve_device, train_run_name
from pfgm import training, viz
from pfgm.training import DivergenceError, RunError, RunSpec, Setup, TrainConfig, TrainState
from pfgm.training.history import write_history_csv

METRICS = ("loss", "grad_norm", "images_per_s", "lr")
WATERMARK = "pfgm.logged_through"  # tag: the last step whose metrics the run holds
RESUMED = "pfgm.resumed_from"  # tag: the checkpoint steps the run was resumed from, comma-separated
STEPS_PER_BATCH = 200  # 4 metrics + 1 tag per step stays under MLflow's 1000 entities per log_batch


# ---------------------------------------------------------------------------------------------------
# Settings: the train section as pfgm.training's values, checked before anything is tracked or written.

def _invalid(key: str, message: str) -> ParamsError:
    return ParamsError(f"invalid params: {key}: {message}")


def setup(params: TrainParams, charges: Tensor, manifest: dict) -> Setup:
    """Validate the section against the data and build network, loss and config (pfgm.training.setup_run,
    seeded there, once). charges: (B, *S) training data in [-1, 1]. Raises ParamsError naming the key."""
    try:
        device = resolve_device(params.device)
    except (RuntimeError, ValueError) as err:
        raise _invalid("train.device", str(err)) from None
    try:
        config = TrainConfig.from_attributes(params)
    except ValueError as err:  # its messages already name the key: "train.lr must be ..."
        raise ParamsError(f"invalid params: {err}") from None
    fingerprint = training.fingerprint(params.model_dump(mode="json"), manifest["files"]["train.npy"])
    try:
        return training.setup_run(RunSpec.from_attributes(params), config, charges, manifest, seed=params.seed,
                                  device=device, fingerprint=fingerprint)
    except RunError as err:
        raise _invalid(f"train.{err.key}", err.message) from None


def flat_params(params: TrainParams, hp: dict, data_name: str) -> dict[str, str]:
    """MLflow params: the train section flattened (network_kwargs.hidden, ...), hyperparameters.*, data.name."""
    section = params.model_dump(mode="json")
    kwargs = section.pop("network_kwargs")
    flat = {**section, **{f"network_kwargs.{k}": v for k, v in kwargs.items()},
            **{f"hyperparameters.{k}": v for k, v in hp.items()}, "data.name": data_name}
    return {key: str(value) for key, value in flat.items()}


# ---------------------------------------------------------------------------------------------------
# train.out: what to continue, what to refuse, what to delete.

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
    """ParamsError when out/model.pt is an imported official checkpoint (flows.import_official):
    training there would replace the released weights with a fresh run's."""
    path = out / MODEL_FILE
    if path.is_file() and "official" in json.loads(training.load_checkpoint(path).get("metadata") or "{}"):
        raise ParamsError(f"invalid params: train.out: {path} holds an imported official checkpoint; training "
                          "would replace it. Evaluate or sweep that folder, and train into another train.out")


def clear_stale(out: Path) -> None:
    """Delete the files of a run there is nothing to resume of (pfgm.training.clear_run_files), saying so."""
    for path in training.clear_run_files(out, MODEL_FILE):
        get_run_logger().info("removed %s: another fingerprint, or its MLflow run is gone", path)


# ---------------------------------------------------------------------------------------------------
# The MLflow run.

def open_run(params: TrainParams, built: Setup, manifest: dict, resume: Resume | None
             ) -> tuple[TrainState, str, int]:
    """Reopen resume.run with the checkpoint's state, or start a new tagged run with a fresh state.

    Returns the state, the run id and the run's watermark (the last step whose metrics it holds).
    """
    if resume is not None:
        state = training.restore_state(resume.payload, built.config, device=built.device)
        run = mlflow.start_run(run_id=resume.run.info.run_id)
        get_run_logger().info("resuming run %s from %s (step %d)", run.info.run_id, resume.path.name, state.step)
        return state, run.info.run_id, int(resume.run.data.tags.get(WATERMARK, 0))
    state = training.new_state(built, params.seed)
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

    def finish(self, step: int) -> None:
        """At the end of training: write what is buffered, and a sample grid of the final step if none is."""
        self.flush()
        if self.sampled_at != step:
            self.log_samples(step)

    def log_samples(self, step: int) -> None:
        """Log a PNG of EMA samples as samples/step_<step>.png."""
        with tempfile.TemporaryDirectory() as folder:
            path = viz.save_samples(self.sampler(), self.kind, Path(folder) / f"step_{step:08d}.png")
            self.client.log_artifact(self.run_id, str(path), "samples")
        self.sampled_at = step


def fail_run(tracker: RunTracker, err: BaseException) -> None:
    """Flush what was trained, say why the run stopped (tag `failure`; failure.txt on divergence) and end
    it KILLED (interrupted) or FAILED. Recording never masks the original error."""
    try:
        tracker.flush()
        message = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
        tracker.client.set_tag(tracker.run_id, "failure", message[:5000])
        if isinstance(err, DivergenceError):
            tracker.client.log_text(tracker.run_id, message, "failure.txt")
    except Exception as secondary:  # noqa: BLE001 - the original error matters more
        get_run_logger().warning("could not record the failure in MLflow: %s", secondary)
    status = RunStatus.KILLED if isinstance(err, KeyboardInterrupt) else RunStatus.FAILED
    mlflow.end_run(RunStatus.to_string(status))


def write_history(client: MlflowClient, run_id: str, path: Path) -> Path:
    """The run's whole metric history as CSV, one row per step (step, loss, grad_norm, images_per_s, lr),
    written atomically."""
    points = ((key, metric.step, metric.value) for key in METRICS for metric in client.get_metric_history(run_id, key))
    return write_history_csv(path, METRICS, points)
