"""The report's table: this run's numbers above the published ones, and how each was measured.

Inputs are plain values: the evaluate stage's metrics (a dict, as its JSON holds them), the sweep's
rows (`read_sweep_table`) and the published rows (pfgm.published). Out come `TableRow`s, written as
table.csv (`write_table_csv`) and table.md (`markdown`), and flat metrics (`our_metrics`).

A published number is never called a match: `comparison_note` spells out which parts of its protocol
(sample count, feature network, reference statistics, seed sets) agree with ours, and calls the
protocol the same only when all are stated and all agree. `sweep_plot` picks what nfe_vs_fid.png
shows from the same sweep rows (pfgm.viz draws it).
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pfgm.published import PublishedResult, for_data

if TYPE_CHECKING:
    from pfgm.sampling import TrainedModel

#: Columns the sweep stage writes that the report reads (it writes more, which are ignored).
SWEEP_COLUMNS = ("checkpoint", "solver", "method", "steps", "rtol", "atol", "nfe", "nfe_max",
                 "seconds_per_sample", "fid", "run_id")
#: Published rows shown when nothing is published on the run's own data set.
REFERENCE_DATA = "cifar10"
FEATURE_NAMES = {"digits": "digits CNN (prepare stage)", "inception": "clean-fid Inception"}
#: Published feature networks and reference statistics, and what our features text says for the same
#: protocol (clean-fid's legacy_tensorflow mode reproduces TF Inception's preprocessing; docs/FID.md).
SAME_FEATURES = {"TF Inception": "Inception (legacy_tensorflow)"}
SAME_REFERENCE = {"training set": "vs train split"}


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


# --- the sweep table -------------------------------------------------------------------------------

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


def best_sweep_row(sweep: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The sweep row with the lowest finite FID, or None (2D points, or every point diverged)."""
    scored = [row for row in sweep if math.isfinite(row["fid"])]
    return min(scored, key=lambda row: row["fid"]) if scored else None


def solver_family(label: str, method: str) -> tuple[str, str]:
    """"RK45 tol=1e-4" -> ("RK45", "tol=1e-4"); "Euler 20 steps" -> ("Euler", "20 steps")."""
    found = re.fullmatch(r"(.+?) (tol=\S+|\d+ steps)", label)
    return (found.group(1), found.group(2)) if found else (method, label)


def short_path(path: str) -> str:
    """The last two parts of a path ("digits/model.pt"): enough to tell checkpoints apart in a title."""
    return "/".join(Path(path).parts[-2:])


@dataclass(frozen=True)
class SweepPlot:
    """What nfe_vs_fid.png shows, in pfgm.viz.save_nfe_vs_fid's terms: per solver family the points
    (nfe, fid, label) with an FID and the settings (nfe, label) that diverged, of one checkpoint; the
    evaluate run as a named mark; the data's own FID floor."""
    checkpoint: str
    curves: dict[str, list[tuple[float, float, str]]]
    diverged: dict[str, list[tuple[float, str]]]
    marks: dict[str, tuple[float, float]]
    floor: float | None


def sweep_plot(sweep: list[dict[str, Any]], evaluation: dict[str, Any]) -> SweepPlot | None:
    """The sweep rows of the best FID's checkpoint by solver family, beside the evaluate run's (nfe, fid);
    None when no sweep row has a finite FID. Rows without a finite NFE are left out."""
    best = best_sweep_row(sweep)
    if best is None:
        return None
    curves: dict[str, list[tuple[float, float, str]]] = {}
    diverged: dict[str, list[tuple[float, str]]] = {}
    for row in sweep:
        if row["checkpoint"] != best["checkpoint"] or not math.isfinite(row["nfe"]):
            continue
        family, label = solver_family(row["solver"], row["method"])
        if math.isfinite(row["fid"]):
            curves.setdefault(family, []).append((row["nfe"], row["fid"], label))
        else:
            diverged.setdefault(family, []).append((row["nfe"], label))
    ev = evaluation
    marks = {}
    if _finite(ev.get("fid")) is not None and _finite(ev.get("nfe")) is not None:
        marks[f"evaluate run ({ev.get('method')})"] = (float(ev["nfe"]), float(ev["fid"]))
    return SweepPlot(checkpoint=best["checkpoint"], curves=curves, diverged=diverged, marks=marks,
                     floor=_finite(ev.get("fid_floor")))


# --- our rows --------------------------------------------------------------------------------------

def resolve_table_data(table_data: str, name: str, published: list[PublishedResult]) -> str:
    """The data set whose published rows the table shows: `table_data` itself, or for "auto" the run's
    own data set `name` when something is published on it, else REFERENCE_DATA (CIFAR-10)."""
    if table_data != "auto":
        return table_data
    return name if for_data(published, name) else REFERENCE_DATA


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def model_label(model: TrainedModel) -> str:
    """"PFGM FieldMLP", "PFGM++ D=128 DDPMpp": what this run trained."""
    objective = "PFGM" if model.objective == "pfgm" else f"PFGM++ D={model.hyperparameters.get('D')}"
    return f"{objective} {model.network_class}"


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


def sets_text(evaluation: dict[str, Any]) -> str:
    """The sample sets behind the evaluate run's FID: "one set (seed 0)", or for several seeds their
    count, the seeds, and fid_min and fid_std beside the mean."""
    ev = evaluation
    seeds = [s for s in str(ev.get("seeds") or "").split(",") if s]
    if len(seeds) <= 1:
        return f"one set (seed {seeds[0]})" if seeds else "one set"
    return (f"{len(seeds)} sets (seeds {', '.join(seeds)}): FID is their mean, fid_min "
            f"{ev.get('fid_min', float('nan')):.2f}, fid_std {ev.get('fid_std', float('nan')):.2f}")


def our_rows(evaluation: dict[str, Any], sweep: list[dict[str, Any]], *, name: str, model: str,
             evaluate_path: str, sweep_path: str, sweep_num_samples: int | None,
             sweep_protocol: dict[str, Any] | None = None) -> list[TableRow]:
    """The evaluate run's numbers and the sweep's best FID (scored on sweep_num_samples samples), as rows.

    `name` is the run's data set, `model` its label (`model_label`); the paths are named as sources.
    `sweep_protocol` (the sweep section's features, fid_mode, fid_reference, quantize) describes the
    sweep's FIDs; None: as the evaluate run's.
    """
    ev = evaluation
    rows = [TableRow(origin="this run: evaluate", data=name, model=model, fid=_finite(ev.get("fid")),
                     inception_score=_finite(ev.get("inception_score")), bpd=_finite(ev.get("bpd")),
                     bpd_se=_finite(ev.get("bpd_se")), bpd_baseline=_finite(ev.get("bpd_baseline")),
                     nll=_finite(ev.get("nll")), nfe=_finite(ev.get("nfe")), solver=str(ev.get("method", "")),
                     num_samples=ev.get("num_samples"), features=features_text(ev), source=str(evaluate_path),
                     protocol=fid_protocol_text(ev, ev.get("num_samples"), sets=sets_text(ev)))]
    best = best_sweep_row(sweep)
    if best is not None:
        protocol = {**ev, **(sweep_protocol or {})}
        rows.append(TableRow(origin="this run: sweep best", data=name, model=model, fid=best["fid"],
                             nfe=_finite(best["nfe"]), solver=best["solver"], num_samples=sweep_num_samples,
                             features=features_text(protocol),
                             source=f"{sweep_path} (lowest FID of {len(sweep)} settings; "
                                    f"checkpoint {best['checkpoint']})",
                             protocol=fid_protocol_text(protocol, sweep_num_samples,
                                                        sets="one set (sweep.seed) per setting")))
    return rows


# --- published rows --------------------------------------------------------------------------------

def _seeds_note(published: PublishedResult) -> list[str]:
    if not published.seeds:
        return []
    # The statistic the published number is: PFGM++/EDM report the best (min) of three 50k sets.
    statistic = "our fid_min" if "best" in published.seeds else "our fid"
    return [f"published FID is the {published.seeds} seed sets: compare with {statistic}"]


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
    seeds = _seeds_note(published)
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


def build_table(evaluation: dict[str, Any], sweep: list[dict[str, Any]], published: list[PublishedResult], *,
                name: str, model: str, table_data: str, evaluate_path: str, sweep_path: str,
                sweep_num_samples: int | None = None, sweep_protocol: dict[str, Any] | None = None) -> list[TableRow]:
    """Our rows first (`our_rows`), then the published rows of `table_data`, each compared with our first."""
    ours = our_rows(evaluation, sweep, name=name, model=model, evaluate_path=evaluate_path, sweep_path=sweep_path,
                    sweep_num_samples=sweep_num_samples, sweep_protocol=sweep_protocol)
    return ours + published_rows(published, table_data, name, ours[0])


# --- writing ---------------------------------------------------------------------------------------

def write_table_csv(rows: list[TableRow], path: str | os.PathLike) -> None:
    """table.csv: one line per row, every TableRow field a column, None as an empty cell."""
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


def _md_notes(rows: list[TableRow]) -> list[str]:
    """The lines under the table: our FIDs' protocols, the bits/dim baseline, the published protocols."""
    lines = []
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
    return lines


def markdown(rows: list[TableRow], *, name: str, table_data: str) -> str:
    """table.md: the caveats, then the table with only the columns some row fills, then the notes."""
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
    return "\n".join(lines + _md_notes(rows)) + "\n"


def our_metrics(rows: list[TableRow]) -> dict[str, float]:
    """This run's table numbers as flat metrics (evaluate_fid, sweep_best_fid, ...)."""
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
