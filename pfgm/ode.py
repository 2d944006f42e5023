"""The backward ODE anchored on z: sampling, encoding and likelihood (PFGM.md sections 4, 5).

Along a field line dx/dz = v_x / v_z. With t = ln z the state is x alone (z = e^t is known, so it
neither rides along as a channel nor enters the error norm, unlike the official code):

    dx/dt = z * v_x(x, z) / v_z(x, z),   t from ln z_max down to ln z_min (sampling) or back up
    (encoding). The solver is torchdiffeq on x's device; nothing is copied to the host per step.

Every solver shares one contract: `sample(model, x, ...)` walks a grid in ln z; adaptive methods get
the two end points, fixed-step methods the grid built by `ln_z_grid`. NFE is counted by wrapping the
model, never inferred from the method.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torchdiffeq import odeint
from torchdiffeq._impl.odeint import SOLVERS

from pfgm._checks import check_finite, check_positive, check_tensor
from pfgm._random import draw
from pfgm.prior import prior_log_prob

Model = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict], None]

#: torchdiffeq methods that choose their own steps; all others walk the given grid.
ADAPTIVE_METHODS = frozenset({"dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun", "scipy_solver"})
METHODS = tuple(sorted(SOLVERS))
#: Defaults we add to torchdiffeq's options. Its explicit Adams default (order 12) diverges on a
#: fixed grid: y' = -y on [0, 1] with 100 steps ends at 0.735 instead of 0.368; order 4 is right.
METHOD_OPTIONS = {"explicit_adams": {"max_order": 4}}


@dataclass(frozen=True)
class ODEResult:
    """Solver output: `x` has the shape of the input batch, `nfe` counts network evaluations."""
    x: Tensor
    nfe: int


def ln_z_grid(z_start: float, z_end: float, steps: int, *, device=None) -> Tensor:
    """`steps + 1` values of ln z, uniform from ln z_start to ln z_end (float64 for exact ends)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer for fixed-step methods, got {steps!r}")
    return torch.linspace(math.log(z_start), math.log(z_end), steps + 1, dtype=torch.float64, device=device)


class _FieldLineDrift:
    """dx/dt = z v_x / v_z for a batch of flattened points, counting network evaluations."""

    def __init__(self, model: Model, shape: torch.Size, *, gamma: float, z_exp: float | None,
                 callback: Callback | None):
        self.model, self.shape, self.gamma, self.z_exp, self.callback = model, shape, gamma, z_exp, callback
        self.data_dims = math.prod(shape[1:])
        self.nfe = 0

    def __call__(self, t: Tensor, flat_x: Tensor) -> Tensor:
        z = torch.exp(t).to(flat_x.dtype)
        x = flat_x.reshape(self.shape)
        output = self.model(x, z.expand(self.shape[0])).to(flat_x.dtype)
        self.nfe += 1
        v_x, v_z = output[:, :-1], output[:, -1]
        if self.z_exp is not None and float(z) < self.z_exp:
            v_z = self._exact_v_z(v_x, z)
        else:
            # E_z = -z < 0 everywhere above the plane, so v_z >= 0 is a network error; it would make
            # the drift infinite or reverse the flow. There the exact relation stands in for v_z.
            v_z = torch.where(v_z < 0, v_z, self._exact_v_z(v_x, z))
        drift = z * v_x / v_z[:, None]
        if self.callback is not None:
            self.callback(dict(x=x, z=float(z), nfe=self.nfe, drift=drift.reshape(self.shape)))
        return drift

    def _exact_v_z(self, v_x: Tensor, z: Tensor) -> Tensor:
        """v_z from E_z = -z and the field norm implied by ||v_x|| (PFGM.md section 4, z_exp).

        With a = ||v_x|| / sqrt(N) = e / (sqrt(e^2 + z^2) + gamma), e = ||E_x||, the official code
        takes e = gamma a / (1 - a), which is the z -> 0 limit. Solving the quadratic instead gives
        e = a (gamma + sqrt(a^2 gamma^2 + (1 - a^2) z^2)) / (1 - a^2), exact at every height.
        """
        sqrt_dims = math.sqrt(self.data_dims)
        a = (torch.linalg.vector_norm(v_x, dim=1) / sqrt_dims).clamp(max=1.0 - 1e-6)
        gamma, z_sq = self.gamma, z.square()
        field_x_norm = a * (gamma + torch.sqrt((a * gamma).square() + (1 - a.square()) * z_sq)) / (1 - a.square())
        field_norm = torch.sqrt(field_x_norm.square() + z_sq)
        return -sqrt_dims * z / (field_norm + gamma)


def _check_heights(z_min: float, z_max: float) -> None:
    check_positive("z_min", z_min)
    check_positive("z_max", z_max)
    if z_min >= z_max:
        raise ValueError(f"z_min must be smaller than z_max, got z_min={z_min}, z_max={z_max}")


def _check_method(method: str, steps: int | None) -> None:
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if method not in ADAPTIVE_METHODS and steps is None:
        raise ValueError(f"method {method!r} is a fixed-step method: pass steps (grid points in ln z)")


def _time_grid(method: str, z_start: float, z_end: float, steps: int | None, device) -> Tensor:
    if method in ADAPTIVE_METHODS:
        return torch.tensor([math.log(z_start), math.log(z_end)], dtype=torch.float64, device=device)
    return ln_z_grid(z_start, z_end, steps, device=device)


def _integrate(drift: Callable, state: Tensor, *, method: str, z_start: float, z_end: float,
               steps: int | None, rtol: float, atol: float, options: dict | None) -> Tensor:
    grid = _time_grid(method, z_start, z_end, steps, state.device)
    options = {**METHOD_OPTIONS.get(method, {}), **(options or {})}
    solution = odeint(drift, state, grid, rtol=rtol, atol=atol, method=method, options=options)
    return solution[-1]


def _flow(model: Model, x: Tensor, *, z_start: float, z_end: float, method: str, rtol: float,
          atol: float, steps: int | None, gamma: float, z_exp: float | None, callback: Callback | None,
          options: dict | None) -> ODEResult:
    check_finite("x", check_tensor("x", x, min_dim=2))
    _check_method(method, steps)
    drift = _FieldLineDrift(model, x.shape, gamma=gamma, z_exp=z_exp, callback=callback)
    with torch.no_grad():
        end = _integrate(drift, x.reshape(x.shape[0], -1), method=method, z_start=z_start, z_end=z_end,
                         steps=steps, rtol=rtol, atol=atol, options=options)
    return ODEResult(x=end.reshape(x.shape), nfe=drift.nfe)


def sample(model: Model, x: Tensor, *, z_max: float, z_min: float, method: str = "dopri5",
           rtol: float = 1e-4, atol: float = 1e-4, steps: int | None = None, gamma: float = 5.0,
           z_exp: float | None = None, callback: Callback | None = None,
           options: dict | None = None) -> ODEResult:
    """Follow field lines from the plane z = z_max down to z = z_min.

    Args:
        model: maps x (B, *S) and z (B,) to the normalised field (B, N+1).
        x: (B, *S) starting points on the plane z = z_max (from `pfgm.prior.sample_prior`).
        method: any torchdiffeq method; fixed-step ones need `steps` (uniform in ln z).
        z_exp: below this height replace the network's v_z by the exact relation E_z = -z.
        callback: called after each network evaluation with dict(x, z, nfe, drift).
        options: passed to torchdiffeq (e.g. {"solver": "RK45"} for method="scipy_solver").
    Returns:
        ODEResult with x of shape (B, *S) on the plane z = z_min and the NFE made.
    """
    _check_heights(z_min, z_max)
    return _flow(model, x, z_start=z_max, z_end=z_min, method=method, rtol=rtol, atol=atol, steps=steps,
                 gamma=gamma, z_exp=z_exp, callback=callback, options=options)


def _path_grid(method: str, heights: list[float], steps: int | None, device) -> tuple[Tensor, Tensor]:
    """The ln z grid of one solve through every height, and the positions of the heights in it.

    Adaptive methods get the heights themselves (torchdiffeq reports the state at each); fixed-step
    methods take `steps` uniform steps in ln z across every stretch between consecutive heights.
    """
    if method in ADAPTIVE_METHODS:
        grid = torch.tensor([math.log(h) for h in heights], dtype=torch.float64, device=device)
        return grid, torch.arange(len(heights), device=device)
    stretches = [ln_z_grid(upper, lower, steps, device=device)[:-1] for upper, lower in zip(heights, heights[1:])]
    end = torch.tensor([math.log(heights[-1])], dtype=torch.float64, device=device)
    return torch.cat([*stretches, end]), torch.arange(len(heights), device=device) * steps


def sample_path(model: Model, x: Tensor, *, heights: list[float], method: str = "dopri5", rtol: float = 1e-4,
                atol: float = 1e-4, steps: int | None = None, gamma: float = 5.0, z_exp: float | None = None,
                options: dict | None = None) -> ODEResult:
    """`sample` through several heights in one solve, keeping the state at each of them.

    heights: T >= 2 strictly decreasing positive values; x (B, *S) lies on the plane z = heights[0].
    Fixed-step methods take `steps` per stretch between consecutive heights. Returns ODEResult with
    x of shape (T, B, *S), x[0] being the input.
    """
    heights = [float(h) for h in heights]
    if len(heights) < 2 or heights[-1] <= 0 or any(b >= a for a, b in zip(heights, heights[1:])):
        raise ValueError(f"heights must be T >= 2 positive, strictly decreasing values, got {heights}")
    check_finite("x", check_tensor("x", x, min_dim=2))
    _check_method(method, steps)
    drift = _FieldLineDrift(model, x.shape, gamma=gamma, z_exp=z_exp, callback=None)
    grid, kept = _path_grid(method, heights, steps, x.device)
    with torch.no_grad():
        solution = odeint(drift, x.reshape(x.shape[0], -1), grid, rtol=rtol, atol=atol, method=method,
                          options={**METHOD_OPTIONS.get(method, {}), **(options or {})})
    return ODEResult(x=solution[kept].reshape(len(heights), *x.shape), nfe=drift.nfe)


def encode(model: Model, x: Tensor, *, z_min: float, z_max: float, method: str = "dopri5",
           rtol: float = 1e-4, atol: float = 1e-4, steps: int | None = None, gamma: float = 5.0,
           z_exp: float | None = None, callback: Callback | None = None,
           options: dict | None = None) -> ODEResult:
    """The same ODE forward: data (B, *S) on the plane z_min -> latents (B, *S) on the plane z_max."""
    _check_heights(z_min, z_max)
    return _flow(model, x, z_start=z_min, z_end=z_max, method=method, rtol=rtol, atol=atol, steps=steps,
                 gamma=gamma, z_exp=z_exp, callback=callback, options=options)


def _rademacher(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    bits = draw(torch.randint, 0, 2, shape, generator=generator, device=like.device).to(like.dtype)
    return 2.0 * bits - 1.0


def _exact_trace(drift: Tensor, x: Tensor) -> Tensor:
    """tr(d drift / d x) with one backward pass per data dimension (for small N)."""
    columns = [torch.autograd.grad(drift[:, i].sum(), x, retain_graph=True)[0][:, i]
               for i in range(x.shape[1])]
    return torch.stack(columns, dim=1).sum(dim=1)


def _hutchinson_trace(drift: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """Mean of probe^T J probe over K fixed probes of shape (K, B, N), one batched backward pass."""
    products = torch.autograd.grad(drift, x, grad_outputs=probes, retain_graph=True, is_grads_batched=True)[0]
    return (products * probes).sum(dim=2).mean(dim=0)


class _DivergenceDrift:
    """Augmented drift [dx/dt, tr(d(dx/dt)/dx)] on the state [x_flat, integrated divergence]."""

    def __init__(self, drift: _FieldLineDrift, probes: Tensor | None):
        self.drift, self.probes = drift, probes

    def __call__(self, t: Tensor, state: Tensor) -> Tensor:
        with torch.enable_grad():
            x = state[:, :-1].detach().requires_grad_(True)
            dx = self.drift(t, x)
            trace = _exact_trace(dx, x) if self.probes is None else _hutchinson_trace(dx, x, self.probes)
        return torch.cat([dx.detach(), trace.detach()[:, None]], dim=1)


def log_likelihood(model: Model, x: Tensor, *, z_min: float, z_max: float, method: str = "dopri5",
                   rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None, gamma: float = 5.0,
                   z_exp: float | None = None, hutchinson: int | None = None,
                   generator: torch.Generator | None = None, options: dict | None = None) -> Tensor:
    """Log density in nats of x (B, *S) on the plane z = z_min under the model's flow, shape (B,).

    Instantaneous change of variables: integrating x forward to z_max,
        log p_min(x) = log p_prior(x(z_max)) + integral of tr(d(dx/dt)/dx) dt.
    `hutchinson=None` takes the exact trace (N backward passes per evaluation, for small N);
    an integer K uses K Rademacher probes drawn once from `generator` and kept along the path.
    """
    _check_heights(z_min, z_max)
    check_finite("x", check_tensor("x", x, min_dim=2))
    _check_method(method, steps)
    if hutchinson is not None and (isinstance(hutchinson, bool) or not isinstance(hutchinson, int)
                                   or hutchinson < 1):
        raise ValueError(f"hutchinson must be None (exact trace) or a positive integer, got {hutchinson!r}")
    flat = x.reshape(x.shape[0], -1)
    probes = None if hutchinson is None else _rademacher((hutchinson, *flat.shape), flat, generator)
    drift = _FieldLineDrift(model, x.shape, gamma=gamma, z_exp=z_exp, callback=None)
    state = torch.cat([flat, flat.new_zeros(flat.shape[0], 1)], dim=1)
    end = _integrate(_DivergenceDrift(drift, probes), state, method=method, z_start=z_min, z_end=z_max,
                     steps=steps, rtol=rtol, atol=atol, options=options)
    latent = end[:, :-1].reshape(x.shape)
    return prior_log_prob(latent, z_max=z_max) + end[:, -1]


def dequantize(images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """uint8 images in 0..255 -> float32 in [-1, 1) with uniform dequantisation noise."""
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0..255) for dequantisation, got dtype {images.dtype}")
    noise = draw(torch.rand, images.shape, generator=generator, device=images.device)
    return (images.float() + noise) / 128.0 - 1.0


def bits_per_dim(log_prob: Tensor, data_dims: int) -> Tensor:
    """Bits/dim of 8-bit data from the log density (nats) of its dequantised [-1, 1] scaling.

    The map u -> u / 128 - 1 from [0, 256) to [-1, 1) has Jacobian 128^-N, hence
    bpd = -log p / (N ln 2) + 7.
    """
    return -log_prob / (data_dims * math.log(2.0)) + 7.0
