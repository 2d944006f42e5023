"""MLflow and device plumbing shared by the flows (the only MLflow code outside the flows themselves).

Defaults keep everything inside the project: a SQLite tracking store `mlflow.db` and an artifact
folder `mlartifacts/` (both ignored by git). A team points the flows at its own server with the
usual environment variable, e.g. MLFLOW_TRACKING_URI=http://mlflow.internal:5000 (PostgreSQL-backed
or not); nothing else changes.
"""
from __future__ import annotations

import os
from pathlib import Path

import mlflow
import torch

EXPERIMENT = "pfgm"


def tracking_uri(root: str | os.PathLike = ".") -> str:
    """MLFLOW_TRACKING_URI when set, else the project's SQLite store `<root>/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def configure(root: str | os.PathLike = ".", experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the tracking store and select (creating if needed) the experiment; returns its id.

    A new experiment keeps its artifacts in `<root>/mlartifacts` unless the server decides
    (a remote tracking server with its own artifact store).
    """
    mlflow.set_tracking_uri(tracking_uri(root))
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        local = tracking_uri(root).startswith("sqlite:") or "://" not in tracking_uri(root)
        location = (Path(root).resolve() / "mlartifacts").as_uri() if local else None
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else is passed to torch.device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but no CUDA device is available (use auto or cpu)")
    return device
