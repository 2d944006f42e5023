"""The FID feature extractor for the 8x8 digits: a small CNN classifier trained at preparation.

Inception features are meaningless on 8x8 digits, so `digits` carries its own extractor: a
classifier trained on the train split, saved beside the data (features.pt, a plain state dict,
plus features.json, its constructor keyword arguments) and versioned with it. Its penultimate
layer gives the features; the Frechet distance itself is computed elsewhere.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pfgm.data.store import DataError, Prepared, images_to_unit, read_manifest, verify_file

WEIGHTS = "features.pt"
KWARGS = "features.json"


class DigitsClassifier(nn.Module):
    """Three 3x3 convolutions and a linear head for (B, 1, 8, 8) images in [-1, 1].

    `features` returns the (B, 4 * width) global-average-pooled activations before the head;
    width 16 gives about 25k parameters.
    """

    def __init__(self, width: int = 16, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1)
        self.head = nn.Linear(4 * width, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 8, 8) in [-1, 1] -> (B, 4 * width)."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.conv3(h))
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 8, 8) in [-1, 1] -> logits (B, n_classes)."""
        return self.head(self.features(x))


def train_digits_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    *,
    width: int = 16,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 3e-3,
) -> DigitsClassifier:
    """Train a DigitsClassifier on uint8 images (N, 1, 8, 8) and int labels (N,), deterministically.

    The seed drives the initialisation (in a forked RNG, so the global one is untouched) and the
    batch order; the one-cycle schedule makes 30 short epochs enough. Training runs on one CPU
    thread, restored afterwards: at 8x8 the threads' synchronisation costs more than it gains
    (3-4x slower with two threads on a busy two-core machine).
    """
    x = images_to_unit(torch.from_numpy(np.ascontiguousarray(images)))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier(width=width, n_classes=int(y.max()) + 1)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(x) // batch_size
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    with _one_thread():
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for step in range(steps_per_epoch):
                batch = order[step * batch_size : (step + 1) * batch_size]
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return model.eval()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def classifier_accuracy(model: DigitsClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the model on uint8 images (N, 1, 8, 8) with labels (N,)."""
    x = images_to_unit(torch.from_numpy(np.ascontiguousarray(images)))
    predicted = model(x).argmax(dim=1).numpy()
    return float((predicted == np.asarray(labels)).mean())


def classifier_files(model: DigitsClassifier) -> dict[str, bytes]:
    """The files that store a classifier: features.pt (state dict) and features.json (kwargs)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    kwargs = {"width": model.conv1.out_channels, "n_classes": model.head.out_features}
    return {WEIGHTS: buffer.getvalue(), KWARGS: (json.dumps(kwargs, sort_keys=True) + "\n").encode()}


def add_digits_features(prepared: Prepared, seed: int, *, min_accuracy: float = 0.95) -> Prepared:
    """Train the feature classifier on the train split; return `prepared` with it attached.

    The test accuracy goes into the manifest (`features.test_accuracy`); below `min_accuracy`
    preparation fails rather than ship a poor FID extractor.
    """
    if prepared.labels is None:
        raise DataError(f"{prepared.name}: the feature classifier needs labels")
    model = train_digits_classifier(prepared.arrays["train"], prepared.labels["train"], seed)
    accuracy = classifier_accuracy(model, prepared.arrays["test"], prepared.labels["test"])
    if accuracy <= min_accuracy:
        raise DataError(f"{prepared.name}: feature classifier test accuracy {accuracy:.3f} <= {min_accuracy}")
    n_params = sum(p.numel() for p in model.parameters())
    info = {"features": {"files": [WEIGHTS, KWARGS], "test_accuracy": accuracy, "n_params": n_params,
                         "n_features": model.head.in_features, "seed": seed}}
    return dataclasses.replace(
        prepared,
        extra_files={**prepared.extra_files, **classifier_files(model)},
        info={**prepared.info, **info},
    )


def load_digits_classifier(folder: str | os.PathLike, *, verify: bool = True) -> DigitsClassifier:
    """Load the classifier saved in a prepared digits folder (weights_only), checksums verified."""
    folder = Path(folder)
    if verify:
        manifest = read_manifest(folder)
        verify_file(folder, WEIGHTS, manifest)
        verify_file(folder, KWARGS, manifest)
    kwargs = json.loads((folder / KWARGS).read_text())
    model = DigitsClassifier(**kwargs)
    model.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


def digits_feature_extractor(model: DigitsClassifier) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable mapping digit images (B, 1, 8, 8) to penultimate features (B, F).

    uint8 input is read as 0..255; floating-point input as [-1, 1]. The model is moved to the
    input's device on each call, so the callable works wherever the images are.
    """

    @torch.no_grad()
    def extract(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected digit images (B, 1, H, W), got {tuple(x.shape)}")
        x = images_to_unit(x) if x.dtype == torch.uint8 else x.float()
        return model.to(x.device).features(x)

    return extract


def cleanfid_extractor(
    extract: Callable[[torch.Tensor], torch.Tensor], image_size: int = 8
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Adapt a [-1, 1] extractor to clean-fid's `custom_feat_extractor` contract.

    clean-fid passes float (B, 3, H, W) in 0..255 (RGB copies of grey digits, after its own
    resize). The adapter averages the channels, area-resizes to image_size if H, W differ, maps to
    [-1, 1] and returns (B, F) features. Pass an identity `custom_fn_resize` to clean-fid to skip
    its resize to 299 altogether.
    """

    def adapted(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 1|3, H, W) in 0..255, got {tuple(x.shape)}")
        grey = x.float().mean(dim=1, keepdim=True)
        if grey.shape[-2:] != (image_size, image_size):
            grey = F.interpolate(grey, size=(image_size, image_size), mode="area")
        return extract(images_to_unit(grey))

    return adapted
