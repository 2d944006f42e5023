"""The model registry: log the trained model as a pyfunc, register a version, move the `champion` alias.

The model is logged "from code" (flows/pyfunc_model.py is stored as source, the checkpoint as an
artifact; nothing is pickled) with explicit pip requirements and an input example, so MLflow infers
nothing and runs no sampling at logging time. It has no signature on purpose: MLflow's schema
enforcement would drop an unknown request key with a warning, where `predict` refuses it by name. Each
registered version is tagged with the evaluate metrics; the version with the lowest value of the
champion metric (lower is better) holds the alias `champion`. Only successful evaluations are
registered: the evaluate flow calls `register` after its run has ended FINISHED with finite metrics.
"""
from __future__ import annotations

import math
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from flows.pyfunc_model import INPUT_EXAMPLE

CHAMPION = "champion"
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
#: What flows/pyfunc_model.py imports besides the pfgm package itself (pinned to this environment).
REQUIREMENTS = ("mlflow", "torch", "torchdiffeq", "numpy", "pandas", "tqdm")


def pip_requirements() -> list[str]:
    """The serving requirements, pinned to the versions installed here."""
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(name)
    return pinned


def log_pyfunc(checkpoint: str | Path, *, name: str = "model") -> ModelInfo:
    """Log the checkpoint as a pyfunc model (from code) in the active run; returns its ModelInfo."""
    return mlflow.pyfunc.log_model(name=name, python_model=str(MODEL_CODE),
                                   artifacts={"checkpoint": str(Path(checkpoint).resolve())},
                                   pip_requirements=pip_requirements(), signature=False,
                                   input_example=INPUT_EXAMPLE)


def champion(model_name: str, client: MlflowClient | None = None) -> ModelVersion | None:
    """The version holding the alias `champion`, or None (also when the model is not registered)."""
    client = client or MlflowClient()
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def version_metric(version_: ModelVersion, metric: str, client: MlflowClient | None = None) -> float | None:
    """The metric logged by the evaluate run of `version_`, or None if absent or not finite."""
    client = client or MlflowClient()
    run_id = (version_.tags or {}).get("evaluate_run_id") or version_.run_id
    value = client.get_run(run_id).data.metrics.get(metric) if run_id else None
    return value if value is not None and math.isfinite(value) else None


def promote_if_better(model_name: str, version_: ModelVersion, metric: str, value: float,
                      client: MlflowClient | None = None) -> bool:
    """Give `version_` the alias `champion` if `value` is lower than the champion's (or none exists)."""
    client = client or MlflowClient()
    current = champion(model_name, client)
    if current is not None and current.version != version_.version:
        best = version_metric(current, metric, client)
        if best is not None and best <= value:
            return False
    client.set_registered_model_alias(model_name, CHAMPION, version_.version)
    return True


def register(model_uri: str, model_name: str, *, run_id: str, metrics: dict[str, float],
             champion_metric: str, client: MlflowClient | None = None) -> tuple[ModelVersion, bool]:
    """Register `model_uri` as a new version of `model_name` and move `champion` if it is better.

    Refuses (ValueError) a run that did not finish successfully or metrics that are not finite.
    Returns the new version and whether it became the champion.
    """
    client = client or MlflowClient()
    status = client.get_run(run_id).info.status
    if status != "FINISHED":
        raise ValueError(f"run {run_id} is {status}: only finished evaluations are registered")
    bad = sorted(key for key, value in metrics.items() if not math.isfinite(value))
    if bad or champion_metric not in metrics:
        raise ValueError(f"not registering: non-finite metrics {bad} or no {champion_metric!r} in {sorted(metrics)}")
    tags = {"evaluate_run_id": run_id, **{f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()}}
    version_ = mlflow.register_model(model_uri, model_name, tags=tags)
    client.update_model_version(model_name, version_.version,
                                description=f"{champion_metric} = {metrics[champion_metric]:.6g} (run {run_id})")
    promoted = promote_if_better(model_name, version_, champion_metric, metrics[champion_metric], client)
    return client.get_model_version(model_name, version_.version), promoted
