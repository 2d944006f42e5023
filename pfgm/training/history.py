"""A run's metric history as a CSV table: one row per step, one column per metric (a DVC plot)."""
from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

from pfgm.files import atomic_write


def write_history_csv(path: str | Path, metrics: Sequence[str], points: Iterable[tuple[str, int, float]]) -> Path:
    """Write (metric, step, value) points as CSV rows `step, *metrics`, steps in order, atomically.

    A step without a value of some metric leaves that cell empty; the last value of a (metric, step) wins.
    """
    rows: dict[int, dict] = {}
    for key, step, value in points:
        rows.setdefault(step, {"step": step})[key] = value
    with atomic_write(Path(path), "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["step", *metrics])
        writer.writeheader()
        writer.writerows(rows[step] for step in sorted(rows))
    return Path(path)
