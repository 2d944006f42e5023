"""The prior against the projected uniform hemisphere, and its density against normalisation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from pfgm.prior import kernel_offsets, prior_log_prob, sample_prior


def _projected_hemisphere(n: int, N: int, z_max: float, seed: int) -> np.ndarray:
    """Uniform points on the upper half of S^N, projected radially onto the plane z = z_max."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, N + 1))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return z_max * u[:, :N] / np.abs(u[:, N:])


@pytest.mark.parametrize("N", [1, 2, 5, 40])
def test_sample_prior_matches_projected_hemisphere(N, generator):
    ours = sample_prior(4000, (N,), z_max=3.0, generator=generator).double().numpy()
    reference = _projected_hemisphere(4000, N, 3.0, seed=N)
    assert stats.ks_2samp(np.linalg.norm(ours, axis=1), np.linalg.norm(reference, axis=1)).pvalue > 1e-3
    assert stats.ks_2samp(ours[:, 0], reference[:, 0]).pvalue > 1e-3


def test_ks_test_would_reject_a_wrong_law(generator):
    wrong = sample_prior(4000, (5,), z_max=3.3, generator=generator).numpy()  # 10% off in z_max
    reference = _projected_hemisphere(4000, 5, 3.0, seed=0)
    assert stats.ks_2samp(np.linalg.norm(wrong, axis=1), np.linalg.norm(reference, axis=1)).pvalue < 1e-3


@pytest.mark.parametrize("N,D", [(3, 1), (10, 4), (2, 64)])
def test_radial_law_is_beta(N, D, generator):
    r = 2.0
    offsets = kernel_offsets(5000, (N,), r, D=D, generator=generator).double()
    ratio = offsets.square().sum(dim=1) / r ** 2          # B / (1 - B)
    beta = (ratio / (1 + ratio)).numpy()
    assert stats.kstest(beta, stats.beta(N / 2, D / 2).cdf).pvalue > 1e-3


def test_clip_bounds_the_norm(generator):
    x = sample_prior(2000, (3, 4, 4), z_max=40.0, upper_norm=300.0, generator=generator)
    norms = x.reshape(2000, -1).norm(dim=1)
    assert norms.min() >= 1.0 - 1e-5 and norms.max() <= 300.0 * (1 + 1e-5)
    assert (norms > 299.0).float().mean() > 0.3  # heavy tail: many samples hit the bound


def test_generator_controls_randomness():
    first = sample_prior(5, (2,), z_max=1.0, generator=torch.Generator().manual_seed(7))
    second = sample_prior(5, (2,), z_max=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second) and first.shape == (5, 2) and first.dtype == torch.float32


@pytest.mark.parametrize("z_max,D", [(1.0, 1), (7.5, 1), (2.0, 3)])
def test_log_prob_integrates_to_one_in_1d(z_max, D):
    def density(value):
        return math.exp(prior_log_prob(torch.tensor([[value]], dtype=torch.float64), z_max=z_max, D=D))
    mass, _ = integrate.quad(density, -np.inf, np.inf, epsabs=1e-10)
    assert mass == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("z_max", [0.5, 4.0])
def test_log_prob_integrates_to_one_in_2d(z_max):
    def radial_density(radius):
        point = torch.tensor([[radius, 0.0]], dtype=torch.float64)
        return 2 * math.pi * radius * math.exp(prior_log_prob(point, z_max=z_max))
    mass, _ = integrate.quad(radial_density, 0, np.inf, epsabs=1e-10)
    assert mass == pytest.approx(1.0, abs=1e-6)


def test_log_prob_is_the_density_of_the_samples(generator):
    # The empirical mean of log p under the samples matches the density's own entropy integral
    # estimated independently from the hemisphere construction.
    N, z_max = 3, 2.0
    reference = torch.from_numpy(_projected_hemisphere(200000, N, z_max, seed=3))
    samples = sample_prior(200000, (N,), z_max=z_max, generator=generator).double()
    assert prior_log_prob(samples, z_max=z_max).mean().item() == pytest.approx(
        prior_log_prob(reference, z_max=z_max).mean().item(), abs=0.02)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="z_max"):
        sample_prior(3, (2,), z_max=0.0)
    with pytest.raises(ValueError, match="upper_norm"):
        sample_prior(3, (2,), z_max=1.0, upper_norm=-1.0)
    with pytest.raises(ValueError, match=r"\bn\b"):
        sample_prior(0, (2,), z_max=1.0)
    with pytest.raises(ValueError, match=r"\bD\b"):
        sample_prior(3, (2,), z_max=1.0, D=0)
    with pytest.raises(ValueError, match=r"\bx\b"):
        prior_log_prob(torch.full((2, 2), math.nan), z_max=1.0)
