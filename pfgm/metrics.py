"""Sample-quality metrics: FID and KID through clean-fid's maths, Inception Score, and the FID scorer.

Metric maths (pure functions of feature arrays):
  frechet_distance    clean-fid's own (`cleanfid.fid.frechet_distance`) on FeatureStats (mean, covariance);
  kernel_inception_distance   clean-fid's KID (`cleanfid.fid.kernel_distance`): the unbiased MMD^2 with the
                      cubic polynomial kernel k(a, b) = (a.b / F + 1)^3, averaged over random subsets,
                      here drawn from a seeded generator so that a score is reproducible;
  inception_score     the standard formula with splits (clean-fid has none).
Feature extraction is kept apart from the maths (the k-diffusion split): images (uint8) go through a
FeatureExtractor (the digits CNN saved beside the data, or clean-fid's Inception in one of its modes,
pfgm.inception), each image as an (H, W, 3) float array in 0..255 through the mode's resize, then
`cleanfid.fid.get_batch_features`, as clean-fid does for a generator.

Samples in [-1, 1] become uint8 images by `quantize`: "round" (the nearest level, our default) or
"truncate" (the official PFGM / score_sde code: clip((x + 1) / 2 * 255, 0, 255).astype(uint8)).

A FidScorer holds the reference split's features and statistics, computed once per data set, split,
feature network and mode and cached on disk (`reference_features`), keyed by the data file's and the
network's sha256. No tracking, no params: the flows choose the settings.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from cleanfid.fid import frechet_distance as _cleanfid_frechet_distance
from cleanfid.fid import get_batch_features
from cleanfid.resize import build_resizer
from torch import Tensor

from pfgm import data as pdata
from pfgm.data.store import SPLITS
from pfgm.files import atomic_write
from pfgm.inception import (  # noqa: F401  (re-exported: the metrics' Inception API in one place)
    INCEPTION_FILE,
    INCEPTION_SHA256,
    INCEPTION_URL,
    MODES,
    InceptionFeatures,
    InceptionMissingError,
    WeightsChecksumError,
    check_inception,
    ensure_weights,
    sha256_file,
)

FeatureModel = Callable[[Tensor], Tensor]
Resize = Callable[[np.ndarray], np.ndarray]
QUANTIZE_METHODS = ("round", "truncate")
#: Bumped whenever what a cached reference file holds, or how it is computed, changes.
CACHE_VERSION = 1

logger = logging.getLogger(__name__)


# --- metric maths ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureStats:
    """Mean (F,) and covariance (F, F) of a set of features, float64, and how many rows made them."""
    mu: np.ndarray
    sigma: np.ndarray
    count: int


def feature_statistics(features: np.ndarray) -> FeatureStats:
    """Mean and covariance (rows are samples) of features (n, F), n >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (n >= 2, F), got shape {features.shape}")
    return FeatureStats(mu=features.mean(axis=0), sigma=np.cov(features, rowvar=False), count=features.shape[0])


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), by clean-fid's implementation."""
    with warnings.catch_warnings():
        # clean-fid passes scipy's deprecated `disp` to sqrtm; the result is unaffected.
        warnings.filterwarnings("ignore", message=".*`disp` argument", category=DeprecationWarning)
        return float(_cleanfid_frechet_distance(a.mu, a.sigma, b.mu, b.sigma))


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Frechet distance between two feature sets (n_a, F) and (n_b, F)."""
    return frechet_distance(feature_statistics(features_a), feature_statistics(features_b))


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray, *, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0) -> float:
    """KID of feature sets (n_a, F) and (n_b, F): clean-fid's `kernel_distance`, seeded.

    Each of `num_subsets` rounds draws m = min(n_a, n_b, max_subset_size) rows of each set without
    replacement and takes the unbiased MMD^2 estimate with k(a, b) = (a.b / F + 1)^3:
        [sum_{i != j} k(a_i, a_j) + k(b_i, b_j)] / (m (m - 1)) - 2 sum_{i, j} k(a_i, b_j) / m^2;
    the result is the mean over rounds. Unbiased, it is near 0 (and may be slightly negative) for two
    samples of one law even at small n, where FID is biased upwards. clean-fid draws its subsets from
    NumPy's global generator; here a generator seeded by `seed` draws them (the same rows each run).
    """
    # Only the drawn rows are cast to float64: a reference may be 50,000 x 2048 float32.
    a, b = np.asarray(features_a), np.asarray(features_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need feature sets (n_a, F) and (n_b, F), got {a.shape} and {b.shape}")
    m = min(len(a), len(b), max_subset_size)
    if m < 2 or num_subsets < 1:
        raise ValueError(f"KID needs at least 2 rows in each set and num_subsets >= 1, got m={m}, "
                         f"num_subsets={num_subsets}")
    dim = a.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        # clean-fid draws from its second argument first; the order only matters for reproducing its draws.
        y = b[rng.choice(len(b), m, replace=False)].astype(np.float64)
        x = a[rng.choice(len(a), m, replace=False)].astype(np.float64)
        within = (x @ x.T / dim + 1) ** 3 + (y @ y.T / dim + 1) ** 3
        across = (y @ x.T / dim + 1) ** 3
        total += (within.sum() - np.trace(within)) / (m - 1) - across.sum() * 2 / m
    return float(total / num_subsets / m)


def fid_floor(train_features: np.ndarray, test_features: np.ndarray, *, n: int | None = None,
              seed: int = 0) -> float:
    """The data's own FID: `n` train rows (seeded draw; all when None or more) against the test rows.

    A model whose samples were as good as fresh data would score about this: FID is biased upwards at
    small n, so pass the number of generated samples as `n` to compare like with like.
    """
    train_features = np.asarray(train_features)
    return fid_from_features(train_features[seeded_rows(len(train_features), n, seed)], test_features)


def seeded_rows(count: int, n: int | None, seed: int) -> np.ndarray:
    """Indices (in order) of `n` of `count` rows drawn without replacement by `seed`; all rows when n is
    None or not smaller than count. The floor's draw: the same seed picks the same images."""
    if n is None or n >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=n, replace=False))


def inception_score(logits: np.ndarray | Tensor, *, splits: int = 10) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) of class logits (n, K), mean and std over splits.

    Log-probabilities are valid logits, so the softmax output of a classifier may be passed as its log.
    Each split of about n / splits rows uses its own marginal p(y), as in Salimans et al. (2016).
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if logits.ndim != 2 or logits.shape[0] < splits or splits < 1:
        raise ValueError(f"need logits (n >= splits, K) and splits >= 1, got {tuple(logits.shape)}, splits={splits}")
    log_p = torch.log_softmax(logits, dim=1)
    scores = []
    for part in torch.tensor_split(log_p, splits):
        log_marginal = torch.logsumexp(part, dim=0) - math.log(part.shape[0])
        kl = (part.exp() * (part - log_marginal)).sum(dim=1).mean()
        scores.append(math.exp(float(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def set_statistics(values: list[float]) -> dict[str, float]:
    """mean, std (n - 1 in the denominator; 0 for one value) and min of per-seed-set scores."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return dict(mean=float(array.mean()), std=std, min=float(array.min()))


def per_seed_metrics(per_seed: dict[int, dict[str, float]]) -> dict[str, float]:
    """The scores of several sample sets, {seed: {fid, kid}} -> fid_seed<k>, kid_seed<k> for each set;
    fid, fid_std, fid_min over the sets; kid their mean."""
    out = {f"{metric}_seed{seed}": value for seed, scores in per_seed.items() for metric, value in scores.items()}
    fid = set_statistics([scores["fid"] for scores in per_seed.values()])
    out.update(fid=fid["mean"], fid_std=fid["std"], fid_min=fid["min"],
               kid=set_statistics([scores["kid"] for scores in per_seed.values()])["mean"])
    return out


# --- samples to images -----------------------------------------------------------------------------

def quantize(x: Tensor, method: str = "round") -> Tensor:
    """Samples in [-1, 1] (any shape) -> uint8 levels 0..255, the way FID sees them.

    round      the nearest level, ((x + 1) * 127.5).round() clamped (pfgm.data.unit_to_images): the
               exact inverse of the data scaling; our default.
    truncate   the official PFGM / score_sde evaluation: the inverse scaler (x + 1) / 2, times 255,
               clipped to [0, 255], then cast to uint8, which drops the fraction (floor). Every level
               sits up to one step lower than with rounding (half a level on average), and 255 is only
               reached at x = 1 exactly.
    Non-finite values are mapped into the range first (NaN to 0, +-inf to +-1): a diverged sample
    still becomes an image.
    """
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    if method == "round":
        return pdata.unit_to_images(x)
    if method == "truncate":
        # The same float operations in the same order as the official code (float32 on float32 input).
        return (((x + 1.0) / 2.0) * 255.0).clamp(0, 255).floor().to(torch.uint8)
    raise ValueError(f"unknown quantisation {method!r}; one of {', '.join(QUANTIZE_METHODS)}")


# --- features of images ----------------------------------------------------------------------------

def image_features(images: Tensor, model: FeatureModel, *, resize: Resize | None = None,
                   batch_size: int = 128, device: torch.device | str = "cpu") -> np.ndarray:
    """Features (n, F) of uint8 images (n, C, H, W), C in (1, 3), extracted the clean-fid way.

    Each image becomes an (H, W, 3) float32 array in 0..255 (grey repeated to RGB), goes through
    `resize` (clean-fid's resizer of the mode; None keeps the size), and the batch goes through
    `cleanfid.fid.get_batch_features(batch, model, device)`.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 (n, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
    rows = []
    for batch in torch.split(images.cpu(), batch_size):
        arrays = batch.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy().astype(np.float32)
        if resize is not None:
            arrays = np.stack([resize(a) for a in arrays])
        rows.append(get_batch_features(torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2),
                                       model, device))
    return np.concatenate(rows).astype(np.float64)


def clean_resizer() -> Resize:
    """clean-fid's "clean" mode resize: PIL bicubic to 299 x 299 on float arrays (H, W, 3)."""
    return build_resizer("clean")


def inception_logits(images: Tensor, inception: InceptionFeatures, *, batch_size: int = 128,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """Log class probabilities (n, 1008) of uint8 images (n, C, H, W), resized as the network's mode does."""
    return image_features(images, inception.logits, resize=inception.resizer(), batch_size=batch_size,
                          device=device)


@dataclass(frozen=True)
class FeatureExtractor:
    """A feature network for FID/KID and what identifies it.

    `extract`: uint8 images (n, C, H, W) -> features (n, F) float64. `kind`: digits | inception;
    `mode`: the Inception mode (None for the digits CNN, which has no resize and ignores it);
    `network_sha256`: digest of the network's weights (keys the cached reference features);
    `inception`: the Inception network for the Inception Score, else None. Stateless: safe to share.
    """
    kind: str
    mode: str | None
    network_sha256: str
    extract: Callable[[Tensor], np.ndarray]
    inception: InceptionFeatures | None = None

    @property
    def label(self) -> str:
        """How the report names the features: "digits CNN", "Inception (legacy_tensorflow)"."""
        return "digits CNN" if self.kind == "digits" else f"Inception ({self.mode})"


def digits_extractor(data_dir: str | os.PathLike, *, batch_size: int = 500,
                     device: torch.device | str = "cpu") -> FeatureExtractor:
    """The digits CNN saved beside the prepared digits (checksums verified), at the images' own 8x8 size.

    It has no resize and no Inception preprocessing, so the Inception mode does not apply to it.
    """
    files = pdata.read_manifest(data_dir)["files"]
    model = pdata.cleanfid_extractor(pdata.digits_feature_extractor(pdata.load_digits_classifier(data_dir)))
    # Weights and constructor arguments together identify the network.
    network = hashlib.sha256(f"{files['features.pt']}:{files['features.json']}".encode()).hexdigest()

    def extract(images: Tensor) -> np.ndarray:
        return image_features(images, model, resize=None, batch_size=batch_size, device=device)

    return FeatureExtractor(kind="digits", mode=None, network_sha256=network, extract=extract)


def inception_extractor(inception_path: str | os.PathLike, *, mode: str = "clean", batch_size: int = 128,
                        device: torch.device | str = "cpu", download: bool = False) -> FeatureExtractor:
    """clean-fid's Inception in `mode`, from local weights (downloaded and verified first if `download`)."""
    path = ensure_weights(mode, inception_path, download=download)
    inception = InceptionFeatures(inception_path, device=device, mode=mode)
    resize = inception.resizer()

    def extract(images: Tensor) -> np.ndarray:
        return image_features(images, inception, resize=resize, batch_size=batch_size, device=device)

    return FeatureExtractor(kind="inception", mode=mode, network_sha256=sha256_file(path), extract=extract,
                            inception=inception)


def feature_extractor(kind: str, data_dir: str | os.PathLike, *, inception_path: str | os.PathLike,
                      mode: str = "clean", batch_size: int = 128, device: torch.device | str = "cpu",
                      download: bool = False) -> FeatureExtractor:
    """digits_extractor (kind "digits": the CNN beside <data_dir>) or inception_extractor (kind "inception")."""
    if kind == "digits":
        return digits_extractor(data_dir, batch_size=batch_size, device=device)
    if kind == "inception":
        return inception_extractor(inception_path, mode=mode, batch_size=batch_size, device=device,
                                   download=download)
    raise ValueError(f"unknown feature network {kind!r}; digits or inception")


# --- reference features, cached --------------------------------------------------------------------

@dataclass(frozen=True)
class ReferenceFeatures:
    """A split's features (n, F) (float32, read-only; for KID) and their statistics (for FID)."""
    features: np.ndarray
    stats: FeatureStats
    key: str


def reference_fields(manifest: dict[str, Any], split: str, extractor: FeatureExtractor) -> dict[str, Any]:
    """What identifies a reference: the split file's sha256, the feature network's, the mode, the split."""
    if split not in SPLITS:
        raise ValueError(f"reference split must be one of {SPLITS}, got {split!r}")
    return dict(version=CACHE_VERSION, data=manifest["name"], split=split,
                data_sha256=manifest["files"][f"{split}.npy"], features=extractor.kind,
                network_sha256=extractor.network_sha256, mode=extractor.mode)


def reference_key(fields: dict[str, Any]) -> str:
    """The sha256 of the fields' canonical JSON: equal fields, equal key; any change, another key."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _content_digest(mu: np.ndarray, sigma: np.ndarray, features: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in (mu, sigma, features):
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def cache_file(cache_dir: str | os.PathLike, fields: dict[str, Any]) -> Path:
    """<cache_dir>/<data>-<split>-<features>[-<mode>]-<key[:16]>.npz: readable, and unique by the key."""
    parts = [fields["data"], fields["split"], fields["features"], fields["mode"], reference_key(fields)[:16]]
    return Path(cache_dir) / ("-".join(str(part) for part in parts if part) + ".npz")


def _write_cache(path: Path, key: str, fields: dict[str, Any], features: np.ndarray, stats: FeatureStats) -> None:
    """Write the npz atomically (pfgm.files): readers never see a partial file."""
    with atomic_write(path, "wb") as f:
        np.savez(f, mu=stats.mu, sigma=stats.sigma, features=features, count=np.int64(stats.count),
                 key=np.str_(key), fields=np.str_(json.dumps(fields, sort_keys=True)),
                 digest=np.str_(_content_digest(stats.mu, stats.sigma, features)))


def _read_cache(path: Path, key: str) -> ReferenceFeatures | None:
    """The cached reference if `path` holds a complete, intact file for `key`; None otherwise."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            mu, sigma, features = stored["mu"], stored["sigma"], stored["features"]
            ok = (str(stored["key"]) == key and int(stored["count"]) == len(features)
                  and str(stored["digest"]) == _content_digest(mu, sigma, features))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # a truncated or foreign file
        logger.warning("reference cache %s is unreadable (%s): recomputing it", path, err)
        return None
    if not ok:
        logger.warning("reference cache %s does not match its key or content digest: recomputing it", path)
        return None
    features.setflags(write=False)
    return ReferenceFeatures(features=features, stats=FeatureStats(mu=mu, sigma=sigma, count=len(features)), key=key)


def reference_features(data_dir: str | os.PathLike, split: str, extractor: FeatureExtractor, *,
                       cache_dir: str | os.PathLike | None = None) -> ReferenceFeatures:
    """The features and statistics of <data_dir>'s `split` under `extractor`, from the cache when it has them.

    The cache (one .npz per key, see reference_fields) is read back verified (key, row count and a
    sha256 of its arrays); a missing, stale or damaged file is recomputed and replaced atomically.
    `cache_dir` None computes without caching. The statistics are those of the float64 features and
    the features are kept as float32 (the networks' own precision), so a hit equals a miss exactly.
    """
    fields = reference_fields(pdata.read_manifest(data_dir), split, extractor)
    key = reference_key(fields)
    path = cache_file(cache_dir, fields) if cache_dir is not None else None
    if path is not None:
        cached = _read_cache(path, key)
        if cached is not None:
            return cached
    images = pdata.unit_to_images(pdata.load_split(data_dir, split))
    exact = extractor.extract(images)
    stats = feature_statistics(exact)
    features = exact.astype(np.float32)
    if path is not None:
        _write_cache(path, key, fields, features, stats)
    features.setflags(write=False)
    return ReferenceFeatures(features=features, stats=stats, key=key)


# --- the scorer ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FidScorer:
    """FID and KID of images against one split's reference features, which are computed once.

    `quantize` is how samples in [-1, 1] become images (see `quantize`). Holds no mutable state
    (the reference arrays are read-only): worker threads may share one scorer.
    """
    extractor: FeatureExtractor
    reference: ReferenceFeatures
    split: str
    quantize: str = "round"
    kid_subsets: int = 100
    kid_subset_size: int = 1000

    @property
    def inception(self) -> InceptionFeatures | None:
        return self.extractor.inception

    def to_images(self, samples: Tensor) -> Tensor:
        """Samples (n, *S) in [-1, 1] -> uint8 images, by the scorer's quantisation."""
        return quantize(samples, self.quantize)

    def fid(self, images: Tensor) -> float:
        """FID of uint8 images (n, C, H, W) against the reference split."""
        return frechet_distance(feature_statistics(self.extractor.extract(images)), self.reference.stats)

    def scores(self, images: Tensor) -> dict[str, float]:
        """fid and kid of uint8 images (n, C, H, W), from one feature extraction."""
        features = self.extractor.extract(images)
        return dict(fid=frechet_distance(feature_statistics(features), self.reference.stats),
                    kid=kernel_inception_distance(features, self.reference.features, num_subsets=self.kid_subsets,
                                                  max_subset_size=self.kid_subset_size))

    def sample_scores(self, samples: Tensor) -> dict[str, float]:
        """fid and kid of samples (n, *S) in [-1, 1]; both NaN when any value is non-finite (a diverged solve)."""
        if not bool(torch.isfinite(samples).all()):
            return dict(fid=math.nan, kid=math.nan)
        return self.scores(self.to_images(samples))

    def sample_fid(self, samples: Tensor) -> float:
        """FID of samples (n, *S) in [-1, 1]; NaN when any value is non-finite."""
        return self.fid(self.to_images(samples)) if bool(torch.isfinite(samples).all()) else math.nan

    def sample_inception_score(self, samples: Tensor, *, splits: int = 10, batch_size: int = 128,
                               device: torch.device | str = "cpu") -> tuple[float, float] | None:
        """Inception Score (mean, std over `splits`) of samples (n, *S) in [-1, 1]: None when the feature
        network has no class logits (the digits CNN, pytorch-fid's Inception), NaN for non-finite samples."""
        if self.inception is None or not self.inception.has_logits:
            return None
        if not bool(torch.isfinite(samples).all()):
            return math.nan, math.nan
        logits = inception_logits(self.to_images(samples), self.inception, batch_size=batch_size, device=device)
        return inception_score(logits, splits=splits)


def fid_scorer(extractor: FeatureExtractor, data_dir: str | os.PathLike, *, split: str = "test",
               cache_dir: str | os.PathLike | None = None, quantize: str = "round") -> FidScorer:
    """A FidScorer comparing with <data_dir>'s `split` (train | test) under `extractor`, cached in `cache_dir`."""
    if quantize not in QUANTIZE_METHODS:
        raise ValueError(f"unknown quantisation {quantize!r}; one of {', '.join(QUANTIZE_METHODS)}")
    reference = reference_features(data_dir, split, extractor, cache_dir=cache_dir)
    return FidScorer(extractor=extractor, reference=reference, split=split, quantize=quantize)


def test_split_scorer(scorer: FidScorer, data_dir: str | os.PathLike, *,
                      cache_dir: str | os.PathLike | None = None) -> FidScorer:
    """A scorer against <data_dir>'s test split with `scorer`'s feature network and quantisation: `scorer`
    itself when it already compares with the test split (one feature network, each reference read once)."""
    if scorer.split == "test":
        return scorer
    return fid_scorer(scorer.extractor, data_dir, split="test", cache_dir=cache_dir, quantize=scorer.quantize)


def data_fid_floor(test_scorer: FidScorer, data_dir: str | os.PathLike, *, n: int, seed: int = 0) -> float:
    """The data's own FID: `n` images of <data_dir>'s train split (seeded draw, `seeded_rows`) against the
    test split's reference of `test_scorer`. Pass the number of samples scored as `n`: FID is biased
    upwards at small n, so like is compared with like."""
    train = pdata.unit_to_images(pdata.load_split(data_dir, "train"))
    return test_scorer.fid(train[seeded_rows(len(train), n, seed)])
