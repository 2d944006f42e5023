"""Likelihoods against densities known in closed form; bits/dim at L levels; the histogram baseline."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import exact_model
from pfgm import pfgmpp
from pfgm.data import uint8_levels
from pfgm.likelihood import (EXACT_TRACE_COPIES_MAX_POINTS, bits_per_dim, dequantize, drift_and_exact_trace,
                             exact_trace_by_backward_passes, exact_trace_over_copies, histogram_bits_per_dim,
                             image_levels, log_likelihood, log_likelihood_per_probe, mean_and_standard_error,
                             pfgmpp_log_likelihood_per_probe, probe_standard_error)
from pfgm.ode import encode
from pfgm.prior import prior_log_prob

pytestmark = pytest.mark.usefixtures("single_thread")

# The known case: the exact field of a few charges in R^3 (PFGM with a perfect network).
Z_MIN, Z_MAX = 0.05, 40.0
#: Error of the likelihood ODE against the closed form (nats per point), stated and tested below:
#: measured 4e-5 for dopri5 at rtol = atol = 1e-6 and 8e-5 for RK4 with 50 steps in ln z (the
#: evaluate default); 1e-3 for dopri5 at 1e-5. In bits/dim of N = 3: divide by 3 ln 2.
KNOWN_CASE_ERROR = 3e-4


@pytest.fixture(scope="module")
def known_case():
    """Five charges in R^3 and five points near them: (charges, points), float64."""
    generator = torch.Generator().manual_seed(0)
    charges = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    return charges, charges + 0.2 * torch.randn(5, 3, generator=generator, dtype=torch.float64)


def flux_log_density(x: torch.Tensor, charges: torch.Tensor, z: float) -> torch.Tensor:
    """log of the charges' field flux through the plane at height z, as a density of x (B, N): (B,).

    A unit charge's flux through the plane z is the projected hemisphere of height z centred on the
    charge (pfgm.prior, which test_single_charge_density_... checks); the field is linear in the
    charges, so the flux of their mean is the mean of those densities.
    """
    offsets = (x[:, None, :] - charges[None]).reshape(-1, x.shape[1])
    per_charge = prior_log_prob(offsets, z_max=z).reshape(len(x), len(charges))
    return torch.logsumexp(per_charge, dim=1) - math.log(len(charges))


def closed_form_log_likelihood(x: torch.Tensor, charges: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The model density at z_min without integrating any divergence: (B,).

    Above the plane the field is divergence-free, so its flux density is carried along the field lines
    (continuity: d(-E_z)/dz + div_x(-E_x) = -div E = 0): the flow maps the flux at z_max onto the flux
    at z_min. The prior is not quite the flux at z_max (the charges are not all at the origin), hence
        p_model(x) = F_min(x) * p_prior(x_T) / F_max(x_T),   x_T = the encoding of x,
    where only x_T needs the ODE (no trace).
    """
    latent = encode(exact_model(charges), x, z_min=Z_MIN, z_max=Z_MAX, rtol=tolerance, atol=tolerance).x
    return (flux_log_density(x, charges, Z_MIN) + prior_log_prob(latent, z_max=Z_MAX)
            - flux_log_density(latent, charges, Z_MAX))


@pytest.fixture(scope="module")
def known_reference(known_case):
    charges, points = known_case
    return closed_form_log_likelihood(points, charges, tolerance=1e-7)


@pytest.fixture(scope="module")
def adaptive_estimate(known_case):
    """The likelihood ODE with RK45 at rtol = atol = 1e-6 and the exact trace, on the known case."""
    charges, points = known_case
    return log_likelihood(exact_model(charges), points, z_min=Z_MIN, z_max=Z_MAX, rtol=1e-6, atol=1e-6)


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


def test_known_density_of_a_few_charges_is_recovered(known_case, known_reference, adaptive_estimate):
    # The likelihood ODE (exact trace) against the flux ratio, which integrates no divergence at all.
    charges, points = known_case
    assert (adaptive_estimate - known_reference).abs().max() < KNOWN_CASE_ERROR
    # The reference is not the prior's density itself: the correction p_prior / F_max matters here.
    assert (known_reference - flux_log_density(points, charges, Z_MIN)).abs().max() > 10 * KNOWN_CASE_ERROR


def test_two_solver_settings_agree_within_the_stated_error(known_case, known_reference, adaptive_estimate):
    # The evaluate default (RK4, 50 steps uniform in ln z) and adaptive RK45: each within the stated
    # error of the closed form, hence within twice that of each other. Heun's step in z, exact for x on
    # a single charge's rays, is not for the log-density (0.1 nats off at 50 steps): not compared.
    charges, points = known_case
    model = exact_model(charges)
    fixed = log_likelihood(model, points, z_min=Z_MIN, z_max=Z_MAX, method="rk4", steps=50)
    assert (fixed - known_reference).abs().max() < KNOWN_CASE_ERROR
    assert (fixed - adaptive_estimate).abs().max() < 2 * KNOWN_CASE_ERROR
    coarse = log_likelihood(model, points, z_min=Z_MIN, z_max=Z_MAX, method="rk4", steps=5)
    assert (coarse - known_reference).abs().max() > KNOWN_CASE_ERROR  # the comparison can fail


def test_hutchinson_probes_agree_with_the_exact_trace_within_their_standard_error(known_case):
    # Same path, same solver: the probes' mean differs from the exact trace only by probe noise,
    # which probe_standard_error measures from the spread of the per-probe estimates.
    charges, points = known_case
    model = exact_model(charges)
    settings = dict(z_min=Z_MIN, z_max=Z_MAX, method="rk4", steps=20)
    exact = log_likelihood(model, points, **settings)
    per_probe = log_likelihood_per_probe(model, points, hutchinson=64, generator=torch.Generator().manual_seed(1),
                                         **settings)
    assert per_probe.shape == (5, 64) and per_probe.std(dim=1).min() > 0  # the probes really differ
    error = probe_standard_error(per_probe)
    assert abs(per_probe.mean() - exact.mean()) < 4 * error
    # Per point too: each point's mean over 64 probes within 4 of its own standard errors.
    per_point_error = per_probe.std(dim=1) / math.sqrt(64)
    assert ((per_probe.mean(dim=1) - exact).abs() < 4 * per_point_error).all()


@pytest.mark.parametrize("trace", [exact_trace_by_backward_passes, exact_trace_over_copies, drift_and_exact_trace])
@pytest.mark.parametrize("points", [1, EXACT_TRACE_COPIES_MAX_POINTS, EXACT_TRACE_COPIES_MAX_POINTS + 1])
def test_exact_trace_is_the_analytic_divergence_of_a_coupled_drift(trace, points):
    # f(x) = tanh(x A) couples every coordinate; its Jacobian's diagonal is (1 - tanh^2(x A))_i A_ii,
    # so tr J = sum_i (1 - f_i^2) A_ii. Both methods, and the choice between them on either side of
    # the batch size where it switches, give it for every point, leaving no graph behind.
    generator = torch.Generator().manual_seed(3)
    A = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    x = torch.randn(points, 6, generator=generator, dtype=torch.float64)
    expected = ((1 - torch.tanh(x @ A).square()) * torch.diagonal(A)).sum(dim=1)
    drift, traces = trace(lambda flat: torch.tanh(flat @ A), x)
    assert torch.allclose(drift, torch.tanh(x @ A), rtol=0, atol=1e-15)
    assert torch.allclose(traces, expected, rtol=1e-12, atol=0)
    assert not x.requires_grad and not drift.requires_grad and not traces.requires_grad
    assert not torch.allclose(expected, (1 - torch.tanh(x @ A).square()).sum(dim=1) * A.mean())  # not a trivial case


def test_exact_trace_takes_copies_for_small_batches_and_backward_passes_beyond():
    rows = []

    def drift(flat: torch.Tensor) -> torch.Tensor:
        rows.append(len(flat))
        return flat.square()

    for points in (1, EXACT_TRACE_COPIES_MAX_POINTS, EXACT_TRACE_COPIES_MAX_POINTS + 1):
        x = torch.ones(points, 3, dtype=torch.float64)
        assert drift_and_exact_trace(drift, x)[1].tolist() == [6.0] * points  # d(x^2)/dx = 2x, three of them
    assert rows == [3, 3 * EXACT_TRACE_COPIES_MAX_POINTS, EXACT_TRACE_COPIES_MAX_POINTS + 1]


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_a_density_uniform_over_the_dequantised_cube_scores_log2_levels(levels):
    # Uniform on [-1, 1)^N: log p = -N ln 2, as good as knowing nothing about L levels.
    N = 64
    assert bits_per_dim(torch.tensor([-N * math.log(2.0)]), N, levels=levels).item() == pytest.approx(math.log2(levels))


def test_eight_bit_offset_is_the_official_seven():
    assert bits_per_dim(torch.tensor([0.0]), 3072).item() == 7.0


@pytest.mark.parametrize("levels", [3, 17, 256])
def test_bin_geometry_gives_the_code_length_of_a_piecewise_constant_density(levels, generator):
    # A density constant on each level's bin, P(k) / (2 / L) there, must score exactly -log2 P(k) per
    # dimension: this checks that dequantize puts level k in bin k of width 2/L and the offset with it.
    probs = torch.rand(levels, generator=generator, dtype=torch.float64) + 0.1
    probs /= probs.sum()
    k = torch.randint(0, levels, (200, 1, 2, 2), generator=generator)
    images = torch.from_numpy(uint8_levels(levels))[k]
    x = dequantize(images, levels=levels, generator=generator).double()
    bin_index = ((x + 1) * levels / 2).floor().long()
    assert torch.equal(bin_index, k)
    log_p = (probs[bin_index] * levels / 2).log().flatten(1).sum(dim=1)
    expected = -probs[k].log2().flatten(1).mean(dim=1)
    torch.testing.assert_close(bits_per_dim(log_p, 4, levels=levels), expected)


def test_eight_bit_dequantisation_is_the_official_one_bit_for_bit():
    images = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    ours = dequantize(images, generator=torch.Generator().manual_seed(0))
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ours, (images.float() + noise) / 128.0 - 1.0)


def test_levels_round_trip_and_off_grid_values_are_refused():
    for levels in (2, 17, 100, 256):
        stored = torch.from_numpy(uint8_levels(levels))
        assert torch.equal(image_levels(stored, levels), torch.arange(levels))
    with pytest.raises(ValueError, match="value 1, which is none of the 17 levels"):
        image_levels(torch.tensor([0, 1, 16], dtype=torch.uint8), 17)
    with pytest.raises(ValueError, match="levels"):
        dequantize(torch.zeros(2, dtype=torch.uint8), levels=1)
    with pytest.raises(ValueError, match="uint8"):
        dequantize(torch.zeros(2))


def test_dequantize_range_and_determinism():
    images = torch.from_numpy(uint8_levels(17)).reshape(1, 17)
    first = dequantize(images, levels=17, generator=torch.Generator().manual_seed(0))
    second = dequantize(images, levels=17, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, second)
    assert first.min() >= -1.0 and first.max() < 1.0
    assert first[0, 0] < -1 + 2 / 17 and first[0, 16] >= 1 - 2 / 17


def test_histogram_baseline_is_the_smoothed_per_pixel_code_length():
    # 10 training images: pixel 0 always level 0, pixel 1 level 2 in 4 of them (3 levels, add-1/2).
    levels = uint8_levels(3)
    train = torch.zeros(10, 1, 1, 2, dtype=torch.uint8)
    train[:4, 0, 0, 1] = int(levels[2])
    test = torch.tensor([[[[levels[0], levels[2]]]], [[[levels[1], levels[0]]]]], dtype=torch.uint8)
    bits = histogram_bits_per_dim(train, test, levels=3)
    total = 10 + 0.5 * 3
    expected = torch.tensor([-(math.log2(10.5 / total) + math.log2(4.5 / total)) / 2,
                             -(math.log2(0.5 / total) + math.log2(6.5 / total)) / 2], dtype=torch.float64)
    torch.testing.assert_close(bits, expected)


def test_histogram_baseline_is_a_distribution_and_knows_nothing_of_unseen_pixels(generator):
    levels = 5
    train = torch.from_numpy(uint8_levels(levels))[torch.randint(0, levels, (50, 1, 1, 1), generator=generator)]
    every_level = torch.from_numpy(uint8_levels(levels)).reshape(levels, 1, 1, 1)
    probabilities = torch.exp2(-histogram_bits_per_dim(train, every_level, levels=levels))  # one pixel: P(k)
    assert probabilities.sum().item() == pytest.approx(1.0)
    # With no training image at all, every level costs log2(L): the uniform code.
    empty = train[:0]
    torch.testing.assert_close(histogram_bits_per_dim(empty, every_level, levels=levels),
                               torch.full((levels,), math.log2(levels), dtype=torch.float64))


def test_standard_errors():
    mean, error = mean_and_standard_error(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and error == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert math.isnan(mean_and_standard_error(torch.tensor([1.0]))[1])
    # Two points, two probes each: probe variances 0.5 and 2, so sqrt((0.5 + 2) / 2) / 2.
    per_probe = torch.tensor([[0.0, 1.0], [1.0, 3.0]])
    assert probe_standard_error(per_probe) == pytest.approx(math.sqrt(1.25) / 2)
    assert math.isnan(probe_standard_error(per_probe[:, :1]))


def test_bad_arguments_are_named():
    model = exact_model(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="hutchinson"):
        log_likelihood(model, torch.ones(2, 2), z_min=0.1, z_max=1.0, hutchinson=0)
    with pytest.raises(ValueError, match="z_min"):
        log_likelihood(model, torch.ones(2, 2), z_min=1.0, z_max=1.0)
    with pytest.raises(ValueError, match="cannot carry the log-density"):
        log_likelihood(model, torch.ones(2, 2), z_min=0.1, z_max=1.0, method="dpmpp_2m", steps=4)
    with pytest.raises(ValueError, match="differ in shape"):
        histogram_bits_per_dim(torch.zeros(2, 4, dtype=torch.uint8), torch.zeros(2, 3, dtype=torch.uint8))


# PFGM++: the denoiser's ODE in ln sigma and the prior it ends on.

@pytest.mark.parametrize("D", [1, 3, 50, math.inf])
def test_pfgmpp_prior_density_integrates_to_one(D):
    # N = 1: integrate on a grid symmetric about 0, log-spaced to reach the heavy tails (D = 1 is a
    # Cauchy density: the mass beyond 1e7 sigma_max is below 1e-7).
    half = torch.logspace(-6, 7, 200_001, dtype=torch.float64)
    grid = torch.cat([-half.flip(0), half])
    density = pfgmpp.prior_log_prob(grid[:, None], D=D, sigma_max=1.0).exp()
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-5)


def test_pfgmpp_prior_density_tends_to_the_gaussian_as_D_grows():
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    gaussian = pfgmpp.prior_log_prob(x, D=math.inf, sigma_max=80.0)
    assert torch.allclose(pfgmpp.prior_log_prob(x, D=10**7, sigma_max=80.0), gaussian, atol=1e-5)
    assert not torch.allclose(pfgmpp.prior_log_prob(x, D=8, sigma_max=80.0), gaussian, atol=1e-2)


def _mixture_log_density(points: torch.Tensor, charges: torch.Tensor, *, D: float, sigma: float) -> torch.Tensor:
    """log (1/M) sum_j p_r(x | y_j): the kernel is the prior centred at y_j with sigma_max = sigma."""
    per_charge = torch.stack([pfgmpp.prior_log_prob(points - charge, D=D, sigma_max=sigma) for charge in charges])
    return torch.logsumexp(per_charge, dim=0) - math.log(len(charges))


def test_pfgmpp_likelihood_recovers_the_known_density_of_a_few_charges():
    # The exact denoiser of three charges makes the flow exact: x at sigma_min has the closed-form
    # mixture density. What remains is the prior's centring of the sigma_max marginal at 0, an error
    # of order (N + D) ||x|| ||mean charge|| / r_max^2 ~ 1 / sigma_max: 1.1e-3 nats at sigma_max 400,
    # 1.1e-4 at 4000 (the solver's part is below 1e-6 at rtol 1e-8).
    D, sigma_min = 8, 0.05
    generator = torch.Generator().manual_seed(5)
    charges = 0.3 * torch.randn(3, 1, 2, 2, generator=generator, dtype=torch.float64)
    which = torch.tensor([0, 1, 2, 0, 1, 2])
    points = pfgmpp.perturb(charges[which], torch.full((6,), sigma_min, dtype=torch.float64), D=D,
                            generator=generator)
    expected = _mixture_log_density(points, charges, D=D, sigma=sigma_min)
    denoiser = pfgmpp.optimal_denoiser(charges, D=D)

    def error(sigma_max, **solver):
        estimate = pfgmpp_log_likelihood_per_probe(denoiser, points, D=D, sigma_min=sigma_min, sigma_max=sigma_max,
                                                   **solver)
        return (estimate[:, 0] - expected).abs().max().item()

    assert error(4000.0, method="dopri5", rtol=1e-8, atol=1e-8) < 3e-4
    assert error(400.0, method="dopri5", rtol=1e-8, atol=1e-8) > 3e-4  # the prior's centring, as stated
    assert error(4000.0, method="rk4", steps=100) < 3e-4  # 50 steps over this ln-range of 11: 1.3e-3
    assert error(4000.0, method="rk4", steps=4) > 3e-4  # the bound can fail
