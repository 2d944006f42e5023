"""Two-dimensional toy distributions, sampled once with a seed and stored as float32 points.

Every sampler maps (n_points, generator) to a float32 tensor (n_points, 2) whose mass lies in
[-1, 1] x [-1, 1] up to the Gaussian noise tails (a few hundredths). The scales are chosen so that
all toys share one box; they are not the scales of scikit-learn's or FFJORD's versions.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from pfgm.data.store import Prepared, split_indices


def _noise(n: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    return scale * torch.randn(n, 2, generator=generator)


def heart(n_points: int, generator: torch.Generator, *, noise: float = 0.02) -> torch.Tensor:
    """Points on the outline of the classic heart curve (n_points, 2), x in [-1, 1], y in [-0.9, 0.9]."""
    t = 2 * math.pi * torch.rand(n_points, generator=generator)
    x = 16 * torch.sin(t) ** 3
    y = 13 * torch.cos(t) - 5 * torch.cos(2 * t) - 2 * torch.cos(3 * t) - torch.cos(4 * t)
    # The curve spans x in [-16, 16], y in [-17, 11.9]: centre y, keep the aspect ratio.
    points = torch.stack([x, y + 2.55], dim=1) / 16
    return points + _noise(n_points, noise, generator)


# Block letters as stroke segments (x0, y0, x1, y1) in a unit cell, 1 wide and 1 high.
_LETTERS: dict[str, list[tuple[float, float, float, float]]] = {
    "P": [(0, 0, 0, 1), (0, 1, 1, 1), (1, 1, 1, 0.5), (1, 0.5, 0, 0.5)],
    "F": [(0, 0, 0, 1), (0, 1, 1, 1), (0, 0.5, 0.8, 0.5)],
    "G": [(1, 1, 0, 1), (0, 1, 0, 0), (0, 0, 1, 0), (1, 0, 1, 0.45), (1, 0.45, 0.5, 0.45)],
    "M": [(0, 0, 0, 1), (0, 1, 0.5, 0.45), (0.5, 0.45, 1, 1), (1, 1, 1, 0)],
}


def _text_segments(text: str, width: float, height: float, gap: float) -> torch.Tensor:
    total = len(text) * width + (len(text) - 1) * gap
    segments = []
    for i, letter in enumerate(text):
        left = -total / 2 + i * (width + gap)
        for x0, y0, x1, y1 in _LETTERS[letter]:
            segments.append((left + x0 * width, (y0 - 0.5) * height, left + x1 * width, (y1 - 0.5) * height))
    return torch.tensor(segments, dtype=torch.float32)


def pfgm_text(n_points: int, generator: torch.Generator, *, noise: float = 0.015) -> torch.Tensor:
    """Points on the strokes of the block letters "PFGM" (n_points, 2).

    Points are spread uniformly along the total stroke length; the word spans x in [-0.925, 0.925]
    and y in [-0.3, 0.3].
    """
    seg = _text_segments("PFGM", width=0.35, height=0.6, gap=0.15)
    lengths = torch.linalg.vector_norm(seg[:, 2:] - seg[:, :2], dim=1)
    which = torch.multinomial(lengths / lengths.sum(), n_points, replacement=True, generator=generator)
    t = torch.rand(n_points, 1, generator=generator)
    start, end = seg[which, :2], seg[which, 2:]
    return start + t * (end - start) + _noise(n_points, noise, generator)


def moons(n_points: int, generator: torch.Generator, *, noise: float = 0.05) -> torch.Tensor:
    """Two interleaving half circles (n_points, 2), x in [-1, 1], y in [-0.5, 0.5]."""
    upper = torch.rand(n_points, generator=generator) < 0.5
    t = math.pi * torch.rand(n_points, generator=generator)
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    points = torch.stack([x - 0.5, y - 0.25], dim=1) / 1.5
    return points + _noise(n_points, noise, generator)


def eight_gaussians(
    n_points: int, generator: torch.Generator, *, radius: float = 0.8, std: float = 0.05
) -> torch.Tensor:
    """A mixture of eight Gaussians on a circle of the given radius (n_points, 2)."""
    k = torch.randint(0, 8, (n_points,), generator=generator)
    angle = k * (math.pi / 4)
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + _noise(n_points, std, generator)


def checkerboard(n_points: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform on the dark squares of a 4 x 4 checkerboard over [-1, 1]^2 (n_points, 2)."""
    x = 4 * torch.rand(n_points, generator=generator) - 2
    y = torch.rand(n_points, generator=generator) - 2 * torch.randint(0, 2, (n_points,), generator=generator)
    y = y + torch.floor(x) % 2
    return torch.stack([x, y], dim=1) / 2


def swissroll(n_points: int, generator: torch.Generator, *, noise: float = 0.02) -> torch.Tensor:
    """A 2D swiss roll, t in [1.5 pi, 4.5 pi], radius t / (4.5 pi) <= 1 (n_points, 2)."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n_points, generator=generator))
    points = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / (4.5 * math.pi)
    return points + _noise(n_points, noise, generator)


TOYS: dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {
    "heart": heart,
    "pfgm-text": pfgm_text,
    "moons": moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "swissroll": swissroll,
}


def build_toy(name: str, n_points: int, seed: int, test_fraction: float) -> Prepared:
    """Sample n_points of toy `name` with `seed` and split them into train and test (float32 (N, 2))."""
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; choose one of {sorted(TOYS)}")
    points = TOYS[name](n_points, torch.Generator().manual_seed(seed)).numpy().astype(np.float32)
    train, test = split_indices(n_points, test_fraction, seed)
    return Prepared(
        name=name,
        kind="points",
        arrays={"train": points[train], "test": points[test]},
        source=f"pfgm.data.toys.{TOYS[name].__name__}",
        seed=seed,
        split={"method": "random", "test_fraction": test_fraction, "seed": seed},
    )
