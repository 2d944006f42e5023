"""The numbers an evaluation of a trained model reports beside its samples, from plain values.

The evaluate stage draws sample sets and scores them (pfgm.sampling, pfgm.metrics); this module names
the metrics such an evaluation produces (`expected_metrics`), turns the per-probe log-densities of test
points into bits/dim or nats per point with their standard errors and the histogram baseline
(`image_bpd_metrics`, `points_nll_metrics`; docs/LIKELIHOOD.md), scores the two reference FIDs a trained
model should sit between (`reference_metrics`: the data's own, an untrained network's), and refuses a
set of metrics holding NaN or infinity (`require_finite`). `draw_sets` draws and scores one sample set
per seed through the caller's `draw` and `score` (which may be tracked tasks), keeping one set in memory.
Settings arrive as plain values or as the small `LikelihoodSettings`; the caller reads its configuration
and passes what it holds.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pfgm import data as pdata
from pfgm import likelihood as plik
from pfgm import metrics as pmetrics
from pfgm.networks.edm import as_denoiser
from pfgm.ode import SolveDiverged
from pfgm.sampling import Generated, TrainedModel


class NonFiniteMetricError(RuntimeError):
    """A metric came out NaN or infinite (a diverged model or sampler); the run is marked FAILED."""


def require_finite(metrics: dict[str, Any]) -> None:
    """NonFiniteMetricError naming every numeric metric that is NaN or infinite."""
    bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if bad:
        raise NonFiniteMetricError(f"non-finite metrics {bad}: the model or the sampler diverged; not registered")


def nonfinite_rows(x: Tensor) -> int:
    """How many samples of x (n, *S) hold any NaN or infinite value."""
    return int((~torch.isfinite(x)).flatten(1).any(1).sum())


def sample_seeds(seeds: list[int] | None, seed: int) -> list[int]:
    """The prior seeds of the scored sample sets: `seeds`, or [seed] when there is no list."""
    return list(seeds) if seeds is not None else [seed]


def likelihood_keys(name: str, hutchinson: int | None) -> list[str]:
    """bpd (images) or nll (points), its standard error, the probes' part of it (2+ probes), the baseline."""
    keys = [name, f"{name}_se"]
    if hutchinson is not None and hutchinson >= 2:
        keys.append(f"{name}_probe_se")
    return keys + (["bpd_baseline"] if name == "bpd" else [])


def expected_metrics(kind: str, features: str | None, *, seeds: list[int], fid_mode: str, bpd_images: int,
                     hutchinson: int | None) -> tuple[str, ...]:
    """The numeric keys an evaluation of `kind` data (image | points) will produce.

    `features` is the FID feature network (None: no FID), `seeds` the sample sets' seeds; the Inception
    Score comes with Inception features unless `fid_mode` is legacy_pytorch; bits/dim (images) or nll
    (points) when `bpd_images` > 0.
    """
    keys = ["num_samples", "nfe", "nfe_max", "nfe_untrained", "seconds_per_sample"]
    if features is not None:
        keys += ["fid", "fid_std", "fid_min", "kid", "fid_untrained", "fid_floor"]
        keys += [f"{metric}_seed{seed}" for seed in seeds for metric in ("fid", "kid")]
    if features == "inception" and fid_mode != "legacy_pytorch":  # pytorch-fid's network has no classes
        keys += ["inception_score", "inception_score_std"]
    if bpd_images > 0:
        keys += likelihood_keys("bpd" if kind == "image" else "nll", hutchinson)
    return tuple(keys)


def likelihood_z_min(bpd_z_min: float | None, z_min: float) -> float:
    """The plane whose density bits/dim measure: bpd_z_min, or the sampler's z_min when it is None."""
    return bpd_z_min if bpd_z_min is not None else z_min


def sampling_metrics(num_samples: int, nfe: list[int], untrained_nfe: list[int], seconds: float,
                     sets: int) -> dict[str, float]:
    """num_samples, nfe (mean over solves), nfe_max, nfe_untrained and seconds_per_sample over `sets` sets."""
    return dict(num_samples=num_samples, nfe=sum(nfe) / len(nfe), nfe_max=max(nfe),
                nfe_untrained=sum(untrained_nfe) / len(untrained_nfe),
                seconds_per_sample=seconds / (num_samples * sets))


@dataclass(frozen=True)
class SampleSets:
    """The first set's samples (pictures, IS), every set's NFE and seconds, and each set's scores by seed."""
    first: Tensor
    nfe: list[int]
    seconds: float
    scores: dict[int, dict[str, float]]


def draw_sets(draw: Callable[[int], Generated], seeds: list[int],
              score: Callable[[Tensor], dict[str, float]] | None = None) -> SampleSets:
    """One sample set per seed from `draw(seed)`, each passed to `score` as soon as drawn; only the first
    set's samples are kept, so that memory holds one set at a time."""
    first, nfe, seconds, scores = None, [], 0.0, {}
    for seed in seeds:
        generated = draw(seed)
        nfe += generated.nfe
        seconds += generated.seconds
        if score is not None:
            scores[seed] = score(generated.x)
        first = generated.x if first is None else first
    return SampleSets(first=first, nfe=nfe, seconds=seconds, scores=scores)


@dataclass(frozen=True)
class LikelihoodSettings:
    """The likelihood ODE's solve: solver (pfgm.likelihood), trace, heights and batch size.

    `z_min` is the plane of PFGM's density, `sigma_min` PFGM++'s; `hutchinson` None takes the exact trace.
    """
    method: str
    steps: int | None
    rtol: float
    atol: float
    hutchinson: int | None
    z_min: float
    z_exp: float | None
    sigma_min: float
    batch_size: int


def log_likelihoods(model: TrainedModel, x: Tensor, settings: LikelihoodSettings,
                    generator: torch.Generator) -> Tensor:
    """Log densities (nats) of points x (B, *S), one per probe: float64 (B, K) on the CPU.

    PFGM: on the plane z = settings.z_min (the field-line ODE); PFGM++: at sigma = settings.sigma_min
    (the denoiser's ODE). Batches whose flow leaves the finite numbers on the way to the prior get NaN
    rows: the likelihood is undefined there, and `require_finite` then refuses the metrics.
    """
    device = next(model.net.parameters()).device
    hp = model.hyperparameters
    solver = dict(method=settings.method, rtol=settings.rtol, atol=settings.atol, steps=settings.steps,
                  hutchinson=settings.hutchinson, generator=generator)
    rows = []
    for batch in torch.split(x, settings.batch_size):
        try:
            if model.objective == "pfgmpp":
                rows.append(plik.pfgmpp_log_likelihood_per_probe(
                    as_denoiser(model.net), batch.to(device), D=hp["D"], sigma_min=settings.sigma_min,
                    **solver).cpu())
            else:
                rows.append(plik.log_likelihood_per_probe(
                    model.net, batch.to(device), z_min=settings.z_min, z_max=float(hp["z_max"]),
                    gamma=float(hp.get("gamma", 5.0)), z_exp=settings.z_exp, **solver).cpu())
        except SolveDiverged:
            rows.append(torch.full((len(batch), settings.hutchinson or 1), math.nan))
    return torch.cat(rows).double()


def with_errors(name: str, per_probe: Tensor) -> dict[str, float]:
    """<name> (the mean over points), <name>_se (over points), <name>_probe_se (2+ probes) of (B, K) values."""
    mean, standard_error = plik.mean_and_standard_error(per_probe.mean(dim=1))
    out = {name: mean, f"{name}_se": standard_error}
    if per_probe.shape[1] >= 2:
        out[f"{name}_probe_se"] = plik.probe_standard_error(per_probe)
    return out


def points_nll_metrics(model: TrainedModel, points: Tensor, settings: LikelihoodSettings,
                       generator: torch.Generator) -> dict[str, float]:
    """nll and nll_se (nll_probe_se with 2+ probes) in nats per point of points (B, 2); `generator` draws
    the probes."""
    return with_errors("nll", -log_likelihoods(model, points, settings, generator))


def image_bpd_metrics(model: TrainedModel, test: Tensor, train: Tensor, *, levels: int, settings: LikelihoodSettings,
                      generator: torch.Generator) -> dict[str, float]:
    """Bits/dim of uint8 test images (B, *S) of `levels` levels, with errors and the baseline.

    bpd, bpd_se, bpd_probe_se (2+ probes) and bpd_baseline (per-pixel histograms of the uint8 `train`
    images (M, *S), scored on the same images at the same levels). `generator` draws the dequantisation
    noise, then the probes.
    """
    x = plik.dequantize(test, levels=levels, generator=generator)
    log_p = log_likelihoods(model, x, settings, generator)
    out = with_errors("bpd", plik.bits_per_dim(log_p, math.prod(x.shape[1:]), levels=levels))
    out["bpd_baseline"] = float(plik.histogram_bits_per_dim(train, test, levels=levels).mean())
    return out


def likelihood_metrics(model: TrainedModel, data_dir: str | os.PathLike, *, kind: str, levels: int | None,
                       images: int, settings: LikelihoodSettings, seed: int) -> dict[str, float]:
    """The likelihood metrics of the first `images` test rows of the prepared <data_dir>.

    Images (`kind` image, of `levels` levels): `image_bpd_metrics`, the baseline fitted on the train split.
    Points: `points_nll_metrics`. `seed` seeds the dequantisation, then the probes.
    """
    generator = torch.Generator().manual_seed(seed)
    test = pdata.load_split(data_dir, "test")[:images]
    if kind != "image":
        return points_nll_metrics(model, test, settings, generator)
    train = pdata.unit_to_images(pdata.load_split(data_dir, "train"))
    return image_bpd_metrics(model, pdata.unit_to_images(test), train, levels=levels, settings=settings,
                             generator=generator)


@dataclass(frozen=True)
class Scorers:
    """The scorer of the samples (against the chosen reference split) and the one of the floor (the test split)."""
    samples: pmetrics.FidScorer
    floor: pmetrics.FidScorer


def reference_metrics(scorers: Scorers, samples: Tensor, untrained: Tensor, *, data_dir: str | os.PathLike,
                      num_samples: int, seed: int, batch_size: int, device: torch.device | str) -> dict[str, float]:
    """fid_untrained, fid_floor, and (Inception with class logits) inception_score(_std) of `samples`.

    `untrained` (n, *S) are an untrained network's samples. The floor: `num_samples` training images of
    <data_dir> (drawn with `seed`) against the test split's statistics.
    """
    scorer = scorers.samples
    out = dict(fid_untrained=scorer.fid(scorer.to_images(untrained)),
               fid_floor=pmetrics.data_fid_floor(scorers.floor, data_dir, n=num_samples, seed=seed))
    score = scorer.sample_inception_score(samples, splits=min(10, num_samples), batch_size=batch_size, device=device)
    if score is not None:
        out.update(inception_score=score[0], inception_score_std=score[1])
    return out


__all__ = [
    "LikelihoodSettings",
    "NonFiniteMetricError",
    "SampleSets",
    "Scorers",
    "draw_sets",
    "expected_metrics",
    "image_bpd_metrics",
    "likelihood_keys",
    "likelihood_metrics",
    "likelihood_z_min",
    "log_likelihoods",
    "nonfinite_rows",
    "points_nll_metrics",
    "reference_metrics",
    "require_finite",
    "sample_seeds",
    "sampling_metrics",
    "with_errors",
]
