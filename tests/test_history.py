"""pfgm.training.history: a run's metric points as one CSV row per step."""
from __future__ import annotations

import csv

from pfgm.training.history import write_history_csv


def test_points_become_one_row_per_step_in_step_order(tmp_path):
    points = [("loss", 2, 0.5), ("loss", 1, 0.75), ("lr", 1, 1e-3), ("lr", 2, 2e-3), ("grad_norm", 2, 3.0)]
    path = write_history_csv(tmp_path / "metrics" / "history.csv", ("loss", "grad_norm", "lr"), points)
    assert path == tmp_path / "metrics" / "history.csv"
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    assert rows == [["step", "loss", "grad_norm", "lr"], ["1", "0.75", "", "0.001"], ["2", "0.5", "3.0", "0.002"]]
    assert [p.name for p in path.parent.iterdir()] == ["history.csv"]  # no temporary left behind


def test_no_points_give_the_header_only(tmp_path):
    path = write_history_csv(tmp_path / "history.csv", ("loss",), iter(()))
    assert path.read_text().splitlines() == ["step,loss"]
