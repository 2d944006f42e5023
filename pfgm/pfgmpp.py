"""PFGM++: D augmented dimensions, trained and sampled the EDM way (PFGM.md section 7).

Only r = ||z|| in R^D matters. The perturbation kernel is p_r(x | y) ∝ (||x - y||^2 + r^2)^(-(N+D)/2),
aligned with diffusion by r = sigma sqrt(D): D = 1 is PFGM (at height z = r), D -> infinity is EDM's
N(y, sigma^2 I). One code path serves every D >= 1.

Sampling. The field line ODE dx/dr = E_x / E_r equals (x - E[y | x, r]) / r, the posterior mean taken
under the same kernel; in sigma it is EDM's ODE dx/dsigma = (x - D(x, sigma)) / sigma. Hence EDM's Heun
sampler, started from the PFGM++ prior (the kernel centred at 0 with r_max = sigma_max sqrt(D)).
`sigma_grid` builds the schedule; `heun` only walks the grid it is given (the k-diffusion contract)
and counts network evaluations. Its denoiser is any D(x, sigma): an EDMPrecond as it is, a field network
through `pfgm.networks.edm.as_denoiser`, or `optimal_denoiser` below.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from pfgm._checks import check_dims, check_finite, check_positive, check_tensor
from pfgm._random import draw
from pfgm.field import empirical_field
from pfgm.ode import ODEResult
from pfgm.prior import kernel_offsets

Denoiser = Callable[[Tensor, Tensor], Tensor]

P_MEAN, P_STD = -1.2, 1.2
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def sample_sigma(n: int, *, P_mean: float = P_MEAN, P_std: float = P_STD,
                 generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> Tensor:
    """Training noise levels, ln sigma ~ N(P_mean, P_std^2): shape (n,)."""
    normal = draw(torch.randn, n, generator=generator, device=device, dtype=dtype)
    return (normal * P_std + P_mean).exp()


def perturb(data: Tensor, sigma: Tensor, *, D: int, generator: torch.Generator | None = None) -> Tensor:
    """x = y + offset, offset ~ p_r(. | 0) with r = sigma sqrt(D); D = math.inf: EDM's y + sigma n,
    n ~ N(0, I), the kernel's limit.

    Args: data (B, *S); sigma (B,) > 0. Returns x (B, *S).
    """
    check_finite("data", check_tensor("data", data, min_dim=2))
    if check_dims(D, allow_inf=True) == math.inf:
        noise = draw(torch.randn, data.shape, generator=generator, device=data.device, dtype=data.dtype)
        return data + sigma.to(data.dtype).reshape(-1, *[1] * (data.dim() - 1)) * noise
    radius = sigma.to(data.dtype) * math.sqrt(D)
    offsets = kernel_offsets(data.shape[0], tuple(data.shape[1:]), radius.to(data.device), D=D,
                             generator=generator, device=data.device, dtype=data.dtype)
    return data + offsets


def sample_prior(n: int, shape: tuple[int, ...], *, D: int, sigma_max: float = SIGMA_MAX,
                 generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> Tensor:
    """Starting points (n, *S): the kernel centred at the origin with r_max = sigma_max sqrt(D); D = math.inf:
    EDM's N(0, sigma_max^2 I)."""
    check_positive("sigma_max", sigma_max)
    if check_dims(D, allow_inf=True) == math.inf:
        return sigma_max * draw(torch.randn, (n, *shape), generator=generator, device=device, dtype=dtype)
    return kernel_offsets(n, tuple(shape), sigma_max * math.sqrt(D), D=D, generator=generator, device=device,
                          dtype=dtype)


def prior_log_prob(x: Tensor, *, D: float, sigma_max: float = SIGMA_MAX) -> Tensor:
    """Log density (nats, float64) of x (B, *S) under the prior `sample_prior` draws from: (B,).

    The kernel centred at 0 with r = sigma_max sqrt(D),
        p(x) = Gamma((N + D)/2) / (pi^(N/2) Gamma(D/2)) r^D (||x||^2 + r^2)^(-(N + D)/2),
    normalised because the integral over R^N of (||x||^2 + r^2)^(-m) is pi^(N/2) Gamma(m - N/2) / Gamma(m)
    r^(N - 2m). D = math.inf: N(0, sigma_max^2 I).
    """
    check_positive("sigma_max", sigma_max)
    squared = x.reshape(x.shape[0], -1).double().square().sum(dim=1)
    N = x[0].numel()
    if check_dims(D, allow_inf=True) == math.inf:
        return -0.5 * squared / sigma_max**2 - N * math.log(sigma_max) - 0.5 * N * math.log(2 * math.pi)
    radius = sigma_max * math.sqrt(D)
    constant = (math.lgamma((N + D) / 2) - math.lgamma(D / 2) - 0.5 * N * math.log(math.pi) + D * math.log(radius))
    return constant - 0.5 * (N + D) * torch.log(squared + radius**2)


def sigma_grid(steps: int, *, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO,
               device=None) -> Tensor:
    """EDM's schedule: `steps` values from sigma_max to sigma_min uniform in sigma^(1/rho), then 0.

    Returns (steps + 1,) float64: the sampler takes `steps` steps, the last one to sigma = 0.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    check_positive("sigma_min", sigma_min)
    check_positive("rho", rho)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be smaller than sigma_max, got {sigma_min} and {sigma_max}")
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64, device=device)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def heun(denoiser: Denoiser, x: Tensor, grid: Tensor, *, callback: Callable[[dict], None] | None = None) -> ODEResult:
    """EDM's deterministic Heun sampler walking `grid` (decreasing sigmas ending at 0).

    Args:
        denoiser: D(x (B, *S), sigma (B,)) -> (B, *S).
        x: (B, *S) starting points at sigma = grid[0] (from `sample_prior`).
        grid: (steps + 1,) sigmas; a second-order correction is made on every step except one to 0.
        callback: called after each step with dict(i, x, sigma, sigma_next, denoised).
    Returns:
        ODEResult(x (B, *S), nfe): 2 * steps - 1 evaluations for a grid ending at 0.
    """
    check_finite("x", check_tensor("x", x, min_dim=2))
    nfe = 0

    def slope(point: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        denoised = denoiser(point, point.new_full((point.shape[0],), sigma)).to(point.dtype)
        return (point - denoised) / sigma, denoised

    with torch.no_grad():
        for i, (sigma, sigma_next) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist())):
            d, denoised = slope(x, sigma)
            x_next = x + (sigma_next - sigma) * d
            if sigma_next > 0:
                d_next, _ = slope(x_next, sigma_next)
                x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
            x = x_next
            if callback is not None:
                callback(dict(i=i, x=x, sigma=sigma, sigma_next=sigma_next, denoised=denoised))
    return ODEResult(x=x, nfe=nfe)


def optimal_denoiser(charges: Tensor, *, D: int) -> Denoiser:
    """The exact denoiser E[y | x, sigma] of the empirical distribution of `charges` (M, *S).

    Under the kernel, p(y_j | x) ∝ (||x - y_j||^2 + r^2)^(-(N+D)/2): the weights of the empirical
    field at height r = sigma sqrt(D), so E[y | x] = x + E_x(x, r). Returns D(x (B, *S), sigma (B,)).
    """
    check_dims(D)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        radius = sigma.to(x.dtype).expand(x.shape[0]) * math.sqrt(D)
        field = empirical_field(x, radius, charges.to(x.dtype), D=D)
        return x + field[:, :-1].reshape(x.shape)

    return denoise
