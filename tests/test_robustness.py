"""pfgm.robustness: the backbone-robustness table, its metrics and files, from hand-made values."""
from __future__ import annotations

import csv
import math

import pandas as pd
import pytest
import torch

from pfgm import pfgmpp
from pfgm.diagnostics import NormCurve
from pfgm.robustness import (
    FILES,
    Report,
    cell_label,
    cell_metrics,
    data_floor,
    markdown,
    metric_key,
    norm_panels,
    read_published,
    slug,
    table_rows,
    training_note,
    weakness_ratios,
    write_report,
    write_table_csv,
)
from pfgm.sampling import SamplerSettings

from helpers import make_checkpoint

NAN = float("nan")
# Two backbones x two objectives, backbones outermost; FID at 2 and 3 steps (NaN: diverged).
FIDS = {("weak", "PFGM"): (20.0, 10.0), ("weak", "EDM (D=inf)"): (40.0, 30.0),
        ("reference", "PFGM"): (10.0, 5.0), ("reference", "EDM (D=inf)"): (NAN, 6.0)}
PUBLISHED = [dict(method="VP-ODE", backbone="NCSNv2", data="CIFAR-10", metric="FID", relation=">", value="90",
                  source="src", note="a bound")]


def hand_rows() -> list[dict]:
    return [dict(backbone=b, objective=o, fid_2=f2, nfe_2=3.0, fid_3=f3, nfe_3=5.0)
            for (b, o), (f2, f3) in FIDS.items()]


def curve(variable: str, spread: float) -> NormCurve:
    """Three heights whose norms have std / mean = `spread` at each."""
    mean = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    return NormCurve(height=torch.tensor([10.0, 1.0, 0.1], dtype=torch.float64), mean=mean, std=spread * mean,
                     count=torch.tensor([5, 5, 5]), variable=variable)


def hand_panels() -> dict:
    return {cell_label(b, o): {"sampling": curve("z", 0.5), "training (perturbed)": curve("z", 2.0)} for b, o in FIDS}


def report(tmp_path, **changes) -> Report:
    published = tmp_path / "published.csv"
    write_table_csv(PUBLISHED, published)
    values = dict(name="digits", rows=hand_rows(), panels=hand_panels(), steps=[2, 3], floor=2.5, num_samples=50,
                  fid_reference="test", training=["weak / PFGM: NCSNv2Small 3 steps, batch 64, lr 0.001"],
                  published=str(published), seconds=dict(train=60.0, sweep=30.0, norms=6.0), columns=2)
    return Report(**{**values, **changes})


def test_names_labels_and_keys():
    assert cell_label("weak", "PFGM++ D=128") == "weak / PFGM++ D=128"
    assert slug("PFGM++ D=128") == "pfgm-pp-d-128" and slug("EDM (D=inf)") == "edm-d-inf"
    key = metric_key("fid", "NCSNv2-style (weak)", "PFGM++ D=128", "18_steps")
    assert key == "fid/ncsnv2-style-weak/pfgm-pp-d-128/18_steps"


def test_table_rows_read_each_cell_from_the_sweep_table():
    sweep = pd.DataFrame([dict(checkpoint=cell_label(b, o), steps=n, nfe=2 * n - 1 + 0.5, fid=fid)
                          for (b, o), fids in FIDS.items() for n, fid in zip((2, 3), fids)])
    sweep = sweep[~((sweep["checkpoint"] == "weak / PFGM") & (sweep["steps"] == 3))]  # a point the sweep lacks
    rows = table_rows(list(FIDS), sweep, [2, 3])
    assert rows[0]["backbone"] == "weak" and rows[0]["objective"] == "PFGM"
    assert rows[0]["fid_2"] == 20.0 and rows[0]["nfe_2"] == 3.5 and math.isnan(rows[0]["fid_3"])
    assert math.isnan(rows[0]["nfe_3"])
    assert rows[2] == dict(backbone="reference", objective="PFGM", fid_2=10.0, nfe_2=3.5, fid_3=5.0, nfe_3=5.5)
    assert list(rows[3]) == ["backbone", "objective", "fid_2", "nfe_2", "fid_3", "nfe_3"]


def test_weakness_ratios_divide_by_the_first_backbone_under_the_same_objective():
    rows = hand_rows()
    assert weakness_ratios(rows, 3) == ["- PFGM: reference 5.00 / weak 10.00 = 0.50",
                                        "- EDM (D=inf): reference 6.00 / weak 30.00 = 0.20"]
    assert weakness_ratios(rows, 2) == ["- PFGM: reference 10.00 / weak 20.00 = 0.50",
                                        "- EDM (D=inf): reference diverged / weak 40.00 = n/a"]
    assert weakness_ratios(rows[:2], 3) == []  # a single backbone: nothing to compare


def test_training_note_counts_trained_rows_for_pfgm_only():
    assert training_note("weak / PFGM", "NCSNv2Small", 3, 64, 1e-3, objective="pfgm", small_batch=32) == (
        "weak / PFGM: NCSNv2Small 3 steps, batch 64 (32 trained), lr 0.001")
    assert training_note("weak / EDM", "FieldConvNet", 3, 32, 2e-4, objective="pfgmpp", small_batch=32) == (
        "weak / EDM: FieldConvNet 3 steps, batch 32, lr 0.0002")
    assert training_note("a", "b", 1, 8, 0.5, objective="pfgm", small_batch=None).endswith("batch 8, lr 0.5")


def test_markdown_of_hand_made_rows(tmp_path):
    text = markdown(report(tmp_path), PUBLISHED)
    lines = text.splitlines()
    assert lines[0] == "# Backbone robustness on digits"
    assert lines[2].startswith("FID (50 samples against the test split; data floor 2.50: training images")
    assert lines[4] == "| backbone | objective | FID, 2 steps (NFE 3) | FID, 3 steps (NFE 5) |"
    assert lines[5] == "|---|---|---|---|"
    assert lines[6:10] == ["| weak | PFGM | 20.00 | 10.00 |", "| weak | EDM (D=inf) | 40.00 | 30.00 |",
                           "| reference | PFGM | 10.00 | 5.00 |", "| reference | EDM (D=inf) | diverged | 6.00 |"]
    assert "- PFGM: reference 5.00 / weak 10.00 = 0.50" in lines and "same objective, 3 steps" in text
    assert "Training: weak / PFGM: NCSNv2Small 3 steps, batch 64, lr 0.001." in lines
    assert "Time on this machine: training 1.0 min, sweep 0.5 min, norm-z curves 0.1 min." in lines
    assert lines[-1] == "- VP-ODE with NCSNv2 on CIFAR-10: FID > 90 (src; a bound)" and text.endswith("\n")
    single = markdown(report(tmp_path, rows=hand_rows()[:2]), [])
    assert "first backbone's" not in single and single.endswith("## Published reference (CIFAR-10, not comparable "
                                                                "with these numbers)\n\n")


def test_cell_metrics_key_fids_and_spreads_by_cell():
    metrics = cell_metrics(hand_rows(), hand_panels(), [2, 3])
    assert metrics["fid/weak/pfgm/2_steps"] == 20.0 and metrics["fid/reference/edm-d-inf/3_steps"] == 6.0
    assert math.isnan(metrics["fid/reference/edm-d-inf/2_steps"])
    assert metrics["norm_spread_sampling/weak/pfgm"] == pytest.approx(0.5)
    assert metrics["norm_spread_training/reference/edm-d-inf"] == pytest.approx(2.0)
    assert len(metrics) == 4 * (2 + 2)


def test_data_floor_scores_a_seeded_draw_in_order():
    images = torch.arange(10, dtype=torch.uint8)[:, None, None, None].expand(10, 1, 2, 2)
    scored = []

    def fid(batch):
        scored.append(batch[:, 0, 0, 0].tolist())
        return 1.25

    assert data_floor(fid, images, 4, seed=3) == 1.25 and data_floor(fid, images, 4, seed=3) == 1.25
    assert scored[0] == scored[1] and scored[0] == sorted(scored[0]) and len(set(scored[0])) == 4
    data_floor(fid, images, 50, seed=3)  # more than there are: every image once
    assert scored[2] == list(range(10))


def test_write_report_writes_every_file(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    write_report(folder, report(tmp_path))
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    with open(folder / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["backbone"], r["objective"], r["fid_3"]) for r in rows][0] == ("weak", "PFGM", "10.0")
    assert rows[3]["fid_2"] == "nan"
    assert "| reference | EDM (D=inf) | diverged | 6.00 |" in (folder / "table.md").read_text()
    assert read_published(tmp_path / "published.csv") == PUBLISHED
    with open(folder / "norm_z.csv", newline="") as f:
        assert {r["model"] for r in csv.DictReader(f)} == set(hand_panels())


def test_norm_panels_draw_both_curves_of_each_model_reproducibly(tmp_path):
    models = {"a / PFGM": make_checkpoint(tmp_path / "pfgm.pt"),
              "a / EDM": make_checkpoint(tmp_path / "pfgmpp.pt", objective="pfgmpp")}
    charges = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    settings = SamplerSettings(method="heun", steps=2, schedule="power", rho=pfgmpp.RHO)
    perturbations = {"a / PFGM": dict(sigma=0.01, tau=0.03, restrict_M=True), "a / EDM": None}
    args = dict(settings=settings, perturbations=perturbations, num_samples=4, seed=1, device="cpu")
    panels = norm_panels(models, charges, **args)
    assert list(panels) == list(models)
    assert {name: c.variable for name, c in panels["a / PFGM"].items()} == {"sampling": "z",
                                                                          "training (perturbed)": "z"}
    assert panels["a / EDM"]["sampling"].variable == "sigma"
    again = norm_panels(models, charges, **args)
    torch.testing.assert_close(again["a / EDM"]["sampling"].mean, panels["a / EDM"]["sampling"].mean)
