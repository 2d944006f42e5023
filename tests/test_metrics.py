"""pfgm.metrics: Frechet distance (clean-fid's), Inception Score, FID floor, the Inception file check."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pfgm import metrics


def test_frechet_distance_of_identical_statistics_is_zero():
    features = np.random.default_rng(0).normal(size=(200, 5))
    stats = metrics.feature_statistics(features)
    assert stats.mu.shape == (5,) and stats.sigma.shape == (5, 5) and stats.count == 200
    assert metrics.frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_known_gaussians():
    # Commuting covariances: d^2 = ||mu_a - mu_b||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    a_var, b_var = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    a = metrics.FeatureStats(mu=np.zeros(3), sigma=np.diag(a_var), count=0)
    b = metrics.FeatureStats(mu=np.array([1.0, -2.0, 0.5]), sigma=np.diag(b_var), count=0)
    expected = 1.0 + 4.0 + 0.25 + ((np.sqrt(a_var) - np.sqrt(b_var)) ** 2).sum()
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)


def test_fid_from_samples_approaches_the_gaussian_value():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20000, 2))
    y = rng.normal(size=(20000, 2)) * 2.0 + 1.0
    # ||(1, 1)||^2 + 2 (2 - 1)^2 = 4
    assert metrics.fid_from_features(x, y) == pytest.approx(4.0, abs=0.1)


def test_fid_floor_subsamples_train_rows():
    rng = np.random.default_rng(2)
    train, test = rng.normal(size=(500, 3)), rng.normal(size=(300, 3))
    assert metrics.fid_floor(train, test) == pytest.approx(metrics.fid_from_features(train, test))
    small = metrics.fid_floor(train, test, n=50, seed=0)
    assert small == metrics.fid_floor(train, test, n=50, seed=0) and small > 0
    with pytest.raises(ValueError, match="n >= 2"):
        metrics.feature_statistics(np.zeros((1, 3)))


def test_inception_score_limits():
    n, k = 100, 10
    assert metrics.inception_score(np.zeros((n, k)), splits=5) == pytest.approx((1.0, 0.0), abs=1e-9)
    # Confident and evenly spread over k classes: IS = k.
    confident = np.full((n, k), -50.0)
    confident[np.arange(n), np.arange(n) % k] = 50.0
    score, spread = metrics.inception_score(confident, splits=5)
    assert score == pytest.approx(k, rel=1e-6) and spread == pytest.approx(0.0, abs=1e-6)
    # Log-probabilities are logits too.
    probs = torch.softmax(torch.randn(n, k, generator=torch.Generator().manual_seed(0)), dim=1)
    assert metrics.inception_score(probs.log().numpy(), splits=2)[0] == pytest.approx(
        metrics.inception_score(probs.log().numpy() + 3.0, splits=2)[0])
    with pytest.raises(ValueError, match="splits"):
        metrics.inception_score(np.zeros((3, k)), splits=10)


def test_missing_inception_file_says_what_to_put_where(tmp_path):
    path = tmp_path / "weights" / metrics.INCEPTION_FILE
    with pytest.raises(metrics.InceptionMissingError) as err:
        metrics.InceptionFeatures(path)
    assert str(path) in str(err.value) and metrics.INCEPTION_URL in str(err.value)
    assert "evaluate.inception_path" in str(err.value)
    assert not path.parent.exists()  # nothing was downloaded or created
    with pytest.raises(metrics.InceptionMissingError, match="must end in inception-2015-12-05.pt"):
        metrics.check_inception(tmp_path / "inception.pt")


class _FakeInception(nn.Module):
    """The TorchScript interface clean-fid's InceptionV3W uses: `layers` and forward(img, ...)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2048))
        self.head = nn.Linear(2048, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        features = self.layers((img - 128.0) / 128.0)
        if return_features:
            return features
        return torch.softmax(self.head(features), dim=1)


def test_inception_plumbing_through_cleanfid(tmp_path):
    path = tmp_path / metrics.INCEPTION_FILE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.jit.save(torch.jit.script(_FakeInception()), str(path))
    inception = metrics.InceptionFeatures(path)
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = metrics.image_features(images, inception, resize=metrics.clean_resizer(), batch_size=3)
    assert features.shape == (4, 2048) and np.isfinite(features).all()
    logits = metrics.inception_logits(images, inception, batch_size=3)
    assert logits.shape == (4, 1008)
    score, _ = metrics.inception_score(logits, splits=2)
    assert math.isfinite(score) and score >= 1.0 - 1e-9
