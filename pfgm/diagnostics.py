"""The norm-z (norm-sigma) diagnostic: how the data part's norm ||x|| relates to the height.

The PFGM paper explains PFGM's robustness to a weak backbone by the pairs (x, height) a network is
trained on. For diffusion (PFGM++ with D -> inf) a perturbed point x = y + sigma eps has
||x||^2 = ||y||^2 + 2 sigma y.eps + sigma^2 ||eps||^2, concentrated at sqrt(||y||^2 + N sigma^2): the
norm is tied to sigma, and sampling fails once a trajectory leaves that narrow band. PFGM's points have
||x - y|| = (1+tau)^m ||eps|| and z = (1+tau)^m |z0|, a chi_N over a half-normal in ratio, so norms at a
given z spread over orders of magnitude (PFGM++'s kernel: ||x - y|| / r = sqrt(B / (1 - B)) with
B ~ Beta(N/2, D/2), whose spread shrinks as D grows).

Here, as pure functions of tensors:
- `NormRecorder`: a sampler callback that records ||x|| over the batch at each network evaluation
  (`pfgm.ode.sample`, height z) or after each step (`pfgm.pfgmpp.heun`, height sigma), and
  `sampling_curve_pfgm` / `sampling_curve_pfgmpp` that sample with it; `sampling_curve` does the same
  through either objective's pfgm.sampling sampler, and `model_norm_curves` draws both curves of a model;
- `perturbed_curve_pfgm` / `perturbed_curve_pfgmpp`: the same statistics for perturbed training points,
  binned in log height;
- `NormCurve`: heights (T,) decreasing, with the mean, standard deviation and count of ||x|| at each.
Norms are of the data part flattened, ||x|| = sqrt(sum over the N components of x^2), x of shape (B, *S).
"""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pfgm import ode, pfgmpp
from pfgm import perturb as pfgm_perturb
from pfgm._checks import check_finite, check_positive, check_tensor
from pfgm.sampling import Sampler, SampleResult, SamplerSettings, TrainedModel, sampler_for

#: Height variables: PFGM's z, or PFGM++'s sigma = r / sqrt(D) (EDM's noise level).
VARIABLES = ("z", "sigma")
#: PFGM's training perturbation (pfgm.perturb.perturb's defaults) when none is given.
DEFAULT_PERTURBATION = dict(sigma=0.01, tau=0.03, restrict_M=True)


@dataclass(frozen=True)
class NormCurve:
    """Statistics of ||x|| by height: height, mean, std (T,) float64 on the CPU, heights decreasing;
    count (T,) int64, the norms behind each row; `variable` "z" or "sigma"."""
    height: Tensor
    mean: Tensor
    std: Tensor
    count: Tensor
    variable: str

    def __post_init__(self):
        if self.variable not in VARIABLES:
            raise ValueError(f"variable must be one of {VARIABLES}, got {self.variable!r}")
        if not (self.height.shape == self.mean.shape == self.std.shape == self.count.shape) or self.height.dim() != 1:
            raise ValueError("height, mean, std and count must be 1-D tensors of one length")

    def __len__(self) -> int:
        return int(self.height.shape[0])

    def spread(self) -> float:
        """The median over rows of std / mean: how widely norms spread at one height (NaN if empty).

        About 1/sqrt(2N) where the norm is tied to the height (diffusion, large sigma), of order one
        and more where it is not (PFGM).
        """
        kept = self.mean > 0
        if not bool(kept.any()):
            return math.nan
        return float((self.std[kept] / self.mean[kept]).median())

    def rows(self) -> list[dict[str, float | int | str]]:
        """One dict per height (variable, height, mean, std, count), for a CSV."""
        return [dict(variable=self.variable, height=float(h), mean=float(m), std=float(s), count=int(c))
                for h, m, s, c in zip(self.height, self.mean, self.std, self.count)]


def data_norms(x: Tensor) -> Tensor:
    """||x|| of each row of x (B, *S) over its N data components: (B,) in float64."""
    check_tensor("x", x, min_dim=2)
    return torch.linalg.vector_norm(x.detach().reshape(x.shape[0], -1).double(), dim=1)


def _curve(heights: Sequence[float], groups: Sequence[Tensor], variable: str) -> NormCurve:
    """A NormCurve from groups of norms (each (b,) float64) at their heights, sorted by decreasing height."""
    order = sorted(range(len(heights)), key=lambda i: -heights[i])
    mean = [float(groups[i].mean()) for i in order]
    # The population std of each group: a single norm has spread 0, not NaN.
    std = [float(groups[i].std(unbiased=False)) for i in order]
    return NormCurve(height=torch.tensor([heights[i] for i in order], dtype=torch.float64),
                     mean=torch.tensor(mean, dtype=torch.float64), std=torch.tensor(std, dtype=torch.float64),
                     count=torch.tensor([groups[i].numel() for i in order], dtype=torch.int64), variable=variable)


class NormRecorder:
    """Records ||x|| over a batch at each height a sampler visits; `curve()` gives the NormCurve.

    Use `on_evaluation` as `pfgm.ode.sample`'s callback (dict(x, z, ...): the point the network was
    evaluated at, height z) and `on_step` as `pfgm.pfgmpp.heun`'s (dict(x, sigma_next, ...): the state
    after a step, height sigma_next); `record(x, height)` adds a state by hand (the starting batch).
    Heights <= 0 (Heun's last step lands on sigma = 0: the samples themselves) are not recorded, since
    the curve is read on a log axis of heights.
    """

    def __init__(self, variable: str):
        if variable not in VARIABLES:
            raise ValueError(f"variable must be one of {VARIABLES}, got {variable!r}")
        self.variable = variable
        self.heights: list[float] = []
        self.norms: list[Tensor] = []

    def record(self, x: Tensor, height: float) -> None:
        """Add the norms of the batch x (B, *S) at `height`."""
        if float(height) > 0:
            self.heights.append(float(height))
            self.norms.append(data_norms(x).cpu())

    def on_evaluation(self, info: dict) -> None:
        self.record(info["x"], info["z"])

    def on_step(self, info: dict) -> None:
        self.record(info["x"], info["sigma_next"])

    def on_state(self, info: dict) -> None:
        """The callback of a pfgm.sampling sampler: dict(x, height, ...)."""
        self.record(info["x"], info["height"])

    def curve(self) -> NormCurve:
        if not self.heights:
            raise ValueError("nothing was recorded: was the recorder passed as the sampler's callback?")
        return _curve(self.heights, self.norms, self.variable)


def sampling_curve_pfgm(model: ode.Model, start: Tensor, *, z_max: float, z_min: float,
                        **solver) -> tuple[NormCurve, ode.ODEResult]:
    """Sample PFGM's backward ODE from `start` (B, *S) on the plane z_max down to z_min, recording
    ||x|| at every network evaluation (`solver`: pfgm.ode.sample's method, steps, rtol, ..., z_exp).
    Returns the NormCurve (variable z) and the solver's result."""
    recorder = NormRecorder("z")
    result = ode.sample(model, start, z_max=z_max, z_min=z_min, callback=recorder.on_evaluation, **solver)
    return recorder.curve(), result


def sampling_curve_pfgmpp(denoiser: pfgmpp.Denoiser, start: Tensor, grid: Tensor) -> tuple[NormCurve, ode.ODEResult]:
    """EDM's Heun sampler from `start` (B, *S) at sigma = grid[0] along `grid`, recording ||x|| at the
    start and after every step. Returns the NormCurve (variable sigma) and the sampler's result."""
    recorder = NormRecorder("sigma")
    recorder.record(start, float(grid[0]))
    result = pfgmpp.heun(denoiser, start, grid, callback=recorder.on_step)
    return recorder.curve(), result


def sampling_curve(sampler: Sampler, start: Tensor) -> tuple[NormCurve, SampleResult]:
    """A pfgm.sampling sampler's solve from `start` (B, *S), recording ||x|| at every state it reports
    (PFGM: each evaluation, height z; PFGM++: the start and each step, height sigma). Returns the
    NormCurve (the sampler's variable) and the sampler's result."""
    recorder = NormRecorder(sampler.variable)
    result = sampler.solve(start, callback=recorder.on_state)
    return recorder.curve(), result


def model_norm_curves(model: TrainedModel, train: Tensor, *, settings: SamplerSettings, num_samples: int,
                      generator: torch.Generator, perturbation: dict | None = None) -> dict[str, NormCurve]:
    """The norm-z (PFGM) or norm-sigma (PFGM++) curves of a model, by label:
    "sampling": num_samples prior draws followed with `settings` (PFGM++: EDM's Heun, steps or 18);
    "training (perturbed)": the rows of `train` (B, *S) perturbed once as in training (PFGM: with
    `perturbation`'s sigma, tau, restrict_M, default DEFAULT_PERTURBATION, and the checkpoint's M).
    Randomness from `generator` (CPU): the prior first, then the perturbation."""
    sampler = sampler_for(model, settings)
    sampling, _ = sampling_curve(sampler, sampler.prior(num_samples, generator))
    rows, hp = train.to(model.device), model.hyperparameters
    if model.objective == "pfgmpp":
        training = perturbed_curve_pfgmpp(rows, D=hp["D"], generator=generator)
    else:
        training = perturbed_curve_pfgm(rows, M=int(hp["M"]), generator=generator,
                                        **(perturbation or DEFAULT_PERTURBATION))
    return {"sampling": sampling, "training (perturbed)": training}


def binned_curve(heights: Tensor, norms: Tensor, *, variable: str, bins: int = 30) -> NormCurve:
    """Norms (P,) at scattered heights (P,) > 0 grouped into `bins` bins uniform in ln(height) between
    the extremes; a row per non-empty bin at its geometric centre."""
    check_finite("heights", check_tensor("heights", heights))
    check_finite("norms", check_tensor("norms", norms))
    if heights.shape != norms.shape or heights.dim() != 1 or heights.numel() == 0:
        raise ValueError(f"heights and norms must be non-empty (P,) tensors, got {tuple(heights.shape)} and "
                         f"{tuple(norms.shape)}")
    if bool((heights <= 0).any()):
        raise ValueError("heights must be > 0 (they are binned in ln height)")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    logs = heights.detach().double().cpu().log()
    norms = norms.detach().double().cpu()
    low, high = float(logs.min()), float(logs.max())
    width = (high - low) / bins if high > low else 1.0
    index = ((logs - low) / width).floor().clamp(0, bins - 1).long()
    centres, groups = [], []
    for b in index.unique().tolist():
        centres.append(math.exp(low + (b + 0.5) * width) if high > low else math.exp(low))
        groups.append(norms[index == b])
    return _curve(centres, groups, variable)


def _repeat(data: Tensor, draws: int) -> Tensor:
    check_finite("data", check_tensor("data", data, min_dim=2))
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    return data.repeat(draws, *([1] * (data.dim() - 1)))


def perturbed_curve_pfgm(data: Tensor, *, M: int, sigma: float = 0.01, tau: float = 0.03, restrict_M: bool = True,
                         draws: int = 1, bins: int = 30, generator: torch.Generator | None = None) -> NormCurve:
    """||x|| against z of PFGM's perturbed training points (pfgm.perturb.perturb), each row of data
    (B, *S) perturbed `draws` times, binned in ln z. Points drawn at z = 0 (possible only through
    float underflow) are left out."""
    x, z = pfgm_perturb.perturb(_repeat(data, draws), M=M, sigma=sigma, tau=tau, restrict_M=restrict_M,
                                generator=generator)
    kept = z > 0
    return binned_curve(z[kept], data_norms(x)[kept], variable="z", bins=bins)


def perturbed_curve_pfgmpp(data: Tensor, *, D: int, P_mean: float = pfgmpp.P_MEAN, P_std: float = pfgmpp.P_STD,
                           draws: int = 1, bins: int = 30, generator: torch.Generator | None = None) -> NormCurve:
    """||x|| against sigma of PFGM++'s perturbed training points (sigma log-normal as in training,
    x = y + offset with r = sigma sqrt(D)), each row of data (B, *S) perturbed `draws` times, binned in
    ln sigma."""
    rows = _repeat(data, draws)
    sigma = pfgmpp.sample_sigma(rows.shape[0], P_mean=P_mean, P_std=P_std, generator=generator,
                                device=rows.device, dtype=rows.dtype)
    x = pfgmpp.perturb(rows, sigma, D=D, generator=generator)
    return binned_curve(sigma, data_norms(x), variable="sigma", bins=bins)


def far_field_slope(curve: NormCurve, *, above: float) -> float:
    """d ln(mean ||x||) / d ln(height), fitted by least squares over the rows with height > `above`:
    1 where the norm grows like the height (far from the data every field line is radial)."""
    check_positive("above", above)
    kept = curve.height > above
    if int(kept.sum()) < 2:
        raise ValueError(f"fewer than two heights above {above}: cannot fit a slope")
    h, m = curve.height[kept].log(), curve.mean[kept].log()
    h, m = h - h.mean(), m - m.mean()
    return float((h * m).sum() / (h * h).sum())


def write_norm_csv(panels: dict[str, dict[str, NormCurve]], path: Path) -> Path:
    """norm_z.csv: one row per height of every curve (model, curve, variable, height, mean, std, count)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["model", "curve", "variable", "height", "mean", "std", "count"])
        writer.writeheader()
        for model, curves in panels.items():
            for name, curve in curves.items():
                writer.writerows(dict(model=model, curve=name, **row) for row in curve.rows())
    return path
