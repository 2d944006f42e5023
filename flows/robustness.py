"""Experiment `robustness`: does PFGM stand a weak backbone better than diffusion? (issue 15)

    python -m flows.robustness --params experiments/robustness-digits.yaml

The PFGM paper's NCSNv2 comparison at a small scale (the claim and the table: pfgm.robustness). From an
experiment file (sections `data`, `train`, `sweep`, `robustness`) it
  1. trains every backbone of robustness.backbones with every objective of robustness.objectives (PFGM;
     PFGM++ at a finite D; D = .inf, EDM's diffusion) through the train flow, each in its own folder
     <robustness.models>/<network>-<objective> and MLflow run, with the train section's budget and seed
     plus the objective's `train` keys; a finished cell is not trained again, an interrupted one resumes;
  2. scores every model in one sweep under one sampler protocol (protocol_sweep): FID against
     sweep.fid_reference, sweep.num_samples samples from sweep.seed; and the data's FID floor;
  3. records the norm-z (norm-sigma) curves of every model: robustness.norm_samples samples with the
     largest step count, and the training rows perturbed as in training (pfgm.diagnostics).
Writes table.md, table.csv, norm_z.png and norm_z.csv into robustness.out and logs them, with the FIDs,
spreads and the time of each phase, to one MLflow run "robustness" (tag stage=robustness). Invalid
settings (any cell's train section included) fail before anything is trained.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger
from pydantic import ValidationError

from flows.cli import command_line
from flows.common import MODEL_FILE, fid_scorer, resolve_features, torch_threads
from flows.params import (DataParams, ParamsError, RobustnessParams, SolverGrid, SweepParams, TrainParams,
                          load_experiment_section, load_sections, params_parser)
from flows.sweep import run_sweep
from flows.tracking import configure, resolve_device
from flows.train_runs import setup as train_setup
from flows.train import train as train_flow
from pfgm import data as pdata
from pfgm import pfgmpp
from pfgm import robustness as experiment
from pfgm.files import staged_folder
from pfgm.robustness import FILES, Report, cell_label, slug
from pfgm.sampling import SamplerSettings


@dataclass(frozen=True)
class Cell:
    """One model of the experiment: a backbone trained with an objective."""
    backbone: str
    objective: str
    label: str  # pfgm.robustness.cell_label: the sweep's checkpoint label and the figure's panel title
    params: TrainParams

    @property
    def model(self) -> str:
        return str(Path(self.params.out) / MODEL_FILE)


def cell_params(train: TrainParams, robustness: RobustnessParams, b: int, o: int) -> TrainParams:
    """The train section of cell (backbone b, objective o); ParamsError names the experiment key at fault."""
    backbone, setting = robustness.backbones[b], robustness.objectives[o]
    kwargs = dict(backbone.network_kwargs)
    if setting.objective in backbone.embedding:
        kwargs["embedding"] = backbone.embedding[setting.objective]
    out = Path(robustness.models) / f"{backbone.network}-{slug(setting.name)}"
    values = {**train.model_dump(), **setting.train, "network": backbone.network, "network_kwargs": kwargs,
              "objective": setting.objective, "D": setting.D, "out": str(out)}
    try:
        return TrainParams.model_validate(values)
    except ValidationError as err:
        where = f"robustness.objectives.{o}.train / robustness.backbones.{b}"
        raise ParamsError(f"invalid params for cell {backbone.name!r} x {setting.name!r} ({where}): "
                          + "; ".join(f"train.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())) from None


def cells(train: TrainParams, robustness: RobustnessParams) -> list[Cell]:
    """Every backbone x objective, backbones outermost (the table's row order)."""
    return [Cell(backbone=backbone.name, objective=setting.name, label=cell_label(backbone.name, setting.name),
                 params=cell_params(train, robustness, b, o))
            for b, backbone in enumerate(robustness.backbones) for o, setting in enumerate(robustness.objectives)]


def protocol_sweep(sweep: SweepParams, robustness: RobustnessParams) -> SweepParams:
    """The sweep section with the experiment's sampler protocol: second-order Heun with each of robustness.steps
    steps (NFE 2 steps - 1) on EDM's schedule (rho = 7) in the model's own height: PFGM's official improved
    Euler in z (z_max to sweep.z_min), PFGM++'s EDM Heun in sigma (80 to 0.002, then 0)."""
    heun = SolverGrid(method="heun", steps=list(robustness.steps), schedule="power", rho=pfgmpp.RHO)
    return sweep.model_copy(update=dict(solvers=[heun], heun_steps=list(robustness.steps)))


def check_inputs(data: DataParams, train: TrainParams, sweep: SweepParams,
                 robustness: RobustnessParams) -> tuple[list[Cell], dict[str, Any]]:
    """Every check before any training: the prepared data, each cell's train section against it, the
    published reference, the FID features. Returns the cells and the data's manifest."""
    manifest = pdata.read_manifest(data.out)
    if not Path(robustness.published).is_file():
        raise FileNotFoundError(f"{robustness.published} not found (robustness.published): it ships with the "
                                "repository as paper/backbone_robustness.csv")
    if resolve_features(sweep, manifest, section="sweep") is None:
        raise ParamsError(f"invalid params: data.name: {manifest['name']} holds 2D points, which have no FID: "
                          "the robustness table needs images")
    charges = pdata.load_split(data.out, "train")
    found = cells(train, robustness)
    for cell in found:
        train_setup(cell.params, charges, manifest)  # builds the network and loss: any ParamsError now
    return found, manifest


@flow(name="robustness")
def robustness(data: DataParams, train: TrainParams, sweep: SweepParams, params: RobustnessParams) -> dict[str, Any]:
    """Train, score and chart every backbone x objective (module docstring). Returns dict(out, files, rows,
    metrics, run_id, seconds)."""
    logger = get_run_logger()
    found, manifest = check_inputs(data, train, sweep, params)
    with torch_threads(params.threads):
        result = run_experiment(found, manifest, data, train, protocol_sweep(sweep, params), params)
    logger.info("robustness table written to %s:\n%s", result["out"], (Path(result["out"]) / "table.md").read_text())
    return result


def measure(found: list[Cell], manifest: dict[str, Any], data: DataParams, protocol: SweepParams,
            params: RobustnessParams) -> tuple[Any, float, dict[str, Any], dict[str, float]]:
    """Train every cell, sweep them, the data's FID floor, the norm curves (sampled with the protocol's
    largest step count). Returns the sweep's result, the floor, the panels and each phase's seconds."""
    logger = get_run_logger()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    for cell in found:
        logger.info("training %s into %s", cell.label, cell.params.out)
        train_flow(cell.params, data)
    seconds["train"], start = time.perf_counter() - start, time.perf_counter()
    result = run_sweep(protocol, data_dir=data.out, checkpoints=[cell.model for cell in found],
                       labels=[cell.label for cell in found], tags={"experiment": "robustness"})
    scorer = fid_scorer(protocol, resolve_features(protocol, manifest, section="sweep"), data.out)
    charges = pdata.load_split(data.out, "train")
    floor = experiment.data_floor(scorer.fid, pdata.unit_to_images(charges), protocol.num_samples, protocol.seed)
    seconds["sweep"], start = time.perf_counter() - start, time.perf_counter()
    settings = SamplerSettings(method="heun", steps=max(params.steps), schedule="power", rho=pfgmpp.RHO,
                               z_min=protocol.z_min, z_exp=protocol.z_exp, clip_prior=protocol.clip_prior)
    perturbations = {cell.label: dict(sigma=cell.params.sigma, tau=cell.params.tau,
                                      restrict_M=cell.params.restrict_M) for cell in found}
    panels = experiment.norm_panels({cell.label: cell.model for cell in found}, charges, settings=settings,
                                    perturbations=perturbations, num_samples=params.norm_samples, seed=params.seed,
                                    device=resolve_device(protocol.device))
    seconds["norms"] = time.perf_counter() - start
    return result, floor, panels, seconds


def run_experiment(found: list[Cell], manifest: dict[str, Any], data: DataParams, train: TrainParams,
                   protocol: SweepParams, params: RobustnessParams) -> dict[str, Any]:
    """Train, sweep, norm curves, table and figure: the body of the flow, once its inputs are checked.
    The files replace those of robustness.out only once all are written and logged."""
    result, floor, panels, seconds = measure(found, manifest, data, protocol, params)
    rows = experiment.table_rows([(cell.backbone, cell.objective) for cell in found], result.table,
                                 list(params.steps))
    metrics = {"fid_floor": floor, **{f"seconds_{k}": v for k, v in seconds.items()},
               **experiment.cell_metrics(rows, panels, params.steps)}
    training = [experiment.training_note(cell.label, cell.params.network, cell.params.steps, cell.params.batch_size,
                                         cell.params.lr, objective=cell.params.objective,
                                         small_batch=cell.params.small_batch) for cell in found]
    report = Report(name=manifest["name"], rows=rows, panels=panels, steps=list(params.steps), floor=floor,
                    num_samples=protocol.num_samples, fid_reference=protocol.fid_reference, training=training,
                    published=params.published, seconds=seconds, columns=len(params.objectives))
    with staged_folder(params.out, FILES) as staging:
        with mlflow.start_run(run_name="robustness", tags={"stage": "robustness", "data": report.name}) as run:
            mlflow.log_params({"cells": ", ".join(cell.label for cell in found), "steps": str(list(params.steps)),
                               "sweep_run_id": result.run_id, "train_steps": str(train.steps),
                               "num_samples": str(protocol.num_samples), "norm_samples": str(params.norm_samples)})
            experiment.write_report(staging, report)
            mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
            mlflow.log_artifacts(str(staging))
    return dict(out=str(Path(params.out)), files=list(FILES), rows=rows, metrics=metrics, run_id=run.info.run_id,
                seconds=seconds)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: the experiment file's data, train, sweep and robustness sections; run; print the summary."""
    args = params_parser(__doc__).parse_args(argv)
    data, train, sweep = load_sections(args.params, "data", "train", "sweep")
    params = load_experiment_section(args.params, "robustness", RobustnessParams)
    configure()
    result = robustness(data, train, sweep, params)
    print(json.dumps({k: result[k] for k in ("out", "files", "run_id", "seconds")}, sort_keys=True))
    return result


if __name__ == "__main__":
    command_line(main)
