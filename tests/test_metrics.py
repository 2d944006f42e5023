"""pfgm.metrics and pfgm.inception: FID (clean-fid's maths), KID, Inception Score, FID floor, quantisation,
cached reference features, the Inception modes, and the verified weights download (offline: file:// URLs
and fake fetches)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from helpers import save_fake_inception
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


def test_inception_plumbing_through_cleanfid(tmp_path):
    path = tmp_path / metrics.INCEPTION_FILE
    save_fake_inception(path)
    inception = metrics.InceptionFeatures(path)
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = metrics.image_features(images, inception, resize=metrics.clean_resizer(), batch_size=3)
    assert features.shape == (4, 2048) and np.isfinite(features).all()
    logits = metrics.inception_logits(images, inception, batch_size=3)
    assert logits.shape == (4, 1008)
    score, _ = metrics.inception_score(logits, splits=2)
    assert math.isfinite(score) and score >= 1.0 - 1e-9
    # A scorer with this network scores samples in [-1, 1] the same way, and NaN for diverged ones.
    extractor = metrics.FeatureExtractor(kind="inception", mode="clean", network_sha256="fake", extract=None,
                                         inception=inception)
    reference = metrics.ReferenceFeatures(features=features, stats=metrics.feature_statistics(features), key="k")
    scorer = metrics.FidScorer(extractor=extractor, reference=reference, split="test")
    samples = images.float() / 127.5 - 1
    assert scorer.sample_inception_score(samples, splits=2, batch_size=3) == metrics.inception_score(logits, splits=2)
    samples[0, 0, 0, 0] = float("nan")
    assert all(math.isnan(v) for v in scorer.sample_inception_score(samples, splits=2))


# --- KID -------------------------------------------------------------------------------------------

def _cubic(x: np.ndarray, y: np.ndarray) -> float:
    return float((x @ y / len(x) + 1.0) ** 3)


def _unbiased_mmd2(a: np.ndarray, b: np.ndarray) -> float:
    """The unbiased MMD^2 estimate with clean-fid's kernel, by explicit sums over pairs (m rows each)."""
    m = len(a)
    within = sum(_cubic(a[i], a[j]) + _cubic(b[i], b[j]) for i in range(m) for j in range(m) if i != j)
    across = sum(_cubic(a[i], b[j]) for i in range(m) for j in range(m))
    return within / (m * (m - 1)) - 2.0 * across / m**2


def test_kid_of_point_masses_is_the_kernel_distance():
    u, v = np.array([0.5, -1.0, 2.0]), np.array([1.5, 0.0, -0.5])
    same = np.tile(u, (40, 1))
    # Every pair of rows is (u, u): the unbiased estimate is k(u,u) + k(u,u) - 2 k(u,u) = 0 exactly.
    assert metrics.kernel_inception_distance(same, same.copy(), num_subsets=3) == pytest.approx(0.0, abs=1e-12)
    expected = _cubic(u, u) + _cubic(v, v) - 2 * _cubic(u, v)
    kid = metrics.kernel_inception_distance(same, np.tile(v, (25, 1)), num_subsets=3)
    assert kid == pytest.approx(expected, rel=1e-12) and expected > 0


def test_kid_equals_the_direct_sum_and_clean_fid():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 6)), rng.normal(size=(30, 6)) + 0.3
    direct = _unbiased_mmd2(a, b)
    # One subset of all 30 rows is a permutation of each set, which the estimate does not see.
    assert metrics.kernel_inception_distance(a, b, num_subsets=1) == pytest.approx(direct, rel=1e-10)
    assert kernel_distance(a, b, num_subsets=1, max_subset_size=1000) == pytest.approx(direct, rel=1e-10)
    # Identical sets: not 0 (the diagonal is left out of the within-set sums only) but the same formula.
    assert metrics.kernel_inception_distance(a, a, num_subsets=1) == pytest.approx(_unbiased_mmd2(a, a), rel=1e-10)


def test_kid_subsets_are_seeded_and_unbiased_where_fid_is_not():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(200, 4)), rng.normal(size=(150, 4))
    first = metrics.kernel_inception_distance(a, b, num_subsets=5, max_subset_size=50, seed=1)
    assert first == metrics.kernel_inception_distance(a, b, num_subsets=5, max_subset_size=50, seed=1)
    assert first != metrics.kernel_inception_distance(a, b, num_subsets=5, max_subset_size=50, seed=2)
    # Two samples of one law at n = 20: FID is biased far above 0, KID averages to 0 within its noise.
    kids, fids = [], []
    for _ in range(200):
        x, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
        kids.append(metrics.kernel_inception_distance(x, y, num_subsets=1))
        fids.append(metrics.fid_from_features(x, y))
    kids, fids = np.array(kids), np.array(fids)
    standard_error = lambda v: v.std() / np.sqrt(len(v))  # noqa: E731
    assert abs(kids.mean()) < 3 * standard_error(kids) and fids.mean() > 20 * standard_error(fids)
    shifted = metrics.kernel_inception_distance(a, b + 1.0, num_subsets=5, max_subset_size=50)
    assert shifted > 20 * abs(first)
    with pytest.raises(ValueError, match="at least 2 rows"):
        metrics.kernel_inception_distance(a[:1], b)


def test_set_statistics_of_per_seed_scores():
    assert metrics.set_statistics([4.0]) == dict(mean=4.0, std=0.0, min=4.0)
    stats = metrics.set_statistics([3.0, 5.0, 7.0])
    assert stats == dict(mean=5.0, std=pytest.approx(2.0), min=3.0)
    per_seed = metrics.per_seed_metrics({0: dict(fid=3.0, kid=0.1), 2: dict(fid=5.0, kid=0.3)})
    assert per_seed == dict(fid_seed0=3.0, kid_seed0=0.1, fid_seed2=5.0, kid_seed2=0.3, fid=4.0,
                            fid_std=pytest.approx(2 ** 0.5), fid_min=3.0, kid=pytest.approx(0.2))


def test_seeded_rows_draw_in_order_and_keep_all_when_n_is_large():
    assert metrics.seeded_rows(5, None, 0).tolist() == metrics.seeded_rows(5, 9, 1).tolist() == [0, 1, 2, 3, 4]
    rows = metrics.seeded_rows(100, 10, 3)
    assert len(set(rows.tolist())) == 10 and rows.tolist() == sorted(rows.tolist())
    assert rows.tolist() == metrics.seeded_rows(100, 10, 3).tolist() != metrics.seeded_rows(100, 10, 4).tolist()


# --- quantisation ----------------------------------------------------------------------------------

def test_round_and_truncate_on_known_values():
    level = lambda v: v / 127.5 - 1.0  # noqa: E731 -- the sample whose scaled value (x + 1) * 127.5 is v
    x = torch.tensor([-1.0, 1.0, 0.0, -1.5, 1.2, level(100.7), level(100.2), 1.0 - 1e-3, float("nan")])
    assert metrics.quantize(x, "round").tolist() == [0, 255, 128, 0, 255, 101, 100, 255, 128]
    assert metrics.quantize(x, "truncate").tolist() == [0, 255, 127, 0, 255, 100, 100, 254, 127]
    with pytest.raises(ValueError, match="truncate"):
        metrics.quantize(x, "floor")


def test_truncate_is_the_official_uint8_cast_and_half_a_level_below_rounding():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    # Poisson_flow run_lib.evaluate: inverse_scaler (x + 1) / 2, then np.clip(x * 255., 0, 255).astype(np.uint8).
    official = np.clip(((x + 1.0) / 2.0).numpy() * 255.0, 0, 255).astype(np.uint8)
    truncated = metrics.quantize(x, "truncate")
    assert truncated.dtype == torch.uint8 and np.array_equal(truncated.numpy(), official)
    rounded = metrics.quantize(x, "round").int()
    difference = rounded - truncated.int()
    assert set(difference.unique().tolist()) <= {0, 1}
    inside = (x > -1) & (x < 1)
    assert difference[inside].float().mean().item() == pytest.approx(0.5, abs=0.03)


# --- reference features, cached --------------------------------------------------------------------

def _tiny_images(tmp_path, seed: int = 0, name: str = "folder"):
    from pfgm import data as pdata

    rng = np.random.default_rng(seed)
    arrays = {split: rng.integers(0, 256, size=(n, 1, 4, 4), dtype=np.uint8) for split, n in
              (("train", 40), ("test", 24))}
    folder = tmp_path / f"data{seed}"
    pdata.write_prepared(pdata.Prepared(name=name, kind="image", arrays=arrays, source="test", seed=seed,
                                        split={}), folder)
    return folder


def _counting_extractor(network: str = "net-a", mode: str | None = None):
    calls: list[int] = []

    def extract(images: torch.Tensor) -> np.ndarray:
        calls.append(len(images))
        flat = images.flatten(1).double()
        return torch.stack([flat.mean(1), flat.std(1), flat[:, 0], flat[:, 5]], dim=1).numpy()

    return metrics.FeatureExtractor(kind="digits", mode=mode, network_sha256=network, extract=extract), calls


def test_reference_key_changes_with_data_network_mode_and_split(tmp_path):
    from pfgm import data as pdata

    manifest = pdata.read_manifest(_tiny_images(tmp_path, seed=0))
    other_data = pdata.read_manifest(_tiny_images(tmp_path, seed=1))
    a, _ = _counting_extractor("net-a", "clean")
    key = metrics.reference_key(metrics.reference_fields(manifest, "test", a))
    assert key == metrics.reference_key(metrics.reference_fields(dict(manifest), "test", _counting_extractor(
        "net-a", "clean")[0]))
    variants = [metrics.reference_fields(other_data, "test", a),
                metrics.reference_fields(manifest, "train", a),
                metrics.reference_fields(manifest, "test", _counting_extractor("net-b", "clean")[0]),
                metrics.reference_fields(manifest, "test", _counting_extractor("net-a", "legacy_tensorflow")[0])]
    keys = {metrics.reference_key(fields) for fields in variants}
    assert len(keys) == 4 and key not in keys
    with pytest.raises(ValueError, match="train"):
        metrics.reference_fields(manifest, "validation", a)


def test_reference_features_are_computed_once_and_read_back_verified(tmp_path, caplog):
    folder, cache = _tiny_images(tmp_path), tmp_path / "cache"
    extractor, calls = _counting_extractor()
    first = metrics.reference_features(folder, "test", extractor, cache_dir=cache)
    assert calls == [24]
    files = list(cache.iterdir())
    assert [f.name for f in files] == [f"folder-test-digits-{first.key[:16]}.npz"]  # no partial file left
    second = metrics.reference_features(folder, "test", extractor, cache_dir=cache)
    assert calls == [24], "a cache hit extracts nothing"
    assert np.array_equal(first.features, second.features) and first.features.dtype == np.float32
    assert np.array_equal(first.stats.mu, second.stats.mu) and np.array_equal(first.stats.sigma, second.stats.sigma)
    assert second.stats.count == 24 and not second.features.flags.writeable
    # Another split or feature network: another file; the first one is left as it is.
    metrics.reference_features(folder, "train", extractor, cache_dir=cache)
    assert calls == [24, 40] and len(list(cache.iterdir())) == 2
    # A damaged file is recomputed and replaced, with a warning.
    files[0].write_bytes(files[0].read_bytes()[:200])
    with caplog.at_level("WARNING", logger="pfgm.metrics"):
        third = metrics.reference_features(folder, "test", extractor, cache_dir=cache)
    assert calls == [24, 40, 24] and "recomputing" in caplog.text
    assert np.array_equal(third.stats.sigma, first.stats.sigma)
    metrics.reference_features(folder, "test", extractor, cache_dir=cache)
    assert calls == [24, 40, 24]


def test_scorer_scores_against_its_reference_and_is_thread_safe(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    folder = _tiny_images(tmp_path)
    extractor, _ = _counting_extractor()
    scorer = metrics.fid_scorer(extractor, folder, split="train", cache_dir=tmp_path / "cache", quantize="truncate")
    from pfgm import data as pdata

    train = pdata.unit_to_images(pdata.load_split(folder, "train"))
    own = scorer.scores(train)
    assert own["fid"] == pytest.approx(0.0, abs=1e-6)  # the reference's own images
    samples = pdata.load_split(folder, "test")
    expected = scorer.scores(metrics.quantize(samples, "truncate"))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: scorer.sample_scores(samples), range(8)))
    assert all(r == expected for r in results)
    diverged = samples.clone()
    diverged[0, 0, 0, 0] = float("nan")
    assert all(math.isnan(v) for v in scorer.sample_scores(diverged).values())
    with pytest.raises(ValueError, match="quantisation"):
        metrics.fid_scorer(extractor, folder, quantize="floor")


def test_the_floor_scores_seeded_train_images_against_the_test_split(tmp_path):
    from pfgm import data as pdata

    folder, cache = _tiny_images(tmp_path), tmp_path / "cache"
    extractor, calls = _counting_extractor()
    train_scorer = metrics.fid_scorer(extractor, folder, split="train", cache_dir=cache, quantize="truncate")
    floor = metrics.test_split_scorer(train_scorer, folder, cache_dir=cache)
    assert floor.split == "test" and floor.extractor is extractor and floor.quantize == "truncate"
    assert metrics.test_split_scorer(floor, folder) is floor
    train = pdata.unit_to_images(pdata.load_split(folder, "train"))
    value = metrics.data_fid_floor(floor, folder, n=30, seed=5)
    assert value == floor.fid(train[metrics.seeded_rows(40, 30, 5)]) > 0
    assert metrics.data_fid_floor(floor, folder, n=100) == floor.fid(train)
    # The digits CNN has no class logits: no Inception Score.
    assert floor.sample_inception_score(pdata.load_split(folder, "test")) is None


# --- Inception modes and weights -------------------------------------------------------------------

def test_each_mode_uses_clean_fids_resize_and_network(tmp_path):
    path = tmp_path / metrics.INCEPTION_FILE
    save_fake_inception(path)
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    as_float = images.float()
    legacy = metrics.InceptionFeatures(path, mode="legacy_tensorflow")
    # legacy_tensorflow: no resize outside; the network gets the 16x16 images and resizes (here: pools) inside.
    features = metrics.image_features(images, legacy, resize=legacy.resizer())
    expected = legacy.model.base(as_float, return_features=True).detach().numpy()
    assert np.allclose(features, expected, atol=1e-5)
    clean = metrics.InceptionFeatures(path, mode="clean")
    # clean: PIL bicubic to 299 outside, then (x - 128) / 128 into the layers.
    features = metrics.image_features(images, clean, resize=clean.resizer())
    resized = torch.from_numpy(np.stack([clean.resizer()(a) for a in as_float.permute(0, 2, 3, 1).numpy()]))
    expected = clean.model.layers((resized.permute(0, 3, 1, 2) - 128) / 128).detach().numpy()
    assert np.allclose(features, expected, atol=1e-5) and not np.allclose(features, legacy(as_float).numpy())
    assert metrics.inception_logits(images, legacy).shape == (3, 1008)
    with pytest.raises(ValueError, match="unknown Inception mode"):
        metrics.InceptionFeatures(path, mode="tf")


def test_legacy_pytorch_reads_pytorch_fid_weights_from_torch_hub(tmp_path, monkeypatch):
    import cleanfid.inception_pytorch as pytorch_inception

    from pfgm import inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    weights, url, digest = inception.weights_location("legacy_pytorch", tmp_path / metrics.INCEPTION_FILE)
    assert weights == tmp_path / "torch" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    assert url.endswith(weights.name) and digest == "6726825d"
    with pytest.raises(metrics.InceptionMissingError, match="download_weights"):
        metrics.InceptionFeatures(tmp_path / metrics.INCEPTION_FILE, mode="legacy_pytorch")

    class FakeBlocks(nn.Module):  # clean-fid's InceptionV3 interface: inputs in [0, 1], a list of (B, 2048, 1, 1)
        def __init__(self, output_blocks, resize_input):
            super().__init__()
            assert output_blocks == [3] and resize_input is False

        def forward(self, x):
            return [x.mean(dim=(2, 3), keepdim=True).repeat(1, 683, 1, 1)[:, :2048]]

    monkeypatch.setattr(pytorch_inception, "InceptionV3", FakeBlocks)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    net = metrics.InceptionFeatures(tmp_path / metrics.INCEPTION_FILE, mode="legacy_pytorch")
    images = torch.full((2, 1, 8, 8), 51, dtype=torch.uint8)
    features = metrics.image_features(images, net, resize=net.resizer())
    assert features.shape == (2, 2048) and np.allclose(features, 51 / 255)  # resized to 299 by torch, then / 255
    assert not net.has_logits


def _file_url(path) -> str:
    return path.resolve().as_uri()


def test_download_is_verified_and_atomic(tmp_path):
    from pfgm import inception

    source = tmp_path / "served" / "weights.bin"
    source.parent.mkdir()
    source.write_bytes(b"the published bytes" * 1000)
    digest = inception.sha256_file(source)
    target = tmp_path / "weights" / "inception-2015-12-05.pt"
    assert inception.download_verified(_file_url(source), target, digest) == target  # urllib on a file:// URL
    assert target.read_bytes() == source.read_bytes() and os.listdir(target.parent) == [target.name]
    # A corrupted transfer: refused, nothing kept, the message names both digests.
    target.unlink()
    corrupted = tmp_path / "served" / "corrupted.bin"
    corrupted.write_bytes(b"the published bytez" * 1000)
    with pytest.raises(metrics.WeightsChecksumError, match=digest):
        inception.download_verified(_file_url(corrupted), target, digest)
    assert os.listdir(target.parent) == []

    def broken(url, out):  # the connection drops half-way
        out.write(b"partial")
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        inception.download_verified("https://example.invalid/x", target, digest, fetch=broken)
    assert os.listdir(target.parent) == []


def test_ensure_weights_downloads_only_when_asked(tmp_path, monkeypatch):
    from pfgm import inception

    path = tmp_path / "weights" / metrics.INCEPTION_FILE
    fetched = []

    def fetch(url, out):
        fetched.append(url)
        out.write(b"not the real inception")

    with pytest.raises(metrics.InceptionMissingError, match="download_weights: true"):
        metrics.ensure_weights("clean", path, fetch=fetch)
    assert fetched == [] and not path.exists()
    # Against the pinned sha256 of the real file, these bytes are refused.
    with pytest.raises(metrics.WeightsChecksumError, match=metrics.INCEPTION_SHA256):
        metrics.ensure_weights("clean", path, download=True, fetch=fetch)
    assert fetched == [metrics.INCEPTION_URL] and not path.exists()
    # A file with the published digest is kept, loaded, and not fetched again.
    served = tmp_path / "served.pt"
    save_fake_inception(served)
    monkeypatch.setattr(inception, "INCEPTION_URL", _file_url(served))
    monkeypatch.setattr(inception, "INCEPTION_SHA256", inception.sha256_file(served))
    assert metrics.ensure_weights("legacy_tensorflow", path, download=True) == path
    assert path.read_bytes() == served.read_bytes()
    assert metrics.ensure_weights("clean", path, download=True, fetch=fetch) == path and len(fetched) == 1
    extractor = metrics.inception_extractor(path, mode="legacy_tensorflow")
    assert extractor.network_sha256 == inception.sha256_file(served)
    assert extractor.label == "Inception (legacy_tensorflow)"
