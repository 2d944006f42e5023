"""One sampler contract over both objectives: a trained model in, samples and their NFE out.

A trained model is a network with its objective and hyperparameters (`TrainedModel`, read from a
checkpoint by `load_trained`). `sampler_for(model, settings)` is the only place that branches on the
objective; every caller then makes the same two calls, in k-diffusion's manner (the caller draws the
starting points, the sampler walks from them):

    sampler = sampler_for(model, SamplerSettings(method="euler", steps=20))
    x = sampler.prior(n, generator)              # (n, *S) on the network's device
    result = sampler.solve(x)                    # SampleResult(samples (n, *S), nfe, path=None)

- PFGM (`PFGMSampler`): the prior on the plane z_max (||x|| clipped to upper_norm with clip_prior),
  field lines followed down to z_min by any pfgm.ode method, on its grid of `steps` or its tolerances.
- PFGM++ (`PFGMppSampler`): the kernel prior at sigma_max and EDM's Heun on EDM's sigma grid of `steps`
  steps (HEUN_STEPS when None); method, tolerances, schedule, rho, z_min and z_exp do not apply.

`solve(x, callback, path)`: the callback sees a dict with `x` and `height` (plus the solver's own keys)
at every state the solve looks at: PFGM at each point where the field is evaluated (height z), PFGM++
at the start and after each step (height sigma), so one recorder serves both (pfgm.diagnostics).
`path=True` also returns the states at every grid point (T, B, *S), path[0] the start (PFGM with an
adaptive method: the two ends). A solver that gives up raises `SolveDiverged`; a fixed-step solve of a
broken field returns its non-finite samples, which callers count.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pfgm import ode, pfgmpp
from pfgm.networks.edm import as_denoiser
from pfgm.ode import SolveDiverged
from pfgm.prior import sample_prior
from pfgm.training.checkpoint import NETWORKS, build_network, load_checkpoint

__all__ = ["HEUN_STEPS", "Generated", "PFGMSampler", "PFGMppSampler", "SampleResult", "Sampler", "SamplerSettings",
           "SolveDiverged", "TrainedModel", "generate", "load_trained", "preview_settings", "sampler_for",
           "untrained_like"]

#: Heun steps for PFGM++ when none are given (EDM's 18 steps, NFE 35).
HEUN_STEPS = 18
#: The cheap fixed-step setting that always terminates, whatever the field (`preview_settings`).
PREVIEW_EULER_STEPS = 20  # PFGM: the official Euler step in z, uniform in ln z
PREVIEW_HEUN_STEPS = 10  # PFGM++: EDM's Heun, 19 evaluations

Callback = Callable[[dict], None]


@dataclass(frozen=True)
class SamplerSettings:
    """One sampler setting (the evaluate section's keys); PFGM++ reads only `steps` (Heun's)."""
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

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device


@dataclass(frozen=True)
class SampleResult:
    """samples (B, *S); nfe, the network evaluations of the solve; path (T, B, *S) when asked for."""
    samples: Tensor
    nfe: int
    path: Tensor | None = None


@dataclass(frozen=True)
class Generated:
    """Samples x (n, *S) on the CPU, NFE of each batch's solve, and the wall seconds spent."""
    x: Tensor
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


class PFGMSampler:
    """PFGM: the prior on the plane z_max, then the backward ODE down to z_min (pfgm.ode.sample)."""
    variable = "z"

    def __init__(self, model: TrainedModel, settings: SamplerSettings):
        hp = model.hyperparameters
        self.model, self.settings = model, settings
        self.z_max = float(hp["z_max"])
        self.upper_norm = float(hp["upper_norm"]) if settings.clip_prior else None
        self.gamma = float(hp.get("gamma", 5.0))  # the field's normalisation, which the exact v_z needs

    @property
    def method(self) -> str:
        return self.settings.method

    def prior(self, n: int, generator: torch.Generator) -> Tensor:
        """n starting points (n, *S) on the plane z_max, drawn from `generator`, on the network's device."""
        return sample_prior(n, self.model.shape, z_max=self.z_max, upper_norm=self.upper_norm,
                            generator=generator, device=self.model.device)

    def solve(self, x: Tensor, *, callback: Callback | None = None, path: bool = False) -> SampleResult:
        """Field lines from x (B, *S) on the plane z_max down to z_min (module docstring)."""
        s = self.settings
        with_height = None if callback is None else (lambda info: callback({**info, "height": info["z"]}))
        out = ode.sample(self.model.net, x, z_max=self.z_max, z_min=s.z_min, method=s.method, rtol=s.rtol,
                         atol=s.atol, steps=s.steps, schedule=s.schedule, rho=s.rho, gamma=self.gamma,
                         z_exp=s.z_exp, callback=with_height, path=path)
        return SampleResult(samples=out.x, nfe=out.nfe, path=out.path)


class PFGMppSampler:
    """PFGM++: the kernel prior at sigma_max, then EDM's Heun on EDM's sigma grid (pfgm.pfgmpp)."""
    variable = "sigma"
    method = "edm_heun"

    def __init__(self, model: TrainedModel, settings: SamplerSettings):
        self.model, self.settings = model, settings
        self.D = model.hyperparameters["D"]
        self.steps = settings.steps or HEUN_STEPS

    def prior(self, n: int, generator: torch.Generator) -> Tensor:
        """n starting points (n, *S) at sigma_max, drawn from `generator`, on the network's device."""
        return pfgmpp.sample_prior(n, self.model.shape, D=self.D, generator=generator, device=self.model.device)

    def solve(self, x: Tensor, *, callback: Callback | None = None, path: bool = False) -> SampleResult:
        """Heun from x (B, *S) at sigma_max down to sigma = 0 (module docstring)."""
        grid = pfgmpp.sigma_grid(self.steps, device=x.device)
        states = [x]

        def on_step(info: dict) -> None:
            if path:
                states.append(info["x"])
            if callback is not None:
                callback({**info, "height": info["sigma_next"]})

        if callback is not None:
            callback(dict(i=-1, x=x, height=float(grid[0])))  # the start, as PFGM's first evaluation shows it
        out = pfgmpp.heun(as_denoiser(self.model.net), x, grid, callback=on_step)
        return SampleResult(samples=out.x, nfe=out.nfe, path=torch.stack(states) if path else None)


#: Either objective's sampler (not flows.pyfunc_model's old `Sampler`, which named SamplerSettings).
Sampler = PFGMSampler | PFGMppSampler
#: The objective's sampler class: the one branch on the objective.
SAMPLERS: dict[str, type[PFGMSampler] | type[PFGMppSampler]] = {"pfgm": PFGMSampler, "pfgmpp": PFGMppSampler}


def sampler_for(model: TrainedModel, settings: SamplerSettings) -> Sampler:
    """The sampler of the model's objective with these settings."""
    if model.objective not in SAMPLERS:
        raise ValueError(f"objective must be one of {', '.join(SAMPLERS)}, got {model.objective!r}")
    return SAMPLERS[model.objective](model, settings)


def preview_settings(objective: str, *, z_min: float = 1e-3, clip_prior: bool = True) -> SamplerSettings:
    """The cheap fixed-step setting, which terminates whatever the field: PFGM Euler in z, 20 steps
    uniform in ln z; PFGM++ Heun, 10 steps (training's sample grids, evaluation's untrained reference)."""
    steps = PREVIEW_HEUN_STEPS if objective == "pfgmpp" else PREVIEW_EULER_STEPS
    return SamplerSettings(method="euler", steps=steps, z_min=z_min, clip_prior=clip_prior)


def generate(model: TrainedModel, num_samples: int, settings: SamplerSettings, *, batch_size: int,
             generator: torch.Generator) -> Generated:
    """Draw num_samples samples (num_samples, *S) in batches; the prior draws from `generator`.

    Sampling runs on the network's device; the result comes back to the CPU. Each batch is one solve,
    so `nfe` has one entry per batch. `seconds` is wall time including the prior draws.
    """
    sampler = sampler_for(model, settings)
    batches, nfe = [], []
    start = time.perf_counter()
    for first in range(0, num_samples, batch_size):
        out = sampler.solve(sampler.prior(min(batch_size, num_samples - first), generator))
        batches.append(out.samples.cpu())
        nfe.append(int(out.nfe))
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return Generated(x=torch.cat(batches), nfe=nfe, seconds=time.perf_counter() - start)
