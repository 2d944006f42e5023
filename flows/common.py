"""Glue every flow that samples a checkpoint shares, so that no flow imports another.

Only what is pipeline-specific lives here (file names, checks that name a params key); the sampling
itself is pfgm.sampling's.
"""
from __future__ import annotations

from typing import Any

from flows.params import ParamsError
from pfgm.sampling import TrainedModel

#: The trained model's file name inside train.out.
MODEL_FILE = "model.pt"


def check_model_fits(model: TrainedModel, path: str, *, z_min: float, section: str, manifest: dict[str, Any],
                     data_dir: str) -> None:
    """The model samples the data's shape and, for PFGM, z_min lies below its z_max (ParamsError naming
    <section>.z_min otherwise): the checks every flow that samples a checkpoint makes before its run."""
    z_max = model.hyperparameters.get("z_max")
    if model.objective == "pfgm" and z_min >= float(z_max):
        raise ParamsError(f"{section}.z_min: must be below the z_max {z_max} of {path}, got {z_min}")
    if model.shape != tuple(manifest["shape"]):
        raise ValueError(f"{path} samples shape {model.shape} but {data_dir} holds {tuple(manifest['shape'])}")
