"""Scheduled sweeps: flow `evaluate-champion` sweeps the registered champion, served on a cron schedule.

    python -m flows.schedule run --params params.yaml                        # once, now
    python -m flows.schedule serve --params params.yaml --cron "0 3 * * *"   # every night at 03:00

`evaluate-champion` reads params.yaml when it runs (so edits apply to the next run without serving
again): it resolves `models:/<evaluate.model_name>@champion` (flows.registry.champion), downloads that
version's checkpoint artifact (the pyfunc model holds it as artifacts/model.pt, flows/registry.py)
and runs the sweep of the `sweep` section on it (flows.sweep), the parent run tagged with the model
name and version. Its table and summary live in MLflow only (a temporary folder stands in for
sweep.out and sweep.table): the DVC outputs of the sweep stage stay as the stage wrote them.

`serve` registers the deployment `evaluate-champion/nightly` with the Prefect API (PREFECT_API_URL;
a schedule needs a running server, `prefect server start`) and runs its flow runs in this process
until stopped. Trigger one by hand with `prefect deployment run evaluate-champion/nightly`. On the
team stack (scripts/stack.py) the same deployment comes from prefect.yaml instead, on the work pool
`pfgm`, and the pool's process workers run it (README "Team setup").
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger

from flows.cli import command_line
from flows.common import MODEL_FILE
from flows.params import load_section, params_parser
from flows.registry import champion
from flows.sweep import SweepResult, run_sweep
from flows.tracking import configure

DEPLOYMENT = "nightly"
DEFAULT_CRON = "0 3 * * *"


def download_checkpoint(model_name: str, version: str, folder: str | Path) -> Path:
    """The model.pt that version `version` of `model_name` holds, downloaded under `folder`."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}",
                                                     dst_path=str(folder)))
    found = sorted(local.rglob(MODEL_FILE))
    if not found:
        raise FileNotFoundError(f"models:/{model_name}/{version} holds no {MODEL_FILE} (not logged by flows.registry?)")
    return found[0]


@flow(name="evaluate-champion")
def evaluate_champion(params_path: str = "params.yaml", root: str = ".") -> SweepResult:
    """Sweep the current champion of evaluate.model_name with the sweep section of `params_path`.

    ValueError when no version holds the alias `champion` (nothing registered yet).
    """
    logger = get_run_logger()
    data = load_section(params_path, "data")
    model_name = load_section(params_path, "evaluate").model_name
    params = load_section(params_path, "sweep")
    configure(root)
    version = champion(model_name)
    if version is None:
        raise ValueError(f"registered model {model_name!r} has no version with the alias 'champion': run the "
                         "pipeline first (dvc repro, or python -m flows.pipeline), whose evaluate stage registers it")
    logger.info("sweeping %s version %s (models:/%s@champion)", model_name, version.version, model_name)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = download_checkpoint(model_name, version.version, folder)
        # The table and summary go to MLflow; the sweep stage's DVC outputs are left alone.
        params = params.model_copy(update=dict(out=str(Path(folder) / "sweep.json"),
                                               table=str(Path(folder) / "sweep.csv")))
        tags = {"model_name": model_name, "model_version": str(version.version), "trigger": "evaluate-champion"}
        return run_sweep(params, data_dir=data.out, checkpoints=[str(checkpoint)],
                         labels=[f"models:/{model_name}/{version.version}"], tags=tags)


def deployment_parameters(params_path: str, root: str = ".") -> dict[str, Any]:
    """The deployment's parameters: absolute paths, so runs do not depend on the runner's folder."""
    return {"params_path": str(Path(params_path).resolve()), "root": str(Path(root).resolve())}


def serve(params_path: str, cron: str, root: str = ".") -> None:
    """Serve `evaluate-champion` as deployment `nightly` on `cron` until stopped (Ctrl-C)."""
    evaluate_champion.serve(name=DEPLOYMENT, cron=cron, parameters=deployment_parameters(params_path, root),
                            description="Sampler sweep of the registered champion (flows/schedule.py)")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Command line: `run` once now, or `serve` on a cron schedule."""
    parser = params_parser(__doc__)
    parser.add_argument("command", choices=("run", "serve"))
    parser.add_argument("--cron", default=DEFAULT_CRON, help=f"serve: cron schedule (default: {DEFAULT_CRON!r})")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.params, args.cron)
        return None
    result = evaluate_champion(**deployment_parameters(args.params))
    print(json.dumps(result.summary, sort_keys=True))
    return result.summary


if __name__ == "__main__":
    command_line(main)
