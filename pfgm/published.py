"""Published numbers of PFGM and PFGM++ (PFGM.md section 8), read from `paper/published.csv`.

One row per number: data set, model, metric (FID | IS | NFE), value, and the protocol the spec
records for it (solver, steps, tolerance, samples, features, reference statistics, seeds, source).
An empty protocol cell means PFGM.md does not state it; nothing is filled in by guess.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

#: Beside the package in a source checkout; the report flow passes its own path (params.yaml).
PUBLISHED_CSV = Path(__file__).resolve().parents[1] / "paper" / "published.csv"
COLUMNS = ("data", "data_name", "method", "model", "metric", "value", "approximate", "solver", "steps",
           "tolerance", "num_samples", "features", "reference_statistics", "seeds", "source", "note")
METRICS = ("FID", "IS", "NFE")


@dataclass(frozen=True)
class PublishedResult:
    """One published number and its protocol; None or "" where the spec does not state it."""
    data: str
    data_name: str
    method: str
    model: str
    metric: str
    value: float
    approximate: bool
    solver: str
    steps: int | None
    tolerance: str
    num_samples: int | None
    features: str
    reference_statistics: str
    seeds: str
    source: str
    note: str


def _optional_int(text: str, where: str) -> int | None:
    if text == "":
        return None
    if not text.isdigit():
        raise ValueError(f"{where}: expected a whole number or an empty cell, got {text!r}")
    return int(text)


def _parse_row(row: dict[str, str], where: str) -> PublishedResult:
    if row["metric"] not in METRICS:
        raise ValueError(f"{where}: metric must be one of {METRICS}, got {row['metric']!r}")
    if row["approximate"] not in ("true", "false"):
        raise ValueError(f"{where}: approximate must be true or false, got {row['approximate']!r}")
    try:
        value = float(row["value"])
    except ValueError:
        raise ValueError(f"{where}: value must be a number, got {row['value']!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: value must be finite, got {row['value']!r}")
    return PublishedResult(**{**row, "value": value, "approximate": row["approximate"] == "true",
                              "steps": _optional_int(row["steps"], f"{where} steps"),
                              "num_samples": _optional_int(row["num_samples"], f"{where} num_samples")})


def load_published(path: str | os.PathLike = PUBLISHED_CSV) -> list[PublishedResult]:
    """Every row of the published table, checked: exact header, known metric, finite value."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: columns must be {list(COLUMNS)}, got {reader.fieldnames}")
        return [_parse_row(row, f"{path} line {reader.line_num}") for row in reader]


def published_data_names(rows: list[PublishedResult]) -> list[str]:
    """Our names of the data sets that have published rows, in table order."""
    return list(dict.fromkeys(row.data_name for row in rows))


def for_data(rows: list[PublishedResult], data_name: str) -> list[PublishedResult]:
    """The rows published on one data set (our name: cifar10, celeba64, ...)."""
    return [row for row in rows if row.data_name == data_name]
