"""Stage `report`: our numbers beside the published ones, and the pictures of the paper.

    python -m flows.report --params params.yaml

Reads `data` (data.out), `train` (train.out: <train.out>/model.pt), `evaluate` (evaluate.out: the
metrics JSON), `sweep` (sweep.table: the sweep's CSV; sweep.num_samples, which its FIDs used) and
`report` (everything else). Writes into report.out (docs/REPORT.md explains every file):
  table.csv, table.md   this run's numbers (the evaluate run; the best FID of the sweep with its solver
                        and NFE) above the published rows (paper/published.csv) of the same data set,
                        or, when nothing is published on it (digits, the toys), the CIFAR-10 rows marked
                        as a reference only. A published row is never called a match: its protocol
                        (samples, features, solver) is spelled out beside ours.
  nfe_vs_fid.png        FID against NFE from the sweep, one line per solver family (images only);
  samples.png           a grid of samples (a scatter plot for 2D points);
  interpolation.png     pairs of test images encoded to the plane z_max, their latents interpolated
                        (pfgm.latent.slerp) and decoded; the originals at both ends of each row;
  temperature.png       prior draws decoded with the latent scaled by each temperature;
  flow.gif, trajectories.png   2D points only: particles following the field from z_max to the data;
  norm_z.png, norm_z.csv   the paper's norm-z figure (norm-sigma for PFGM++): mean and std of ||x|| against
                        the height while sampling num_samples with the report's solver, and for perturbed
                        training rows (pfgm.diagnostics); metrics norm_spread_sampling, norm_spread_training.
Everything is logged as artifacts of one MLflow run (run name "report", tag stage=report) that ends
FINISHED, or FAILED on any error. Invalid settings and missing inputs fail before any run.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.checks import check_report
from flows.cli import command_line
from flows.common import MODEL_FILE, check_model_fits, torch_threads
from flows.params import ReportParams, load_sections, params_parser
from flows.tracking import configure, resolve_device
from pfgm import data as pdata
from pfgm import diagnostics, viz
from pfgm.latent import decode_with_temperature, flow_heights, interpolate_latents, record_trajectories
from pfgm.ode import encode
from pfgm.published import PublishedResult, for_data, load_published
from pfgm.sampling import SamplerSettings, SolveDiverged, TrainedModel, generate, load_trained, sampler_for

SWEEP_COLUMNS = ("checkpoint", "solver", "method", "steps", "rtol", "atol", "nfe", "nfe_max",
                 "seconds_per_sample", "fid", "run_id")
#: Every file the report may write; a file of this list that a run does not produce is removed.
REPORT_FILES = ("table.csv", "table.md", "nfe_vs_fid.png", "samples.png", "interpolation.png", "temperature.png",
                "norm_z.png", "norm_z.csv",
                "flow.gif", "trajectories.png")
#: Published rows shown when nothing is published on the run's own data set.
REFERENCE_DATA = "cifar10"
FEATURE_NAMES = {"digits": "digits CNN (prepare stage)", "inception": "clean-fid Inception"}
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


@dataclass(frozen=True)
class TableRow:
    """One line of table.csv: this run's or a published model's numbers and how they were obtained."""
    origin: str
    data: str
    model: str
    fid: float | None = None
    inception_score: float | None = None
    bpd: float | None = None
    bpd_se: float | None = None
    bpd_baseline: float | None = None
    nll: float | None = None
    nfe: float | None = None
    nfe_approximate: bool = False
    solver: str = ""
    num_samples: int | None = None
    features: str = ""
    source: str = ""
    comparison: str = ""
    protocol: str = ""


@dataclass
class Report:
    """What the run produced: the table rows and the metrics to log (the pictures are files)."""
    rows: list[TableRow]
    metrics: dict[str, float] = field(default_factory=dict)


# --- inputs ----------------------------------------------------------------------------------------

def _require(path: str | os.PathLike, key: str, remedy: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {remedy} ({key})")
    return path


def _number(text: str) -> float:
    """A CSV cell as a float; empty (pandas writes NaN and NA so) is NaN."""
    return math.nan if text.strip() in ("", "nan", "NaN", "<NA>") else float(text)


def read_sweep_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The sweep CSV as dicts, numbers parsed; ValueError naming missing columns or bad cells."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in SWEEP_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: the sweep table lacks columns {missing}; expected {list(SWEEP_COLUMNS)}")
        rows = []
        for row in reader:
            try:
                numbers = {k: _number(row[k]) for k in ("steps", "rtol", "atol", "nfe", "nfe_max",
                                                         "seconds_per_sample", "fid")}
            except ValueError as err:
                raise ValueError(f"{path} line {reader.line_num}: {err}") from None
            rows.append({**row, **numbers})
    return rows


def resolve_table_data(params: ReportParams, name: str, published: list[PublishedResult]) -> str:
    """The data set whose published rows the table shows (report.table_data, auto: ours or CIFAR-10)."""
    if params.table_data != "auto":
        return params.table_data
    return name if for_data(published, name) else REFERENCE_DATA


def check_inputs(params: ReportParams, data_dir: str, model_path: str, evaluate_path: str,
                 sweep_path: str) -> Inputs:
    """Every check that can fail before the MLflow run: files, their contents, the model, the heights."""
    manifest = pdata.read_manifest(data_dir)
    _require(model_path, "train.out", "run the train stage first")
    evaluation = json.loads(_require(evaluate_path, "evaluate.out", "run the evaluate stage first").read_text())
    sweep = read_sweep_table(_require(sweep_path, "sweep.table", "run the sweep stage first"))
    published = load_published(_require(params.published, "report.published",
                                        "the published numbers ship with the repository as paper/published.csv"))
    model = load_trained(model_path, device=resolve_device(params.device))
    check_model_fits(model, model_path, z_min=params.z_min, section="report", manifest=manifest, data_dir=data_dir)
    return Inputs(kind=manifest["kind"], name=manifest["name"], model=model, evaluation=evaluation, sweep=sweep,
                  published=published, table_data=resolve_table_data(params, manifest["name"], published))


# --- the table -------------------------------------------------------------------------------------

def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def model_label(model: TrainedModel) -> str:
    """"PFGM FieldMLP", "PFGM++ D=128 DDPMpp": what this run trained."""
    objective = "PFGM" if model.objective == "pfgm" else f"PFGM++ D={model.hyperparameters.get('D')}"
    return f"{objective} {model.network_class}"


def best_sweep_row(sweep: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The sweep row with the lowest finite FID, or None (2D points, or every point diverged)."""
    scored = [row for row in sweep if math.isfinite(row["fid"])]
    return min(scored, key=lambda row: row["fid"]) if scored else None


def features_text(protocol: dict[str, Any]) -> str:
    """"clean-fid Inception (legacy_tensorflow) vs train split", "digits CNN (prepare stage) vs test split".

    `protocol` holds features, fid_mode, fid_reference (evaluate.out or the sweep section); a file
    written before fid_reference existed compared with the test split.
    """
    name = FEATURE_NAMES.get(protocol.get("features") or "", "")
    if not name:
        return ""
    # The digits CNN has no Inception preprocessing: the mode applies to Inception only.
    mode = f" ({protocol['fid_mode']})" if protocol.get("fid_mode") and protocol["features"] == "inception" else ""
    return f"{name}{mode} vs {protocol.get('fid_reference') or 'test'} split"


def fid_protocol_text(protocol: dict[str, Any], num_samples: int | None, *, sets: str) -> str:
    """The protocol column of one of our FID rows: samples, sets, features, reference, quantisation."""
    features = features_text(protocol)
    if not features:
        return ""
    return (f"FID, KID: {num_samples} samples per set, {sets}; {features} statistics; samples to uint8 by "
            f"{protocol.get('quantize') or 'round'} (docs/FID.md)")


def _sets_text(ev: dict[str, Any]) -> str:
    seeds = [s for s in str(ev.get("seeds") or "").split(",") if s]
    if len(seeds) <= 1:
        return f"one set (seed {seeds[0]})" if seeds else "one set"
    return (f"{len(seeds)} sets (seeds {', '.join(seeds)}): FID is their mean, fid_min "
            f"{ev.get('fid_min', float('nan')):.2f}, fid_std {ev.get('fid_std', float('nan')):.2f}")


def our_rows(inputs: Inputs, evaluate_path: str, sweep_path: str, sweep_num_samples: int | None,
             sweep_protocol: dict[str, Any] | None = None) -> list[TableRow]:
    """The evaluate run's numbers and the sweep's best FID (scored on sweep_num_samples samples), as rows.

    `sweep_protocol` (the sweep section's features, fid_mode, fid_reference, quantize) describes the
    sweep's FIDs; None: as the evaluate run's.
    """
    ev, label = inputs.evaluation, model_label(inputs.model)
    rows = [TableRow(origin="this run: evaluate", data=inputs.name, model=label, fid=_finite(ev.get("fid")),
                     inception_score=_finite(ev.get("inception_score")), bpd=_finite(ev.get("bpd")),
                     bpd_se=_finite(ev.get("bpd_se")), bpd_baseline=_finite(ev.get("bpd_baseline")),
                     nll=_finite(ev.get("nll")), nfe=_finite(ev.get("nfe")), solver=str(ev.get("method", "")),
                     num_samples=ev.get("num_samples"), features=features_text(ev), source=str(evaluate_path),
                     protocol=fid_protocol_text(ev, ev.get("num_samples"), sets=_sets_text(ev)))]
    best = best_sweep_row(inputs.sweep)
    if best is not None:
        sweep = {**ev, **(sweep_protocol or {})}
        rows.append(TableRow(origin="this run: sweep best", data=inputs.name, model=label, fid=best["fid"],
                             nfe=_finite(best["nfe"]), solver=best["solver"], num_samples=sweep_num_samples,
                             features=features_text(sweep),
                             source=f"{sweep_path} (lowest FID of {len(inputs.sweep)} settings; "
                                    f"checkpoint {best['checkpoint']})",
                             protocol=fid_protocol_text(sweep, sweep_num_samples,
                                                        sets="one set (sweep.seed) per setting")))
    return rows


#: Published feature networks and reference statistics, and what our features text says for the same
#: protocol (clean-fid's legacy_tensorflow mode reproduces TF Inception's preprocessing; docs/FID.md).
SAME_FEATURES = {"TF Inception": "Inception (legacy_tensorflow)"}
SAME_REFERENCE = {"training set": "vs train split"}


def comparison_note(published: PublishedResult, name: str, ours: TableRow) -> str:
    """How a published number relates to ours; never a claim that the numbers match. The protocol is
    called the same only when sample count, feature network and reference statistics are all stated
    and all agree with ours."""
    if published.data_name != name:
        return f"reference only: published on {published.data}, this run is on {name}"
    differences, agreements = [], []
    if published.num_samples is None:
        differences.append("sample count not stated")
    elif published.num_samples != ours.num_samples:
        differences.append(f"{published.num_samples} samples vs our {ours.num_samples}")
    else:
        agreements.append(f"{published.num_samples} samples")
    features = ours.features or ""
    if published.features and SAME_FEATURES.get(published.features, "\0") in features:
        agreements.append(f"{published.features} = our {features.split(' vs ')[0]}")
    else:
        differences.append(f"{published.features or 'features not stated'} vs our {ours.features or 'features'}")
    if not published.reference_statistics:
        differences += [] if differences else ["reference statistics not stated"]
    elif SAME_REFERENCE.get(published.reference_statistics, "\0") in features:
        agreements.append(f"{published.reference_statistics} statistics")
    else:
        differences.append(f"reference statistics: {published.reference_statistics}")
    if published.seeds:
        # The statistic the published number is: PFGM++/EDM report the best (min) of three 50k sets.
        statistic = "our fid_min" if "best" in published.seeds else "our fid"
        seeds = [f"published FID is the {published.seeds} seed sets: compare with {statistic}"]
    else:
        seeds = []
    if differences:
        return "same data set, different protocol: " + "; ".join(differences + seeds)
    return "same data set, same protocol (" + ", ".join(agreements) + "): " + "; ".join(seeds or ["compare with our fid"])


def _protocol(rows: list[PublishedResult]) -> str:
    """"FID, IS: <note>; NFE: <note>": each distinct note once, after the metrics it belongs to."""
    metrics_by_note: dict[str, list[str]] = {}
    for row in rows:
        if row.note:
            metrics_by_note.setdefault(row.note, []).append(row.metric)
    return "; ".join(f"{', '.join(metrics)}: {note}" for note, metrics in metrics_by_note.items())


def published_rows(published: list[PublishedResult], table_data: str, name: str, ours: TableRow) -> list[TableRow]:
    """One row per published model on `table_data`: its FID, IS and NFE side by side."""
    rows = []
    selected = for_data(published, table_data)
    for model in dict.fromkeys(r.model for r in selected):
        numbers = {r.metric: r for r in selected if r.model == model}
        fid = numbers.get("FID")
        nfe = numbers.get("NFE")
        any_row = next(iter(numbers.values()))
        rows.append(TableRow(
            origin="published", data=any_row.data, model=model, fid=fid.value if fid else None,
            inception_score=numbers["IS"].value if "IS" in numbers else None,
            nfe=nfe.value if nfe else None, nfe_approximate=bool(nfe and nfe.approximate),
            solver=any_row.solver, num_samples=fid.num_samples if fid else None,
            features=fid.features if fid else "", source=any_row.source,
            comparison=comparison_note(fid or any_row, name, ours),
            protocol=_protocol([r for r in selected if r.model == model])))
    return rows


def build_table(inputs: Inputs, evaluate_path: str, sweep_path: str, sweep_num_samples: int | None,
                sweep_protocol: dict[str, Any] | None = None) -> list[TableRow]:
    """Our rows first, then the published rows of the chosen data set."""
    ours = our_rows(inputs, evaluate_path, sweep_path, sweep_num_samples, sweep_protocol)
    return ours + published_rows(inputs.published, inputs.table_data, inputs.name, ours[0])


def write_table_csv(rows: list[TableRow], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(TableRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in asdict(row).items()} for row in rows)


#: (header, attribute, decimals) of the markdown table; columns empty in every row are left out.
MD_COLUMNS = (("", "origin", None), ("data set", "data", None), ("model", "model", None), ("FID", "fid", 2),
              ("IS", "inception_score", 2), ("bits/dim", "bpd", 3), ("bits/dim SE", "bpd_se", 3),
              ("bits/dim, per-pixel histogram", "bpd_baseline", 3), ("NLL (nats)", "nll", 3), ("NFE", "nfe", 0),
              ("solver", "solver", None), ("samples", "num_samples", None), ("FID features", "features", None),
              ("source", "source", None), ("comparison with this run", "comparison", None))


def _md_value(row: TableRow, attribute: str, decimals: int | None) -> str:
    value = getattr(row, attribute)
    if value is None:
        return ""
    if attribute == "nfe":  # whole numbers as such (104, not 104.0); means of NFE to one decimal
        text = str(int(value)) if float(value).is_integer() else f"{value:.1f}"
        return ("~" if row.nfe_approximate else "") + text
    if decimals is not None:
        return f"{value:.{decimals}f}"
    return str(value).replace("|", "/")  # a pipe would split the markdown cell


def markdown(rows: list[TableRow], *, name: str, table_data: str) -> str:
    """table.md: the caveats, then the table with only the columns some row fills."""
    columns = [c for c in MD_COLUMNS if any(_md_value(r, c[1], c[2]) for r in rows)]
    lines = [f"# PFGM report: {name}", ""]
    shown = next((r.data for r in rows if r.origin == "published"), table_data)
    if table_data != name:
        lines += [f"Nothing is published on {name} in PFGM.md: the published rows below are {shown} results, "
                  "shown as a reference for scale only. They are not comparable with this run's numbers.", ""]
    lines += ["Published numbers come from PFGM.md section 8 (paper/published.csv). FID depends on the sample "
              "count, the feature network and its resizing, and the reference statistics: a published FID "
              "and ours agree only if all of these agree, which the `comparison` column checks and never "
              "assumes. `~` marks an approximate NFE. See docs/REPORT.md.", ""]
    lines.append("| " + " | ".join(c[0] for c in columns) + " |")
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(_md_value(r, c[1], c[2]) for c in columns) + " |" for r in rows]
    ours = [r for r in rows if r.protocol and r.origin != "published"]
    if ours:
        lines += ["", "Protocol of this run's FIDs:", ""]
        lines += [f"- {r.origin}: {r.protocol}" for r in ours]
        lines += ["", "Which of our FIDs a published one compares with: a number from one sample set (PFGM's "
                  "tables: 10k samples) with our `fid`; PFGM++'s and EDM's best of three 50k sets with our "
                  "`fid_min` over three `evaluate.seeds` (docs/FID.md)."]
    if any(r.bpd_baseline is not None for r in rows):
        lines += ["", "Bits/dim: test images dequantised at the data's own levels (evaluate.json `bpd_levels`), "
                  "with the standard error over those images; beside them the same images under independent "
                  "per-pixel histograms of the training split, the baseline a model must beat "
                  "(docs/LIKELIHOOD.md)."]
    protocols = [r for r in rows if r.protocol and r.origin == "published"]
    if protocols:
        lines += ["", "Protocols of the published rows:", ""]
        lines += [f"- {r.model} ({r.data}): {r.protocol}" for r in protocols]
    return "\n".join(lines) + "\n"


def our_metrics(rows: list[TableRow]) -> dict[str, float]:
    """This run's table numbers as flat MLflow metrics (evaluate_fid, sweep_best_fid, ...)."""
    metrics = {}
    for row in rows:
        if not row.origin.startswith("this run"):
            continue
        prefix = "evaluate" if row.origin.endswith("evaluate") else "sweep_best"
        for key in ("fid", "inception_score", "bpd", "bpd_se", "bpd_baseline", "nll", "nfe"):
            value = getattr(row, key)
            if value is not None:
                metrics[f"{prefix}_{key}"] = float(value)
    return metrics


# --- pictures --------------------------------------------------------------------------------------

def _ode_kwargs(params: ReportParams, model: TrainedModel) -> dict[str, Any]:
    return dict(method=params.method, rtol=params.rtol, atol=params.atol, steps=params.steps,
                schedule=params.schedule, rho=params.rho, z_exp=params.z_exp,
                gamma=float(model.hyperparameters.get("gamma", 5.0)))


def settings_of(params: ReportParams) -> SamplerSettings:
    """The report section's sampler setting (samples.png, the norm curves, the PFGM pictures' prior)."""
    return SamplerSettings(method=params.method, rtol=params.rtol, atol=params.atol, steps=params.steps,
                           schedule=params.schedule, rho=params.rho, z_min=params.z_min, z_exp=params.z_exp,
                           clip_prior=params.clip_prior)


def _prior(params: ReportParams, model: TrainedModel, n: int, generator: torch.Generator) -> torch.Tensor:
    return sampler_for(model, settings_of(params)).prior(n, generator)


@task(cache_policy=NO_CACHE)
def draw_samples(params: ReportParams, inputs: Inputs, data_dir: str, folder: Path) -> Path:
    """samples.png: num_samples samples with the report's solver (a scatter plot for 2D points)."""
    generator = torch.Generator().manual_seed(params.seed)
    x = generate(inputs.model, params.num_samples, settings_of(params), batch_size=params.num_samples, generator=generator).x
    title = f"{model_label(inputs.model)}, {params.method}"
    if inputs.kind == "points":
        return viz.save_points(x, folder / "samples.png", data=_background(data_dir, generator), title=title)
    return viz.save_image_grid(x, folder / "samples.png", title=title)


def encode_test_images(params: ReportParams, inputs: Inputs, data_dir: str,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Encode test images, one solve each, in seeded random order until 2 * interpolation_pairs succeed.

    A trained field can make the forward flow of some images diverge (the solver gives up); those are
    skipped and counted rather than failing the report. Returns (images, latents, skipped, nfe).
    """
    test = pdata.load_split(data_dir, "test")
    wanted, device = 2 * params.interpolation_pairs, inputs.model.device
    images, latents, skipped, nfe = [], [], 0, 0
    for index in torch.randperm(len(test), generator=generator)[: wanted * ENCODE_ATTEMPTS].tolist():
        image = test[index: index + 1].to(device)
        try:
            # The network's own v_z on the way up (z_exp None): see pfgm.latent.interpolate.
            out = encode(inputs.model.net, image, z_min=params.z_min,
                         z_max=float(inputs.model.hyperparameters["z_max"]),
                         **{**_ode_kwargs(params, inputs.model), "z_exp": None})
        except SolveDiverged:
            skipped += 1
            continue
        nfe += out.nfe
        if not bool(torch.isfinite(out.x).all()):
            skipped += 1
            continue
        images.append(image)
        latents.append(out.x)
        if len(images) == wanted:
            break
    return torch.cat(images or [test[:0]]), torch.cat(latents or [test[:0]]), skipped, nfe


@task(cache_policy=NO_CACHE)
def draw_interpolation(params: ReportParams, inputs: Inputs, data_dir: str, folder: Path) -> dict[str, float]:
    """interpolation.png: rows [image A, decoded path..., image B]; returns its NFE and skipped images."""
    generator = torch.Generator().manual_seed(params.seed)
    images, latents, skipped, nfe = encode_test_images(params, inputs, data_dir, generator)
    pairs = len(images) // 2
    counts = dict(interpolation_skipped_images=float(skipped), interpolation_pairs=float(pairs))
    if pairs == 0:
        get_run_logger().warning("no interpolation.png: the forward flow of %d test images diverged", skipped)
        return dict(counts, nfe_interpolation=float(nfe))
    if pairs < params.interpolation_pairs:
        get_run_logger().warning("interpolation.png has %d of %d pairs: the forward flow of %d test images "
                                 "diverged", pairs, params.interpolation_pairs, skipped)
    first, second = images[:pairs], images[pairs: 2 * pairs]
    result = interpolate_latents(inputs.model.net, latents[:pairs], latents[pairs: 2 * pairs],
                                 num_points=params.interpolation_points, z_min=params.z_min,
                                 z_max=float(inputs.model.hyperparameters["z_max"]),
                                 **_ode_kwargs(params, inputs.model))
    rows = torch.cat([first[:, None], result.x, second[:, None]], dim=1)
    labels = ["A"] + [f"{w:.2f}" for w in result.weights.tolist()] + ["B"]
    note = (f" ({skipped} test image{'s' if skipped > 1 else ''} skipped: forward flow diverged)"
            if skipped else "")
    viz.save_image_rows(rows, folder / "interpolation.png", column_labels=labels,
                        title=f"test images A, B; their latents interpolated (slerp) and decoded{note}")
    return dict(counts, nfe_interpolation=float(nfe + result.nfe))


@task(cache_policy=NO_CACHE)
def draw_temperature(params: ReportParams, inputs: Inputs, folder: Path) -> int:
    """temperature.png: prior draws (rows) decoded at each temperature (columns); returns the NFE."""
    generator = torch.Generator().manual_seed(params.seed + 1)  # other draws than samples.png
    latents = _prior(params, inputs.model, params.temperature_samples, generator)
    temperatures = torch.tensor(params.temperatures)
    out = decode_with_temperature(inputs.model.net, latents, temperatures, z_min=params.z_min,
                                  z_max=float(inputs.model.hyperparameters["z_max"]),
                                  **_ode_kwargs(params, inputs.model))
    viz.save_image_rows(out.x, folder / "temperature.png", column_labels=[f"T={t:g}" for t in params.temperatures],
                        title="the same latents scaled by T and decoded")
    return out.nfe


def _background(data_dir: str, generator: torch.Generator) -> torch.Tensor:
    train = pdata.load_split(data_dir, "train")
    return train[torch.randperm(len(train), generator=generator)[:BACKGROUND_POINTS]]


@task(cache_policy=NO_CACHE)
def draw_flow(params: ReportParams, inputs: Inputs, data_dir: str, folder: Path) -> int:
    """flow.gif, trajectories.png and samples.png (the landed particles) for 2D points; returns the NFE."""
    generator = torch.Generator().manual_seed(params.seed)
    start = _prior(params, inputs.model, params.animation_points, generator)
    heights = flow_heights(float(inputs.model.hyperparameters["z_max"]), params.z_min, params.animation_frames)
    path = record_trajectories(inputs.model.net, start, heights, **_ode_kwargs(params, inputs.model))
    data = _background(data_dir, generator)
    x = path.x.cpu()
    viz.save_flow_animation(x, path.z, data, folder / "flow.gif", title=inputs.name)
    viz.save_trajectories(x, path.z, data, folder / "trajectories.png", title=f"{inputs.name}: field lines")
    viz.save_points(x[-1], folder / "samples.png", data=data, title=f"{model_label(inputs.model)}, {params.method}")
    return path.nfe


def short_path(path: str) -> str:
    """The last two parts of a path ("digits/model.pt"): enough to tell checkpoints apart in a title."""
    return "/".join(Path(path).parts[-2:])


def solver_family(label: str, method: str) -> tuple[str, str]:
    """"RK45 tol=1e-4" -> ("RK45", "tol=1e-4"); "Euler 20 steps" -> ("Euler", "20 steps")."""
    found = re.fullmatch(r"(.+?) (tol=\S+|\d+ steps)", label)
    return (found.group(1), found.group(2)) if found else (method, label)


@task(cache_policy=NO_CACHE)
def draw_nfe_vs_fid(inputs: Inputs, folder: Path) -> Path | None:
    """nfe_vs_fid.png from the sweep (the best FID's checkpoint only); None when no point has an FID."""
    best = best_sweep_row(inputs.sweep)
    if best is None:
        return None
    curves: dict[str, list[tuple[float, float, str]]] = {}
    diverged: dict[str, list[tuple[float, str]]] = {}
    for row in inputs.sweep:
        if row["checkpoint"] != best["checkpoint"] or not math.isfinite(row["nfe"]):
            continue
        family, label = solver_family(row["solver"], row["method"])
        if math.isfinite(row["fid"]):
            curves.setdefault(family, []).append((row["nfe"], row["fid"], label))
        else:
            diverged.setdefault(family, []).append((row["nfe"], label))
    ev = inputs.evaluation
    marks = {}
    if _finite(ev.get("fid")) is not None and _finite(ev.get("nfe")) is not None:
        marks[f"evaluate run ({ev.get('method')})"] = (float(ev["nfe"]), float(ev["fid"]))
    return viz.save_nfe_vs_fid(curves, folder / "nfe_vs_fid.png", diverged=diverged, marks=marks,
                               floor=_finite(ev.get("fid_floor")),
                               title=f"{inputs.name}: FID against NFE by solver "
                                     f"(checkpoint {short_path(best['checkpoint'])})")


@task(cache_policy=NO_CACHE)
def draw_norm_curves(params: ReportParams, inputs: Inputs, data_dir: str, folder: Path,
                     perturbation: dict[str, Any] | None) -> dict[str, float]:
    """norm_z.png and norm_z.csv (images only): ||x|| against z or sigma while sampling num_samples
    samples with the report's solver and for perturbed training rows; returns each curve's spread
    (median std / mean over heights) as metrics."""
    generator = torch.Generator().manual_seed(params.seed + 2)  # other draws than the other pictures
    train = pdata.load_split(data_dir, "train")[:NORM_TRAINING_ROWS]
    curves = diagnostics.model_norm_curves(inputs.model, train, settings=settings_of(params),
                                           num_samples=params.num_samples, generator=generator,
                                           perturbation=perturbation)
    label = model_label(inputs.model)
    viz.save_norm_curves({label: curves}, folder / "norm_z.png",
                         title=f"{inputs.name}: norm of the data part against the height (shaded: ±1 std)")
    diagnostics.write_norm_csv({label: curves}, folder / "norm_z.csv")
    return {f"norm_spread_{'sampling' if name == 'sampling' else 'training'}": curve.spread()
            for name, curve in curves.items()}


def draw_pictures(params: ReportParams, inputs: Inputs, data_dir: str, folder: Path, report: Report,
                  perturbation: dict[str, Any] | None = None) -> None:
    """Every picture the data's kind and the model's objective allow, written into `folder`;
    `perturbation` (sigma, tau, restrict_M of the train section) draws norm_z.png's training curve."""
    logger = get_run_logger()
    report.metrics |= draw_norm_curves(params, inputs, data_dir, folder, perturbation)
    if draw_nfe_vs_fid(inputs, folder) is None:
        logger.info("no finite FID in the sweep table (2D points, or every point diverged): no nfe_vs_fid.png")
    if inputs.model.objective != "pfgm":
        # The latent edits and field lines follow PFGM's ODE in z; PFGM++ samples with EDM's Heun in sigma.
        logger.warning("objective %s: only samples.png is drawn (no encoder for latent edits here)",
                       inputs.model.objective)
        draw_samples(params, inputs, data_dir, folder)
    elif inputs.kind == "points":
        report.metrics["nfe_flow"] = float(draw_flow(params, inputs, data_dir, folder))
    else:
        draw_samples(params, inputs, data_dir, folder)
        report.metrics |= draw_interpolation(params, inputs, data_dir, folder)
        report.metrics["nfe_temperature"] = float(draw_temperature(params, inputs, folder))


# --- the flow --------------------------------------------------------------------------------------

def publish(staging: Path, out: Path) -> list[str]:
    """Move the staged files into `out`, removing report files this run did not produce (stale ones)."""
    out.mkdir(parents=True, exist_ok=True)
    produced = sorted(p.name for p in staging.iterdir())
    for name in REPORT_FILES:
        if name not in produced and (out / name).is_file():
            (out / name).unlink()
    for name in produced:
        os.replace(staging / name, out / name)
    return produced


def _run_params(params: ReportParams, inputs: Inputs, data_dir: str, model_path: str, evaluate_path: str,
                sweep_path: str) -> dict[str, Any]:
    values = params.model_dump()
    values["temperatures"] = ",".join(f"{t:g}" for t in params.temperatures)
    return dict(values, table_data_resolved=inputs.table_data, data_dir=data_dir, model_path=model_path,
                evaluate_path=evaluate_path, sweep_path=sweep_path, objective=inputs.model.objective)


@flow(name="report")
def report(params: ReportParams, data_dir: str, model_path: str, evaluate_path: str, sweep_path: str,
           sweep_num_samples: int | None = None, sweep_protocol: dict[str, Any] | None = None,
           perturbation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the table and the pictures into params.out and log them to one MLflow run.

    `sweep_num_samples` (the sweep section's num_samples) is shown beside the sweep's best FID, whose
    table does not record it: FID depends on the sample count. `sweep_protocol` (the sweep section's
    features, fid_mode, fid_reference, quantize) names how its FIDs were measured (None: as evaluate's).
    `perturbation` (the train section's sigma, tau, restrict_M) perturbs the training rows of norm_z.png as
    training did (None: PFGM.md's defaults).

    Returns dict(out, files, table (list of row dicts), metrics, run_id).
    """
    inputs = check_inputs(params, data_dir, model_path, evaluate_path, sweep_path)
    out = Path(params.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tags = {"stage": "report", "data": inputs.name, "table_data": inputs.table_data}
    try:
        with mlflow.start_run(run_name="report", tags=tags) as run:
            mlflow.log_params(_run_params(params, inputs, data_dir, model_path, evaluate_path, sweep_path))
            result = Report(rows=build_table(inputs, evaluate_path, sweep_path, sweep_num_samples, sweep_protocol))
            write_table_csv(result.rows, staging / "table.csv")
            (staging / "table.md").write_text(markdown(result.rows, name=inputs.name, table_data=inputs.table_data))
            with torch_threads(params.threads):
                draw_pictures(params, inputs, data_dir, staging, result, perturbation)
            result.metrics |= our_metrics(result.rows)
            mlflow.log_metrics(result.metrics)
            mlflow.log_artifacts(str(staging))
        files = publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    get_run_logger().info("report written to %s: %s", out, ", ".join(files))
    return dict(out=str(out), files=files, table=[asdict(r) for r in result.rows], metrics=result.metrics,
                run_id=run.info.run_id)


def sweep_protocol(sweep: Any) -> dict[str, Any]:
    """The sweep section's FID settings, as the protocol text reads them (features: as evaluate resolved them)."""
    return dict(fid_reference=sweep.fid_reference, fid_mode=sweep.fid_mode, quantize=sweep.quantize)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: read data.out, train.out, evaluate.out, sweep.table (and num_samples) and `report`; run."""
    args = params_parser(__doc__).parse_args(argv)
    data, train, evaluation, sweep, params = load_sections(args.params, "data", "train", "evaluate", "sweep",
                                                           "report")
    check_report(data, train, evaluation, sweep, params)  # before MLflow and Prefect start
    configure()
    result = report(params, data_dir=data.out, model_path=str(Path(train.out) / MODEL_FILE),
                    evaluate_path=evaluation.out, sweep_path=sweep.table, sweep_num_samples=sweep.num_samples,
                    sweep_protocol=sweep_protocol(sweep),
                    perturbation=dict(sigma=train.sigma, tau=train.tau, restrict_M=train.restrict_M))
    print(json.dumps({k: result[k] for k in ("out", "files", "metrics", "run_id")}, sort_keys=True))
    return result


if __name__ == "__main__":
    command_line(main)
