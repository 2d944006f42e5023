"""Stage `evaluate`: sample the trained model, score it, log it to MLflow and register it.

    python -m flows.evaluate --params params.yaml

Reads `data` (data.out: the prepared folder), `train` (train.out: the folder holding model.pt) and
`evaluate` (everything else). For the EMA weights of <train.out>/model.pt and the one sampler setting
of `evaluate`, the flow
  1. draws num_samples samples in batches (seeded, pfgm.sampling.generate), measuring the NFE of each
     solve and the seconds per sample (PFGM: its prior and pfgm.ode; PFGM++: its prior and EDM's Heun);
  2. scores them by FID and KID (pfgm.metrics.FidScorer) against the evaluate.fid_reference split's
     features (cached in evaluate.stats_cache): digits with the CNN saved beside the data, other images
     with clean-fid's Inception in evaluate.fid_mode read from evaluate.inception_path (downloaded and
     sha256-checked only with evaluate.download_weights), plus the Inception Score; samples become
     uint8 by evaluate.quantize. With evaluate.seeds, one set of num_samples per seed: fid_seed<k> and
     kid_seed<k> each, fid and kid their means, fid_std and fid_min. 2D points get no FID (no
     meaningful feature space; their likelihood is logged). docs/FID.md;
  3. logs beside the FID two references: `fid_floor`, the data's own (num_samples train images against
     the test split, whatever fid_reference), and `fid_untrained`, an untrained network of the same
     architecture (seeded fresh weights, same prior; PFGM: Euler 20 steps in ln z, PFGM++: Heun 10
     steps) whose non-finite outputs are mapped into the pixel range. A trained model should sit
     between the two;
  4. bits/dim of bpd_images test images dequantised at the data's own levels (manifest), with their
     standard error over images (`bpd_se`; `bpd_probe_se`, the probes' part, with 2 or more Hutchinson
     probes) and beside them `bpd_baseline`, independent per-pixel histograms of the training split
     scored on the same images (pfgm.likelihood, docs/LIKELIHOOD.md); nll and nll_se in nats per point
     for 2D points; PFGM++ models through their denoiser's ODE from bpd_sigma_min;
  5. logs params, metrics and sample grids in an MLflow run of its own (tagged with the train run),
     fails the run on any non-finite metric, and only then writes evaluate.out (flat JSON for
     `dvc metrics show`) and registers the model (flows.registry), moving the `champion` alias if better.
Invalid settings fail before any MLflow run, with a message naming the key.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.checks import check_evaluate
from flows.cli import command_line
from flows.common import MODEL_FILE, check_model_fits, fid_scorer, resolve_features
from flows.params import EvaluateParams, ParamsError, load_sections, params_parser
from flows.registry import log_pyfunc, register
from flows.tracking import configure, evaluate_run_name, log_dataset, resolve_device
from pfgm import data as pdata
from pfgm.files import write_json
from pfgm import metrics as pmetrics
from pfgm import likelihood as plik
from pfgm.networks.edm import as_denoiser
from pfgm.ode import ADAPTIVE_METHODS, METHODS
from pfgm.sampling import (HEUN_STEPS, Generated, SamplerSettings, SolveDiverged, TrainedModel, generate,
                           load_trained, preview_settings, sampler_for, untrained_like)

GRID_SAMPLES = 64
from pfgm.viz import samples_figure


class NonFiniteMetricError(RuntimeError):
    """A metric came out NaN or infinite (a diverged model or sampler); the run is marked FAILED."""


@dataclass(frozen=True)
class Plan:
    """What the checks before the run decided: the data's kind and the FID features to use."""
    kind: str
    name: str
    features: str | None
    metric_keys: tuple[str, ...]
    levels: int | None = None


def sample_seeds(params: EvaluateParams) -> list[int]:
    """The prior seeds of the scored sample sets: evaluate.seeds, or [evaluate.seed]."""
    return list(params.seeds) if params.seeds is not None else [params.seed]


def expected_metrics(params: EvaluateParams, kind: str, features: str | None, objective: str) -> tuple[str, ...]:
    """The numeric keys this evaluation will produce (for checking evaluate.champion_metric)."""
    keys = ["num_samples", "nfe", "nfe_max", "nfe_untrained", "seconds_per_sample"]
    if features is not None:
        keys += ["fid", "fid_std", "fid_min", "kid", "fid_untrained", "fid_floor"]
        keys += [f"{metric}_seed{seed}" for seed in sample_seeds(params) for metric in ("fid", "kid")]
    if features == "inception" and params.fid_mode != "legacy_pytorch":  # pytorch-fid's network has no classes
        keys += ["inception_score", "inception_score_std"]
    if params.bpd_images > 0:
        keys += likelihood_keys("bpd" if kind == "image" else "nll", params.hutchinson)
    return tuple(keys)


def likelihood_keys(name: str, hutchinson: int | None) -> list[str]:
    """bpd (images) or nll (points), its standard error, the probes' part of it (2+ probes), the baseline."""
    keys = [name, f"{name}_se"]
    if hutchinson is not None and hutchinson >= 2:
        keys.append(f"{name}_probe_se")
    return keys + (["bpd_baseline"] if name == "bpd" else [])


def likelihood_z_min(params: EvaluateParams) -> float:
    """The plane whose density bits/dim measure: bpd_z_min, or the sampler's z_min."""
    return params.bpd_z_min if params.bpd_z_min is not None else params.z_min


def check_likelihood(params: EvaluateParams, manifest: dict[str, Any]) -> None:
    """The likelihood settings suit the data size (ParamsError naming the key); the solver settings are
    checked with the params (flows.params)."""
    dims = math.prod(manifest["shape"])
    if params.bpd_images > 0 and params.hutchinson is None and dims > plik.EXACT_TRACE_MAX_DIMS:
        raise ParamsError(f"evaluate.hutchinson: null takes the exact trace, {dims} vector-Jacobian products per "
                          f"network evaluation for {manifest['name']} (exact up to {plik.EXACT_TRACE_MAX_DIMS} "
                          "dimensions); give a number of probes (e.g. 1) or set bpd_images to 0")


def check_inputs(params: EvaluateParams, data_dir: str, model_path: str) -> tuple[Plan, TrainedModel]:
    """Every check that can fail before the MLflow run: params, files, the checkpoint, Inception."""
    if params.method not in METHODS:
        raise ParamsError(f"evaluate.method: must be one of {', '.join(METHODS)}; got {params.method!r}")
    if params.method not in ADAPTIVE_METHODS and params.steps is None:
        raise ParamsError(f"evaluate.steps: method {params.method!r} is fixed-step and needs steps")
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"train.out: no trained model at {model_path} (run the train stage first)")
    manifest = pdata.read_manifest(data_dir)
    check_likelihood(params, manifest)
    features = resolve_features(params, manifest)
    if features == "inception":
        # Fails fast offline; with download_weights the file is fetched and verified here, before the run.
        pmetrics.ensure_weights(params.fid_mode, params.inception_path, download=params.download_weights)
    model = load_trained(model_path, device=resolve_device(params.device))
    check_model_fits(model, model_path, z_min=params.z_min, section="evaluate", manifest=manifest, data_dir=data_dir)
    z_max = model.hyperparameters.get("z_max")
    if params.bpd_images > 0 and model.objective == "pfgm" and likelihood_z_min(params) >= float(z_max):
        raise ParamsError(f"evaluate.bpd_z_min: must be below the z_max {z_max} of {model_path}, "
                          f"got {likelihood_z_min(params)}")
    keys = expected_metrics(params, manifest["kind"], features, model.objective)
    if params.register_model and params.champion_metric not in keys:
        raise ParamsError(f"evaluate.champion_metric: {params.champion_metric!r} is not computed for this "
                          f"evaluation; choose one of {list(keys)}")
    return Plan(kind=manifest["kind"], name=manifest["name"], features=features, metric_keys=keys,
                levels=pdata.levels_of(manifest)), model


def sampler_of(params: EvaluateParams) -> SamplerSettings:
    """The evaluate section's sampler setting."""
    return SamplerSettings(method=params.method, rtol=params.rtol, atol=params.atol, steps=params.steps,
                           schedule=params.schedule, rho=params.rho, z_min=params.z_min, z_exp=params.z_exp,
                           clip_prior=params.clip_prior)


def untrained_sampler(params: EvaluateParams, objective: str) -> SamplerSettings:
    """The fixed-step setting of the untrained reference (same prior and heights as the trained one),
    which terminates whatever its field."""
    return preview_settings(objective, z_min=params.z_min, clip_prior=params.clip_prior)


# Tensors and networks travel between tasks in memory: NO_CACHE spares Prefect hashing them.
@task(cache_policy=NO_CACHE)
def draw_samples(model: TrainedModel, params: EvaluateParams, sampler: SamplerSettings, seed: int) -> Generated:
    """num_samples samples (num_samples, *S), the prior seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return generate(model, params.num_samples, sampler, batch_size=params.batch_size, generator=generator)


@dataclass(frozen=True)
class Scorers:
    """The scorer of the samples (fid_reference) and the one of the floor (always the test split)."""
    samples: pmetrics.FidScorer
    floor: pmetrics.FidScorer


@task(cache_policy=NO_CACHE)
def build_scorers(features: str, data_dir: str, params: EvaluateParams) -> Scorers:
    """Scorers for the samples and the floor; one feature network, each reference computed or read once."""
    scorer = fid_scorer(params, features, data_dir)
    return Scorers(samples=scorer, floor=pmetrics.test_split_scorer(scorer, data_dir, cache_dir=params.stats_cache))


@task(cache_policy=NO_CACHE)
def score_set(scorer: pmetrics.FidScorer, samples: torch.Tensor) -> dict[str, float]:
    """fid and kid of one sample set (NaN for a set holding any non-finite value)."""
    return scorer.sample_scores(samples)


@task(cache_policy=NO_CACHE)
def reference_metrics(scorers: Scorers, samples: torch.Tensor, untrained: torch.Tensor, *, data_dir: str,
                      params: EvaluateParams) -> dict[str, float]:
    """fid_untrained, fid_floor, and (Inception with class logits) inception_score of the first sample set.

    The floor: num_samples training images (seeded draw) against the test split's statistics.
    """
    scorer = scorers.samples
    out = dict(fid_untrained=scorer.fid(scorer.to_images(untrained)),
               fid_floor=pmetrics.data_fid_floor(scorers.floor, data_dir, n=params.num_samples, seed=params.seed))
    score = scorer.sample_inception_score(samples, splits=min(10, params.num_samples), batch_size=params.batch_size,
                                          device=resolve_device(params.device))
    if score is not None:
        out.update(inception_score=score[0], inception_score_std=score[1])
    return out


def log_likelihoods(model: TrainedModel, x: torch.Tensor, *, params: EvaluateParams, sampler: SamplerSettings,
                    generator: torch.Generator) -> torch.Tensor:
    """Log densities (nats) of points x (B, *S), one per probe: float64 (B, K) on the CPU.

    PFGM: on the plane z = bpd_z_min (the field-line ODE); PFGM++: at sigma = bpd_sigma_min (the
    denoiser's ODE). Batches whose flow leaves the finite numbers on the way to the prior get NaN
    rows: the likelihood is undefined there, and the evaluation then fails as a whole
    (require_finite) with every metric logged.
    """
    device = next(model.net.parameters()).device
    hp = model.hyperparameters
    solver = dict(method=params.bpd_method, rtol=sampler.rtol, atol=sampler.atol, steps=params.bpd_steps,
                  hutchinson=params.hutchinson, generator=generator)
    rows = []
    for batch in torch.split(x, params.batch_size):
        try:
            if model.objective == "pfgmpp":
                rows.append(plik.pfgmpp_log_likelihood_per_probe(
                    as_denoiser(model.net), batch.to(device), D=hp["D"], sigma_min=params.bpd_sigma_min,
                    **solver).cpu())
            else:
                rows.append(plik.log_likelihood_per_probe(
                    model.net, batch.to(device), z_min=likelihood_z_min(params), z_max=float(hp["z_max"]),
                    gamma=float(hp.get("gamma", 5.0)), z_exp=params.bpd_z_exp, **solver).cpu())
        except SolveDiverged:
            rows.append(torch.full((len(batch), params.hutchinson or 1), math.nan))
    return torch.cat(rows).double()


def _with_errors(name: str, per_probe: torch.Tensor) -> dict[str, float]:
    """<name> (the mean over points), <name>_se (over points), <name>_probe_se (2+ probes) of (B, K) values."""
    mean, standard_error = plik.mean_and_standard_error(per_probe.mean(dim=1))
    out = {name: mean, f"{name}_se": standard_error}
    if per_probe.shape[1] >= 2:
        out[f"{name}_probe_se"] = plik.probe_standard_error(per_probe)
    return out


@task(cache_policy=NO_CACHE)
def likelihood_metrics(model: TrainedModel, *, kind: str, levels: int | None, data_dir: str,
                       params: EvaluateParams, sampler: SamplerSettings) -> dict[str, float]:
    """Bits/dim of the first bpd_images test images at the data's `levels`, with errors and the baseline.

    Images: bpd, bpd_se, bpd_probe_se (2+ probes) and bpd_baseline (per-pixel histograms of the
    training split, scored on the same images at the same levels). Points: nll and nll_se in nats.
    `evaluate.seed` seeds the dequantisation, then the probes.
    """
    generator = torch.Generator().manual_seed(params.seed)
    test = pdata.load_split(data_dir, "test")[: params.bpd_images]
    if kind != "image":
        return _with_errors("nll", -log_likelihoods(model, test, params=params, sampler=sampler, generator=generator))
    images = pdata.unit_to_images(test)
    x = plik.dequantize(images, levels=levels, generator=generator)
    log_p = log_likelihoods(model, x, params=params, sampler=sampler, generator=generator)
    out = _with_errors("bpd", plik.bits_per_dim(log_p, math.prod(x.shape[1:]), levels=levels))
    train = pdata.unit_to_images(pdata.load_split(data_dir, "train"))
    out["bpd_baseline"] = float(plik.histogram_bits_per_dim(train, images, levels=levels).mean())
    return out


def _log_figure(x: torch.Tensor, kind: str, name: str) -> None:
    mlflow.log_figure(samples_figure(x, kind), name)


def require_finite(metrics: dict[str, Any]) -> None:
    """NonFiniteMetricError naming every numeric metric that is NaN or infinite."""
    bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if bad:
        raise NonFiniteMetricError(f"non-finite metrics {bad}: the model or the sampler diverged; not registered")


def _run_tags(model: TrainedModel, plan: Plan) -> dict[str, str]:
    tags = {"stage": "evaluate", "objective": model.objective, "data": plan.name}
    train_run = model.metadata.get("mlflow_run_id")
    if train_run:
        tags["train_run_id"] = str(train_run)
        try:
            mlflow.get_run(train_run)
            tags["mlflow.parentRunId"] = str(train_run)
        except MlflowException:
            pass  # trained against another tracking store: keep the id as a plain tag
    return tags


def _run_params(params: EvaluateParams, model: TrainedModel, plan: Plan, data_dir: str, model_path: str) -> dict:
    data = model.metadata.get("data") or {}
    untrained = untrained_sampler(params, model.objective)
    return dict(method=sampler_for(model, sampler_of(params)).method, rtol=params.rtol, atol=params.atol,
                steps=params.steps, schedule=params.schedule, rho=params.rho, z_min=params.z_min,
                z_exp=params.z_exp, clip_prior=params.clip_prior, num_samples=params.num_samples, batch_size=params.batch_size, seed=params.seed,
                features=plan.features, hutchinson=params.hutchinson, bpd_images=params.bpd_images,
                bpd_levels=plan.levels,
                bpd_method=params.bpd_method, bpd_steps=params.bpd_steps, bpd_z_min=likelihood_z_min(params),
                bpd_z_exp=params.bpd_z_exp,
                objective=model.objective, model_path=model_path, data_dir=data_dir,
                data_sha256=data.get("sha256"), **{f"hp.{k}": v for k, v in model.hyperparameters.items()},
                untrained_method=sampler_for(model, untrained).method, untrained_steps=untrained.steps,
                **fid_protocol(params, plan.features), stats_cache=params.stats_cache,
                download_weights=params.download_weights, inception_path=params.inception_path)


def fid_protocol(params: EvaluateParams, features: str | None) -> dict[str, Any]:
    """How the FIDs were measured, as params and in evaluate.out (the report's protocol text reads them).

    The Inception mode is None for the digits CNN, which has no Inception preprocessing.
    """
    if features is None:
        return {}
    return dict(fid_reference=params.fid_reference, fid_mode=params.fid_mode if features == "inception" else None,
                quantize=params.quantize, seeds=",".join(str(seed) for seed in sample_seeds(params)))


@dataclass(frozen=True)
class SampleSets:
    """The first set's samples (pictures, IS), every set's NFE and seconds, and each set's scores."""
    first: torch.Tensor
    nfe: list[int]
    seconds: float
    scores: dict[int, dict[str, float]]


def draw_and_score(model: TrainedModel, params: EvaluateParams, sampler: SamplerSettings,
                   scorer: pmetrics.FidScorer | None) -> SampleSets:
    """One set of num_samples per seed, each scored as soon as drawn (only the first set is kept)."""
    first, nfe, seconds, scores = None, [], 0.0, {}
    for seed in sample_seeds(params):
        generated = draw_samples(model, params, sampler, seed)
        nfe += generated.nfe
        seconds += generated.seconds
        if scorer is not None:
            scores[seed] = score_set(scorer, generated.x)
        first = generated.x if first is None else first
    return SampleSets(first=first, nfe=nfe, seconds=seconds, scores=scores)


@flow(name="evaluate-model")
def evaluate(params: EvaluateParams, data_dir: str, model_path: str) -> dict[str, Any]:
    """Sample, score, log and register <model_path> against the prepared data at <data_dir>.

    Returns the flat metrics written to params.out, plus `run_id` and (when registered)
    `model_version` and `champion` (1 if this version holds the alias).
    """
    logger = get_run_logger()
    plan, model = check_inputs(params, data_dir, model_path)
    if plan.features is None:
        logger.info("%s is 2D points: no FID (no meaningful feature space); the likelihood is logged", plan.name)
    trained_on = (model.metadata.get("data") or {}).get("sha256")
    manifest = pdata.read_manifest(data_dir)
    data_sha256 = manifest["files"]["train.npy"]
    if "bpd" in plan.metric_keys and "levels" not in manifest:
        logger.warning("%s was prepared before data sets recorded their levels: bits/dim assume 8-bit data (256 "
                       "levels); prepare it again to measure them at its own quantisation", data_dir)
    if trained_on != data_sha256:
        logger.warning("the model was trained on data with sha256 %s, but %s holds %s: scores compare "
                       "against other data than the training data", trained_on, data_dir, data_sha256)
    sampler = sampler_of(params)
    method = sampler_for(model, sampler).method
    run_name = evaluate_run_name(plan.name, model.objective, method, rtol=params.rtol, num_samples=params.num_samples,
                                 steps=None if method in ADAPTIVE_METHODS else params.steps or HEUN_STEPS)
    with mlflow.start_run(run_name=run_name, tags=_run_tags(model, plan)) as run:
        log_dataset(data_dir, manifest, context="evaluation")
        mlflow.log_params(_run_params(params, model, plan, data_dir, model_path))
        mlflow.set_tag("data_matches_model", str(trained_on == data_sha256).lower())
        scorers = build_scorers(plan.features, data_dir, params) if plan.features is not None else None
        if scorers is not None:
            mlflow.log_params(dict(fid_features=scorers.samples.extractor.label,
                                   fid_network_sha256=scorers.samples.extractor.network_sha256,
                                   fid_reference_key=scorers.samples.reference.key))
        sets = draw_and_score(model, params, sampler, scorers.samples if scorers is not None else None)
        reference = draw_samples(untrained_like(model, seed=params.seed, device=model.device),
                                 params, untrained_sampler(params, model.objective), params.seed)
        total = params.num_samples * len(sample_seeds(params))
        metrics: dict[str, Any] = dict(num_samples=params.num_samples, nfe=float(np.mean(sets.nfe)),
                                       nfe_max=max(sets.nfe), nfe_untrained=float(np.mean(reference.nfe)),
                                       seconds_per_sample=sets.seconds / total)
        if scorers is not None:
            metrics |= pmetrics.per_seed_metrics(sets.scores)
            metrics |= reference_metrics(scorers, sets.first, reference.x, data_dir=data_dir, params=params)
        if "bpd" in plan.metric_keys or "nll" in plan.metric_keys:
            metrics |= likelihood_metrics(model, kind=plan.kind, levels=plan.levels, data_dir=data_dir,
                                          params=params, sampler=sampler)
        metrics = {k: float(v) for k, v in metrics.items()}
        mlflow.log_metrics(metrics)
        mlflow.log_metric("nonfinite_samples", float((~torch.isfinite(sets.first)).flatten(1).any(1).sum()))
        _log_figure(sets.first, plan.kind, "samples.png")
        _log_figure(reference.x, plan.kind, "samples_untrained.png")
        logger.info("metrics %s", json.dumps(metrics, sort_keys=True))
        require_finite(metrics)
        model_info = log_pyfunc(model_path) if params.register_model else None
    result: dict[str, Any] = {**metrics, "num_samples": params.num_samples, "method": method,
                              "features": plan.features, **fid_protocol(params, plan.features),
                              **({"bpd_levels": plan.levels} if "bpd" in plan.metric_keys else {}),
                              "run_id": run.info.run_id}
    if model_info is not None:
        version, promoted = register(model_info.model_uri, params.model_name, run_id=run.info.run_id,
                                     metrics=metrics, champion_metric=params.champion_metric)
        result.update(model_version=int(version.version), champion=int(promoted))
        logger.info("registered %s version %s%s", params.model_name, version.version,
                    " (champion)" if promoted else "")
    write_json(params.out, result)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: read the data, train and evaluate sections, run the flow, print the metrics."""
    args = params_parser(__doc__).parse_args(argv)
    data, train, params = load_sections(args.params, "data", "train", "evaluate")
    check_evaluate(data, train, params)  # before MLflow and Prefect start: bad input is one line
    configure()
    result = evaluate(params, data_dir=data.out, model_path=str(Path(train.out) / MODEL_FILE))
    print(json.dumps(result, sort_keys=True))
    return result


if __name__ == "__main__":
    command_line(main)
