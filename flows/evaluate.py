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
from pathlib import Path
from typing import Any

import mlflow
import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.checks import check_evaluate
from flows.cli import command_line
from flows.common import MODEL_FILE, check_model_fits, fid_scorer, resolve_features
from flows.params import EvaluateParams, ParamsError, load_sections, params_parser
from flows.evaluate_runs import (Plan, fid_protocol, log_results, plan_of, register_version, run_params, run_tags,
                                  warn_about_data)
from flows.registry import log_pyfunc
from flows.tracking import configure, evaluate_run_name, log_dataset, resolve_device
from pfgm import data as pdata
from pfgm import evaluation as peval
from pfgm import metrics as pmetrics
from pfgm.files import write_json
from pfgm.likelihood import EXACT_TRACE_MAX_DIMS
from pfgm.ode import ADAPTIVE_METHODS
from pfgm.sampling import (HEUN_STEPS, Generated, SamplerSettings, TrainedModel, generate, load_trained,
                           preview_settings, sampler_for, untrained_like)


def check_likelihood(params: EvaluateParams, manifest: dict[str, Any]) -> None:
    """The likelihood settings suit the data size (ParamsError naming the key); the solver settings are
    checked with the params (flows.params)."""
    dims = math.prod(manifest["shape"])
    if params.bpd_images > 0 and params.hutchinson is None and dims > EXACT_TRACE_MAX_DIMS:
        raise ParamsError(f"evaluate.hutchinson: null takes the exact trace, {dims} vector-Jacobian products per "
                          f"network evaluation for {manifest['name']} (exact up to {EXACT_TRACE_MAX_DIMS} "
                          "dimensions); give a number of probes (e.g. 1) or set bpd_images to 0")


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
