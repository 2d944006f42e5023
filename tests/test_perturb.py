"""PFGM's perturbation against the official two-part construction and published constants."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pfgm.perturb import hyperparameters, perturb, prior_range


def _official_form(data: torch.Tensor, M: int, sigma: float, tau: float, restrict_M: bool, seed: int):
    """Norm and direction drawn separately, as the official forward_pz does (float64, numpy)."""
    rng = np.random.default_rng(seed)
    batch, dims = data.shape[0], data[0].numel()
    m = rng.uniform(0, M, batch)
    z0 = np.abs(rng.standard_normal(batch)) * sigma
    if restrict_M:
        low = z0 < 0.005
        m[low] = rng.uniform(0, math.floor(0.7 * M), low.sum())
    multiplier = (1 + tau) ** m
    norm = np.linalg.norm(rng.standard_normal((batch, dims)) * sigma, axis=1) * multiplier
    direction = rng.standard_normal((batch, dims))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * norm[:, None], multiplier * z0


@pytest.mark.parametrize("restrict_M", [True, False])
def test_law_matches_official_construction(restrict_M, generator):
    data = torch.zeros(6000, 3, 2, 2)
    x, z = perturb(data, M=100, restrict_M=restrict_M, generator=generator)
    offsets, z_ref = _official_form(data, 100, 0.01, 0.03, restrict_M, seed=1)
    ours_norm = x.reshape(6000, -1).norm(dim=1).double().numpy()
    assert stats.ks_2samp(np.log(ours_norm), np.log(np.linalg.norm(offsets, axis=1))).pvalue > 1e-3
    assert stats.ks_2samp(np.log(z.double().numpy()), np.log(z_ref)).pvalue > 1e-3
    assert stats.ks_2samp(x[:, 0, 0, 0].double().numpy(), offsets[:, 0]).pvalue > 1e-3


def test_restriction_changes_the_law(generator):
    data = torch.zeros(6000, 4)
    _, z = perturb(data, M=200, restrict_M=True, generator=generator)
    _, z_ref = _official_form(data, 200, 0.01, 0.03, False, seed=2)
    assert stats.ks_2samp(np.log(z.double().numpy()), np.log(z_ref)).pvalue < 1e-3


def test_offset_over_height_is_cauchy_in_1d(generator):
    # (x - y) / z = eps / z0 whatever m is: a ratio of N(0,1) and |N(0,1)|, i.e. standard Cauchy.
    data = torch.randn(5000, 1, generator=generator)
    x, z = perturb(data, M=291, restrict_M=False, generator=generator)
    ratio = ((x - data)[:, 0] / z).double().numpy()
    assert stats.kstest(ratio, stats.cauchy.cdf).pvalue > 1e-3


def test_same_generator_same_points_and_shapes():
    data = torch.randn(8, 1, 8, 8)
    first = perturb(data, M=50, generator=torch.Generator().manual_seed(3))
    second = perturb(data, M=50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[0].shape == data.shape and first[1].shape == (8,) and bool((first[1] >= 0).all())


def test_hyperparameters_reproduce_published_cifar10_constants():
    # PFGM.md: M = 291 on CIFAR-10 gives z_max = 43.4 and upper_norm = 3015. A data set with that
    # N and a mean squared norm inside M = 291's window must reproduce them.
    data = torch.full((10, 3, 32, 32), math.sqrt(1041.0 / 3072))  # E y^2 = 0.34, CIFAR-like
    result = hyperparameters(data)
    assert result["M"] == 291
    assert result["z_max"] == pytest.approx(43.4, abs=0.05)
    assert result["upper_norm"] == pytest.approx(3015, abs=2)


def test_prior_range_from_M_alone():
    # PFGM.md section 2: M = 291 with N = 3072 gives 43.4 and 3015, whatever the data; and it is
    # the range `hyperparameters` reports for the M it chooses.
    assert prior_range(291, 3072) == pytest.approx(dict(z_max=43.4, upper_norm=3015), abs=0.5)
    data = torch.full((10, 3, 32, 32), math.sqrt(1041.0 / 3072))
    found = hyperparameters(data)
    assert prior_range(found["M"], 3072) == dict(z_max=found["z_max"], upper_norm=found["upper_norm"])
    with pytest.raises(ValueError, match=r"\bM\b"):
        prior_range(0, 3072)
    with pytest.raises(ValueError, match="dims"):
        prior_range(291, 0)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match=r"\bM\b"):
        perturb(torch.zeros(2, 3), M=0)
    with pytest.raises(ValueError, match="data"):
        perturb(torch.zeros(0, 3), M=5)
    with pytest.raises(ValueError, match="sigma"):
        perturb(torch.zeros(2, 3), M=5, sigma=-1.0)
    with pytest.raises(ValueError, match="data"):
        perturb(torch.full((2, 3), math.nan), M=5)
    with pytest.raises(ValueError, match="data"):
        hyperparameters(torch.zeros(4, 3))


def test_data_statistics_do_not_depend_on_the_chunking():
    # hyperparameters sums ||y||^2 a chunk at a time in float64; any chunk size gives the same mean.
    from pfgm.perturb import _mean_squared_norm

    rows = torch.randn(1001, 37, generator=torch.Generator().manual_seed(0)) * 3
    expected = float(rows.double().square().sum(dim=1).mean())
    for chunk_elements in (1, 37, 1000, 10 ** 6):
        assert _mean_squared_norm(rows, chunk_elements) == pytest.approx(expected, rel=1e-12)
