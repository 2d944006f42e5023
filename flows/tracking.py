"""MLflow and device plumbing shared by the flows (the only MLflow code outside the flows themselves).

Defaults keep everything inside the project: a SQLite tracking store `mlflow.db` and an artifact
folder `mlartifacts/` (both ignored by git). A team points the flows at its own server with the
usual environment variable, e.g. MLFLOW_TRACKING_URI=http://mlflow.internal:5000 (the stack of
scripts/stack.py: PostgreSQL-backed, artifacts proxied by the server); nothing else changes.

What the MLflow UI shows comes from here too: the experiment is marked as a model-training one (MLflow 3
otherwise opens a GenAI overview), each training and evaluation run records the prepared data as a
dataset input (name, data version as digest, folder as source), and run names say what differs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import mlflow
import torch

EXPERIMENT = "pfgm"
#: MLflow 3's experiment type tag: "custom_model_development" is the UI's model-training kind, whose
#: experiment page opens on the runs table (untagged experiments may be shown as GenAI ones).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
DIGEST_LENGTH = 16  # hex digits of the data version shown as the dataset digest (MLflow keeps up to 36)


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
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location,
                                                 tags=dict([EXPERIMENT_KIND]))
        found = mlflow.get_experiment(experiment_id)
    if found.tags.get(EXPERIMENT_KIND[0]) is None:  # made before the tag existed, or by someone else
        mlflow.MlflowClient().set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def data_version(manifest: dict[str, Any]) -> str:
    """sha256 of a prepared folder's file list (each file's name and sha256, from its manifest): the
    same prepared data, the same version; any file changed, another one."""
    files = json.dumps(sorted(manifest["files"].items()))
    return hashlib.sha256(files.encode()).hexdigest()


def log_dataset(data_dir: str | os.PathLike, manifest: dict[str, Any], context: str) -> None:
    """Record the prepared folder as the active run's dataset input: its name, the first DIGEST_LENGTH
    hex digits of data_version as digest, the folder as source; the full version and the train split's
    sha256 (the checkpoints' data.sha256) as input tags. Logging it again in a resumed run adds nothing."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.meta_dataset import MetaDataset

    # MLflow's "local" source (a class it builds at import, so it is looked up by its type name).
    source = get_dataset_source_from_json(json.dumps({"uri": str(Path(data_dir).resolve())}), source_type="local")
    version = data_version(manifest)
    dataset = MetaDataset(source, name=manifest["name"], digest=version[:DIGEST_LENGTH])
    tags = {"data_version": version, "train_sha256": manifest["files"].get("train.npy", "")}
    mlflow.log_input(dataset, context=context, tags=tags)


def train_run_name(data_name: str, network: str, objective: str, hyperparameters: dict[str, Any], *, steps: int,
                   lr: float, batch_size: int) -> str:
    """"train digits FieldConvNet pfgm 3500 steps lr 0.0002 bs 128" (pfgmpp adds its D)."""
    if objective == "pfgmpp" and hyperparameters.get("D") is not None:
        objective = f"pfgmpp D={hyperparameters['D']:g}"
    return f"train {data_name} {network} {objective} {steps} steps lr {lr:g} bs {batch_size}"


def evaluate_run_name(data_name: str, objective: str, method: str, *, steps: int | None, rtol: float,
                      num_samples: int) -> str:
    """"evaluate digits pfgm dopri5 tol 0.0001 1000 samples" or "... euler 20 steps ..."."""
    setting = f"{steps} steps" if steps is not None else f"tol {rtol:g}"
    return f"evaluate {data_name} {objective} {method} {setting} {num_samples} samples"


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else is passed to torch.device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but no CUDA device is available (use auto or cpu)")
    return device
