"""The registered model: an MLflow pyfunc ("models from code") whose `predict` draws samples.

MLflow logs this file as source, never a pickle: `mlflow.pyfunc.log_model(python_model=<this file>,
artifacts={"checkpoint": model.pt})`. Loading runs this file, whose last line hands MLflow the model
with `mlflow.models.set_model`; `load_context` rebuilds the network from the checkpoint with
`torch.load(weights_only=True)` (pfgm.training.checkpoint). The serving environment needs the `pfgm`
package importable (this repository installed) besides the pinned pip requirements.

The evaluate flow imports `load_trained` and `generate` from here, so the registered model samples
exactly as the evaluation that scored it did. predict input, a dict or a one-row DataFrame:
    num_samples (int, default 16), seed (int, default 0), method ("dopri5"; any pfgm.ode.METHODS;
    PFGM++ always uses EDM's Heun), steps (fixed-step methods and Heun), schedule ("ln_z" | "power")
    and rho (fixed-step grid), rtol, atol, z_min, z_exp, clip_prior, batch_size.
Output: float32 array (num_samples, *S), images in [-1, 1] (or points).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from torch import nn

from pfgm import pfgmpp
from pfgm.networks.edm import as_denoiser
from pfgm.ode import sample
from pfgm.prior import sample_prior
from pfgm.training.checkpoint import NETWORKS, build_network, load_checkpoint

#: Heun steps for PFGM++ when none are given (EDM's 18 steps, NFE 35).
HEUN_STEPS = 18


@dataclass(frozen=True)
class Sampler:
    """One sampler setting (the evaluate section's keys). PFGM++ uses Heun with `steps` (or 18)."""
    method: str = "dopri5"
    rtol: float = 1e-4
    atol: float = 1e-4
    steps: int | None = None
    schedule: str = "ln_z"
    rho: float | None = None
    z_min: float = 1e-3
    z_exp: float | None = None
    clip_prior: bool = True


@dataclass
class TrainedModel:
    """A checkpointed network ready to sample: EMA weights, data shape, objective, hyperparameters."""
    net: nn.Module
    shape: tuple[int, ...]
    objective: str
    hyperparameters: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    network_class: str = ""
    network_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Generated:
    """Samples x (n, *S) on the CPU, NFE of each batch's solve, and the wall seconds spent."""
    x: torch.Tensor
    nfe: list[int]
    seconds: float


def _data_shape(config: dict[str, Any]) -> tuple[int, ...]:
    """The data shape a network's config was built for: data_shape (FieldMLP, FieldConvNet),
    img_channels/img_resolution (EDMPrecond) or channels/image_size (DDPMpp)."""
    if "data_shape" in config:
        return tuple(int(s) for s in config["data_shape"])
    if "img_resolution" in config:
        return (int(config["img_channels"]), int(config["img_resolution"]), int(config["img_resolution"]))
    return (int(config["channels"]), int(config["image_size"]), int(config["image_size"]))


def load_trained(path: str | Path, *, device: torch.device | str = "cpu", ema: bool = True) -> TrainedModel:
    """Read a pfgm.training checkpoint (weights_only) and rebuild its network in eval mode.

    The metadata must name the objective ("pfgm" | "pfgmpp") and hold `hyperparameters`
    (pfgm: z_max, upper_norm; pfgmpp: D); a ValueError names what is missing.
    """
    payload = load_checkpoint(path)
    metadata = json.loads(payload.get("metadata") or "{}")
    objective = metadata.get("objective", "pfgm")
    hyper = dict(metadata.get("hyperparameters") or {})
    needed = ("z_max", "upper_norm") if objective == "pfgm" else ("D",)
    missing = [key for key in needed if hyper.get(key) is None]
    if objective not in ("pfgm", "pfgmpp") or missing:
        raise ValueError(f"{path}: checkpoint metadata needs objective pfgm|pfgmpp and hyperparameters "
                         f"{list(needed)}; got objective {objective!r}, missing {missing}")
    config = json.loads(payload["network"]["config"])
    net = build_network(payload, ema=ema).to(device).eval()
    return TrainedModel(net=net, shape=_data_shape(config), objective=objective, hyperparameters=hyper,
                        metadata=metadata, network_class=payload["network"]["class"], network_config=config)


def untrained_like(model: TrainedModel, *, seed: int, device: torch.device | str = "cpu") -> TrainedModel:
    """The same architecture and hyperparameters with fresh weights (seeded; global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = NETWORKS[model.network_class](**model.network_config)
    return TrainedModel(net=net.to(device).eval(), shape=model.shape, objective=model.objective,
                        hyperparameters=model.hyperparameters, metadata=model.metadata,
                        network_class=model.network_class, network_config=model.network_config)


def method_name(model: TrainedModel, sampler: Sampler) -> str:
    """The solver actually used: PFGM++ always samples with EDM's Heun ("edm_heun")."""
    return "edm_heun" if model.objective == "pfgmpp" else sampler.method


def _sample_batch(model: TrainedModel, n: int, sampler: Sampler, generator: torch.Generator,
                  device: torch.device) -> tuple[torch.Tensor, int]:
    hp = model.hyperparameters
    if model.objective == "pfgmpp":
        start = pfgmpp.sample_prior(n, model.shape, D=hp["D"], generator=generator, device=device)
        grid = pfgmpp.sigma_grid(sampler.steps or HEUN_STEPS, device=device)
        out = pfgmpp.heun(as_denoiser(model.net), start, grid)
        return out.x, out.nfe
    upper_norm = float(hp["upper_norm"]) if sampler.clip_prior else None
    start = sample_prior(n, model.shape, z_max=float(hp["z_max"]), upper_norm=upper_norm, generator=generator,
                         device=device)
    out = sample(model.net, start, z_max=float(hp["z_max"]), z_min=sampler.z_min, method=sampler.method,
                 rtol=sampler.rtol, atol=sampler.atol, steps=sampler.steps, schedule=sampler.schedule,
                 rho=sampler.rho, gamma=float(hp.get("gamma", 5.0)), z_exp=sampler.z_exp)
    return out.x, out.nfe


def generate(model: TrainedModel, num_samples: int, sampler: Sampler, *, batch_size: int,
             generator: torch.Generator) -> Generated:
    """Draw num_samples samples (num_samples, *S) in batches; the prior draws from `generator` (CPU).

    Sampling runs on the network's device; the result comes back to the CPU. Each batch is one ODE
    solve, so `nfe` has one entry per batch. `seconds` is wall time including the prior draws.
    """
    device = next(model.net.parameters()).device
    batches, nfe = [], []
    start = time.perf_counter()
    for first in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - first)
        x, count = _sample_batch(model, n, sampler, generator, device)
        batches.append(x.cpu())
        nfe.append(int(count))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Generated(x=torch.cat(batches), nfe=nfe, seconds=time.perf_counter() - start)


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
        out = generate(self.model, num_samples, Sampler(**request), batch_size=batch_size, generator=generator)
        return out.x.numpy().astype(np.float32)


# Models from code: MLflow executes this file to load the model and takes the instance set here.
mlflow.models.set_model(PFGMSampler())
