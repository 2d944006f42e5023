"""pfgm.evaluation: the metric names, errors and references of an evaluation, from small known inputs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_checkpoint
from pfgm import data as pdata
from pfgm import evaluation as peval
from pfgm import metrics as pmetrics
from pfgm.likelihood import (bits_per_dim, dequantize, histogram_bits_per_dim, log_likelihood,
                             log_likelihood_per_probe, pfgmpp_log_likelihood_per_probe)
from pfgm.networks.edm import as_denoiser
from pfgm.sampling import Generated, load_trained

pytestmark = pytest.mark.usefixtures("single_thread")

#: Three points, two probes each: point means 2, 2, 5 (mean 3, sample variance 3, so the standard
#: error over points is sqrt(3 / 3) = 1); variances over probes 2, 0, 2, so the probes' part is
#: sqrt((2 + 0 + 2) / 2) / 3.
PER_PROBE = torch.tensor([[1.0, 3.0], [2.0, 2.0], [4.0, 6.0]], dtype=torch.float64)


def settings(**overrides) -> peval.LikelihoodSettings:
    values = dict(method="rk4", steps=4, rtol=1e-4, atol=1e-4, hutchinson=None, z_min=0.01, z_exp=None,
                  sigma_min=0.002, batch_size=4)
    return peval.LikelihoodSettings(**{**values, **overrides})


def test_mean_and_errors_of_per_probe_values():
    assert peval.with_errors("nll", PER_PROBE) == pytest.approx(
        dict(nll=3.0, nll_se=1.0, nll_probe_se=math.sqrt(2.0) / 3))
    one_probe = peval.with_errors("nll", PER_PROBE[:, :1])  # point values 1, 2, 4: mean 7/3
    assert set(one_probe) == {"nll", "nll_se"} and one_probe["nll"] == pytest.approx(7 / 3)
    assert one_probe["nll_se"] == pytest.approx(math.sqrt((16 / 9 + 1 / 9 + 25 / 9) / 2 / 3))


@pytest.mark.parametrize("levels, offset", [(2, 0.0), (256, 7.0)])
def test_bits_per_dim_of_known_log_densities_and_their_errors(levels, offset):
    # Two dimensions: log p = -2 ln 2 * b is b bits/dim before the quantisation's log2(L) - 1.
    log_p = -2 * math.log(2.0) * PER_PROBE
    metrics = peval.with_errors("bpd", bits_per_dim(log_p, 2, levels=levels))
    assert metrics == pytest.approx(dict(bpd=3.0 + offset, bpd_se=1.0, bpd_probe_se=math.sqrt(2.0) / 3))


def test_metric_names_follow_the_data_features_seeds_and_probes():
    assert peval.likelihood_keys("bpd", None) == ["bpd", "bpd_se", "bpd_baseline"]
    assert peval.likelihood_keys("bpd", 1) == ["bpd", "bpd_se", "bpd_baseline"]
    assert peval.likelihood_keys("nll", 3) == ["nll", "nll_se", "nll_probe_se"]
    sampling = ("num_samples", "nfe", "nfe_max", "nfe_untrained", "seconds_per_sample")
    points = peval.expected_metrics("points", None, seeds=[0], fid_mode="clean", bpd_images=8, hutchinson=None)
    assert points == (*sampling, "nll", "nll_se")
    digits = peval.expected_metrics("image", "digits", seeds=[3, 5], fid_mode="clean", bpd_images=0, hutchinson=2)
    assert digits == (*sampling, "fid", "fid_std", "fid_min", "kid", "fid_untrained", "fid_floor",
                      "fid_seed3", "kid_seed3", "fid_seed5", "kid_seed5")
    inception = peval.expected_metrics("image", "inception", seeds=[0], fid_mode="clean", bpd_images=4,
                                       hutchinson=2)
    assert inception == (*sampling, "fid", "fid_std", "fid_min", "kid", "fid_untrained", "fid_floor", "fid_seed0",
                         "kid_seed0", "inception_score", "inception_score_std", "bpd", "bpd_se", "bpd_probe_se",
                         "bpd_baseline")
    legacy = peval.expected_metrics("image", "inception", seeds=[0], fid_mode="legacy_pytorch", bpd_images=0,
                                    hutchinson=None)
    assert "inception_score" not in legacy  # pytorch-fid's Inception has no class logits


def test_seeds_and_the_likelihood_plane_default_to_the_single_values():
    assert peval.sample_seeds(None, 7) == [7] and peval.sample_seeds([3, 5], 7) == [3, 5]
    assert peval.likelihood_z_min(None, 1e-3) == 1e-3 and peval.likelihood_z_min(0.01, 1e-3) == 0.01


def test_non_finite_metrics_are_named_and_other_values_pass():
    peval.require_finite(dict(fid=1.0, num_samples=96, method="euler"))
    with pytest.raises(peval.NonFiniteMetricError, match=r"\['bpd', 'fid'\]: the model or the sampler diverged"):
        peval.require_finite(dict(fid=math.nan, kid=0.1, bpd=math.inf))
    x = torch.zeros(4, 1, 2, 2)
    x[1, 0, 0, 1], x[3, 0, 1, 1], x[3, 0, 0, 0] = math.nan, -math.inf, math.nan
    assert peval.nonfinite_rows(x) == 2


def test_sets_are_drawn_per_seed_scored_as_drawn_and_only_the_first_kept():
    drawn, scored = [], []

    def draw(seed: int) -> Generated:
        drawn.append(seed)
        return Generated(x=torch.full((2, 1), float(seed)), nfe=[seed, seed + 1], seconds=0.5 * seed)

    def score(x: torch.Tensor) -> dict[str, float]:
        scored.append(float(x[0, 0]))
        return dict(fid=float(x.sum()), kid=0.0)

    sets = peval.draw_sets(draw, [3, 5], score)
    assert drawn == [3, 5] and scored == [3.0, 5.0]
    assert sets.first.tolist() == [[3.0], [3.0]] and sets.nfe == [3, 4, 5, 6] and sets.seconds == 4.0
    assert sets.scores == {3: dict(fid=6.0, kid=0.0), 5: dict(fid=10.0, kid=0.0)}
    assert peval.draw_sets(draw, [1]).scores == {}
    metrics = peval.sampling_metrics(10, sets.nfe, [20, 20], sets.seconds, sets=2)
    assert metrics == dict(num_samples=10, nfe=4.5, nfe_max=6, nfe_untrained=20.0, seconds_per_sample=0.2)


def _tiny_images(folder: Path) -> Path:
    generator = np.random.default_rng(0)
    arrays = {split: generator.integers(0, 256, size=(n, 1, 4, 4), dtype=np.uint8)
              for split, n in (("train", 30), ("test", 20))}
    pdata.write_prepared(pdata.Prepared(name="tiny", kind="image", arrays=arrays, source="test", seed=0, split={}),
                         folder)
    return folder


def _extractor() -> pmetrics.FeatureExtractor:
    def extract(images: torch.Tensor) -> np.ndarray:
        flat = images.flatten(1).double()
        return torch.stack([flat.mean(1), flat.std(1), flat[:, 0], flat[:, 5]], dim=1).numpy()

    return pmetrics.FeatureExtractor(kind="digits", mode=None, network_sha256="net", extract=extract)


def test_reference_metrics_score_the_untrained_samples_and_the_data_floor(tmp_path):
    folder = _tiny_images(tmp_path / "tiny")
    scorer = pmetrics.fid_scorer(_extractor(), folder, split="test")
    scorers = peval.Scorers(samples=scorer, floor=scorer)
    test, train = pdata.load_split(folder, "test"), pdata.load_split(folder, "train")
    # "Untrained samples" that are the reference's own images score 0; all 30 training rows give the floor.
    out = peval.reference_metrics(scorers, train, test, data_dir=folder, num_samples=30, seed=0, batch_size=8,
                                  device="cpu")
    assert set(out) == {"fid_untrained", "fid_floor"}  # digits features have no class logits: no IS
    assert out["fid_untrained"] == pytest.approx(0.0, abs=1e-6)
    assert out["fid_floor"] == scorer.fid(pdata.unit_to_images(train)) > 0


@pytest.fixture(scope="module")
def model(plain_digits, tmp_path_factory):
    """A tiny untrained FieldMLP checkpoint of the digits' shape."""
    data = pdata.load_split(plain_digits, "train")
    return load_trained(make_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", data=data))


def test_bits_per_dim_at_the_data_levels_with_errors_and_the_baseline(model, plain_digits):
    metrics = peval.likelihood_metrics(model, plain_digits, kind="image", levels=17, images=6, settings=settings(),
                                       seed=0)
    assert set(metrics) == {"bpd", "bpd_se", "bpd_baseline"}
    # Recomputed from pfgm.likelihood: the first 6 test images, dequantised at 17 levels with the seed.
    images = pdata.unit_to_images(pdata.load_split(plain_digits, "test")[:6])
    x = dequantize(images, levels=17, generator=torch.Generator().manual_seed(0))
    log_p = log_likelihood(model.net, x, z_min=0.01, z_max=float(model.hyperparameters["z_max"]), method="rk4",
                           steps=4)
    per_image = bits_per_dim(log_p.double(), 64, levels=17)
    assert metrics["bpd"] == pytest.approx(per_image.mean().item(), rel=1e-6)
    assert metrics["bpd_se"] == pytest.approx(per_image.std().item() / math.sqrt(6), rel=1e-5)
    train = pdata.unit_to_images(pdata.load_split(plain_digits, "train"))
    assert metrics["bpd_baseline"] == histogram_bits_per_dim(train, images, levels=17).mean().item()
    assert 0 < metrics["bpd_baseline"] < math.log2(17)  # better than uniform: the digits have structure


def test_probes_add_their_own_standard_error(model, plain_digits):
    metrics = peval.likelihood_metrics(model, plain_digits, kind="image", levels=17, images=6,
                                       settings=settings(hutchinson=3), seed=0)
    assert set(metrics) == {"bpd", "bpd_se", "bpd_probe_se", "bpd_baseline"}
    assert all(math.isfinite(value) for value in metrics.values()) and metrics["bpd_probe_se"] > 0


def test_log_likelihoods_batch_the_points_and_give_nan_rows_where_the_flow_diverges(tmp_path):
    points = torch.tensor([[0.1, -0.2], [0.3, 0.0], [-0.5, 0.4]])
    model = load_trained(make_checkpoint(tmp_path / "points.pt", shape=(2,)))
    # A fixed-step solve with the exact trace treats each point alone: batches of 2 give the one solve of 3.
    values = peval.log_likelihoods(model, points, settings(batch_size=2), torch.Generator())
    whole = log_likelihood_per_probe(model.net, points, z_min=0.01, z_max=float(model.hyperparameters["z_max"]),
                                     method="rk4", steps=4)
    assert values.dtype == torch.float64 and values.shape == (3, 1)
    assert torch.allclose(values, whole.double(), rtol=1e-5, atol=1e-6)
    assert peval.log_likelihoods(model, points, settings(batch_size=2, hutchinson=2), torch.Generator()).shape == (3, 2)
    nan_model = load_trained(make_checkpoint(tmp_path / "nan.pt", shape=(2,), nan=True))
    diverged = peval.log_likelihoods(nan_model, points, settings(batch_size=2, hutchinson=2), torch.Generator())
    assert diverged.shape == (3, 2) and bool(diverged.isnan().all())
    nll = peval.points_nll_metrics(nan_model, points, settings(), torch.Generator())
    assert set(nll) == {"nll", "nll_se"} and math.isnan(nll["nll"])


def test_pfgmpp_models_get_bits_per_dim_through_their_denoiser(plain_digits, tmp_path):
    data = pdata.load_split(plain_digits, "train")[:256]
    pfgmpp = load_trained(make_checkpoint(tmp_path / "pfgmpp.pt", data=data, steps=2, objective="pfgmpp"))
    metrics = peval.likelihood_metrics(pfgmpp, plain_digits, kind="image", levels=17, images=6,
                                       settings=settings(sigma_min=0.01), seed=0)
    assert set(metrics) == {"bpd", "bpd_se", "bpd_baseline"}
    images = pdata.unit_to_images(pdata.load_split(plain_digits, "test")[:6])
    x = dequantize(images, levels=17, generator=torch.Generator().manual_seed(0))
    log_p = pfgmpp_log_likelihood_per_probe(as_denoiser(pfgmpp.net), x, D=4, sigma_min=0.01, method="rk4",
                                            steps=4)[:, 0]
    assert metrics["bpd"] == pytest.approx(bits_per_dim(log_p.double(), 64, levels=17).mean().item(), rel=1e-6)
