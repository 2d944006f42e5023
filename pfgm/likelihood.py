"""Log-likelihoods and bits/dim under the field-line flow, and the baseline beside them (PFGM.md section 5).

Change of variables. Encoding x from the plane z_min up to z_max along dx/dt = z v_x / v_z (t = ln z,
pfgm.ode's drift) transports the density, so

    log p_min(x) = log p_prior(x(z_max)) + integral from ln z_min to ln z_max of tr(d(dx/dt)/dx) dt.

The divergence rides along as extra state columns, so any solver that integrates a generic state
works (the torchdiffeq methods, euler and heun in z; not dpmpp_2m, which steps x alone).

Traces. tr J = sum_i e_i^T J e_i: the exact trace takes the N basis vectors, Hutchinson's estimator
K Rademacher probes v (E[v^T J v] = tr J). Each vector costs a vector-Jacobian product, so the exact
trace costs about N / K times the probes' (the 8x8 digits: 64 products per network evaluation).
`drift_and_exact_trace` takes them as N backward passes over the batch after one forward pass, or,
for batches of a few points, where the passes' fixed cost dominates, in one pass over N copies of
every point. Probes are drawn once and kept along the path, and the integral is carried per probe,
so the spread over probes is measured (`log_likelihood_per_probe`).

Quantisation (images). A data set records its levels L (pfgm.data.levels_of): level k in 0..L-1 is
stored as the uint8 value rint(k * 255 / (L - 1)) (pfgm.data.uint8_levels), read back by
`image_levels`. Bins cut the cube [-1, 1)^N into L^N equal cells: level k owns
[-1 + 2k/L, -1 + 2(k+1)/L) in every coordinate, and uniform dequantisation draws
x = -1 + 2 (k + U) / L, U ~ U[0, 1). For L = 256 this is the official 8-bit protocol exactly:
x = (u + U) / 128 - 1. By Jensen, the probability the model gives the bin of k is at least
exp(E_U log p(x)) (2/L)^N, hence, in bits per dimension,

    bpd = -log p(x) / (N ln 2) + log2(L) - 1      (L = 256: + 7),

and a density uniform over the cube (log p = -N ln 2) scores log2(L): as good as knowing nothing.

Baseline. `histogram_bits_per_dim`: each pixel an independent categorical over the L levels,
fitted on training images with add-1/2 smoothing, scored exactly (no dequantisation) at the same
quantisation. A model should beat it: it captures no correlation between pixels.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from pfgm import pfgmpp, zsolvers
from pfgm._checks import check_finite, check_tensor
from pfgm._random import draw
from pfgm.names import GENERIC
from pfgm.data.store import EIGHT_BIT_LEVELS, uint8_levels
from pfgm.pfgmpp import Denoiser
from pfgm.ode import Model, SolveDiverged, _check_heights, _FieldLineDrift, _Solver
from pfgm.prior import prior_log_prob

#: Largest data dimension for which evaluation flows take the exact trace by default: it costs N
#: vector-Jacobian products per network evaluation (the 8x8 digits: 64; CIFAR-10 would need 3072).
EXACT_TRACE_MAX_DIMS = 256


def _rademacher(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    bits = draw(torch.randint, 0, 2, shape, generator=generator, device=like.device).to(like.dtype)
    return 2.0 * bits - 1.0


#: Batches of at most this many points take the exact trace over N copies of every point, larger ones by N
#: backward passes: benchmarks/likelihood_trace.py, 8x8 digits, 2 CPU threads, copies against passes 2.9x as
#: fast at 1 point, 1.5x at 5, 0.86x at 20, 0.29x at 100 (the per-pass overhead stops mattering).
EXACT_TRACE_COPIES_MAX_POINTS = 8


def exact_trace_by_backward_passes(drift: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """The drift at points x (B, N) and the exact trace of its Jacobian: one forward pass, then N
    vector-Jacobian products over the batch. Pulling e_i back through the drift of all B points gives row
    i of every point's Jacobian (the points do not interact), of which entry i is kept. (B, N) and (B,).
    """
    dims = x.shape[1]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        values = drift(x)
        trace = x.new_zeros(len(x))
        for i in range(dims):
            row = torch.autograd.grad(values[:, i].sum(), x, retain_graph=i < dims - 1)[0]
            trace = trace + row[:, i]
    return values.detach(), trace


def exact_trace_over_copies(drift: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """The drift at points x (B, N) and the exact trace of its Jacobian: every point repeated N times and
    copy i pulled back along e_i, one forward and one backward pass over B N rows. (B, N) and (B,).
    """
    points, dims = x.shape
    copies = x.detach().repeat_interleave(dims, dim=0).requires_grad_(True)
    tangents = torch.eye(dims, dtype=x.dtype, device=x.device).repeat(points, 1)
    with torch.enable_grad():
        values = drift(copies)
        rows = torch.autograd.grad(values, copies, grad_outputs=tangents)[0]
    trace = (rows * tangents).sum(dim=1).view(points, dims).sum(dim=1)
    return values.detach().view(points, dims, dims)[:, 0], trace


def drift_and_exact_trace(drift: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """The drift at points x (B, N) and the exact trace of its Jacobian there: (B, N) and (B,).

    By N backward passes (`exact_trace_by_backward_passes`), or over N copies of every point
    (`exact_trace_over_copies`) for batches of at most EXACT_TRACE_COPIES_MAX_POINTS points, where
    the one pass measured faster.
    """
    if len(x) <= EXACT_TRACE_COPIES_MAX_POINTS:
        return exact_trace_over_copies(drift, x)
    return exact_trace_by_backward_passes(drift, x)


def hutchinson_traces(drift: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """One unbiased trace estimate per probe, probe^T J probe, for probes (K, B, N): (B, K).

    The K vector-Jacobian products share one vectorised backward pass (is_grads_batched).
    """
    products = torch.autograd.grad(drift, x, grad_outputs=probes, retain_graph=True, is_grads_batched=True)[0]
    return (products * probes).sum(dim=2).T


class _DivergenceDrift:
    """Augmented drift [dx/dt, trace estimates] on the state [x (B, N), integrated divergences (B, K)]."""

    def __init__(self, drift: _FieldLineDrift, dims: int, probes: Tensor | None):
        self.drift, self.dims, self.probes = drift, dims, probes

    def __call__(self, t: Tensor, state: Tensor) -> Tensor:
        x = state[:, : self.dims]
        if self.probes is None:
            dx, traces = drift_and_exact_trace(lambda points: self.drift(t, points), x)
            return torch.cat([dx, traces.detach()[:, None]], dim=1)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            dx = self.drift(t, x)
            traces = hutchinson_traces(dx, x, self.probes)
        return torch.cat([dx.detach(), traces.detach()], dim=1)


def _check_hutchinson(hutchinson: int | None) -> None:
    if hutchinson is not None and (isinstance(hutchinson, bool) or not isinstance(hutchinson, int)
                                   or hutchinson < 1):
        raise ValueError(f"hutchinson must be None (exact trace) or a positive integer, got {hutchinson!r}")


def _check_method(method: str) -> None:
    if method in zsolvers.SOLVERS and method not in GENERIC:
        raise ValueError(f"method {method!r} steps the data point alone and cannot carry the log-density; "
                         f"use one of {sorted(GENERIC)} or a torchdiffeq method")


def _encode_with_divergence(drift: Callable[[Tensor, Tensor], Tensor], x: Tensor, solver: _Solver, grid: Tensor,
                            hutchinson: int | None, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Carry x (B, *S) along grid with drift(t, flat points); the end points (B, *S) and integrals (B, K).

    Raises SolveDiverged when the flow leaves the finite numbers (the likelihood is undefined there).
    """
    check_finite("x", check_tensor("x", x, min_dim=2))
    _check_hutchinson(hutchinson)
    _check_method(solver.method)
    flat = x.reshape(x.shape[0], -1)
    probes = None if hutchinson is None else _rademacher((hutchinson, *flat.shape), flat, generator)
    state = torch.cat([flat, flat.new_zeros(flat.shape[0], 1 if probes is None else hutchinson)], dim=1)
    end = solver.solve(_DivergenceDrift(drift, flat.shape[1], probes), state, grid)
    if not bool(torch.isfinite(end).all()):
        raise SolveDiverged(f"{solver.method}: the flow of x to the prior left the finite numbers")
    return end[:, : flat.shape[1]].reshape(x.shape), end[:, flat.shape[1]:]


def log_likelihood_per_probe(model: Model, x: Tensor, *, z_min: float, z_max: float, method: str = "dopri5",
                             rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
                             schedule: str = "ln_z", rho: float | None = None, gamma: float = 5.0,
                             z_exp: float | None = None, hutchinson: int | None = None,
                             generator: torch.Generator | None = None, options: dict | None = None) -> Tensor:
    """Log density in nats of x (B, *S) on the plane z = z_min, one estimate per trace probe: (B, K).

    `hutchinson=None` takes the exact trace (K = 1); an integer K draws K Rademacher probes per point
    from `generator`, kept along the whole path, and returns the K estimates (their mean is
    `log_likelihood`; their spread is the probe noise). The path is shared: only the trace differs.
    Solvers: any pfgm.ode.METHODS name but dpmpp_2m (module docstring).
    """
    _check_heights(z_min, z_max)
    solver = _Solver(method, steps, rtol, atol, schedule, rho, options)
    drift = _FieldLineDrift(model, x.shape, gamma=gamma, z_exp=z_exp, callback=None)
    latent, integrals = _encode_with_divergence(drift, x, solver, solver.grid(z_min, z_max, x.device),
                                                hutchinson, generator)
    return prior_log_prob(latent, z_max=z_max)[:, None] + integrals


def log_likelihood(model: Model, x: Tensor, *, z_min: float, z_max: float, method: str = "dopri5",
                   rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None, schedule: str = "ln_z",
                   rho: float | None = None, gamma: float = 5.0, z_exp: float | None = None,
                   hutchinson: int | None = None, generator: torch.Generator | None = None,
                   options: dict | None = None) -> Tensor:
    """Log density in nats of x (B, *S) on the plane z = z_min under the model's flow, shape (B,).

    As `log_likelihood_per_probe`, averaged over the probes (`hutchinson=None`: the exact trace).
    """
    return log_likelihood_per_probe(model, x, z_min=z_min, z_max=z_max, method=method, rtol=rtol, atol=atol,
                                    steps=steps, schedule=schedule, rho=rho, gamma=gamma, z_exp=z_exp,
                                    hutchinson=hutchinson, generator=generator, options=options).mean(dim=1)


class _DenoiserDrift:
    """PFGM++'s (and EDM's) ODE in t = ln sigma: dx/dt = sigma dx/dsigma = x - D(x, sigma), flat points."""

    def __init__(self, denoiser: Denoiser, sample_shape: tuple[int, ...]):
        self.denoiser, self.sample_shape = denoiser, tuple(sample_shape)

    def __call__(self, t: Tensor, flat_x: Tensor) -> Tensor:
        x = flat_x.reshape(-1, *self.sample_shape)
        sigma = torch.exp(t).to(flat_x.dtype).expand(len(x))
        return flat_x - self.denoiser(x, sigma).to(flat_x.dtype).reshape(len(x), -1)


def pfgmpp_log_likelihood_per_probe(denoiser: Denoiser, x: Tensor, *, D: float, sigma_min: float,
                                    sigma_max: float = pfgmpp.SIGMA_MAX, method: str = "rk4",
                                    steps: int | None = 50, rtol: float = 1e-5, atol: float = 1e-5,
                                    hutchinson: int | None = None, generator: torch.Generator | None = None,
                                    options: dict | None = None) -> Tensor:
    """PFGM++: log density in nats of x (B, *S) at sigma_min (r = sigma_min sqrt(D)), per probe: (B, K).

    The denoiser's ODE carries x from sigma_min up to sigma_max (steps uniform in ln sigma for a fixed-step
    method), where pfgmpp.prior_log_prob (the kernel centred at 0; D = inf: N(0, sigma_max^2 I)) scores it.
    Unlike PFGM's field-line drift, x - D(x, sigma) never divides by a network output, so the flow is
    defined wherever the network is. Trace, probes and solvers as `log_likelihood_per_probe`.
    """
    _check_heights(sigma_min, sigma_max)
    solver = _Solver(method, steps, rtol, atol, "ln_z", None, options)
    drift = _DenoiserDrift(denoiser, tuple(x.shape[1:]))
    latent, integrals = _encode_with_divergence(drift, x, solver, solver.grid(sigma_min, sigma_max, x.device),
                                                hutchinson, generator)
    return pfgmpp.prior_log_prob(latent, D=D, sigma_max=sigma_max)[:, None] + integrals


def _check_levels(levels: int) -> int:
    uint8_levels(levels)  # raises a ValueError naming a bad value
    return levels


def image_levels(images: Tensor, levels: int = EIGHT_BIT_LEVELS) -> Tensor:
    """uint8 images (B, *S) -> their levels k in 0..levels-1 (int64, same shape).

    The inverse of the storage map k -> rint(k * 255 / (levels - 1)); 256 levels: k = u. A value that
    is no level's is an error (the data's levels are not what the caller says).
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0..255) for dequantisation, got dtype {images.dtype}")
    stored = torch.from_numpy(uint8_levels(_check_levels(levels))).long()
    inverse = torch.full((256,), -1, dtype=torch.long)
    inverse[stored] = torch.arange(levels)
    k = inverse.to(images.device)[images.long()]
    if bool((k < 0).any()):
        bad = int(images[k < 0][0])
        raise ValueError(f"images hold the value {bad}, which is none of the {levels} levels "
                         f"rint(k * 255 / {levels - 1}); are the data's levels {levels}?")
    return k


def dequantize(images: Tensor, *, levels: int = EIGHT_BIT_LEVELS, generator: torch.Generator | None = None) -> Tensor:
    """uint8 images (B, *S) of `levels` levels -> float32 (B, *S) in [-1, 1): x = -1 + 2 (k + U) / levels.

    Level k's bin is [-1 + 2k/L, -1 + 2(k+1)/L) (module docstring); 256 levels give the official
    (u + U) / 128 - 1 bit for bit (2/256 is a power of two).
    """
    k = image_levels(images, levels)
    noise = draw(torch.rand, images.shape, generator=generator, device=images.device)
    return (k.float() + noise) * (2.0 / levels) - 1.0


def bits_per_dim(log_prob: Tensor, data_dims: int, *, levels: int = EIGHT_BIT_LEVELS) -> Tensor:
    """Bits/dim of `levels`-level data from the log density (nats) of its dequantised [-1, 1) scaling.

    Each bin has width 2 / L, so the cell of an image has volume (2 / L)^N and
    bpd = -log p / (N ln 2) - log2(2 / L) = -log p / (N ln 2) + log2(L) - 1 (8-bit: + 7).
    """
    return -log_prob / (data_dims * math.log(2.0)) + math.log2(_check_levels(levels)) - 1.0


def histogram_bits_per_dim(train: Tensor, test: Tensor, *, levels: int = EIGHT_BIT_LEVELS,
                           pseudocount: float = 0.5) -> Tensor:
    """Bits/dim of each test image under independent per-pixel histograms of the training images: (B,).

    Args:
        train: uint8 (M, *S) images the histograms are fitted on (the training split).
        test: uint8 (B, *S) images scored (those the model is scored on).
        levels: the data's levels L; the histograms count levels, not uint8 values.
        pseudocount: added to every level's count (1/2: the Krichevsky-Trofimov estimator), so
            that a level never seen at a pixel costs finite bits.
    Returns:
        float64 (B,): -(1/N) sum over pixels of log2 P_pixel(level). Exact code lengths of a
        discrete model, comparable with `bits_per_dim` (which bounds the model's from above).
    """
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(f"train images {tuple(train.shape)} and test images {tuple(test.shape)} differ in shape")
    if not pseudocount > 0:
        raise ValueError(f"pseudocount must be > 0 (else an unseen level costs infinite bits), got {pseudocount!r}")
    seen = image_levels(train, levels).flatten(1)
    scored = image_levels(test, levels).flatten(1)
    counts = torch.zeros(seen.shape[1], levels, dtype=torch.float64, device=seen.device)
    counts.scatter_add_(1, seen.T, torch.ones_like(seen.T, dtype=torch.float64))
    log2_probs = torch.log2(counts + pseudocount) - math.log2(len(train) + pseudocount * levels)
    pixel_bits = -log2_probs.gather(1, scored.T.to(seen.device)).T  # (B, N)
    return pixel_bits.mean(dim=1)


def mean_and_standard_error(values: Tensor) -> tuple[float, float]:
    """Mean of values (n,) and its standard error, sample std (n - 1) / sqrt(n); NaN error for n = 1."""
    values = values.double().flatten()
    if len(values) < 2:
        return float(values.mean()), math.nan
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def probe_standard_error(per_probe: Tensor) -> float:
    """The part of the standard error of the mean over B points that the K probes add: per_probe (B, K).

    Given the points, the mean of B K estimates varies by sqrt(sum_i s_i^2 / K) / B with s_i^2 the
    sample variance over point i's probes; NaN for K = 1 (one probe per point shows no spread).
    """
    if per_probe.ndim != 2:
        raise ValueError(f"per_probe must have shape (B, K), got {tuple(per_probe.shape)}")
    points, probes = per_probe.shape
    if probes < 2:
        return math.nan
    variance = per_probe.double().var(dim=1).sum() / probes
    return float(variance.sqrt() / points)


__all__ = [
    "EXACT_TRACE_COPIES_MAX_POINTS",
    "EXACT_TRACE_MAX_DIMS",
    "bits_per_dim",
    "dequantize",
    "drift_and_exact_trace",
    "exact_trace_by_backward_passes",
    "exact_trace_over_copies",
    "histogram_bits_per_dim",
    "hutchinson_traces",
    "image_levels",
    "log_likelihood",
    "log_likelihood_per_probe",
    "pfgmpp_log_likelihood_per_probe",
    "mean_and_standard_error",
    "probe_standard_error",
]
