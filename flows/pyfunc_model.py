"""The registered model: an MLflow pyfunc ("models from code") whose `predict` draws samples.

MLflow logs this file as source, never a pickle: `mlflow.pyfunc.log_model(python_model=<this file>,
artifacts={"checkpoint": model.pt})`. Loading runs this file, whose last line hands MLflow the model
with `mlflow.models.set_model`; `load_context` rebuilds the network from the checkpoint with
`torch.load(weights_only=True)` (pfgm.training.checkpoint). The serving environment needs the `pfgm`
package importable (this repository installed) besides the pinned pip requirements.

Sampling is pfgm.sampling's (`load_trained`, `generate`), which the evaluate flow calls too, so the
registered model samples exactly as the evaluation that scored it did. predict input, a dict or a
one-row DataFrame:
    num_samples (int, default 16), seed (int, default 0), method ("dopri5"; any pfgm.ode.METHODS;
    PFGM++ always uses EDM's Heun), steps (fixed-step methods and Heun), schedule ("ln_z" | "power")
    and rho (fixed-step grid), rtol, atol, z_min, z_exp, clip_prior, batch_size.
Output: float32 array (num_samples, *S), images in [-1, 1] (or points).
"""
from __future__ import annotations

import math
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from pfgm.sampling import SamplerSettings, generate, load_trained

_INTS = ("num_samples", "seed", "steps", "batch_size")
_FLOATS = ("rtol", "atol", "rho", "z_min", "z_exp")
#: The request the registry logs with the model (the MLflow UI shows it beside the model).
INPUT_EXAMPLE = {"num_samples": 4, "method": "euler", "steps": 10, "seed": 0}


def parse_request(model_input: Any) -> dict[str, Any]:
    """A predict input (dict, or DataFrame whose first row is read) -> typed keyword arguments."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "iloc"):
        if len(model_input) != 1:
            raise ValueError(f"predict takes one request row, got {len(model_input)}")
        model_input = model_input.iloc[0].to_dict()
    if not isinstance(model_input, dict):
        raise ValueError(f"predict takes a dict or a one-row DataFrame, got {type(model_input).__name__}")
    known = {"method", "schedule", "clip_prior", *_INTS, *_FLOATS}
    unknown = sorted(set(model_input) - known)
    if unknown:
        raise ValueError(f"unknown predict keys {unknown}; known: {sorted(known)}")
    request: dict[str, Any] = {}
    for key, value in model_input.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue  # a DataFrame column left empty in this row
        if key in _INTS:
            request[key] = int(value)
        elif key in _FLOATS:
            request[key] = float(value)
        elif key == "clip_prior":
            request[key] = bool(value)
        else:
            request[key] = str(value)
    return request


class PFGMSampler(mlflow.pyfunc.PythonModel):
    """pyfunc model: `predict(context, {"num_samples": 16, "seed": 0, ...})` -> (n, *S) float32 array.

    Typed for MLflow as a DataFrame request (a type MLflow passes through without a schema of its own):
    a dict reaches `parse_request` as it is, which checks the keys and their types.
    """

    def load_context(self, context) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_trained(context.artifacts["checkpoint"], device=device)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        request = parse_request(model_input)
        num_samples, seed = request.pop("num_samples", 16), request.pop("seed", 0)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        batch_size = request.pop("batch_size", 256)
        generator = torch.Generator().manual_seed(seed)
        out = generate(self.model, num_samples, SamplerSettings(**request), batch_size=batch_size, generator=generator)
        return out.x.numpy().astype(np.float32)


# Models from code: MLflow executes this file to load the model and takes the instance set here.
mlflow.models.set_model(PFGMSampler())
