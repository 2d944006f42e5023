"""Likelihoods against the analytic density of a point charge and normalisation."""
from __future__ import annotations

import math

import pytest
import torch

from pfgm.ode import bits_per_dim, dequantize, log_likelihood
from pfgm.prior import prior_log_prob
from test_ode import exact_model


@pytest.mark.parametrize("N", [1, 2])
def test_single_charge_density_is_the_projected_hemisphere_at_z_min(N, generator):
    # A point charge's field lines are straight rays, so the flow carries the uniform hemisphere
    # onto the plane z_min like the prior of height z_min around the charge: known in closed form.
    # (The charge sits at the origin, the centre of the prior's hemisphere.)
    charge = torch.zeros(1, N, dtype=torch.float64)
    x = charge + 0.3 * torch.randn(16, N, generator=generator, dtype=torch.float64)
    ours = log_likelihood(exact_model(charge), x, z_min=0.1, z_max=50.0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ours, prior_log_prob(x - charge, z_max=0.1), rtol=1e-5, atol=1e-5)


def test_density_of_a_few_charges_integrates_to_one():
    charges = torch.tensor([[-1.0], [0.2], [0.5], [1.5]], dtype=torch.float64)
    z_min, half_width = 0.05, 25.0
    grid = torch.linspace(-half_width, half_width, 4001, dtype=torch.float64)
    log_p = log_likelihood(exact_model(charges), grid[:, None], z_min=z_min, z_max=40.0, rtol=1e-7, atol=1e-7)
    mass = torch.trapezoid(log_p.exp(), grid).item()
    tail = 2 * z_min / (math.pi * half_width)  # field lines beyond the window end far out as rays
    assert mass == pytest.approx(1.0 - tail, abs=2e-3)


def test_hutchinson_agrees_with_exact_trace_in_expectation(generator):
    charges = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    point = charges[:1] + 0.2 * torch.randn(1, 3, generator=generator, dtype=torch.float64)
    batch = point.repeat(400, 1)  # each row gets its own probe: 400 independent estimates
    model = exact_model(charges)
    exact = log_likelihood(model, point, z_min=0.05, z_max=40.0)
    estimates = log_likelihood(model, batch, z_min=0.05, z_max=40.0, hutchinson=1, generator=generator)
    standard_error = estimates.std() / math.sqrt(len(estimates))
    assert estimates.std() > 0  # the probes are really random
    assert abs(estimates.mean() - exact[0]) < 4 * standard_error + 1e-3


def test_bits_per_dim_of_the_uniform_density_is_eight():
    # Uniform on [-1, 1]^N has log p = -N ln 2: uniform over 256 levels, 8 bits per dimension.
    N = 3072
    assert bits_per_dim(torch.tensor([-N * math.log(2.0)]), N).item() == pytest.approx(8.0)


def test_dequantize_range_and_determinism():
    images = torch.tensor([[0, 1, 254, 255]], dtype=torch.uint8)
    first = dequantize(images, generator=torch.Generator().manual_seed(0))
    second = dequantize(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, second)
    assert first.min() >= -1.0 and first.max() < 1.0
    assert first[0, 0] < -1 + 1 / 128 and first[0, 3] >= 1 - 1 / 128
    with pytest.raises(ValueError, match="images"):
        dequantize(images.float())


def test_bad_arguments_are_named():
    model = exact_model(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="hutchinson"):
        log_likelihood(model, torch.ones(2, 2), z_min=0.1, z_max=1.0, hutchinson=0)
    with pytest.raises(ValueError, match="z_min"):
        log_likelihood(model, torch.ones(2, 2), z_min=1.0, z_max=1.0)
