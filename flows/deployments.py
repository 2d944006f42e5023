"""The flows a Prefect work pool runs: the deployments `evaluate`, `sweep` and `nightly` of prefect.yaml.

    python scripts/stack.py deploy                    # = prefect --no-prompt deploy --all, in the project root
    prefect deployment run evaluate-stage/evaluate
    prefect deployment run sweep-stage/sweep --param runner=dask --param dask_address=tcp://127.0.0.1:8786
    prefect deployment run evaluate-champion/nightly  # also on its cron schedule (flows/schedule.py)

A `prefect worker start --pool pfgm` process picks the run up and runs it in a subprocess in the project
root (the working directory `prefect deploy` recorded), with the worker's environment: MLFLOW_TRACKING_URI
names the shared tracking server, so any machine with a worker and the repository at the same path
can take the run. Each flow reads params.yaml when it runs, as the DVC stages do, but writes its results
to MLflow only (a temporary folder stands in for evaluate.out, sweep.out and sweep.table): the DVC
outputs of the working tree stay as `dvc repro` wrote them.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from prefect import flow
from pydantic import ValidationError

from flows.common import MODEL_FILE
from flows.evaluate import evaluate
from flows.params import ParamsError, SweepParams, load_sections
from flows.sweep import default_checkpoints, run_sweep
from flows.tracking import configure


@contextmanager
def project_root(root: str) -> Iterator[Path]:
    """Run inside `root` (relative paths of params.yaml resolve there), back to the old folder after."""
    before = Path.cwd()
    os.chdir(root)
    try:
        yield Path.cwd()
    finally:
        os.chdir(before)


@flow(name="evaluate-stage")
def evaluate_stage(params_path: str = "params.yaml", root: str = ".", checkpoint: str | None = None
                   ) -> dict[str, Any]:
    """The evaluate stage on `checkpoint` (default <train.out>/model.pt): scores, MLflow run, registry."""
    with project_root(root), tempfile.TemporaryDirectory() as folder:
        data, train, params = load_sections(params_path, "data", "train", "evaluate")
        configure()
        params = params.model_copy(update=dict(out=str(Path(folder) / "evaluate.json")))
        return evaluate(params, data_dir=data.out, model_path=checkpoint or str(Path(train.out) / MODEL_FILE))


def sweep_overrides(params: SweepParams, **overrides: Any) -> SweepParams:
    """The section with the deployment's overrides (None: keep), validated as params.yaml would be."""
    values = params.model_dump() | {key: value for key, value in overrides.items() if value is not None}
    try:
        return SweepParams.model_validate(values)
    except ValidationError as err:
        raise ParamsError(f"deployment parameters: {err}") from None


@flow(name="sweep-stage")
def sweep_stage(params_path: str = "params.yaml", root: str = ".", checkpoints: list[str] | None = None,
                runner: str | None = None, dask_address: str | None = None) -> dict[str, Any]:
    """The sweep stage; `checkpoints`, `runner` and `dask_address` override the sweep section. Returns the
    summary (the table is the parent run's sweep.csv)."""
    with project_root(root), tempfile.TemporaryDirectory() as folder:
        data, train, params = load_sections(params_path, "data", "train", "sweep")
        configure()
        params = sweep_overrides(params, checkpoints=checkpoints, runner=runner, dask_address=dask_address,
                                 out=str(Path(folder) / "sweep.json"), table=str(Path(folder) / "sweep.csv"))
        result = run_sweep(params, data_dir=data.out, checkpoints=default_checkpoints(params, train.out),
                           tags={"trigger": "deployment"})
        return result.summary
