"""scikit-learn's bundled 8x8 handwritten digits: the offline default data set."""
from __future__ import annotations

import numpy as np

from pfgm.data.store import Prepared, split_indices, uint8_levels

#: The source's intensities 0..16: 17 levels (bits/dim are measured at this quantisation).
DIGITS_LEVELS = 17


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 images (1797, 1, 8, 8) in 0..255 and int64 labels (1797,).

    The source values k = 0..16 are stored as rint(k * 255 / 16) (`uint8_levels(17)`).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = uint8_levels(DIGITS_LEVELS)[bunch.images.astype(np.int64)][:, None]
    return images, bunch.target.astype(np.int64)


def build_digits(seed: int, test_fraction: float) -> Prepared:
    """The digits data set with a seeded train/test split (1,497 / 300 for test_fraction 0.167)."""
    images, labels = load_digits_uint8()
    train, test = split_indices(len(images), test_fraction, seed)
    return Prepared(
        name="digits",
        kind="image",
        arrays={"train": images[train], "test": images[test]},
        labels={"train": labels[train], "test": labels[test]},
        source="sklearn.datasets.load_digits (the 1,797-image test set of the UCI ML hand-written digits)",
        seed=seed,
        split={"method": "random", "test_fraction": test_fraction, "seed": seed},
        levels=DIGITS_LEVELS,
    )
