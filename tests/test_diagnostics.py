"""pfgm.diagnostics: the norm-z (norm-sigma) recorder against exact fields and perturbation laws.

A point charge's field lines are straight rays from the charge, x(z) = (z / z0) x0, and EDM's ODE for a
single point y = 0 is x(sigma) = (sigma / sigma0) x0: along both the recorded mean norm is exactly
proportional to the height, and both step schemes used here (Euler in z, Heun in sigma) are exact on
rays. Far from any compact charge distribution every field line is radial, so the norm grows like z.
"""
from __future__ import annotations

import math

import pytest
import torch

from pfgm import diagnostics, pfgmpp
from pfgm.field import normalized_field
from pfgm.prior import sample_prior

pytestmark = pytest.mark.usefixtures("single_thread")


def exact_field(charges):
    return lambda x, z: normalized_field(x, z, charges)


def test_point_charge_norm_is_proportional_to_z_at_every_evaluation(generator):
    start = sample_prior(64, (4,), z_max=20.0, generator=generator)
    curve, result = diagnostics.sampling_curve_pfgm(exact_field(torch.zeros(1, 4)), start, z_max=20.0, z_min=1e-2,
                                                    method="euler", steps=12)
    assert len(curve) == result.nfe == 12 and curve.variable == "z"
    assert torch.all(curve.count == 64) and torch.all(curve.height[:-1] > curve.height[1:])
    torch.testing.assert_close(curve.height[0], torch.tensor(20.0, dtype=torch.float64))
    norms = torch.linalg.vector_norm(start.double(), dim=1)
    # Euler in z is exact on rays: ||x|| = ||x0|| z / z_max for every particle, so mean and std scale alike.
    torch.testing.assert_close(curve.mean / curve.height, (norms.mean() / 20.0).expand(12), rtol=1e-5, atol=0)
    torch.testing.assert_close(curve.std / curve.height, (norms.std(unbiased=False) / 20.0).expand(12),
                               rtol=1e-4, atol=0)


def test_far_from_a_charge_cluster_the_norm_grows_like_z(generator):
    charges = 0.1 * torch.randn(8, 4, generator=generator)
    start = sample_prior(32, (4,), z_max=2000.0, generator=generator)
    curve, _ = diagnostics.sampling_curve_pfgm(exact_field(charges), start, z_max=2000.0, z_min=1e-3,
                                               method="dopri5", rtol=1e-6, atol=1e-6)
    assert diagnostics.far_field_slope(curve, above=50.0) == pytest.approx(1.0, abs=2e-3)
    # ... and near the plane the particles sit on the charges, whose norms are a few tenths.
    assert float(curve.mean[-1]) <= 1.2 * float(torch.linalg.vector_norm(charges, dim=1).max())


def test_heun_in_sigma_on_a_point_is_exact_and_records_the_start(generator):
    denoiser = pfgmpp.optimal_denoiser(torch.zeros(1, 1, 2, 2), D=128)
    start = pfgmpp.sample_prior(16, (1, 2, 2), D=128, generator=generator)
    grid = pfgmpp.sigma_grid(6)
    curve, result = diagnostics.sampling_curve_pfgmpp(denoiser, start, grid)
    # start at sigma_max, then after each step but the last one (to sigma = 0, not on a log axis).
    assert len(curve) == 6 and result.nfe == 2 * 6 - 1 and curve.variable == "sigma"
    torch.testing.assert_close(curve.height, grid[:-1])
    ratio = float(torch.linalg.vector_norm(start.double().flatten(1), dim=1).mean()) / float(grid[0])
    # float32 states: rounding accumulates over the 40,000-fold shrink from sigma 80 to 0.002.
    torch.testing.assert_close(curve.mean / curve.height, torch.full((6,), ratio, dtype=torch.float64), rtol=1e-4,
                               atol=0)


def test_diffusion_norms_are_tied_to_sigma_while_pfgm_norms_spread_over_z(generator):
    # Charges at the origin: every norm is the perturbation's. Diffusion (PFGM++ at large D) puts
    # ||x|| at sigma sqrt(N) give or take 1/sqrt(2N); PFGM's ||x|| / z is a chi_N over a half-normal.
    data, dims = torch.zeros(4000, 256), 256
    tied = diagnostics.perturbed_curve_pfgmpp(data, D=4096, bins=60, generator=generator)
    assert tied.spread() < 0.1
    well_filled = tied.count >= 50
    ratio = tied.mean[well_filled] / (tied.height[well_filled] * math.sqrt(dims))
    assert float(ratio.min()) > 0.85 and float(ratio.max()) < 1.1
    spread = diagnostics.perturbed_curve_pfgm(data, M=200, restrict_M=False, bins=12, generator=generator)
    assert spread.variable == "z" and spread.spread() > 1.0
    assert int(spread.count.sum()) == 4000


def test_binned_curve_groups_by_log_height():
    curve = diagnostics.binned_curve(torch.tensor([1.0, 1.0, 10.0, 10.0]), torch.tensor([1.0, 3.0, 10.0, 30.0]),
                                     variable="sigma", bins=2)
    torch.testing.assert_close(curve.height, torch.tensor([10 ** 0.75, 10 ** 0.25], dtype=torch.float64))
    torch.testing.assert_close(curve.mean, torch.tensor([20.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(curve.std, torch.tensor([10.0, 1.0], dtype=torch.float64))
    assert curve.count.tolist() == [2, 2] and curve.spread() == pytest.approx(0.5)
    assert curve.rows()[0] == dict(variable="sigma", height=pytest.approx(10 ** 0.75), mean=20.0, std=10.0, count=2)


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="nothing was recorded"):
        diagnostics.NormRecorder("z").curve()
    with pytest.raises(ValueError, match="variable"):
        diagnostics.NormRecorder("t")
    with pytest.raises(ValueError, match="heights must be > 0"):
        diagnostics.binned_curve(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]), variable="z")
    with pytest.raises(ValueError, match="bins"):
        diagnostics.binned_curve(torch.tensor([1.0]), torch.tensor([1.0]), variable="z", bins=0)
    with pytest.raises(ValueError, match="two heights"):
        diagnostics.far_field_slope(diagnostics.binned_curve(torch.tensor([1.0]), torch.tensor([1.0]), variable="z"),
                                    above=0.5)
