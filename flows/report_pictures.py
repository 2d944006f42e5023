"""The report stage's pictures: one Prefect task per picture, each a few calls of pfgm.latent, pfgm.viz
and pfgm.diagnostics with the report section's sampler setting (flows.report runs them; docs/REPORT.md
shows them).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import sampler_settings
from flows.params import ReportParams
from pfgm import data as pdata
from pfgm import diagnostics, latent, tables, viz
from pfgm.published import PublishedResult
from pfgm.sampling import TrainedModel, generate

#: Test images tried per image wanted for interpolation.png before giving up on the picture.
ENCODE_ATTEMPTS = 5
#: Data points drawn behind the 2D pictures (more only slows the drawing).
BACKGROUND_POINTS = 3000
#: Training rows perturbed (once each) for the training curve of norm_z.png.
NORM_TRAINING_ROWS = 2000


@dataclass(frozen=True)
class Inputs:
    """Everything the checks before the run read: data, model, metrics, sweep table, published rows."""
    kind: str
    name: str
    model: TrainedModel
    evaluation: dict[str, Any]
    sweep: list[dict[str, Any]]
    published: list[PublishedResult]
    table_data: str


def _background(data_dir: str, generator: torch.Generator) -> torch.Tensor:
    train = pdata.load_split(data_dir, "train")
    return train[torch.randperm(len(train), generator=generator)[:BACKGROUND_POINTS]]


@task(cache_policy=NO_CACHE)
def draw_samples(params: ReportParams, inputs: Inputs, data_dir: str, folder: Path) -> Path:
    """samples.png: num_samples samples with the report's solver (a scatter plot for 2D points)."""
    generator = torch.Generator().manual_seed(params.seed)
    x = generate(inputs.model, params.num_samples, sampler_settings(params), batch_size=params.num_samples,
                 generator=generator).x
    title = f"{tables.model_label(inputs.model)}, {params.method}"
    if inputs.kind == "points":
        return viz.save_points(x, folder / "samples.png", data=_background(data_dir, generator), title=title)
    return viz.save_image_grid(x, folder / "samples.png", title=title)


@task(cache_policy=NO_CACHE)
def draw_interpolation(params: ReportParams, inputs: Inputs, data_dir: str, folder: Path) -> dict[str, float]:
    """interpolation.png: rows [image A, decoded path..., image B]; returns its NFE and skipped images."""
    encoded = latent.encode_images(inputs.model, pdata.load_split(data_dir, "test"), sampler_settings(params),
                                   wanted=2 * params.interpolation_pairs, attempts=ENCODE_ATTEMPTS,
                                   generator=torch.Generator().manual_seed(params.seed))
    pairs, skipped, nfe = len(encoded.images) // 2, encoded.skipped, encoded.nfe
    if pairs == 0:
        get_run_logger().warning("no interpolation.png: the forward flow of %d test images diverged", skipped)
    elif pairs < params.interpolation_pairs:
        get_run_logger().warning("interpolation.png has %d of %d pairs: the forward flow of %d test images "
                                 "diverged", pairs, params.interpolation_pairs, skipped)
    if pairs > 0:
        path = latent.interpolate_encoded(inputs.model, encoded, sampler_settings(params),
                                          num_points=params.interpolation_points)
        viz.save_interpolation(encoded.images[:pairs], encoded.images[pairs: 2 * pairs], path.x, path.weights,
                               folder / "interpolation.png", skipped=skipped)
        nfe += path.nfe
    return dict(interpolation_skipped_images=float(skipped), interpolation_pairs=float(pairs),
                nfe_interpolation=float(nfe))


@task(cache_policy=NO_CACHE)
def draw_temperature(params: ReportParams, inputs: Inputs, folder: Path) -> int:
    """temperature.png: prior draws (rows) decoded at each temperature (columns); returns the NFE."""
    out = latent.decode_prior_with_temperature(inputs.model, sampler_settings(params), params.temperatures,
                                               num_latents=params.temperature_samples,
                                               generator=torch.Generator().manual_seed(params.seed + 1))
    viz.save_temperature(out.x, params.temperatures, folder / "temperature.png")  # other draws than samples.png
    return out.nfe


@task(cache_policy=NO_CACHE)
def draw_flow(params: ReportParams, inputs: Inputs, data_dir: str, folder: Path) -> int:
    """flow.gif, trajectories.png and samples.png (the landed particles) for 2D points; returns the NFE."""
    generator = torch.Generator().manual_seed(params.seed)
    path = latent.prior_trajectories(inputs.model, sampler_settings(params), num_points=params.animation_points,
                                     frames=params.animation_frames, generator=generator)
    data, x = _background(data_dir, generator), path.x.cpu()
    viz.save_flow_animation(x, path.z, data, folder / "flow.gif", title=inputs.name)
    viz.save_trajectories(x, path.z, data, folder / "trajectories.png", title=f"{inputs.name}: field lines")
    viz.save_points(x[-1], folder / "samples.png", data=data,
                    title=f"{tables.model_label(inputs.model)}, {params.method}")
    return path.nfe


@task(cache_policy=NO_CACHE)
def draw_nfe_vs_fid(inputs: Inputs, folder: Path) -> Path | None:
    """nfe_vs_fid.png from the sweep (the best FID's checkpoint only); None when no point has an FID."""
    plot = tables.sweep_plot(inputs.sweep, inputs.evaluation)
    if plot is None:
        return None
    return viz.save_nfe_vs_fid(plot.curves, folder / "nfe_vs_fid.png", diverged=plot.diverged, marks=plot.marks,
                               floor=plot.floor, title=f"{inputs.name}: FID against NFE by solver "
                                                       f"(checkpoint {tables.short_path(plot.checkpoint)})")


@task(cache_policy=NO_CACHE)
def draw_norm_curves(params: ReportParams, inputs: Inputs, data_dir: str, folder: Path,
                     perturbation: dict[str, Any] | None) -> dict[str, float]:
    """norm_z.png and norm_z.csv (images only): ||x|| against z or sigma while sampling num_samples
    samples with the report's solver and for perturbed training rows; returns each curve's spread
    (median std / mean over heights) as metrics."""
    generator = torch.Generator().manual_seed(params.seed + 2)  # other draws than the other pictures
    train = pdata.load_split(data_dir, "train")[:NORM_TRAINING_ROWS]
    curves = diagnostics.model_norm_curves(inputs.model, train, settings=sampler_settings(params),
                                           num_samples=params.num_samples, generator=generator,
                                           perturbation=perturbation)
    panels = {tables.model_label(inputs.model): curves}
    viz.save_norm_curves(panels, folder / "norm_z.png",
                         title=f"{inputs.name}: norm of the data part against the height (shaded: ±1 std)")
    diagnostics.write_norm_csv(panels, folder / "norm_z.csv")
    return {f"norm_spread_{'sampling' if name == 'sampling' else 'training'}": curve.spread()
            for name, curve in curves.items()}


def draw_pictures(params: ReportParams, inputs: Inputs, data_dir: str, folder: Path,
                  perturbation: dict[str, Any] | None = None) -> dict[str, float]:
    """Every picture the data's kind and the model's objective allow, written into `folder`; returns their
    metrics. `perturbation` (sigma, tau, restrict_M of the train section) draws norm_z.png's training curve."""
    logger = get_run_logger()
    metrics = draw_norm_curves(params, inputs, data_dir, folder, perturbation)
    if draw_nfe_vs_fid(inputs, folder) is None:
        logger.info("no finite FID in the sweep table (2D points, or every point diverged): no nfe_vs_fid.png")
    if inputs.model.objective != "pfgm":
        # The latent edits and field lines follow PFGM's ODE in z; PFGM++ samples with EDM's Heun in sigma.
        logger.warning("objective %s: only samples.png is drawn (no encoder for latent edits here)",
                       inputs.model.objective)
        draw_samples(params, inputs, data_dir, folder)
    elif inputs.kind == "points":
        metrics["nfe_flow"] = float(draw_flow(params, inputs, data_dir, folder))
    else:
        draw_samples(params, inputs, data_dir, folder)
        metrics |= draw_interpolation(params, inputs, data_dir, folder)
        metrics["nfe_temperature"] = float(draw_temperature(params, inputs, folder))
    return metrics
