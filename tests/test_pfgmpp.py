"""PFGM++: kernel laws (D = 1 is PFGM, D -> infinity is Gaussian), the sigma grid, the Heun sampler."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from pfgm import pfgmpp
from pfgm.field import empirical_field


pytestmark = pytest.mark.usefixtures("single_thread")


def _radial_cdf(r: float, N: int, D: int):
    """P(||x - y|| <= t) under the kernel: ||x - y|| = r sqrt(B / (1 - B)), B ~ Beta(N/2, D/2)."""
    return lambda t: stats.beta.cdf(t ** 2 / (t ** 2 + r ** 2), N / 2, D / 2)


@pytest.mark.parametrize("N,D", [(5, 1), (3, 4)])
def test_perturbation_radius_follows_the_beta_law(N, D, generator):
    # For D = 1 this is PFGM's perturbation on the plane z = r (and its prior with r = z_max).
    sigma = 0.7
    data = torch.full((4000, N), 0.25)
    x = pfgmpp.perturb(data, torch.full((4000,), sigma), D=D, generator=generator)
    radius = torch.linalg.vector_norm(x - data, dim=1).double().numpy()
    assert stats.kstest(radius, _radial_cdf(sigma * math.sqrt(D), N, D)).pvalue > 1e-3


def test_prior_is_the_kernel_at_r_max(generator):
    x = pfgmpp.sample_prior(3000, (2, 2), D=2, sigma_max=80.0, generator=generator)
    radius = torch.linalg.vector_norm(x.flatten(1), dim=1).double().numpy()
    assert x.shape == (3000, 2, 2)
    assert stats.kstest(radius, _radial_cdf(80.0 * math.sqrt(2), 4, 2)).pvalue > 1e-3


def test_large_D_approaches_the_gaussian_kernel(generator):
    sigma, n, N = 0.3, 50, 400
    x = pfgmpp.perturb(torch.zeros(n, N), torch.full((n,), sigma), D=10 ** 6, generator=generator)
    components = (x.flatten() / sigma).double().numpy()
    assert stats.kstest(components, "norm").pvalue > 1e-3
    chi2 = (x.square().sum(dim=1) / sigma ** 2).double().numpy()
    assert stats.kstest(chi2, stats.chi2(N).cdf).pvalue > 1e-3
    # The test has power: at D = 1 the heavy-tailed kernel is far from Gaussian.
    heavy = pfgmpp.perturb(torch.zeros(n, N), torch.full((n,), sigma), D=1, generator=generator)
    assert stats.kstest((heavy.flatten() / sigma).double().numpy(), "norm").pvalue < 1e-6


def test_sample_sigma_is_log_normal(generator):
    sigma = pfgmpp.sample_sigma(20000, generator=generator)
    log_sigma = sigma.log().double().numpy()
    assert stats.kstest(log_sigma, stats.norm(-1.2, 1.2).cdf).pvalue > 1e-3


def test_sigma_grid_is_edm_schedule():
    grid = pfgmpp.sigma_grid(18)
    assert grid.shape == (19,) and grid.dtype == torch.float64
    assert float(grid[0]) == pytest.approx(80.0) and float(grid[-2]) == pytest.approx(0.002)
    assert float(grid[-1]) == 0.0 and bool((grid[1:] < grid[:-1]).all())
    i = 5  # EDM: (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert float(grid[i]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="steps"):
        pfgmpp.sigma_grid(0)


@pytest.mark.parametrize("steps", [1, 2, 18])
def test_heun_nfe_is_two_steps_minus_one(steps):
    result = pfgmpp.heun(lambda x, sigma: torch.zeros_like(x), torch.randn(3, 2), pfgmpp.sigma_grid(steps))
    assert result.nfe == 2 * steps - 1
    grid = pfgmpp.sigma_grid(steps)[:-1]  # a grid that stops above 0 corrects every step
    if steps > 1:
        assert pfgmpp.heun(lambda x, s: torch.zeros_like(x), torch.randn(3, 2), grid).nfe == 2 * (steps - 1)


def test_optimal_denoiser_is_the_kernel_posterior_mean(generator):
    charges, x = torch.randn(5, 3, generator=generator), torch.randn(4, 3, generator=generator)
    sigma, D = torch.full((4,), 0.8), 6
    r2 = (sigma[0] * math.sqrt(D)) ** 2
    sq = (x[:, None, :] - charges[None]).square().sum(dim=2).double()
    weights = torch.softmax(-(3 + D) / 2 * torch.log(sq + r2), dim=1)
    expected = (weights @ charges.double()).float()
    torch.testing.assert_close(pfgmpp.optimal_denoiser(charges, D=D)(x, sigma), expected)


@pytest.mark.parametrize("D", [1, 16, 2048])
def test_heun_with_the_exact_denoiser_lands_on_the_data(D, generator):
    corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0])] * 3)  # 8 well separated points
    charges = corners + 0.1 * torch.randn(8, 3, generator=generator)
    x = pfgmpp.sample_prior(64, (3,), D=D, generator=generator)
    calls = []
    result = pfgmpp.heun(pfgmpp.optimal_denoiser(charges, D=D), x, pfgmpp.sigma_grid(18),
                         callback=calls.append)
    assert result.nfe == 35 and len(calls) == 18 and result.x.shape == (64, 3)
    nearest = torch.cdist(result.x, charges).min(dim=1).values
    # Small D has a heavy tail: a start at R >> r_max is only shrunk by about sigma_min / sigma_max,
    # so it ends near the charges' mean, not on one (why PFGM clips the prior norm). Exclude those.
    inside = torch.linalg.vector_norm(x, dim=1) < 20 * 80 * math.sqrt(D)
    assert int(inside.sum()) >= 58
    assert float(nearest[inside].max()) < 1e-3


def test_single_charge_denoiser_is_exact_for_heun():
    # With one charge D(x) = y, the ODE is x(sigma) = y + (x0 - y) sigma / sigma0: Heun is exact.
    y = torch.tensor([[0.3, -0.2]])
    denoiser = lambda x, sigma: y.expand_as(x)  # noqa: E731
    states = []
    grid = pfgmpp.sigma_grid(5)
    x0 = torch.tensor([[10.0, 4.0]], dtype=torch.float64)
    pfgmpp.heun(denoiser, x0, grid, callback=lambda info: states.append(info["x"]))
    for state, sigma in zip(states, grid[1:].tolist()):
        torch.testing.assert_close(state, y.double() + (x0 - y.double()) * sigma / 80.0)


def test_empirical_field_consistency_with_denoiser(generator):
    # dx/dsigma = (x - D(x, sigma)) / sigma equals E_x / E_r * sqrt(D) (the PFGM++ field line).
    charges, x, D = torch.randn(4, 2, generator=generator), torch.randn(3, 2, generator=generator), 5
    sigma = torch.full((3,), 1.5)
    field = empirical_field(x, sigma * math.sqrt(D), charges, D=D)
    slope = (x - pfgmpp.optimal_denoiser(charges, D=D)(x, sigma)) / sigma[:, None]
    torch.testing.assert_close(slope, field[:, :2] / field[:, 2:] * math.sqrt(D))


@pytest.mark.parametrize("snapshot", ["ncsnpp_snapshot.pkl", "ddpmpp_snapshot.pt"])
@pytest.mark.parametrize("steps", [1, 3])
def test_heun_samples_the_official_fixture_networks(snapshot, steps, generator):
    # generate.py's sampler on the official tiny networks (EDMPrecond as the denoiser, no adapter):
    # prior of radius 80 sqrt(D), D-independent EDM grid, Heun with an Euler last step to sigma = 0.
    from official import EDM_REFERENCE
    from pfgm.networks.edm import from_official_snapshot

    if not (EDM_REFERENCE / snapshot).is_file():
        pytest.skip(f"{EDM_REFERENCE} not found (shared/ must be a sibling of the repo root)")
    net = from_official_snapshot(EDM_REFERENCE / snapshot)
    shape = net.data_shape
    x = pfgmpp.sample_prior(4, shape, D=net.D, generator=generator)
    calls = []
    result = pfgmpp.heun(net, x, pfgmpp.sigma_grid(steps), callback=calls.append)
    assert result.x.shape == (4, *shape) and result.x.dtype == torch.float32
    assert bool(torch.isfinite(result.x).all()) and result.nfe == 2 * steps - 1
    # The last step is Euler to sigma = 0, which lands exactly on the denoiser's output there.
    torch.testing.assert_close(result.x, calls[-1]["denoised"], rtol=0, atol=1e-4)
    assert [c["sigma_next"] for c in calls][-1] == 0.0 and calls[0]["sigma"] == pytest.approx(80.0)


def test_the_diffusion_limit_d_inf_is_edm_gaussian_noise_and_the_large_d_kernels_tend_to_it():
    """D = math.inf perturbs with sigma * N(0, I) and starts from N(0, sigma_max^2 I): the moments are the
    Gaussian's, and a large finite D's kernel (r = sigma sqrt(D)) gives the same norms to within 1%."""
    generator = torch.Generator().manual_seed(0)
    n, shape, sigma = 4000, (3, 4, 4), 0.7
    data = torch.zeros(n, *shape)
    gaussian = pfgmpp.perturb(data, torch.full((n,), sigma), D=math.inf, generator=generator)
    assert gaussian.std().item() == pytest.approx(sigma, rel=0.02)
    assert gaussian.mean().abs().item() < 0.01
    large_d = pfgmpp.perturb(data, torch.full((n,), sigma), D=10**4, generator=generator)
    expected = sigma * math.sqrt(math.prod(shape))
    for offsets in (gaussian, large_d):
        assert offsets.flatten(1).norm(dim=1).mean().item() == pytest.approx(expected, rel=0.01)
    prior = pfgmpp.sample_prior(n, shape, D=math.inf, sigma_max=80.0, generator=generator)
    assert prior.std().item() == pytest.approx(80.0, rel=0.02)
    with pytest.raises(ValueError, match="integer >= 1"):
        pfgmpp.perturb(data[:2], torch.ones(2), D=0.5)
