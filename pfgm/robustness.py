"""The backbone-robustness experiment's library side: the table, its metrics, the norm curves, the files.

The PFGM paper (arXiv 2209.11178) reports that with NCSNv2, a weaker network than DDPM++, the VP and
sub-VP ODEs of score-based models fail (FID over 90 on CIFAR-10) while PFGM still does well, and
explains it by the norm-z figure: a diffusion model's training points have norms tied to sigma, PFGM's
spread over z (pfgm.diagnostics). The experiment trains every backbone with every objective and samples
each at a few step counts; a cell is one (backbone, objective) model, labelled "<backbone> / <objective>"
(`cell_label`) in the sweep table it was scored in and in the norm figure. A table row is the dict

    backbone, objective, fid_<n>, nfe_<n> for each step count n   (NaN where the sweep has no point)

with the rows ordered as the cells are given (backbones outermost), so that the backbone and objective
names, and their order, are read from the rows. `weakness_ratios` divides each further backbone's FID by
the first backbone's under the same objective: the smaller, the less the objective suffers from it.
Everything here takes plain values; the experiment's configuration stays with its caller.
"""
from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pfgm import diagnostics, viz
from pfgm.diagnostics import NormCurve
from pfgm.sampling import SamplerSettings, load_trained

__all__ = ["FILES", "Report", "cell_label", "cell_metrics", "data_floor", "markdown", "metric_key", "norm_panels",
           "read_published", "slug", "table_rows", "training_note", "weakness_ratios",
           "write_report", "write_table_csv"]

#: What write_report writes.
FILES = ("table.md", "table.csv", "norm_z.png", "norm_z.csv")


def cell_label(backbone: str, objective: str) -> str:
    """"<backbone> / <objective>": a cell's checkpoint label in the sweep and its figure panel's title."""
    return f"{backbone} / {objective}"


def slug(text: str) -> str:
    """"PFGM++ D=128" -> "pfgm-pp-d-128": a folder name, a part of a metric name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("++", "-pp")).strip("-")


def metric_key(metric: str, backbone: str, objective: str, *setting: str) -> str:
    """"fid/ncsnv2-style-weak/pfgm-pp-d-128/18_steps": trackers accept only a few characters in a metric name."""
    return "/".join([metric, slug(backbone), slug(objective), *setting])


def table_rows(cells: Sequence[tuple[str, str]], sweep_table: Any, steps: Sequence[int]) -> list[dict[str, Any]]:
    """One row per (backbone, objective) cell: per step count its FID and mean NFE (NaN: diverged).

    sweep_table: a pandas DataFrame with columns checkpoint (the cell label), steps, fid, nfe.
    """
    rows = []
    for backbone, objective in cells:
        row: dict[str, Any] = dict(backbone=backbone, objective=objective)
        mine = sweep_table[sweep_table["checkpoint"] == cell_label(backbone, objective)]
        for n in steps:
            point = mine[mine["steps"] == n]
            row[f"fid_{n}"] = float(point["fid"].iloc[0]) if len(point) else math.nan
            row[f"nfe_{n}"] = float(point["nfe"].iloc[0]) if len(point) else math.nan
        rows.append(row)
    return rows


def _fid(value: float) -> str:
    return "diverged" if not math.isfinite(value) else f"{value:.2f}"


def weakness_ratios(rows: Sequence[dict[str, Any]], steps: int) -> list[str]:
    """"- PFGM: NCSNv2-style 12.3 / FieldConvNet 8.1 = 1.52" for each objective and each further backbone,
    at `steps` steps; [] with a single backbone."""
    backbones = list(dict.fromkeys(row["backbone"] for row in rows))
    objectives = list(dict.fromkeys(row["objective"] for row in rows))
    if len(backbones) < 2:
        return []
    by_cell = {(row["backbone"], row["objective"]): row[f"fid_{steps}"] for row in rows}
    reference = backbones[0]
    out = []
    for objective in objectives:
        base = by_cell[(reference, objective)]
        for backbone in backbones[1:]:
            value = by_cell[(backbone, objective)]
            ratio = value / base if math.isfinite(value) and math.isfinite(base) and base > 0 else math.nan
            out.append(f"- {objective}: {backbone} {_fid(value)} / {reference} {_fid(base)} = "
                       + ("n/a" if not math.isfinite(ratio) else f"{ratio:.2f}"))
    return out


def cell_metrics(rows: Sequence[dict[str, Any]], panels: Mapping[str, Mapping[str, NormCurve]],
                 steps: Sequence[int]) -> dict[str, float]:
    """Each cell's FID at each step count and the spread (NormCurve.spread) of each of its norm curves,
    by metric name: fid/<backbone>/<objective>/<n>_steps, norm_spread_{sampling,training}/<backbone>/<objective>."""
    metrics: dict[str, float] = {}
    for row in rows:
        backbone, objective = row["backbone"], row["objective"]
        metrics |= {metric_key("fid", backbone, objective, f"{n}_steps"): row[f"fid_{n}"] for n in steps}
        curves = panels[cell_label(backbone, objective)]
        metrics |= {metric_key("norm_spread_" + ("sampling" if name == "sampling" else "training"), backbone,
                               objective): curve.spread() for name, curve in curves.items()}
    return metrics


def data_floor(fid: Callable[[torch.Tensor], float], images: torch.Tensor, num_samples: int, seed: int) -> float:
    """The FID a perfect model would get: `fid` of num_samples of `images` (uint8 (B, C, H, W), the
    training split), drawn without replacement from `seed` and kept in their order."""
    rows = np.random.default_rng(seed).choice(len(images), size=min(num_samples, len(images)), replace=False)
    return float(fid(images[np.sort(rows)]))


def norm_panels(models: Mapping[str, str | os.PathLike], charges: torch.Tensor, *, settings: SamplerSettings,
                perturbations: Mapping[str, dict[str, Any]], num_samples: int, seed: int,
                device: torch.device | str) -> dict[str, dict[str, NormCurve]]:
    """The norm curves (diagnostics.model_norm_curves) of each checkpoint of `models` (label -> path), loaded
    one at a time, against the training rows `charges` (B, *S), each from a generator seeded with `seed`
    and with its own training perturbation (PFGM: sigma, tau, restrict_M)."""
    panels = {}
    for label, path in models.items():
        generator = torch.Generator().manual_seed(seed)
        panels[label] = diagnostics.model_norm_curves(load_trained(path, device=device), charges, settings=settings,
                                                      num_samples=num_samples, generator=generator,
                                                      perturbation=perturbations[label])
    return panels


def training_note(label: str, network: str, steps: int, batch_size: int, lr: float, *, objective: str,
                  small_batch: int | None) -> str:
    """"weak / PFGM: NCSNv2Small 3 steps, batch 64 (32 trained), lr 0.001": how a cell was trained (PFGM's
    loss trains small_batch rows of each batch, when set; PFGM++'s every row)."""
    trained = f" ({small_batch} trained)" if objective == "pfgm" and small_batch else ""
    return f"{label}: {network} {steps} steps, batch {batch_size}{trained}, lr {lr:g}"


@dataclass(frozen=True)
class Report:
    """What the experiment's files say. name: the data set; rows: table_rows; panels: norm_panels;
    steps: the step counts; floor: data_floor; num_samples and fid_reference: the sweep's FID protocol;
    training: a training_note per cell; published: the published reference CSV (read_published);
    seconds: the time of each phase (train, sweep, norms); columns: norm figure panels per row."""
    name: str
    rows: list[dict[str, Any]]
    panels: dict[str, dict[str, NormCurve]]
    steps: list[int]
    floor: float
    num_samples: int
    fid_reference: str
    training: list[str]
    published: str
    seconds: dict[str, float]
    columns: int


def markdown(report: Report, published: Sequence[dict[str, str]]) -> str:
    """table.md: the measured table (backbone x objective), the weak/strong ratios, the protocol, the
    training, the time of each phase and the `published` reference rows."""
    steps, seconds = report.steps, report.seconds
    lines = [f"# Backbone robustness on {report.name}", "",
             f"FID ({report.num_samples} samples against the {report.fid_reference} split; data floor "
             f"{report.floor:.2f}: training images against the same statistics) of every backbone trained with "
             f"every objective on the same data, budget and seed, sampled by second-order Heun on EDM's schedule "
             f"(rho = 7) in each model's own height variable. NFE = 2 steps - 1.", "",
             "| backbone | objective | " + " | ".join(f"FID, {n} steps (NFE {2 * n - 1})" for n in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    lines += [f"| {row['backbone']} | {row['objective']} | " + " | ".join(_fid(row[f'fid_{n}']) for n in steps)
              + " |" for row in report.rows]
    ratio_lines = weakness_ratios(report.rows, steps[-1])
    if ratio_lines:
        lines += ["", f"FID of each backbone over the first backbone's, same objective, {steps[-1]} steps "
                      "(the robustness claim: the smaller, the less the objective suffers from that backbone):",
                  "", *ratio_lines]
    lines += ["", "Training: " + "; ".join(report.training) + ".", "",
              f"Time on this machine: training {seconds['train'] / 60:.1f} min, sweep {seconds['sweep'] / 60:.1f} min, "
              f"norm-z curves {seconds['norms'] / 60:.1f} min.", "",
              "## Published reference (CIFAR-10, not comparable with these numbers)", ""]
    lines += [f"- {r['method']} with {r['backbone']} on {r['data']}: {r['metric']} {r['relation']} {r['value']} "
              f"({r['source']}; {r['note']})" for r in published]
    return "\n".join(lines) + "\n"


def write_report(folder: str | os.PathLike, report: Report) -> None:
    """FILES into `folder`: table.csv, table.md, the norm figure norm_z.png and its numbers norm_z.csv."""
    folder = Path(folder)
    write_table_csv(report.rows, folder / "table.csv")
    (folder / "table.md").write_text(markdown(report, read_published(report.published)))
    viz.save_norm_curves(report.panels, folder / "norm_z.png", columns=report.columns,
                         title=f"{report.name}: ||x|| against z (PFGM) or sigma (PFGM++), "
                               "sampling and perturbed training points (shaded: ±1 std)")
    diagnostics.write_norm_csv(report.panels, folder / "norm_z.csv")


def write_table_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """table.csv: the rows, the first row's keys as the header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_published(path: str | os.PathLike) -> list[dict[str, str]]:
    """The published reference (paper/backbone_robustness.csv): one dict per row, as text."""
    with open(Path(path), newline="") as f:
        return list(csv.DictReader(f))
