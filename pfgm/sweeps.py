"""Sampler sweeps: a grid of solver settings, the samples and metrics of each point, the table of results.

A sweep scores one or more trained models under many sampler settings. Its unit is a `Point`: one
setting for one checkpoint, labelled for people ("RK45 tol=1e-4", "Euler 20 steps", "EDM Heun 18
steps"). The settings functions expand a solver's tolerances or step counts into settings on top of a
base `SamplerSettings` (z_min, z_exp, clip_prior shared by every point); `draw` samples one point from
a fixed seed, so every point starts from the same prior draw, and turns a solver that gives up into a
result (all-NaN samples) rather than an error; `point_metrics` measures what was drawn; the table
functions gather the rows (one dict per point) into the sweep's table, its markdown and its summary.
Running the points, in threads or processes, and recording them is the caller's business.

Table columns, in this order (more may follow at the end): COLUMNS, then EXTRA_COLUMNS (objective,
nonfinite_samples, kid, and schedule and rho, the fixed-step grid). `solver` is the label, `method` the
pfgm.ode method (or "edm_heun" for EDM's sampler); rtol = atol for adaptive methods, steps for
fixed-step ones, the other empty.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from pfgm.metrics import FidScorer
from pfgm.ode import ADAPTIVE_METHODS
from pfgm.sampling import Generated, SamplerSettings, SolveDiverged, TrainedModel, generate, sampler_for

#: The table's contract with its readers (the report flow): these columns, in this order, first.
COLUMNS = ("checkpoint", "solver", "method", "steps", "rtol", "atol", "nfe", "nfe_max", "seconds_per_sample",
           "fid", "run_id")
EXTRA_COLUMNS = ("objective", "nonfinite_samples", "kid", "schedule", "rho")
#: Display names of the solvers: euler and heun are the official steps in z, torchdiffeq's Euler and
#: Heun (heun2) step in ln z, dopri5 is RK45, edm_heun is EDM's Heun of PFGM++ models.
SOLVER_NAMES = {"dopri5": "RK45", "scipy_rk45": "scipy RK45", "euler": "Euler", "heun": "Heun",
                "dpmpp_2m": "DPM-Solver++(2M)", "euler_ln_z": "Euler (ln z)", "heun2": "Heun (ln z)",
                "edm_heun": "EDM Heun"}

#: (label, sampler) of each setting, in the order given.
Labelled = list[tuple[str, SamplerSettings]]


@dataclass(frozen=True)
class Point:
    """One setting of the grid for one checkpoint; `method` is the solver actually used."""
    checkpoint: str
    solver: str
    method: str
    sampler: SamplerSettings


@dataclass(frozen=True)
class Plan:
    """What the checks before any run decided: the data's kind, FID features, models and points."""
    kind: str
    name: str
    features: str | None
    models: dict[str, TrainedModel]
    points: tuple[Point, ...]
    paths: dict[str, str] = field(default_factory=dict)  # label -> checkpoint file (Dask workers load it)


def short_float(value: float) -> str:
    """1e-4 -> "1e-4", 2.5e-3 -> "2.5e-3" (labels read better without Python's "1e-04")."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def solver_label(method: str, *, steps: int | None = None, tolerance: float | None = None,
                 rho: float | None = None) -> str:
    """A human label: "RK45 tol=1e-4", "Euler 20 steps", "DPM-Solver++(2M) [rho 5] 6 steps" (a power grid)."""
    name = SOLVER_NAMES.get(method, method) + (f" [rho {rho:g}]" if rho is not None else "")
    return f"{name} tol={short_float(tolerance)}" if steps is None else f"{name} {steps} steps"


def checkpoint_labels(checkpoints: Sequence[str], labels: Sequence[str] | None = None) -> list[str]:
    """One distinct label per checkpoint: `labels`, or the checkpoints' paths when None."""
    labels = list(labels) if labels is not None else list(checkpoints)
    if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
        raise ValueError(f"need one distinct label per checkpoint, got {labels} for {checkpoints}")
    return labels


def solver_settings(method: str, base: SamplerSettings, *, tolerances: Sequence[float] | None = None,
                steps: Sequence[int] | None = None, schedule: str = "ln_z", rho: float | None = None) -> Labelled:
    """(label, sampler) of one PFGM solver on top of `base`: one per tolerance (adaptive methods, rtol =
    atol = the tolerance) or one per step count (fixed-step methods, on the grid `schedule` with `rho`)."""
    if method in ADAPTIVE_METHODS:
        return [(solver_label(method, tolerance=tol), replace(base, method=method, rtol=tol, atol=tol))
                for tol in tolerances or ()]
    return [(solver_label(method, steps=n, rho=rho), replace(base, method=method, steps=n, schedule=schedule, rho=rho))
            for n in steps or ()]


def edm_heun_settings(steps: Sequence[int], base: SamplerSettings) -> Labelled:
    """(label, sampler) of EDM's Heun sampler (PFGM++ models) with each step count, on top of `base`."""
    return [(solver_label("edm_heun", steps=n), replace(base, method="edm_heun", steps=n)) for n in steps]


def model_points(label: str, model: TrainedModel, settings: Labelled) -> list[Point]:
    """The points of one checkpoint: each of `settings`, with the method the model's sampler uses."""
    return [Point(checkpoint=label, solver=name, method=sampler_for(model, sampler).method, sampler=sampler)
            for name, sampler in settings]


def solver_setting(point: Point) -> dict[str, Any]:
    """steps (fixed-step methods) or rtol and atol (adaptive ones); the keys that do not apply are None."""
    sampler = point.sampler
    if point.method in ADAPTIVE_METHODS:
        return dict(steps=None, rtol=sampler.rtol, atol=sampler.atol)
    return dict(steps=sampler.steps, rtol=None, atol=None)


def grid_setting(point: Point) -> dict[str, Any]:
    """schedule and rho of a fixed-step point (None for adaptive methods and EDM's own sigma grid)."""
    if point.method in ADAPTIVE_METHODS or point.method == "edm_heun":
        return dict(schedule=None, rho=None)
    return dict(schedule=point.sampler.schedule, rho=point.sampler.rho)


def draw(model: TrainedModel, sampler: SamplerSettings, *, num_samples: int, batch_size: int,
         seed: int) -> tuple[Generated, str | None]:
    """num_samples samples (num_samples, *S) from the prior draw of `seed`, and why the solver gave up.

    A solver that gives up (a diverged point, not a failed sweep) yields all-NaN samples, no NFE, the
    seconds until it gave up and the error message; other errors propagate.
    """
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    try:
        return generate(model, num_samples, sampler, batch_size=batch_size, generator=generator), None
    except SolveDiverged as err:
        x = torch.full((num_samples, *model.shape), math.nan)
        return Generated(x=x, nfe=[], seconds=time.perf_counter() - start), str(err)


def point_metrics(generated: Generated, scorer: FidScorer | None, num_samples: int) -> dict[str, float]:
    """nfe (mean over batches), nfe_max, seconds_per_sample, nonfinite_samples and (images) fid and kid."""
    nonfinite = (~torch.isfinite(generated.x)).flatten(1).any(1).sum()
    metrics = dict(nfe=float(np.mean(generated.nfe)) if generated.nfe else math.nan,
                   nfe_max=float(max(generated.nfe, default=math.nan)),
                   seconds_per_sample=generated.seconds / num_samples, nonfinite_samples=float(nonfinite))
    if scorer is not None:
        metrics |= scorer.sample_scores(generated.x)
    return metrics


def table_row(point: Point, objective: str, metrics: dict[str, float], run_id: str) -> dict[str, Any]:
    """The point's row of the table: its setting, its metrics (fid and kid NaN when absent) and run id."""
    return dict(checkpoint=point.checkpoint, solver=point.solver, method=point.method, **solver_setting(point),
                nfe=metrics["nfe"], nfe_max=metrics["nfe_max"], seconds_per_sample=metrics["seconds_per_sample"],
                fid=metrics.get("fid", math.nan), run_id=run_id, objective=objective,
                nonfinite_samples=int(metrics["nonfinite_samples"]), kid=metrics.get("kid", math.nan),
                **grid_setting(point))


def sweep_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> the table: COLUMNS then EXTRA_COLUMNS; steps as nullable integers (empty when adaptive)."""
    table = pd.DataFrame(rows, columns=[*COLUMNS, *EXTRA_COLUMNS])
    table["steps"] = table["steps"].astype("Int64")
    table["nfe_max"] = table["nfe_max"].astype(float).round().astype("Int64")
    for column in ("rtol", "atol", "fid", "nfe", "seconds_per_sample", "kid", "rho"):
        table[column] = table[column].astype(float)
    return table


def markdown_table(table: pd.DataFrame) -> str:
    """The table as GitHub markdown (numbers to 4 significant digits; empty cells for missing values)."""
    def cell(value: Any) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.astype(object).itertuples(index=False)]
    return "\n".join(lines) + "\n"


def best_row(table: pd.DataFrame) -> pd.Series | None:
    """The row of the lowest finite FID (the first of equals), or None when no point has one."""
    scored = table[np.isfinite(table["fid"])]
    return scored.loc[scored["fid"].idxmin()] if len(scored) else None


def summarize(table: pd.DataFrame, run_id: str) -> dict[str, Any]:
    """Flat summary for `dvc metrics show`: counts, and the best finite FID with its setting."""
    summary: dict[str, Any] = dict(points=len(table), diverged_points=int((table["nonfinite_samples"] > 0).sum()),
                                   nfe_min=float(table["nfe"].min()), run_id=run_id)
    best = best_row(table)
    if best is not None:
        summary.update(fid_best=float(best["fid"]), fid_best_solver=best["solver"], fid_best_nfe=float(best["nfe"]),
                       fid_best_seconds_per_sample=float(best["seconds_per_sample"]),
                       fid_best_checkpoint=best["checkpoint"])
    return summary
