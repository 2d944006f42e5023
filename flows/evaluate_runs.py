"""The evaluate stage's bookkeeping: its section unpacked into what the library takes (Plan), and what its
MLflow run records (tags, params, the FID protocol, results, the registered version). flows.evaluate runs it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from prefect import get_run_logger

from flows.common import sampler_settings
from flows.params import EvaluateParams
from flows.registry import register
from pfgm import data as pdata
from pfgm import evaluation as peval
from pfgm.sampling import SamplerSettings, TrainedModel, preview_settings, sampler_for
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


def plan_of(params: EvaluateParams, manifest: dict[str, Any], features: str | None) -> Plan:
    """The evaluate section unpacked into the settings the library takes, and the metrics it will produce."""
    seeds = peval.sample_seeds(params.seeds, params.seed)
    sampler = sampler_settings(params)
    likelihood = peval.LikelihoodSettings(
        method=params.bpd_method, steps=params.bpd_steps, rtol=params.rtol, atol=params.atol,
        hutchinson=params.hutchinson, z_min=peval.likelihood_z_min(params.bpd_z_min, params.z_min),
        z_exp=params.bpd_z_exp, sigma_min=params.bpd_sigma_min, batch_size=params.batch_size)
    keys = peval.expected_metrics(manifest["kind"], features, seeds=seeds, fid_mode=params.fid_mode,
                                  bpd_images=params.bpd_images, hutchinson=params.hutchinson)
    return Plan(kind=manifest["kind"], name=manifest["name"], features=features, metric_keys=keys,
                levels=pdata.levels_of(manifest), seeds=seeds, sampler=sampler, likelihood=likelihood)


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
