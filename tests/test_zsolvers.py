"""Fixed-grid solvers that step in z (pfgm.zsolvers), checked against the exact empirical field."""
from __future__ import annotations

import math

import pytest
import torch

from pfgm import zsolvers
from pfgm.field import normalized_field
from pfgm.likelihood import log_likelihood
from pfgm.ode import METHODS, _FieldLineDrift, sample, sample_path

pytestmark = pytest.mark.usefixtures("single_thread")

Z_MAX = 20.0


def exact_field(charges: torch.Tensor):
    return lambda x, z: normalized_field(x, z, charges)


def test_stepping_in_z_is_exact_on_a_point_charge_and_stepping_in_ln_z_is_not(generator):
    # One charge: field lines are straight rays from it, x(z) = y + (z / z_max) (x0 - y).
    charge = torch.randn(1, 3, generator=generator, dtype=torch.float64)
    start = charge + 5.0 * torch.randn(8, 3, generator=generator, dtype=torch.float64)
    exact = charge + (1e-3 / Z_MAX) * (start - charge)
    for method in ("euler", "heun", "dpmpp_2m"):
        for schedule, rho in (("ln_z", None), ("power", 5.0)):
            out = sample(exact_field(charge), start, z_max=Z_MAX, z_min=1e-3, method=method, steps=3,
                         schedule=schedule, rho=rho)
            torch.testing.assert_close(out.x, exact, rtol=1e-10, atol=1e-10)
    in_ln_z = sample(exact_field(charge), start, z_max=Z_MAX, z_min=1e-3, method="euler_ln_z", steps=3).x
    assert float((in_ln_z - exact).norm(dim=1).min()) > 1.0  # 3 steps of -3.3 in ln z overshoot badly


@pytest.fixture(scope="module")
def charges_and_reference():
    """Six charges in the plane, starts on the prior plane, and the converged solve down to z = 0.3.

    Ending at z = 0.3, above the charges' spacing scale, keeps the field smooth along the paths,
    so errors show the schemes' orders instead of which charge a path ends on.
    """
    generator = torch.Generator().manual_seed(3)
    charges = torch.rand(6, 2, generator=generator, dtype=torch.float64) * 2 - 1
    start = 10.0 * torch.randn(16, 2, generator=generator, dtype=torch.float64)
    reference = sample(exact_field(charges), start, z_max=Z_MAX, z_min=0.3, method="dopri5", rtol=1e-12,
                       atol=1e-12).x
    return charges, start, reference


def _error(charges, start, reference, method: str, steps: int) -> float:
    x = sample(exact_field(charges), start, z_max=Z_MAX, z_min=0.3, method=method, steps=steps).x
    return float((x - reference).norm(dim=1).max())


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2), ("euler_ln_z", 1),
                                           ("heun2", 2)])
def test_errors_fall_at_the_order_of_the_scheme(charges_and_reference, method, order):
    errors = [_error(*charges_and_reference, method, steps) for steps in (40, 80, 160)]
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    # Doubling the steps divides the error by 2^order (the last step of heun and dpmpp_2m is a
    # first-order step, an O(h^2) local error that does not spoil the global order 2).
    for ratio in ratios:
        assert 2 ** order * 0.8 < ratio < 2 ** order * 1.25, (errors, ratios)


def test_official_z_steps_beat_ln_z_steps_at_equal_cost(charges_and_reference):
    charges, start, reference = charges_and_reference
    assert _error(charges, start, reference, "euler", 10) < 0.5 * _error(charges, start, reference, "euler_ln_z", 10)
    # heun takes 2 steps - 1 evaluations, torchdiffeq's heun2 2 steps: heun is cheaper and closer
    assert _error(charges, start, reference, "heun", 10) < 0.5 * _error(charges, start, reference, "heun2", 10)


def _official_improved_euler(drift, x, grid):
    """The official improved Euler (Poisson_flow sampling.py ImprovedEulerPredictor, `t_list` given):
    drift = z dx/dz, dt = exp(t_{i+1} - t_i) - 1, dt_new = 1 - exp(t_i - t_{i+1}), last step Euler."""
    t = grid.tolist()
    for i in range(len(t) - 1):
        drift_i = drift(grid[i], x)
        x_new = x + drift_i * (math.exp(t[i + 1] - t[i]) - 1)
        if i < len(t) - 2:
            x_new = x + 0.5 * drift_i * (math.exp(t[i + 1] - t[i]) - 1) \
                + 0.5 * drift(grid[i + 1], x_new) * (1 - math.exp(t[i] - t[i + 1]))
        x = x_new
    return x


def test_heun_is_the_official_improved_euler(charges_and_reference):
    charges, start, _ = charges_and_reference
    drift = _FieldLineDrift(exact_field(charges), start.shape, gamma=5.0, z_exp=None, callback=None)
    grid = zsolvers.uniform_ln_z(Z_MAX, 1e-3, 7)
    torch.testing.assert_close(zsolvers.heun(drift, start, grid), _official_improved_euler(drift, start, grid),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method, steps, nfe", [("euler", 7, 7), ("heun", 7, 13), ("dpmpp_2m", 7, 7)])
def test_network_evaluations_per_solve(charges_and_reference, method, steps, nfe):
    charges, start, _ = charges_and_reference
    out = sample(exact_field(charges), start, z_max=Z_MAX, z_min=1e-3, method=method, steps=steps)
    assert out.nfe == nfe == zsolvers.evaluations(method, steps)


def test_grids_end_exactly_and_the_power_schedule_spans_z_to_ln_z():
    for grid in (zsolvers.uniform_ln_z(40.0, 1e-3, 5), zsolvers.power_z(40.0, 1e-3, 5, rho=7.0)):
        assert grid.dtype == torch.float64 and len(grid) == 6
        assert float(grid[0]) == math.log(40.0) and float(grid[-1]) == math.log(1e-3)
        assert bool((grid[1:] < grid[:-1]).all())
    uniform_in_z = zsolvers.power_z(40.0, 1e-3, 4, rho=1.0).exp()
    torch.testing.assert_close(uniform_in_z, torch.linspace(40.0, 1e-3, 5, dtype=torch.float64))
    # z^(1/rho) = exp(ln z / rho) -> 1 + ln z / rho: a very large rho is uniform in ln z
    torch.testing.assert_close(zsolvers.power_z(40.0, 1e-3, 4, rho=1e6), zsolvers.uniform_ln_z(40.0, 1e-3, 4),
                               rtol=0, atol=1e-4)
    # EDM's rho = 7 spends more of its steps near the data than the uniform ln z grid
    assert zsolvers.power_z(40.0, 1e-3, 10, rho=7.0).exp()[5] > zsolvers.uniform_ln_z(40.0, 1e-3, 10).exp()[5]


def test_bad_grid_settings_are_refused():
    with pytest.raises(ValueError, match="rho"):
        zsolvers.build_grid(40.0, 1e-3, 5, schedule="power")
    with pytest.raises(ValueError, match="schedule must be one of"):
        zsolvers.build_grid(40.0, 1e-3, 5, schedule="cosine")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        zsolvers.uniform_ln_z(40.0, 1e-3, 0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        sample(lambda x, z: x, torch.zeros(2, 2), z_max=1.0, z_min=0.1, method="euler", steps=2, schedule="cos")


def test_method_names_are_honest():
    assert {"euler", "heun", "dpmpp_2m", "euler_ln_z", "heun2", "dopri5", "scipy_rk45"} <= set(METHODS)
    assert "scipy_solver" not in METHODS  # offered as scipy_rk45, the official sampler's solver


def test_the_likelihood_refuses_a_solver_that_steps_x_alone(charges_and_reference):
    charges, start, _ = charges_and_reference
    with pytest.raises(ValueError, match="cannot carry the log-density"):
        log_likelihood(exact_field(charges), start[:2], z_min=0.3, z_max=Z_MAX, method="dpmpp_2m", steps=4)
    log_p = log_likelihood(exact_field(charges), start[:2] * 0.01, z_min=0.3, z_max=Z_MAX, method="heun", steps=8)
    assert bool(torch.isfinite(log_p).all())


def test_a_path_through_several_heights_is_one_solve(charges_and_reference):
    charges, start, _ = charges_and_reference
    heights = [Z_MAX, 2.0, 0.3]
    options = dict(heights=heights, steps=4, schedule="power", rho=5.0)
    # euler is a one-step method: the path chains the single solves of each stretch
    path = sample_path(exact_field(charges), start, method="euler", **options).x
    assert path.shape == (3, *start.shape) and torch.equal(path[0], start)
    first = sample(exact_field(charges), start, z_max=Z_MAX, z_min=2.0, method="euler", steps=4,
                   schedule="power", rho=5.0).x
    second = sample(exact_field(charges), first, z_max=2.0, z_min=0.3, method="euler", steps=4,
                    schedule="power", rho=5.0).x
    torch.testing.assert_close(path[1], first)
    torch.testing.assert_close(path[2], second)
    # a multistep method carries its history across the heights: one solve, 8 evaluations
    multistep = sample_path(exact_field(charges), start, method="dpmpp_2m", **options)
    assert multistep.nfe == 8 and multistep.x.shape == path.shape


def test_scipy_rk45_the_official_solver_agrees_with_dopri5(charges_and_reference):
    charges, start, reference = charges_and_reference
    official = sample(exact_field(charges), start, z_max=Z_MAX, z_min=0.3, method="scipy_rk45", rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(official.x, reference, rtol=0, atol=1e-5)
    assert official.nfe > 0
