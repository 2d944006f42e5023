"""Sample-quality metrics: Frechet distances through clean-fid, Inception Score, the data's FID floor.

The maths of the Frechet distance is clean-fid's own (`cleanfid.fid.frechet_distance`); features are
extracted the way clean-fid extracts them from a generator (`cleanfid.fid.get_model_features`): each
image as an (H, W, 3) float array in 0..255 through a resize function, then `get_batch_features`.
clean-fid has no Inception Score, hence `inception_score` here (the standard formula with splits).

Feature extraction is kept apart from the metric maths (the k-diffusion split): a feature model is any
callable (B, 3, H', W') float 0..255 -> (B, F). Pure functions: no tracking, no files written.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from cleanfid.fid import frechet_distance as _cleanfid_frechet_distance
from cleanfid.fid import get_batch_features
from cleanfid.resize import build_resizer
from torch import Tensor

#: The file clean-fid's InceptionV3W loads (the StyleGAN2-ADA TorchScript port of TF Inception).
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                 "inception-2015-12-05.pt")

FeatureModel = Callable[[Tensor], Tensor]
Resize = Callable[[np.ndarray], np.ndarray]


class InceptionMissingError(FileNotFoundError):
    """The Inception weights are not on disk; the message says what to put where."""


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


def fid_floor(train_features: np.ndarray, test_features: np.ndarray, *, n: int | None = None,
              seed: int = 0) -> float:
    """The data's own FID: `n` train rows (seeded draw; all when None or more) against the test rows.

    A model whose samples were as good as fresh data would score about this: FID is biased upwards at
    small n, so pass the number of generated samples as `n` to compare like with like.
    """
    train_features = np.asarray(train_features)
    if n is not None and n < len(train_features):
        rows = np.random.default_rng(seed).choice(len(train_features), size=n, replace=False)
        train_features = train_features[np.sort(rows)]
    return fid_from_features(train_features, test_features)


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


def image_features(images: Tensor, model: FeatureModel, *, resize: Resize | None = None,
                   batch_size: int = 128, device: torch.device | str = "cpu") -> np.ndarray:
    """Features (n, F) of uint8 images (n, C, H, W), C in (1, 3), extracted the clean-fid way.

    Each image becomes an (H, W, 3) float32 array in 0..255 (grey repeated to RGB), goes through
    `resize` (clean-fid's resizer: `clean_resizer()` for Inception; None keeps the size), and the batch
    goes through `cleanfid.fid.get_batch_features(batch, model, device)`.
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


def check_inception(path: str | os.PathLike) -> Path:
    """The Inception weights file at `path`, or InceptionMissingError saying what to put where.

    Never downloads: clean-fid would fetch the file itself, which an offline pipeline must not do.
    clean-fid loads the file by its folder, so it must keep its published name.
    """
    path = Path(path)
    if path.name != INCEPTION_FILE:
        raise InceptionMissingError(
            f"evaluate.inception_path must end in {INCEPTION_FILE} (clean-fid loads that name from the folder), "
            f"got {str(path)!r}")
    if not path.is_file():
        raise InceptionMissingError(
            f"Inception weights not found at {path}. FID and IS on image data need clean-fid's TorchScript "
            f"Inception: on a machine with network access download {INCEPTION_URL} and put it at {path} "
            f"(or set evaluate.inception_path to where it is). Nothing is downloaded automatically.")
    return path


class InceptionFeatures:
    """clean-fid's Inception (InceptionV3W, clean mode) loaded from a local file, never downloaded.

    `features(x)` and `__call__(x)`: (B, 3, 299, 299) float 0..255 -> pool features (B, 2048);
    `logits(x)`: the same input -> log class probabilities (B, 1008) for the Inception Score, from the
    TorchScript model's softmax without output bias (the original IS implementation's choice).
    """

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu"):
        from cleanfid.inception_torchscript import InceptionV3W

        path = check_inception(path)
        self.model = InceptionV3W(str(path.parent), download=False, resize_inside=False).to(device).eval()

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        return self.model(x)

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        probs = self.model.base(x, no_output_bias=True)
        return torch.log(probs.clamp_min(1e-30))


def inception_logits(images: Tensor, inception: InceptionFeatures, *, batch_size: int = 128,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """Log class probabilities (n, 1008) of uint8 images (n, C, H, W), resized the clean way."""
    return image_features(images, inception.logits, resize=clean_resizer(), batch_size=batch_size, device=device)
