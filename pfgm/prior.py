"""The prior: the uniform hemisphere projected onto the plane z = z_max (PFGM.md sections 3, 7).

For D augmented dimensions the prior is the PFGM++ perturbation kernel centred at the origin,

    p(x) ∝ (||x||^2 + r^2)^(-(N+D)/2),   r = z_max,

i.e. ||x|| = r sqrt(B / (1 - B)) with B ~ Beta(N/2, D/2) and a uniform direction (D = 1 is PFGM).
Sampling uses B / (1 - B) = ||g||^2 / ||h||^2 for standard normal g in R^N and h in R^D, which
gives x = r * g / ||h|| directly, with every random number drawn from the caller's generator.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from pfgm._checks import check_dims, check_finite, check_positive, check_tensor
from pfgm._random import draw


def kernel_offsets(n: int, shape: tuple[int, ...], r: Tensor | float, *, D: int = 1,
                   generator: torch.Generator | None = None, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Offsets x - y drawn from the kernel p_r(x | y) ∝ (||x - y||^2 + r^2)^(-(N+D)/2).

    Args:
        n: number of samples.
        shape: data shape S (N = prod(S)).
        r: scalar or (n,) tensor of augmented radii (z for D = 1).
    Returns:
        (n, *S) offsets.
    """
    check_dims(D)
    direction = draw(torch.randn, (n, math.prod(shape)), generator=generator, device=device, dtype=dtype)
    extra = draw(torch.randn, (n, D), generator=generator, device=device, dtype=dtype)
    radius = torch.as_tensor(r, dtype=dtype, device=direction.device).reshape(-1, 1)
    offsets = radius * direction / torch.linalg.vector_norm(extra, dim=1, keepdim=True)
    return offsets.reshape(n, *shape)


def sample_prior(n: int, shape: tuple[int, ...], *, z_max: float, upper_norm: float | None = None,
                 D: int = 1, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
    """Points on the plane z = z_max distributed as the projected uniform hemisphere.

    Args:
        n: number of samples; shape: data shape S.
        z_max: height of the plane (r_max for PFGM++).
        upper_norm: when given, clip ||x|| to [1, upper_norm] as the official sampler does
            (on CIFAR-10 about half the samples hit the upper bound); None samples the exact law.
    Returns:
        (n, *S) float32 tensor on `device` (default: the generator's device, else CPU).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    check_positive("z_max", z_max)
    offsets = kernel_offsets(n, tuple(shape), z_max, D=D, generator=generator, device=device)
    if upper_norm is None:
        return offsets
    check_positive("upper_norm", upper_norm)
    flat = offsets.reshape(n, -1)
    norm = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
    clipped = flat * (norm.clamp(1.0, float(upper_norm)) / norm)
    return clipped.reshape(offsets.shape)


def prior_log_prob(x: Tensor, *, z_max: float, D: int = 1) -> Tensor:
    """Exact log density of the (unclipped) prior on the plane z = z_max.

    log p(x) = lgamma((N+D)/2) - lgamma(D/2) - (N/2) log(pi) + D log(z_max)
               - ((N+D)/2) log(||x||^2 + z_max^2);
    for D = 1 this is log(z_max) - log(S) - ((N+1)/2) log(||x||^2 + z_max^2), with S the area of
    the upper half of the unit sphere S^N. Args: x (n, *S). Returns (n,) in nats, x's dtype.
    """
    check_finite("x", check_tensor("x", x, min_dim=2))
    check_positive("z_max", z_max)
    check_dims(D)
    data_dims = math.prod(x.shape[1:])
    half_total = 0.5 * (data_dims + D)
    log_norm = (math.lgamma(half_total) - math.lgamma(0.5 * D) - 0.5 * data_dims * math.log(math.pi)
                + D * math.log(z_max))
    sq_norm = x.reshape(x.shape[0], -1).square().sum(dim=1)
    return log_norm - half_total * torch.log(sq_norm + z_max ** 2)
