"""Fixed-grid solvers of the field-line ODE that step in z (PFGM.md section 4).

Along a field line dx/dz = v_x / v_z. The solvers see it as f(t, x) = dx/dt = z dx/dz with t = ln z
(`pfgm.ode`'s drift) and walk a given grid of ln z values, k-diffusion style: the grid is built
elsewhere (`uniform_ln_z`, `power_z`), the solver only walks it. x is a flat batch (B, N); every
solver returns the state at grid[-1] and calls `callback(i, x)` with the state at grid[i + 1].

Why step in z. The field obeys E_z = -z, so dx/dz = E_x / E_z = (x - y_hat) / z with y_hat(x, z) the
charge-weighted mean of the data (for a network, y_hat = x - f). That is EDM's ODE with z for sigma.
On a single charge's radial field lines y_hat is constant and the exact solution is
x(z') = y + (z' / z) (x - y), which a step in z reproduces for any step size; a step of the same size
in ln z does not (it is x + (t' - t) f, first order in the step). With h = t' - t:

    euler     (official): x' = x + (z' - z) dx/dz = x + expm1(h) f(t, x)
    heun      (official improved Euler): Heun's rule in z, x' = x + (z' - z) (g + g') / 2 with
              g' taken at the Euler point; the last step is a plain Euler step (NFE 2 steps - 1)
    dpmpp_2m  DPM-Solver++(2M) (Lu et al. 2022) in this ODE's data-prediction form: the exponential
              integrator x' = x + expm1(h) (x - y_eff), where y_eff extrapolates y_hat linearly in
              t from the previous step (second order, one evaluation a step); the first step and,
              as DPM-Solver++ advises for few steps, the last are first order (= euler). Not generic:
              it needs the state to be the data point x (no likelihood).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from pfgm.names import SCHEDULES

Drift = Callable[[Tensor, Tensor], Tensor]  # f(t (0-dim float64), x (B, N)) -> dx/dt (B, N)
StepCallback = Callable[[int, Tensor], None]


def uniform_ln_z(z_start: float, z_end: float, steps: int, *, device=None) -> Tensor:
    """`steps + 1` values of ln z, uniform from ln z_start to ln z_end (float64, exact ends)."""
    _check_steps(steps)
    return torch.linspace(math.log(z_start), math.log(z_end), steps + 1, dtype=torch.float64, device=device)


def power_z(z_start: float, z_end: float, steps: int, *, rho: float, device=None) -> Tensor:
    """ln z of EDM's schedule applied to z: `steps + 1` heights uniform in z^(1/rho) (float64).

    rho = 1 is uniform in z; large rho crowds the steps near the smaller end (rho -> infinity tends to
    uniform in ln z). Measured on the digits model, rho 4-5 suits few-step sampling (docs/SAMPLERS.md).
    """
    _check_steps(steps)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}")
    ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64, device=device)
    start, end = z_start ** (1.0 / rho), z_end ** (1.0 / rho)
    grid = ((start + ramp * (end - start)) ** rho).log()
    grid[0], grid[-1] = math.log(z_start), math.log(z_end)  # exact ends despite the power round trip
    return grid


def build_grid(z_start: float, z_end: float, steps: int, *, schedule: str = "ln_z", rho: float | None = None,
               device=None) -> Tensor:
    """The ln z grid of a schedule name: "ln_z" (uniform in ln z) or "power" (needs rho)."""
    if schedule == "ln_z":
        return uniform_ln_z(z_start, z_end, steps, device=device)
    if schedule == "power":
        if rho is None:
            raise ValueError("the power schedule needs rho (EDM's exponent; e.g. 5)")
        return power_z(z_start, z_end, steps, rho=rho, device=device)
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer for fixed-step methods, got {steps!r}")


def _steps(grid: Tensor) -> list[tuple[Tensor, Tensor, float]]:
    """(t, t_next, h) for each step of the grid; t as 0-dim float64 tensors for the drift."""
    return [(grid[i], grid[i + 1], float(grid[i + 1] - grid[i])) for i in range(len(grid) - 1)]


def euler(drift: Drift, x: Tensor, grid: Tensor, *, callback: StepCallback | None = None) -> Tensor:
    """The official Euler scheme: a step in z from each grid point, x' = x + expm1(h) f(t, x)."""
    for i, (t, _, h) in enumerate(_steps(grid)):
        x = x + math.expm1(h) * drift(t, x)
        if callback is not None:
            callback(i, x)
    return x


def heun(drift: Drift, x: Tensor, grid: Tensor, *, callback: StepCallback | None = None) -> Tensor:
    """The official improved Euler: Heun's rule in z, the last step a plain Euler step.

    In z, (z' - z) g = expm1(h) f(t, x) and (z' - z) g' = -expm1(-h) f(t', x_euler), since g = f / z.
    """
    steps = _steps(grid)
    for i, (t, t_next, h) in enumerate(steps):
        slope = drift(t, x)
        x_euler = x + math.expm1(h) * slope
        if i == len(steps) - 1:
            x = x_euler
        else:
            x = x + 0.5 * (math.expm1(h) * slope - math.expm1(-h) * drift(t_next, x_euler))
        if callback is not None:
            callback(i, x)
    return x


def dpmpp_2m(drift: Drift, x: Tensor, grid: Tensor, *, callback: StepCallback | None = None) -> Tensor:
    """DPM-Solver++(2M) in data prediction: x' = x + expm1(h) (x - y_eff), one evaluation a step.

    y_hat = x - f(t, x) is the field's data estimate. y_eff = y_hat + (y_hat - y_prev) / (2 r) with
    r = h_prev / h, the linear extrapolation in t of the multistep method; first and last steps use
    y_hat itself (first order: the official Euler step).
    """
    steps = _steps(grid)
    previous: tuple[Tensor, float] | None = None
    for i, (t, _, h) in enumerate(steps):
        estimate = x - drift(t, x)
        target = estimate
        if previous is not None and i < len(steps) - 1:
            y_prev, h_prev = previous
            target = estimate + (estimate - y_prev) * (h / (2.0 * h_prev))
        x = x + math.expm1(h) * (x - target)
        previous = (estimate, h)
        if callback is not None:
            callback(i, x)
    return x


#: Our solvers by method name (pfgm.names.ZSOLVERS); pfgm.names.GENERIC says which integrate any state (e.g.
#: x with its log-density).
SOLVERS: dict[str, Callable[..., Tensor]] = {"euler": euler, "heun": heun, "dpmpp_2m": dpmpp_2m}


def evaluations(method: str, steps: int) -> int:
    """Network evaluations of one solve with `steps` steps (heun: 2 steps - 1; the others: steps)."""
    return 2 * steps - 1 if method == "heun" else steps
