"""Latent edits and recorded field lines (PFGM.md section 5).

Encoding follows the ODE from the data plane z = z_min up to z = z_max (pfgm.ode.encode); the point
reached on the plane z = z_max is the image's latent, distributed like the prior. PFGM.md names the
edits (interpolation between two encoded images, temperature as the scale of the latent norm) but not
the interpolation path. We take a spherical one on the x part: the direction moves along the great
circle between the two end directions at constant angular speed, and the norm moves linearly between
the two end norms. The prior's direction is uniform and its density depends on the norm alone, so
each intermediate latent is as typical as its ends, which a straight line would not be (its midpoint
is shorter than both ends when they point apart).

The functions above take a network and pfgm.ode's keywords; those at the end take a trained PFGM model
(pfgm.sampling.TrainedModel) and one SamplerSettings, and are what the report draws: test images
encoded until enough succeed (`encode_images`), their pairs interpolated (`interpolate_encoded`), prior
draws decoded at several temperatures (`decode_prior_with_temperature`), prior draws followed down to
the data (`prior_trajectories`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from pfgm._checks import check_finite, check_tensor
from pfgm.ode import Model, ODEResult, SolveDiverged, encode, sample, sample_path
from pfgm.sampling import SamplerSettings, TrainedModel, sampler_for

#: |u + v| of unit directions below this: opposite directions, no unique great circle between them.
_OPPOSITE = 1e-6


@dataclass(frozen=True)
class Interpolation:
    """x (B, T, *S) decoded along each path, latents (B, T, *S) on the plane z_max, weights (T,)."""
    x: Tensor
    latents: Tensor
    weights: Tensor
    nfe: int


@dataclass(frozen=True)
class Trajectory:
    """States x (T, B, *S) of a batch following field lines, at heights z (T,) from z_max to z_min."""
    x: Tensor
    z: Tensor
    nfe: int


def _unit_rows(flat: Tensor, name: str) -> tuple[Tensor, Tensor]:
    norm = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError(f"{name} has a latent of norm zero: its direction is undefined")
    return flat / norm, norm


def slerp(first: Tensor, second: Tensor, weights: Tensor) -> Tensor:
    """Spherical interpolation of directions with linear interpolation of norms.

    Args:
        first, second: (B, *S) end points (latents on the plane z = z_max).
        weights: (T,) positions along the path, 0 at `first` and 1 at `second`.
    Returns:
        (B, T, *S); the angle to `first` grows as weight * angle(first, second), and the norm is
        (1 - weight) * ||first|| + weight * ||second||.
    """
    check_finite("first", check_tensor("first", first, min_dim=2))
    check_finite("second", check_tensor("second", second, min_dim=2))
    if first.shape != second.shape:
        raise ValueError(f"first and second must have the same shape, got {tuple(first.shape)} and "
                         f"{tuple(second.shape)}")
    u, norm_u = _unit_rows(first.reshape(first.shape[0], -1), "first")
    v, norm_v = _unit_rows(second.reshape(second.shape[0], -1), "second")
    # 2 atan2(|u - v|, |u + v|) is accurate at every angle, unlike acos(u . v) near 0 and pi.
    gap, span = (torch.linalg.vector_norm(u - v, dim=1, keepdim=True),
                 torch.linalg.vector_norm(u + v, dim=1, keepdim=True))
    if bool((span < _OPPOSITE).any()):
        raise ValueError("first and second point in opposite directions: the great circle is not unique")
    angle = 2.0 * torch.atan2(gap, span)
    sin = torch.sin(angle)
    w = weights.to(first)[None, :]
    parallel = angle == 0
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    # Parallel directions: sin(w a) / sin(a) -> w as a -> 0, the linear weights.
    coef_u = torch.where(parallel, 1.0 - w, torch.sin((1.0 - w) * angle) / safe_sin)
    coef_v = torch.where(parallel, w, torch.sin(w * angle) / safe_sin)
    direction = coef_u[:, :, None] * u[:, None, :] + coef_v[:, :, None] * v[:, None, :]
    direction = direction / torch.linalg.vector_norm(direction, dim=2, keepdim=True)
    radius = (1.0 - w) * norm_u + w * norm_v
    return (radius[:, :, None] * direction).reshape(first.shape[0], weights.shape[0], *first.shape[1:])


def _decode_rows(model: Model, latents: Tensor, *, z_min: float, z_max: float, **ode: Any) -> ODEResult:
    """Decode (B, T, *S) latents in one solve; x comes back as (B, T, *S)."""
    out = sample(model, latents.reshape(-1, *latents.shape[2:]), z_max=z_max, z_min=z_min, **ode)
    return ODEResult(x=out.x.reshape(latents.shape), nfe=out.nfe)


def interpolate_latents(model: Model, first: Tensor, second: Tensor, *, num_points: int, z_min: float,
                        z_max: float, **ode: Any) -> Interpolation:
    """Decode the `slerp` path between two batches of latents on the plane z = z_max.

    Args:
        model: maps x (B, *S) and z (B,) to the normalised field (B, N+1).
        first, second: (B, *S) latents (e.g. from pfgm.ode.encode), paired row by row.
        num_points: T >= 2 points per path, both ends included.
        ode: keyword arguments of pfgm.ode.sample (method, rtol, atol, steps, gamma, z_exp, options).
    Returns:
        Interpolation with x and latents of shape (B, T, *S); nfe counts the decoding (one solve).
    """
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
        raise ValueError(f"num_points must be an integer >= 2 (both ends included), got {num_points!r}")
    weights = torch.linspace(0.0, 1.0, num_points, dtype=first.dtype, device=first.device)
    latents = slerp(first, second, weights)
    decoded = _decode_rows(model, latents, z_min=z_min, z_max=z_max, **ode)
    return Interpolation(x=decoded.x, latents=latents, weights=weights, nfe=decoded.nfe)


def interpolate(model: Model, first: Tensor, second: Tensor, *, num_points: int, z_min: float, z_max: float,
                encode_z_exp: float | None = None, **ode: Any) -> Interpolation:
    """Encode two batches of data (B, *S) on the plane z = z_min, then `interpolate_latents`.

    `ode` goes to pfgm.ode.encode and pfgm.ode.sample alike, except z_exp: the encoding takes
    `encode_z_exp` (default None, the network's own v_z). The z_exp substitution v_z = f(||v_x||) is
    steep as ||v_x|| / sqrt(N) nears 1, which is where a real image off the learned data sits near
    the plane, so it turns small network errors into a stiff forward flow. x[:, 0] and x[:, -1] of
    the result reproduce `first` and `second` up to the solver's error; nfe counts both directions.
    """
    encoded = encode(model, torch.cat([first, second]), z_min=z_min, z_max=z_max, **{**ode, "z_exp": encode_z_exp})
    latent_first, latent_second = encoded.x.split(first.shape[0])
    path = interpolate_latents(model, latent_first, latent_second, num_points=num_points, z_min=z_min,
                               z_max=z_max, **ode)
    return replace(path, nfe=encoded.nfe + path.nfe)


def scale_latents(latents: Tensor, temperatures: Tensor) -> Tensor:
    """Latents (B, *S) times each temperature (T,) -> (B, T, *S): the norm scales, the direction stays."""
    check_tensor("latents", latents, min_dim=2)
    scale = temperatures.to(latents).reshape(1, -1, *([1] * (latents.dim() - 1)))
    return latents[:, None] * scale


def decode_with_temperature(model: Model, latents: Tensor, temperatures: Tensor, *, z_min: float,
                            z_max: float, **ode: Any) -> ODEResult:
    """Decode latents (B, *S) scaled by each temperature (T,); x of the result is (B, T, *S).

    Temperature 1 is plain decoding; below 1 the latents move toward the pole of the hemisphere
    (less spread), above 1 toward its rim. `ode` as in `interpolate`.
    """
    if not bool((temperatures > 0).all()):
        raise ValueError(f"temperatures must be positive, got {temperatures.tolist()}")
    return _decode_rows(model, scale_latents(latents, temperatures), z_min=z_min, z_max=z_max, **ode)


def flow_heights(z_max: float, z_min: float, frames: int) -> Tensor:
    """`frames` heights (float64) from z_max down to z_min, uniform in sqrt(z), for animations.

    Far above the data the field lines are straight rays with x - y proportional to z, so even steps in
    z move the particles evenly; the square root spends more frames near the plane, where the lines
    bend. (Uniform in ln z, the solver's grid, would spend most frames after the particles have landed.)
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise ValueError(f"frames must be an integer >= 2 (both ends included), got {frames!r}")
    if not 0 < z_min < z_max:
        raise ValueError(f"need 0 < z_min < z_max, got z_min={z_min}, z_max={z_max}")
    roots = torch.linspace(math.sqrt(z_max), math.sqrt(z_min), frames, dtype=torch.float64)
    heights = roots.square()
    heights[0], heights[-1] = z_max, z_min  # exact ends, not sqrt(.)^2 rounded
    return heights


def record_trajectories(model: Model, x: Tensor, heights: Tensor, **ode: Any) -> Trajectory:
    """Follow field lines down through the given heights, keeping the state at each of them.

    One solve through all heights (pfgm.ode.sample_path; fixed-step methods take `steps` per stretch),
    so the states are the solver's own, not interpolations of them.
    Args:
        x: (B, *S) on the plane z = heights[0].
        heights: (T,) decreasing heights, T >= 2 (e.g. `flow_heights`, or exp of pfgm.ode.ln_z_grid).
        ode: keyword arguments of pfgm.ode.sample_path (method, rtol, atol, steps, gamma, z_exp, options).
    Returns: Trajectory with x (T, B, *S) (x[0] is the input) and z = heights as float64.
    """
    heights = torch.as_tensor(heights, dtype=torch.float64).cpu()
    if heights.dim() != 1:
        raise ValueError(f"heights must be one-dimensional, got shape {tuple(heights.shape)}")
    path = sample_path(model, x, heights=heights.tolist(), **ode)
    return Trajectory(x=path.x, z=heights, nfe=path.nfe)


# --- a trained PFGM model and one sampler setting ---------------------------------------------------

@dataclass(frozen=True)
class EncodedImages:
    """Images (K, *S) whose encoding succeeded, their latents (K, *S) on the plane z_max, the number of
    images skipped because their forward flow diverged, and the NFE of every solve (skipped ones too)."""
    images: Tensor
    latents: Tensor
    skipped: int
    nfe: int


def ode_options(model: TrainedModel, settings: SamplerSettings) -> dict[str, Any]:
    """pfgm.ode's keywords (method, rtol, atol, steps, schedule, rho, z_exp, gamma) for a PFGM model
    sampled with `settings`; gamma is the model's (the field's normalisation, default 5)."""
    return dict(method=settings.method, rtol=settings.rtol, atol=settings.atol, steps=settings.steps,
                schedule=settings.schedule, rho=settings.rho, z_exp=settings.z_exp,
                gamma=float(model.hyperparameters.get("gamma", 5.0)))


def encode_images(model: TrainedModel, images: Tensor, settings: SamplerSettings, *, wanted: int, attempts: int,
                  generator: torch.Generator) -> EncodedImages:
    """Encode images (n, *S), one solve each, in random order (`generator`) until `wanted` succeed,
    trying at most wanted * attempts of them.

    A trained field can make the forward flow of some images diverge (the solver gives up, or returns
    non-finite latents); those are skipped and counted rather than failing the caller. The encoding takes
    the network's own v_z (z_exp None, as `interpolate` explains); each image moves to the model's device.
    """
    ode = {**ode_options(model, settings), "z_exp": None}
    z_max = float(model.hyperparameters["z_max"])
    kept, latents, skipped, nfe = [], [], 0, 0
    for index in torch.randperm(len(images), generator=generator)[: wanted * attempts].tolist():
        image = images[index: index + 1].to(model.device)
        try:
            out = encode(model.net, image, z_min=settings.z_min, z_max=z_max, **ode)
        except SolveDiverged:
            skipped += 1
            continue
        nfe += out.nfe
        if not bool(torch.isfinite(out.x).all()):
            skipped += 1
            continue
        kept.append(image)
        latents.append(out.x)
        if len(kept) == wanted:
            break
    return EncodedImages(images=torch.cat(kept or [images[:0]]), latents=torch.cat(latents or [images[:0]]),
                         skipped=skipped, nfe=nfe)


def interpolate_encoded(model: TrainedModel, encoded: EncodedImages, settings: SamplerSettings, *,
                        num_points: int) -> Interpolation:
    """`interpolate_latents` between the first and the second half of the encoded images, paired row by
    row (an odd last image is left out); x of the result is (K // 2, num_points, *S)."""
    pairs = len(encoded.latents) // 2
    return interpolate_latents(model.net, encoded.latents[:pairs], encoded.latents[pairs: 2 * pairs],
                               num_points=num_points, z_min=settings.z_min, z_max=float(model.hyperparameters["z_max"]),
                               **ode_options(model, settings))


def decode_prior_with_temperature(model: TrainedModel, settings: SamplerSettings, temperatures: Sequence[float], *,
                                  num_latents: int, generator: torch.Generator) -> ODEResult:
    """num_latents prior draws (the sampler's prior with `settings`, from `generator`) decoded at each
    temperature (`decode_with_temperature`); x of the result is (num_latents, T, *S)."""
    latents = sampler_for(model, settings).prior(num_latents, generator)
    return decode_with_temperature(model.net, latents, torch.tensor(temperatures), z_min=settings.z_min,
                                   z_max=float(model.hyperparameters["z_max"]), **ode_options(model, settings))


def prior_trajectories(model: TrainedModel, settings: SamplerSettings, *, num_points: int, frames: int,
                       generator: torch.Generator) -> Trajectory:
    """num_points prior draws (from `generator`) followed from z_max down to settings.z_min, their states
    kept at `frames` heights (`flow_heights`, `record_trajectories`): x (frames, num_points, *S)."""
    start = sampler_for(model, settings).prior(num_points, generator)
    heights = flow_heights(float(model.hyperparameters["z_max"]), settings.z_min, frames)
    return record_trajectories(model.net, start, heights, **ode_options(model, settings))
