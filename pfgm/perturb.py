"""Where the field is learned: PFGM's perturbation of the data (PFGM.md section 2).

For each data point y: m ~ U[0, M), z0 = |N(0, sigma^2)|, and
    x = y + (1 + tau)^m * eps,  eps ~ N(0, sigma^2 I_N),   z = (1 + tau)^m * z0.
The official code draws ||eps|| and a uniform direction separately; a Gaussian vector has exactly
that law, so one draw suffices. With restrict_M, points whose z0 < 0.005 get m ~ U[0, floor(0.7 M))
so that points very close to the plane are not thrown far away in x.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from pfgm._checks import check_finite, check_positive, check_tensor
from pfgm._random import draw

RESTRICT_Z_THRESHOLD = 0.005
RESTRICT_M_FRACTION = 0.7


def perturb(data: Tensor, *, M: int, sigma: float = 0.01, tau: float = 0.03, restrict_M: bool = True,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Perturb data points into the augmented space.

    Args:
        data: (B, *S) data points (images scaled to [-1, 1]).
        M: exponent range of the multiplier (1 + tau)^m, M >= 1.
    Returns:
        x of shape (B, *S) and z of shape (B,), z >= 0 (the network is called with max(z, 1e-10)).
    """
    check_finite("data", check_tensor("data", data, min_dim=2))
    if data.shape[0] == 0:
        raise ValueError("data is empty: nothing to perturb")
    if isinstance(M, bool) or not isinstance(M, int) or M < 1:
        raise ValueError(f"M must be an integer >= 1, got {M!r}")
    check_positive("sigma", sigma)
    check_positive("tau", tau)
    batch = data.shape[0]

    like = dict(generator=generator, device=data.device, dtype=data.dtype)
    m = draw(torch.rand, batch, **like) * M
    z0 = draw(torch.randn, batch, **like).abs() * sigma
    if restrict_M:
        restricted = draw(torch.rand, batch, **like) * math.floor(RESTRICT_M_FRACTION * M)
        m = torch.where(z0 < RESTRICT_Z_THRESHOLD, restricted, m)
    multiplier = (1.0 + tau) ** m

    eps = draw(torch.randn, tuple(data.shape), **like) * sigma
    x = data + multiplier.reshape(batch, *([1] * (data.dim() - 1))) * eps
    return x, multiplier * z0


def _mean_squared_norm(rows: Tensor, chunk_elements: int = 2 ** 24) -> float:
    """E||y||^2 over the rows, summed in float64 a chunk at a time (CIFAR-10 whole in float64 is 1.2 GB)."""
    chunk = max(1, chunk_elements // rows.shape[1])
    total = sum(float(part.double().square().sum()) for part in torch.split(rows, chunk))
    return total / rows.shape[0]


def hyperparameters(data: Tensor, *, sigma: float = 0.01, tau: float = 0.03) -> dict:
    """M, z_max and upper_norm for a data set, from its own statistics (PFGM.md section 2).

    With N = prod(S) and s = E||y||^2 over the rows of data (B, *S):
        M = floor(0.75 ln(s / (2 sqrt(N) sigma^2)) / ln(1 + tau)) + 1,
        z_max = sqrt(2/pi) sigma (1+tau)^M,  upper_norm = sqrt(N) sigma (1+tau)^M.
    """
    check_finite("data", check_tensor("data", data, min_dim=2))
    if data.shape[0] == 0:
        raise ValueError("data is empty: its statistics are undefined")
    check_positive("sigma", sigma)
    check_positive("tau", tau)
    dims = math.prod(data.shape[1:])
    mean_sq_norm = _mean_squared_norm(data.reshape(data.shape[0], -1))
    ratio = mean_sq_norm / (2.0 * math.sqrt(dims) * sigma ** 2)
    if ratio <= 1.0:
        raise ValueError(f"data has mean squared norm {mean_sq_norm:.3g}, too small for sigma={sigma}: "
                         "M would be < 1 (is the data all zeros, or sigma too large?)")
    M = math.floor(0.75 * math.log(ratio) / math.log1p(tau)) + 1
    return dict(M=M, **prior_range(M, dims, sigma=sigma, tau=tau))


def prior_range(M: int, dims: int, *, sigma: float = 0.01, tau: float = 0.03) -> dict:
    """z_max and upper_norm implied by M for data of dimension N = dims (PFGM.md section 2).

    The largest perturbation sigma (1+tau)^M has expected |z0| sqrt(2/pi) times it and expected
    ||eps|| sqrt(N) times it: z_max = sqrt(2/pi) sigma (1+tau)^M, upper_norm = sqrt(N) sigma (1+tau)^M.
    (CIFAR-10, M = 291: 43.4 and 3015; its released config samples with 40 and 3000.)
    """
    if isinstance(M, bool) or not isinstance(M, int) or M < 1:
        raise ValueError(f"M must be an integer >= 1, got {M!r}")
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise ValueError(f"dims must be an integer >= 1, got {dims!r}")
    check_positive("sigma", sigma)
    check_positive("tau", tau)
    scale = sigma * (1.0 + tau) ** M
    return dict(z_max=math.sqrt(2.0 / math.pi) * scale, upper_norm=math.sqrt(dims) * scale)
