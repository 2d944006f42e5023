"""The backward ODE anchored on z: sampling and encoding (PFGM.md sections 4, 5).

Along a field line dx/dz = v_x / v_z. With t = ln z the state is x alone (z = e^t is known, so it
neither rides along as a channel nor enters the error norm, unlike the official code):

    dx/dt = z * v_x(x, z) / v_z(x, z),   t from ln z_max down to ln z_min (sampling) or back up
    (encoding). Everything runs on x's device; nothing is copied to the host per step.

Every solver shares one contract: `sample(model, x, ...)` walks a grid in ln z; adaptive methods get
the two end points, fixed-step methods the grid of `schedule` (pfgm.zsolvers: uniform in ln z, the
official grid, or EDM's power schedule in z). NFE is counted by wrapping the model, never inferred.

Methods (METHODS):
- euler, heun, dpmpp_2m: ours (pfgm.zsolvers), stepping in z: euler and heun are the official PFGM
  fixed-step schemes, dpmpp_2m the few-step multistep exponential integrator.
- every torchdiffeq method under its own name (dopri5 is RK45, heun2, rk4, ...), except that its Euler,
  which steps in ln z, is called euler_ln_z. torchdiffeq's fixed-step methods step in ln z.
- scipy_rk45: scipy's solve_ivp RK45 through torchdiffeq, the official sampler's solver, for parity
  checks. It copies the state to the host every evaluation and, unlike the official code, keeps z out
  of the state (and so out of the error norm); its NFE differs from dopri5's (different step control).
  dopri5 may evaluate the field slightly below z_min when its last step overshoots the end (it then
  interpolates back); scipy's RK45 does not step past the end.

A torchdiffeq solver that gives up (its step size collapses on a NaN or exploding field) raises
`SolveDiverged`; fixed-step methods never give up and return whatever numbers the field led to.

The likelihood integrates the same drift with its divergence: pfgm.likelihood.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torchdiffeq import odeint

from pfgm import zsolvers
from pfgm._checks import check_finite, check_positive, check_tensor
from pfgm.names import ADAPTIVE_METHODS, METHODS, TORCHDIFFEQ_METHODS

Model = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict], None]

#: How torchdiffeq's adaptive solvers say they gave up: it raises a bare AssertionError, so its text is
#: the only way to tell a diverged solve from a bug, and this is the one place that reads it.
GAVE_UP = ("underflow in dt", "max_num_steps exceeded")


class SolveDiverged(RuntimeError):
    """The solver gave up: the field turned non-finite or exploded along the way."""


@dataclass(frozen=True)
class ODEResult:
    """Solver output: `x` has the shape of the input batch, `nfe` counts network evaluations;
    `path` (T, B, *S), when asked for, the states at the T points of the grid, path[0] the input."""
    x: Tensor
    nfe: int
    path: Tensor | None = None


ln_z_grid = zsolvers.uniform_ln_z


class _FieldLineDrift:
    """dx/dt = z v_x / v_z for a batch of flattened points, counting network evaluations."""

    def __init__(self, model: Model, shape: torch.Size, *, gamma: float, z_exp: float | None,
                 callback: Callback | None):
        self.model, self.shape, self.gamma, self.z_exp, self.callback = model, shape, gamma, z_exp, callback
        self.data_dims = math.prod(shape[1:])
        self.nfe = 0

    def __call__(self, t: Tensor, flat_x: Tensor) -> Tensor:
        z = torch.exp(t).to(flat_x.dtype)
        x = flat_x.reshape(-1, *self.shape[1:])  # any number of points (the exact trace copies them)
        output = self.model(x, z.expand(len(x))).to(flat_x.dtype)
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
            self.callback(dict(x=x, z=float(z), nfe=self.nfe, drift=drift.reshape(x.shape)))
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


@dataclass(frozen=True)
class _Solver:
    """A checked solver setting: method (METHODS), steps and grid schedule, or tolerances."""
    method: str
    steps: int | None
    rtol: float
    atol: float
    schedule: str
    rho: float | None
    options: dict | None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.method not in ADAPTIVE_METHODS and self.steps is None:
            raise ValueError(f"method {self.method!r} is a fixed-step method: pass steps (steps of the grid)")
        if self.schedule not in zsolvers.SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(zsolvers.SCHEDULES)}, got {self.schedule!r}")

    def grid(self, z_start: float, z_end: float, device) -> Tensor:
        """ln z points: the two ends (adaptive methods) or the schedule's grid of `steps` steps."""
        if self.method in ADAPTIVE_METHODS:
            return torch.tensor([math.log(z_start), math.log(z_end)], dtype=torch.float64, device=device)
        return zsolvers.build_grid(z_start, z_end, self.steps, schedule=self.schedule, rho=self.rho, device=device)

    def solve(self, drift: Callable, state: Tensor, grid: Tensor, *, path: bool = False) -> Tensor:
        """The state at grid[-1] (B, N), or at every grid point (T, B, N) when `path`."""
        if self.method in zsolvers.SOLVERS:
            states = [state]
            callback = (lambda i, x: states.append(x)) if path else None
            end = zsolvers.SOLVERS[self.method](drift, state, grid, callback=callback)
            return torch.stack(states) if path else end
        name, defaults = TORCHDIFFEQ_METHODS[self.method]
        with warnings.catch_warnings():
            # torchdiffeq passes scipy a min_step that its RK45 ignores (and warns about)
            warnings.filterwarnings("ignore", message=".*no effect for a chosen solver: `min_step`")
            try:
                solution = odeint(drift, state, grid, rtol=self.rtol, atol=self.atol, method=name,
                                  options={**defaults, **(self.options or {})})
            except AssertionError as err:
                if not str(err).startswith(GAVE_UP):
                    raise
                raise SolveDiverged(f"{self.method} gave up: {err}") from err
        return solution if path else solution[-1]


def _flow(model: Model, x: Tensor, solver: _Solver, *, z_start: float, z_end: float, gamma: float,
          z_exp: float | None, callback: Callback | None, path: bool = False) -> ODEResult:
    check_finite("x", check_tensor("x", x, min_dim=2))
    drift = _FieldLineDrift(model, x.shape, gamma=gamma, z_exp=z_exp, callback=callback)
    grid = solver.grid(z_start, z_end, x.device)
    with torch.no_grad():
        solution = solver.solve(drift, x.reshape(x.shape[0], -1), grid, path=path)
    if not path:
        return ODEResult(x=solution.reshape(x.shape), nfe=drift.nfe)
    states = solution.reshape(len(grid), *x.shape)
    return ODEResult(x=states[-1], nfe=drift.nfe, path=states)


def sample(model: Model, x: Tensor, *, z_max: float, z_min: float, method: str = "dopri5",
           rtol: float = 1e-4, atol: float = 1e-4, steps: int | None = None, schedule: str = "ln_z",
           rho: float | None = None, gamma: float = 5.0, z_exp: float | None = None,
           callback: Callback | None = None, options: dict | None = None, path: bool = False) -> ODEResult:
    """Follow field lines from the plane z = z_max down to z = z_min.

    Args:
        model: maps x (B, *S) and z (B,) to the normalised field (B, N+1).
        x: (B, *S) starting points on the plane z = z_max (from `pfgm.prior.sample_prior`).
        method: one of METHODS (module docstring); fixed-step ones need `steps`.
        schedule, rho: the fixed-step grid, "ln_z" (uniform in ln z) or "power" (EDM's schedule in z).
        z_exp: below this height replace the network's v_z by the exact relation E_z = -z.
        callback: called after each network evaluation with dict(x, z, nfe, drift).
        options: passed to torchdiffeq.
        path: also keep the state at every point of the grid (the two ends for adaptive methods).
    Returns:
        ODEResult with x of shape (B, *S) on the plane z = z_min and the NFE made (with `path`, also
        the states (T, B, *S) at the T grid points).
    Raises:
        SolveDiverged: an adaptive method gave up.
    """
    _check_heights(z_min, z_max)
    solver = _Solver(method, steps, rtol, atol, schedule, rho, options)
    return _flow(model, x, solver, z_start=z_max, z_end=z_min, gamma=gamma, z_exp=z_exp, callback=callback,
                 path=path)


def _path_grid(solver: _Solver, heights: list[float], device) -> tuple[Tensor, Tensor]:
    """The ln z grid of one solve through every height, and the positions of the heights in it.

    Adaptive methods get the heights themselves (the solver reports the state at each); fixed-step
    methods take the schedule's `steps` steps across every stretch between consecutive heights.
    """
    if solver.method in ADAPTIVE_METHODS:
        grid = torch.tensor([math.log(h) for h in heights], dtype=torch.float64, device=device)
        return grid, torch.arange(len(heights), device=device)
    stretches = [solver.grid(upper, lower, device)[:-1] for upper, lower in zip(heights, heights[1:])]
    end = torch.tensor([math.log(heights[-1])], dtype=torch.float64, device=device)
    return torch.cat([*stretches, end]), torch.arange(len(heights), device=device) * solver.steps


def sample_path(model: Model, x: Tensor, *, heights: list[float], method: str = "dopri5", rtol: float = 1e-4,
                atol: float = 1e-4, steps: int | None = None, schedule: str = "ln_z", rho: float | None = None,
                gamma: float = 5.0, z_exp: float | None = None, options: dict | None = None) -> ODEResult:
    """`sample` through several heights in one solve, keeping the state at each of them.

    heights: T >= 2 strictly decreasing positive values; x (B, *S) lies on the plane z = heights[0].
    Fixed-step methods take `steps` per stretch between consecutive heights. Returns ODEResult with
    x of shape (T, B, *S), x[0] being the input.
    """
    heights = [float(h) for h in heights]
    if len(heights) < 2 or heights[-1] <= 0 or any(b >= a for a, b in zip(heights, heights[1:])):
        raise ValueError(f"heights must be T >= 2 positive, strictly decreasing values, got {heights}")
    check_finite("x", check_tensor("x", x, min_dim=2))
    solver = _Solver(method, steps, rtol, atol, schedule, rho, options)
    drift = _FieldLineDrift(model, x.shape, gamma=gamma, z_exp=z_exp, callback=None)
    grid, kept = _path_grid(solver, heights, x.device)
    with torch.no_grad():
        solution = solver.solve(drift, x.reshape(x.shape[0], -1), grid, path=True)
    return ODEResult(x=solution[kept].reshape(len(heights), *x.shape), nfe=drift.nfe)


def encode(model: Model, x: Tensor, *, z_min: float, z_max: float, method: str = "dopri5",
           rtol: float = 1e-4, atol: float = 1e-4, steps: int | None = None, schedule: str = "ln_z",
           rho: float | None = None, gamma: float = 5.0, z_exp: float | None = None,
           callback: Callback | None = None, options: dict | None = None) -> ODEResult:
    """The same ODE forward: data (B, *S) on the plane z_min -> latents (B, *S) on the plane z_max."""
    _check_heights(z_min, z_max)
    solver = _Solver(method, steps, rtol, atol, schedule, rho, options)
    return _flow(model, x, solver, z_start=z_min, z_end=z_max, gamma=gamma, z_exp=z_exp, callback=callback)
