"""Stage `evaluate`: sample the trained model, score it, log it to MLflow and register it.

    python -m flows.evaluate --params params.yaml

Reads `data` (data.out), `train` (train.out: the folder holding model.pt) and `evaluate`. The flow draws
num_samples samples per seed with the EMA weights and the section's sampler, scores each set by FID and
KID against evaluate.fid_reference (with the Inception Score; docs/FID.md), beside `fid_floor` (the data's
own) and `fid_untrained` (an untrained network of the same architecture), measures bits/dim of bpd_images
test images at the data's levels with their errors and a histogram baseline, or nll for 2D points
(docs/LIKELIHOOD.md), and logs it all in an MLflow run tagged with the train run. A non-finite metric
fails the run; otherwise it writes evaluate.out (flat JSON for `dvc metrics show`) and registers the
model (flows.registry), moving the `champion` alias if better. The metrics are pfgm.evaluation's.
Invalid settings fail before any MLflow run, with a message naming the key.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.checks import check_evaluate
from flows.cli import command_line
from flows.common import MODEL_FILE, check_model_fits, fid_scorer, resolve_features
from flows.params import EvaluateParams, ParamsError, load_sections, params_parser
from flows.registry import log_pyfunc, register
from flows.tracking import configure, evaluate_run_name, log_dataset, resolve_device
from pfgm import data as pdata
from pfgm import evaluation as peval
from pfgm import metrics as pmetrics
from pfgm.files import write_json
from pfgm.likelihood import EXACT_TRACE_MAX_DIMS
from pfgm.ode import ADAPTIVE_METHODS
from pfgm.sampling import (HEUN_STEPS, Generated, SamplerSettings, TrainedModel, generate, load_trained,
                           preview_settings, sampler_for, untrained_like)
from pfgm.viz import samples_figure


@dataclass(frozen=True)
class Plan:
    """What the checks before the run decided: the data, FID features, metrics, seeds and solves."""
    kind: str
    name: str
    features: str | None
    metric_keys: tuple[str, ...]
    levels: int | None
    seeds: list[int]
    sampler: SamplerSettings
    likelihood: peval.LikelihoodSettings


def check_likelihood(params: EvaluateParams, manifest: dict[str, Any]) -> None:
    """The likelihood settings suit the data size (ParamsError naming the key); the solver settings are
    checked with the params (flows.params)."""
    dims = math.prod(manifest["shape"])
    if params.bpd_images > 0 and params.hutchinson is None and dims > EXACT_TRACE_MAX_DIMS:
        raise ParamsError(f"evaluate.hutchinson: null takes the exact trace, {dims} vector-Jacobian products per "
                          f"network evaluation for {manifest['name']} (exact up to {EXACT_TRACE_MAX_DIMS} "
                          "dimensions); give a number of probes (e.g. 1) or set bpd_images to 0")


def plan_of(params: EvaluateParams, manifest: dict[str, Any], features: str | None) -> Plan:
    """The evaluate section unpacked into the settings the library takes, and the metrics it will produce."""
    seeds = peval.sample_seeds(params.seeds, params.seed)
    sampler = SamplerSettings(method=params.method, rtol=params.rtol, atol=params.atol, steps=params.steps,
                              schedule=params.schedule, rho=params.rho, z_min=params.z_min, z_exp=params.z_exp,
                              clip_prior=params.clip_prior)
    likelihood = peval.LikelihoodSettings(
        method=params.bpd_method, steps=params.bpd_steps, rtol=params.rtol, atol=params.atol,
        hutchinson=params.hutchinson, z_min=peval.likelihood_z_min(params.bpd_z_min, params.z_min),
        z_exp=params.bpd_z_exp, sigma_min=params.bpd_sigma_min, batch_size=params.batch_size)
    keys = peval.expected_metrics(manifest["kind"], features, seeds=seeds, fid_mode=params.fid_mode,
                                  bpd_images=params.bpd_images, hutchinson=params.hutchinson)
    return Plan(kind=manifest["kind"], name=manifest["name"], features=features, metric_keys=keys,
                levels=pdata.levels_of(manifest), seeds=seeds, sampler=sampler, likelihood=likelihood)


def check_inputs(params: EvaluateParams, data_dir: str, model_path: str) -> tuple[Plan, TrainedModel]:
    """Every check that can fail before the MLflow run: params, files, the checkpoint, Inception."""
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"train.out: no trained model at {model_path} (run the train stage first)")
    manifest = pdata.read_manifest(data_dir)
    check_likelihood(params, manifest)
    plan = plan_of(params, manifest, resolve_features(params, manifest))
    if plan.features == "inception":
        # Fails fast offline; with download_weights the file is fetched and verified here, before the run.
        pmetrics.ensure_weights(params.fid_mode, params.inception_path, download=params.download_weights)
    model = load_trained(model_path, device=resolve_device(params.device))
    check_model_fits(model, model_path, z_min=params.z_min, section="evaluate", manifest=manifest, data_dir=data_dir)
    z_max, z_min = model.hyperparameters.get("z_max"), plan.likelihood.z_min
    if params.bpd_images > 0 and model.objective == "pfgm" and z_min >= float(z_max):
        raise ParamsError(f"evaluate.bpd_z_min: must be below the z_max {z_max} of {model_path}, got {z_min}")
    if params.register_model and params.champion_metric not in plan.metric_keys:
        raise ParamsError(f"evaluate.champion_metric: {params.champion_metric!r} is not computed for this "
                          f"evaluation; choose one of {list(plan.metric_keys)}")
    return plan, model


# Tensors and networks travel between tasks in memory: NO_CACHE spares Prefect hashing them.
@task(cache_policy=NO_CACHE)
def draw_samples(model: TrainedModel, params: EvaluateParams, sampler: SamplerSettings, seed: int) -> Generated:
    """num_samples samples (num_samples, *S), the prior seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return generate(model, params.num_samples, sampler, batch_size=params.batch_size, generator=generator)


@task(cache_policy=NO_CACHE)
def build_scorers(features: str, data_dir: str, params: EvaluateParams) -> peval.Scorers:
    """Scorers for the samples and the floor; one feature network, each reference computed or read once."""
    scorer = fid_scorer(params, features, data_dir)
    floor = pmetrics.test_split_scorer(scorer, data_dir, cache_dir=params.stats_cache)
    return peval.Scorers(samples=scorer, floor=floor)


# Library calls taken as they are.
score_set = task(pmetrics.FidScorer.sample_scores, name="score_set", cache_policy=NO_CACHE)
reference_metrics = task(peval.reference_metrics, cache_policy=NO_CACHE)
likelihood_metrics = task(peval.likelihood_metrics, cache_policy=NO_CACHE)


def measure(model: TrainedModel, params: EvaluateParams, plan: Plan, scorers: peval.Scorers | None,
            data_dir: str) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Every metric as a float, the first sample set and the untrained network's samples."""
    sets = peval.draw_sets(lambda seed: draw_samples(model, params, plan.sampler, seed), plan.seeds,
                           score=None if scorers is None else lambda x: score_set(scorers.samples, x))
    untrained = draw_samples(untrained_like(model, seed=params.seed, device=model.device), params,
                             preview_settings(model.objective, z_min=params.z_min, clip_prior=params.clip_prior),
                             params.seed)
    metrics = peval.sampling_metrics(params.num_samples, sets.nfe, untrained.nfe, sets.seconds, len(plan.seeds))
    if scorers is not None:
        metrics |= pmetrics.per_seed_metrics(sets.scores)
        metrics |= reference_metrics(scorers, sets.first, untrained.x, data_dir=data_dir, seed=params.seed,
                                     num_samples=params.num_samples, batch_size=params.batch_size,
                                     device=resolve_device(params.device))
    if "bpd" in plan.metric_keys or "nll" in plan.metric_keys:
        metrics |= likelihood_metrics(model, data_dir, kind=plan.kind, levels=plan.levels, images=params.bpd_images,
                                      settings=plan.likelihood, seed=params.seed)
    return {k: float(v) for k, v in metrics.items()}, sets.first, untrained.x


def warn_about_data(plan: Plan, model: TrainedModel, manifest: dict[str, Any], data_dir: str) -> bool:
    """Log what goes unmeasured or is measured against other data; whether the model was trained on these data."""
    logger = get_run_logger()
    if plan.features is None:
        logger.info("%s is 2D points: no FID (no meaningful feature space); the likelihood is logged", plan.name)
    trained_on, data_sha256 = (model.metadata.get("data") or {}).get("sha256"), manifest["files"]["train.npy"]
    if "bpd" in plan.metric_keys and "levels" not in manifest:
        logger.warning("%s was prepared before data sets recorded their levels: bits/dim assume 8-bit data (256 "
                       "levels); prepare it again to measure them at its own quantisation", data_dir)
    if trained_on != data_sha256:
        logger.warning("the model was trained on data with sha256 %s, but %s holds %s: scores compare "
                       "against other data than the training data", trained_on, data_dir, data_sha256)
    return trained_on == data_sha256


def run_tags(model: TrainedModel, plan: Plan) -> dict[str, str]:
    """Stage, objective, data, and the train run (its child when this tracking store holds it)."""
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


def run_params(params: EvaluateParams, model: TrainedModel, plan: Plan, data_dir: str, model_path: str) -> dict:
    """The settings, the samplers as resolved for the model, its hyperparameters and the FID protocol."""
    untrained = preview_settings(model.objective, z_min=params.z_min, clip_prior=params.clip_prior)
    keys = ("rtol", "atol", "steps", "schedule", "rho", "z_min", "z_exp", "clip_prior", "num_samples", "batch_size",
            "seed", "hutchinson", "bpd_images", "bpd_method", "bpd_steps", "bpd_z_exp", "stats_cache",
            "download_weights", "inception_path")
    return dict(**{key: getattr(params, key) for key in keys}, method=sampler_for(model, plan.sampler).method,
                features=plan.features, bpd_levels=plan.levels, bpd_z_min=plan.likelihood.z_min,
                objective=model.objective, model_path=model_path, data_dir=data_dir,
                data_sha256=(model.metadata.get("data") or {}).get("sha256"),
                **{f"hp.{k}": v for k, v in model.hyperparameters.items()},
                untrained_method=sampler_for(model, untrained).method, untrained_steps=untrained.steps,
                **fid_protocol(params, plan))


def fid_protocol(params: EvaluateParams, plan: Plan) -> dict[str, Any]:
    """How the FIDs were measured, as params and in evaluate.out (the report's protocol text reads them).

    The Inception mode is None for the digits CNN, which has no Inception preprocessing.
    """
    if plan.features is None:
        return {}
    return dict(fid_reference=params.fid_reference, fid_mode=params.fid_mode if plan.features == "inception" else None,
                quantize=params.quantize, seeds=",".join(str(seed) for seed in plan.seeds))


def log_results(metrics: dict[str, float], first: torch.Tensor, untrained: torch.Tensor, kind: str) -> None:
    """The metrics, the count of non-finite samples and the two sample grids, in the active run."""
    mlflow.log_metrics(metrics)
    mlflow.log_metric("nonfinite_samples", float(peval.nonfinite_rows(first)))
    mlflow.log_figure(samples_figure(first, kind), "samples.png")
    mlflow.log_figure(samples_figure(untrained, kind), "samples_untrained.png")
    get_run_logger().info("metrics %s", json.dumps(metrics, sort_keys=True))


def register_version(model_uri: str, params: EvaluateParams, run_id: str, metrics: dict[str, float]) -> dict:
    """Register the logged model as a new version: model_version, and champion (1 if it took the alias)."""
    version, promoted = register(model_uri, params.model_name, run_id=run_id, metrics=metrics,
                                 champion_metric=params.champion_metric)
    get_run_logger().info("registered %s version %s%s", params.model_name, version.version,
                          " (champion)" if promoted else "")
    return dict(model_version=int(version.version), champion=int(promoted))


@flow(name="evaluate-model")
def evaluate(params: EvaluateParams, data_dir: str, model_path: str) -> dict[str, Any]:
    """Sample, score, log and register <model_path> against the prepared data at <data_dir>.

    Returns the flat metrics written to params.out, plus `run_id` and (when registered)
    `model_version` and `champion` (1 if this version holds the alias).
    """
    plan, model = check_inputs(params, data_dir, model_path)
    manifest = pdata.read_manifest(data_dir)
    data_matches = warn_about_data(plan, model, manifest, data_dir)
    method = sampler_for(model, plan.sampler).method
    run_name = evaluate_run_name(plan.name, model.objective, method, rtol=params.rtol, num_samples=params.num_samples,
                                 steps=None if method in ADAPTIVE_METHODS else params.steps or HEUN_STEPS)
    with mlflow.start_run(run_name=run_name, tags=run_tags(model, plan)) as run:
        log_dataset(data_dir, manifest, context="evaluation")
        mlflow.log_params(run_params(params, model, plan, data_dir, model_path))
        mlflow.set_tag("data_matches_model", str(data_matches).lower())
        scorers = build_scorers(plan.features, data_dir, params) if plan.features is not None else None
        if scorers is not None:
            mlflow.log_params(dict(fid_features=scorers.samples.extractor.label,
                                   fid_network_sha256=scorers.samples.extractor.network_sha256,
                                   fid_reference_key=scorers.samples.reference.key))
        metrics, first, untrained = measure(model, params, plan, scorers, data_dir)
        log_results(metrics, first, untrained, plan.kind)
        peval.require_finite(metrics)
        model_info = log_pyfunc(model_path) if params.register_model else None
    result: dict[str, Any] = {**metrics, "num_samples": params.num_samples, "method": method,
                              "features": plan.features, **fid_protocol(params, plan),
                              **({"bpd_levels": plan.levels} if "bpd" in plan.metric_keys else {}),
                              "run_id": run.info.run_id}
    if model_info is not None:
        result |= register_version(model_info.model_uri, params, run.info.run_id, metrics)
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
