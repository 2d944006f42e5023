"""Experiment `robustness`: does PFGM stand a weak backbone better than diffusion? (issue 15)

    python -m flows.robustness --params experiments/robustness-digits.yaml

The PFGM paper (arXiv 2209.11178) reports that with NCSNv2, a weaker network than DDPM++, the VP and
sub-VP ODEs of score-based models fail (FID over 90 on CIFAR-10) while PFGM still does well, and
explains it by the norm-z figure: a diffusion model's training points have norms tied to sigma, PFGM's
spread over z. This flow re-runs the comparison at a small scale. From an experiment file (sections
`data`, `train`, `sweep`, `robustness`) it
  1. trains every backbone of robustness.backbones with every objective of robustness.objectives
     (PFGM; PFGM++ at a finite D; D = .inf, EDM's diffusion) through the train flow, each in its own
     folder <robustness.models>/<network>-<objective> and MLflow run, all with the train section's
     budget and seed (plus each objective's `train` keys: PFGM trains 128 of 512 charges a step,
     PFGM++ every row of a 128-row batch). A finished cell is not trained again; an interrupted one
     resumes;
  2. scores every model in one sweep under one sampler protocol: second-order Heun with each of
     robustness.steps steps (NFE 2 steps - 1) on EDM's schedule (rho = 7) in the model's own height:
     PFGM's official improved Euler in z (z_max to sweep.z_min), PFGM++'s EDM Heun in sigma (80 to
     0.002, then 0); FID against sweep.fid_reference, sweep.num_samples samples from sweep.seed;
  3. records the norm-z (norm-sigma) curves of every model: robustness.norm_samples samples with the
     largest step count, and the training rows perturbed as in training (pfgm.diagnostics).
Writes into robustness.out: table.md and table.csv (objective x backbone -> FID and NFE, the data's
FID floor, the published reference of robustness.published), norm_z.png and norm_z.csv; logs them with
the FIDs, spreads and the time of each phase to one MLflow run "robustness" (tag stage=robustness).
Invalid settings (any cell's train section included) fail before anything is trained.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
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
from pfgm import diagnostics, pfgmpp, viz
from pfgm.sampling import SamplerSettings, load_trained

FILES = ("table.md", "table.csv", "norm_z.png", "norm_z.csv")


@dataclass(frozen=True)
class Cell:
    """One model of the experiment: a backbone trained with an objective."""
    backbone: str
    objective: str
    label: str  # "<backbone> / <objective>": the sweep's checkpoint label and the figure's panel title
    params: TrainParams

    @property
    def model(self) -> str:
        return str(Path(self.params.out) / MODEL_FILE)


def slug(text: str) -> str:
    """"PFGM++ D=128" -> "pfgm-pp-d-128": a folder name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("++", "-pp")).strip("-")


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
    return [Cell(backbone=backbone.name, objective=setting.name, label=f"{backbone.name} / {setting.name}",
                 params=cell_params(train, robustness, b, o))
            for b, backbone in enumerate(robustness.backbones) for o, setting in enumerate(robustness.objectives)]


def protocol_sweep(sweep: SweepParams, robustness: RobustnessParams) -> SweepParams:
    """The sweep section with the experiment's sampler protocol: Heun at robustness.steps, EDM's rho."""
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


# --- the table -------------------------------------------------------------------------------------

def read_published(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table_rows(found: list[Cell], sweep_table, steps: list[int]) -> list[dict[str, Any]]:
    """One row per cell: backbone, objective, and per step count its FID and mean NFE (NaN: diverged)."""
    rows = []
    for cell in found:
        row: dict[str, Any] = dict(backbone=cell.backbone, objective=cell.objective)
        mine = sweep_table[sweep_table["checkpoint"] == cell.label]
        for n in steps:
            point = mine[mine["steps"] == n]
            row[f"fid_{n}"] = float(point["fid"].iloc[0]) if len(point) else math.nan
            row[f"nfe_{n}"] = float(point["nfe"].iloc[0]) if len(point) else math.nan
        rows.append(row)
    return rows


def _fid(value: float) -> str:
    return "diverged" if not math.isfinite(value) else f"{value:.2f}"


def markdown(rows: list[dict[str, Any]], found: list[Cell], robustness: RobustnessParams, *, name: str,
             floor: float, sweep: SweepParams, published: list[dict[str, str]], seconds: dict[str, float]) -> str:
    """table.md: the measured table (objective x backbone), the weak/strong ratio, the protocol, the reference."""
    steps = list(robustness.steps)
    nfe = {n: 2 * n - 1 for n in steps}
    lines = [f"# Backbone robustness on {name}", "",
             f"FID ({sweep.num_samples} samples against the {sweep.fid_reference} split; data floor "
             f"{floor:.2f}: training images against the same statistics) of every backbone trained with every "
             f"objective on the same data, budget and seed, sampled by second-order Heun on EDM's schedule "
             f"(rho = 7) in each model's own height variable. NFE = 2 steps - 1.", "",
             "| backbone | objective | " + " | ".join(f"FID, {n} steps (NFE {nfe[n]})" for n in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for row in rows:
        lines.append(f"| {row['backbone']} | {row['objective']} | "
                     + " | ".join(_fid(row[f'fid_{n}']) for n in steps) + " |")
    ratio_lines = weakness_ratios(rows, robustness, steps[-1])
    if ratio_lines:
        lines += ["", f"FID of each backbone over the first backbone's, same objective, {steps[-1]} steps "
                      "(the robustness claim: the smaller, the less the objective suffers from that backbone):",
                  "", *ratio_lines]
    lines += ["", "Training: " + "; ".join(
        f"{cell.label}: {cell.params.network} {cell.params.steps} steps, batch {cell.params.batch_size}"
        + (f" ({cell.params.small_batch} trained)" if cell.params.objective == "pfgm" and cell.params.small_batch
           else "") + f", lr {cell.params.lr:g}" for cell in found) + ".", "",
              f"Time on this machine: training {seconds['train'] / 60:.1f} min, sweep {seconds['sweep'] / 60:.1f} min, "
              f"norm-z curves {seconds['norms'] / 60:.1f} min.", "",
              "## Published reference (CIFAR-10, not comparable with these numbers)", ""]
    lines += [f"- {r['method']} with {r['backbone']} on {r['data']}: {r['metric']} {r['relation']} {r['value']} "
              f"({r['source']}; {r['note']})" for r in published]
    return "\n".join(lines) + "\n"


def weakness_ratios(rows: list[dict[str, Any]], robustness: RobustnessParams, steps: int) -> list[str]:
    """"- PFGM: NCSNv2-style 12.3 / FieldConvNet 8.1 = 1.52" for each objective and each further backbone."""
    if len(robustness.backbones) < 2:
        return []
    by_cell = {(row["backbone"], row["objective"]): row[f"fid_{steps}"] for row in rows}
    reference = robustness.backbones[0].name
    out = []
    for setting in robustness.objectives:
        base = by_cell[(reference, setting.name)]
        for backbone in robustness.backbones[1:]:
            value = by_cell[(backbone.name, setting.name)]
            ratio = value / base if math.isfinite(value) and math.isfinite(base) and base > 0 else math.nan
            out.append(f"- {setting.name}: {backbone.name} {_fid(value)} / {reference} {_fid(base)} = "
                       + ("n/a" if not math.isfinite(ratio) else f"{ratio:.2f}"))
    return out


def write_table_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def data_floor(sweep: SweepParams, features: str, data_dir: str) -> float:
    """FID of sweep.num_samples training images (seeded draw) against the sweep's reference statistics."""
    scorer = fid_scorer(sweep, features, data_dir)
    train = pdata.unit_to_images(pdata.load_split(data_dir, "train"))
    rows = np.random.default_rng(sweep.seed).choice(len(train), size=min(sweep.num_samples, len(train)), replace=False)
    return float(scorer.fid(train[np.sort(rows)]))


# --- the flow --------------------------------------------------------------------------------------

def norm_panels(found: list[Cell], robustness: RobustnessParams, sweep: SweepParams,
                data_dir: str) -> dict[str, dict[str, Any]]:
    """The norm-z curves of every model, by cell label (sampling with the protocol's largest step count)."""
    train = pdata.load_split(data_dir, "train")
    device = resolve_device(sweep.device)
    settings = SamplerSettings(method="heun", steps=max(robustness.steps), schedule="power", rho=pfgmpp.RHO,
                               z_min=sweep.z_min, z_exp=sweep.z_exp, clip_prior=sweep.clip_prior)
    panels = {}
    for cell in found:
        generator = torch.Generator().manual_seed(robustness.seed)
        perturbation = dict(sigma=cell.params.sigma, tau=cell.params.tau, restrict_M=cell.params.restrict_M)
        panels[cell.label] = diagnostics.model_norm_curves(load_trained(cell.model, device=device), train,
                                                           settings=settings, num_samples=robustness.norm_samples,
                                                           generator=generator, perturbation=perturbation)
    return panels


def metric_key(metric: str, cell: Cell, *setting: str) -> str:
    """"fid/ncsnv2-style-weak/pfgm-pp-d-128/18_steps": MLflow keys allow only a few characters."""
    return "/".join([metric, slug(cell.backbone), slug(cell.objective), *setting])


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


def run_experiment(found: list[Cell], manifest: dict[str, Any], data: DataParams, train: TrainParams,
                   protocol: SweepParams, params: RobustnessParams) -> dict[str, Any]:
    """Train, sweep, norm curves, table and figure: the body of the flow, once its inputs are checked."""
    logger = get_run_logger()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    for cell in found:
        logger.info("training %s into %s", cell.label, cell.params.out)
        train_flow(cell.params, data)
    seconds["train"] = time.perf_counter() - start

    start = time.perf_counter()
    result = run_sweep(protocol, data_dir=data.out, checkpoints=[cell.model for cell in found],
                       labels=[cell.label for cell in found], tags={"experiment": "robustness"})
    floor = data_floor(protocol, resolve_features(protocol, manifest, section="sweep"), data.out)
    seconds["sweep"] = time.perf_counter() - start

    start = time.perf_counter()
    panels = norm_panels(found, params, protocol, data.out)
    seconds["norms"] = time.perf_counter() - start

    rows = table_rows(found, result.table, list(params.steps))
    metrics = {"fid_floor": floor, **{f"seconds_{k}": v for k, v in seconds.items()}}
    for cell, row in zip(found, rows):
        metrics |= {metric_key("fid", cell, f"{n}_steps"): row[f"fid_{n}"] for n in params.steps}
        metrics |= {metric_key("norm_spread_" + ("sampling" if name == "sampling" else "training"), cell): curve.spread()
                    for name, curve in panels[cell.label].items()}
    out = Path(params.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with mlflow.start_run(run_name="robustness", tags={"stage": "robustness", "data": manifest["name"]}) as run:
            mlflow.log_params({"cells": ", ".join(cell.label for cell in found), "steps": str(list(params.steps)),
                               "sweep_run_id": result.run_id, "train_steps": str(train.steps),
                               "num_samples": str(protocol.num_samples), "norm_samples": str(params.norm_samples)})
            write_table_csv(rows, staging / "table.csv")
            (staging / "table.md").write_text(markdown(rows, found, params, name=manifest["name"], floor=floor,
                                                       sweep=protocol, published=read_published(params.published),
                                                       seconds=seconds))
            viz.save_norm_curves(panels, staging / "norm_z.png", columns=len(params.objectives),
                                 title=f"{manifest['name']}: ||x|| against z (PFGM) or sigma (PFGM++), "
                                       "sampling and perturbed training points (shaded: ±1 std)")
            diagnostics.write_norm_csv(panels, staging / "norm_z.csv")
            mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
            mlflow.log_artifacts(str(staging))
        out.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dict(out=str(out), files=list(FILES), rows=rows, metrics=metrics, run_id=run.info.run_id, seconds=seconds)


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
