"""Sampling and encoding along exact field lines of a few charges."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from helpers import exact_model
from pfgm.ode import ADAPTIVE_METHODS, METHODS, encode, ln_z_grid, sample, sample_path
from pfgm.prior import sample_prior


def _distance_to_nearest(points, charges):
    return torch.cdist(points.reshape(len(points), -1).double(), charges.reshape(len(charges), -1).double()).min(1).values


@pytest.fixture
def charges_2d():
    return torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.2], [0.3, 1.0]])


def test_sample_lands_on_the_charges(charges_2d, generator):
    start = sample_prior(64, (2,), z_max=40.0, generator=generator)
    result = sample(exact_model(charges_2d), start, z_max=40.0, z_min=1e-3, rtol=1e-5, atol=1e-5)
    distance = _distance_to_nearest(result.x, charges_2d)
    assert result.x.shape == start.shape
    assert torch.quantile(distance, 0.9) < 1e-2


def test_every_charge_receives_samples_in_proportion(charges_2d, generator):
    start = sample_prior(800, (2,), z_max=40.0, generator=generator)
    landed = sample(exact_model(charges_2d), start, z_max=40.0, z_min=1e-3).x
    owner = torch.cdist(landed, charges_2d).argmin(dim=1)
    counts = torch.bincount(owner, minlength=4).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3  # equal charges, equal flux


def test_theorem_1_field_lines_end_uniformly_on_the_hemisphere(generator):
    # Start on field lines leaving charges drawn from a heart-shaped density, follow the exact
    # field outwards to a huge height, and check the end directions are uniform on the upper
    # hemisphere of S^2: cos(polar angle) ~ U(0, 1) and azimuth ~ U(0, 2 pi).
    t = torch.rand(200, generator=generator) * 2 * math.pi
    heart = torch.stack([16 * torch.sin(t) ** 3,
                         13 * torch.cos(t) - 5 * torch.cos(2 * t) - 2 * torch.cos(3 * t) - torch.cos(4 * t)], 1)
    charges = heart / 16 * torch.rand(200, 1, generator=generator).sqrt()
    z_start, z_end = 1e-6, 1e5
    # Near a charge the lines are radial, so uniform directions cross the plane z_start like the
    # prior of height z_start around the charge.
    start = charges.repeat(3, 1) + sample_prior(600, (2,), z_max=z_start, generator=generator)
    end = encode(exact_model(charges.double()), start.double(), z_min=z_start, z_max=z_end,
                 rtol=1e-5, atol=1e-6).x
    radius = torch.sqrt(end.square().sum(1) + z_end ** 2)
    cos_polar = (z_end / radius).numpy()
    azimuth = (torch.atan2(end[:, 1], end[:, 0]) % (2 * math.pi)).numpy()
    assert stats.kstest(cos_polar, "uniform").pvalue > 1e-3
    assert stats.kstest(azimuth, stats.uniform(0, 2 * math.pi).cdf).pvalue > 1e-3
    # The start points alone are far from uniform on the hemisphere: the test can fail.
    start_cos = (z_start / torch.sqrt(start.double().square().sum(1) + z_start ** 2)).numpy()
    assert stats.kstest(start_cos, "uniform").pvalue < 1e-6


@pytest.mark.parametrize("shape", [(1,), (2,), (1, 2, 2)])
def test_encode_then_sample_returns_the_start(shape, generator):
    charges = torch.randn(6, *shape, generator=generator, dtype=torch.float64)
    start = charges[:3] + 0.05 * torch.randn(3, *shape, generator=generator, dtype=torch.float64)
    model = exact_model(charges)
    latent = encode(model, start, z_min=0.05, z_max=30.0, rtol=1e-9, atol=1e-9)
    back = sample(model, latent.x, z_max=30.0, z_min=0.05, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(back.x, start, rtol=1e-5, atol=1e-5)
    assert latent.x.abs().max() > 1.0  # the latent really moved away from the data


@pytest.mark.parametrize("method", METHODS)
def test_every_torchdiffeq_method_works(method, charges_2d, generator):
    start = sample_prior(8, (2,), z_max=20.0, generator=generator).double()
    options = {"solver": "RK45"} if method == "scipy_solver" else None
    steps = None if method in ADAPTIVE_METHODS else 200
    result = sample(exact_model(charges_2d.double()), start, z_max=20.0, z_min=1e-2, method=method,
                    steps=steps, options=options)
    assert result.nfe > 0 and bool(torch.isfinite(result.x).all())
    assert torch.median(_distance_to_nearest(result.x, charges_2d)) < 0.1


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("midpoint", 2), ("heun2", 2), ("rk4", 4)])
def test_nfe_is_counted_for_fixed_grids(method, per_step, charges_2d, generator):
    calls = []
    model = exact_model(charges_2d)
    counting = lambda x, z: calls.append(1) or model(x, z)  # noqa: E731
    start = sample_prior(4, (2,), z_max=10.0, generator=generator)
    result = sample(counting, start, z_max=10.0, z_min=0.01, method=method, steps=13)
    assert result.nfe == len(calls) == 13 * per_step


def test_nfe_is_counted_for_adaptive_solvers(charges_2d, generator):
    calls, seen = [], []
    model = exact_model(charges_2d)
    start = sample_prior(4, (2,), z_max=10.0, generator=generator)
    result = sample(lambda x, z: calls.append(1) or model(x, z), start, z_max=10.0, z_min=0.01,
                    callback=lambda info: seen.append(info["nfe"]))
    assert result.nfe == len(calls) == len(seen) == seen[-1]
    tighter = sample(model, start, z_max=10.0, z_min=0.01, rtol=1e-8, atol=1e-8)
    assert tighter.nfe > result.nfe


def test_ln_z_grid_is_uniform_in_log():
    grid = ln_z_grid(40.0, 1e-3, 10)
    assert grid[0].item() == pytest.approx(math.log(40.0)) and grid[-1].item() == pytest.approx(math.log(1e-3))
    assert torch.allclose(grid.diff(), grid.diff()[0].expand(10))


def test_z_exp_substitution_is_exact_for_the_exact_field(generator):
    # For the exact field v_z is a function of ||v_x|| and z, so replacing it changes nothing.
    charges = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    start = sample_prior(6, (4,), z_max=20.0, generator=generator).double()
    model = exact_model(charges)
    plain = sample(model, start, z_max=20.0, z_min=1e-3, rtol=1e-8, atol=1e-8)
    substituted = sample(model, start, z_max=20.0, z_min=1e-3, rtol=1e-8, atol=1e-8, z_exp=5.0)
    torch.testing.assert_close(substituted.x, plain.x, rtol=1e-4, atol=1e-4)


def test_z_exp_replaces_a_wrong_network_z_component(generator):
    charges = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    model = exact_model(charges)
    start = sample_prior(6, (4,), z_max=20.0, generator=generator).double()

    def bad_z(x, z):  # correct v_x, v_z off by a factor 3 close to the data
        out = model(x, z).clone()
        out[:, -1] *= torch.where(z < 1.0, 3.0, 1.0)
        return out
    truth = sample(model, start, z_max=20.0, z_min=1e-2, rtol=1e-8, atol=1e-8).x
    repaired = sample(bad_z, start, z_max=20.0, z_min=1e-2, rtol=1e-8, atol=1e-8, z_exp=1.0).x
    broken = sample(bad_z, start, z_max=20.0, z_min=1e-2, rtol=1e-8, atol=1e-8).x
    torch.testing.assert_close(repaired, truth, rtol=1e-4, atol=1e-4)
    assert (broken - truth).abs().max() > 1e-2


def test_bad_arguments_are_named(charges_2d):
    model, start = exact_model(charges_2d), torch.zeros(2, 2)
    with pytest.raises(ValueError, match="z_min"):
        sample(model, start, z_max=1.0, z_min=2.0)
    with pytest.raises(ValueError, match="method"):
        sample(model, start, z_max=10.0, z_min=1.0, method="rk45")
    with pytest.raises(ValueError, match="steps"):
        sample(model, start, z_max=10.0, z_min=1.0, method="euler")
    with pytest.raises(ValueError, match=r"\bx\b"):
        sample(model, torch.full((2, 2), math.nan), z_max=10.0, z_min=1.0)


def test_explicit_adams_is_accurate_on_a_linear_ode():
    # Guards METHOD_OPTIONS: with torchdiffeq's default order the answer is off by a factor 2.
    decay = lambda x, z: torch.cat([x.reshape(len(x), -1), -torch.ones(len(x), 1, dtype=x.dtype)], 1)  # noqa: E731
    # dx/dt = z v_x / v_z = -z x, so x(z_min) = x(z_max) exp(z_max - z_min).
    x = torch.ones(1, 1, dtype=torch.float64)
    result = sample(decay, x, z_max=1.0, z_min=1e-3, method="explicit_adams", steps=400)
    assert result.x.item() == pytest.approx(math.exp(1.0 - 1e-3), rel=1e-5)


def test_non_physical_positive_v_z_is_replaced(generator):
    # A network whose v_z has the wrong sign in a band of heights: without the guard the flow
    # would reverse there; with it, the exact relation E_z = -z restores the true field line.
    charges = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    model = exact_model(charges)
    start = sample_prior(6, (4,), z_max=20.0, generator=generator).double()

    def wrong_sign(x, z):
        out = model(x, z).clone()
        out[:, -1] *= torch.where((z > 2.0) & (z < 4.0), -1.0, 1.0)
        return out
    truth = sample(model, start, z_max=20.0, z_min=1e-2, rtol=1e-8, atol=1e-8).x
    guarded = sample(wrong_sign, start, z_max=20.0, z_min=1e-2, rtol=1e-8, atol=1e-8).x
    torch.testing.assert_close(guarded, truth, rtol=1e-4, atol=1e-4)


def test_sample_path_keeps_the_states_one_solve_passes_through(generator):
    # A fixed-step path is exactly the chain of single solves over each stretch (same grid points);
    # an adaptive path agrees with them within the tolerance, and both end where one solve ends.
    charges = torch.randn(16, 2, generator=generator)
    model = exact_model(charges)
    start = sample_prior(32, (2,), z_max=20.0, generator=generator)
    heights = [20.0, 5.0, 0.5, 1e-2]
    path = sample_path(model, start, heights=heights, method="rk4", steps=4)
    states = [start]
    for upper, lower in zip(heights, heights[1:]):
        states.append(sample(model, states[-1], z_max=upper, z_min=lower, method="rk4", steps=4).x)
    torch.testing.assert_close(path.x, torch.stack(states), rtol=1e-5, atol=1e-5)
    assert path.x.shape == (4, 32, 2) and path.nfe == 4 * 3 * 4  # rk4: 4 evaluations a step
    adaptive = sample_path(model, start, heights=heights, rtol=1e-7, atol=1e-7)
    single = sample(model, start, z_max=20.0, z_min=1e-2, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(adaptive.x[-1], single.x, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_path(model, start, heights=[1.0, 2.0])
