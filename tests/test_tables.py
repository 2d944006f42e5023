"""pfgm.tables: the report's rows, markdown and metrics from small hand-written evaluate, sweep and
published inputs; the sweep CSV reader; what nfe_vs_fid.png is drawn from."""
from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest

from pfgm import tables
from pfgm.published import PublishedResult, load_published
from pfgm.tables import TableRow

HEADER = ",".join(tables.SWEEP_COLUMNS)
NAN = math.nan


def _sweep_row(checkpoint: str, solver: str, method: str, nfe: float, fid: float) -> dict:
    return dict(checkpoint=checkpoint, solver=solver, method=method, steps=NAN, rtol=NAN, atol=NAN, nfe=nfe,
                nfe_max=nfe, seconds_per_sample=0.01, fid=fid, run_id="r")


SWEEP = [_sweep_row("runs/a/model.pt", "RK45 tol=1e-2", "dopri5", 30.5, 25.0),
         _sweep_row("runs/a/model.pt", "RK45 tol=1e-3", "dopri5", 50.25, 18.0),
         _sweep_row("runs/a/model.pt", "Euler 10 steps", "euler", 10.0, 40.0),
         _sweep_row("runs/a/model.pt", "Heun 5 steps", "heun2", 10.0, NAN),        # diverged: no FID
         _sweep_row("runs/a/model.pt", "Euler 20 steps", "euler", NAN, NAN),       # no NFE: left out
         _sweep_row("runs/b/model.pt", "Euler 20 steps", "euler", 20.0, 30.0)]     # another checkpoint
EVALUATION = dict(fid=20.5, fid_floor=2.0, nfe=8.0, method="euler", num_samples=96, features="digits",
                  bpd=5.125, bpd_se=0.25, bpd_baseline=6.5)


def _published(model: str, metric: str, value: float, **protocol) -> PublishedResult:
    values = dict(data="CIFAR-10", data_name="cifar10", method="PFGM", model=model, metric=metric, value=value,
                  approximate=False, solver="RK45", steps=None, tolerance="", num_samples=None, features="",
                  reference_statistics="", seeds="", source="paper", note="")
    return PublishedResult(**{**values, **protocol})


PUBLISHED = [
    _published("PFGM A", "FID", 2.5, num_samples=50000, features="TF Inception", reference_statistics="training set",
               note="50k | TF", source="README | paper"),
    _published("PFGM A", "IS", 9.5, note="50k | TF"),
    _published("PFGM A", "NFE", 104.0, approximate=True, note="RK45 mean"),
    _published("PFGM B", "FID", 1.9, num_samples=50000, features="TF Inception",
               reference_statistics="training set", seeds="best of 3"),
    _published("Other", "FID", 3.0, data="CelebA 64", data_name="celeba64"),
]


def test_read_sweep_table_parses_numbers_and_names_what_is_wrong(tmp_path):
    good = tmp_path / "sweep.csv"
    good.write_text(f"{HEADER},objective\nm.pt,RK45 tol=1e-3,dopri5,,0.001,0.001,50.25,56,0.002,18.0,r1,pfgm\n"
                    "m.pt,Euler 5 steps,euler,5,,,5,5,0.001,NaN,r2,pfgm\n")
    first, second = tables.read_sweep_table(good)
    assert first["fid"] == 18.0 and first["nfe"] == 50.25 and math.isnan(first["steps"])
    assert first["solver"] == "RK45 tol=1e-3" and first["objective"] == "pfgm"  # other columns kept as text
    assert second["steps"] == 5.0 and math.isnan(second["fid"]) and math.isnan(second["rtol"])
    (tmp_path / "short.csv").write_text("checkpoint,solver,nfe\nm,RK45,3\n")
    with pytest.raises(ValueError, match=r"lacks columns \['method', 'steps'"):
        tables.read_sweep_table(tmp_path / "short.csv")
    (tmp_path / "bad.csv").write_text(f"{HEADER}\nm.pt,RK45,dopri5,,x,0.1,3,3,0.1,2.0,r\n")
    with pytest.raises(ValueError, match="bad.csv line 2: could not convert string to float: 'x'"):
        tables.read_sweep_table(tmp_path / "bad.csv")


def test_solver_family_best_row_and_short_path():
    assert tables.solver_family("RK45 tol=1e-4", "dopri5") == ("RK45", "tol=1e-4")
    assert tables.solver_family("EDM Heun 18 steps", "edm_heun") == ("EDM Heun", "18 steps")
    assert tables.solver_family("DPM-Solver++(2M) [rho 5] 6 steps", "dpmpp_2m") == ("DPM-Solver++(2M) [rho 5]",
                                                                                   "6 steps")
    assert tables.solver_family("custom", "rk4") == ("rk4", "custom")
    assert tables.best_sweep_row(SWEEP) is SWEEP[1]
    assert tables.best_sweep_row([SWEEP[3]]) is None and tables.best_sweep_row([]) is None
    assert tables.short_path("/a/runs/digits/model.pt") == "digits/model.pt"


def test_sweep_plot_groups_the_best_checkpoint_by_solver_family():
    plot = tables.sweep_plot(SWEEP, EVALUATION)
    assert plot.checkpoint == "runs/a/model.pt"
    assert plot.curves == {"RK45": [(30.5, 25.0, "tol=1e-2"), (50.25, 18.0, "tol=1e-3")],
                           "Euler": [(10.0, 40.0, "10 steps")]}
    assert plot.diverged == {"Heun": [(10.0, "5 steps")]}
    assert plot.marks == {"evaluate run (euler)": (8.0, 20.5)} and plot.floor == 2.0
    bare = tables.sweep_plot(SWEEP, dict(fid=NAN, nfe=8.0))
    assert bare.marks == {} and bare.floor is None
    assert tables.sweep_plot([SWEEP[3]], EVALUATION) is None


def test_table_data_and_model_label():
    assert tables.resolve_table_data("auto", "cifar10", PUBLISHED) == "cifar10"
    assert tables.resolve_table_data("auto", "digits", PUBLISHED) == tables.REFERENCE_DATA == "cifar10"
    assert tables.resolve_table_data("celeba64", "cifar10", PUBLISHED) == "celeba64"
    pfgm = SimpleNamespace(objective="pfgm", hyperparameters={}, network_class="FieldMLP")
    pfgmpp = SimpleNamespace(objective="pfgmpp", hyperparameters={"D": 128}, network_class="DDPMpp")
    assert tables.model_label(pfgm) == "PFGM FieldMLP" and tables.model_label(pfgmpp) == "PFGM++ D=128 DDPMpp"


def test_protocol_texts():
    ev = dict(features="inception", fid_mode="legacy_tensorflow", fid_reference="train", quantize="round",
              seeds="0,1,2", fid_min=1.5, fid_std=0.125, num_samples=50000)
    assert tables.features_text(ev) == "clean-fid Inception (legacy_tensorflow) vs train split"
    # The digits CNN has no Inception preprocessing: no mode in its name; no reference key: the test split.
    assert tables.features_text(dict(features="digits", fid_mode="clean")) == "digits CNN (prepare stage) vs test split"
    assert tables.features_text(dict(features=None)) == "" and tables.fid_protocol_text({}, 10, sets="x") == ""
    assert tables.sets_text({}) == "one set" and tables.sets_text(dict(seeds="7")) == "one set (seed 7)"
    assert tables.fid_protocol_text(ev, 50000, sets=tables.sets_text(ev)) == (
        "FID, KID: 50000 samples per set, 3 sets (seeds 0, 1, 2): FID is their mean, fid_min 1.50, fid_std 0.12; "
        "clean-fid Inception (legacy_tensorflow) vs train split statistics; samples to uint8 by round (docs/FID.md)")


def test_our_rows_from_the_evaluate_metrics_and_the_sweep():
    evaluate, sweep = tables.our_rows(EVALUATION, SWEEP, name="digits", model="PFGM FieldMLP",
                                      evaluate_path="m/evaluate.json", sweep_path="m/sweep.csv",
                                      sweep_num_samples=500, sweep_protocol=dict(fid_reference="train"))
    assert evaluate == TableRow(
        origin="this run: evaluate", data="digits", model="PFGM FieldMLP", fid=20.5, bpd=5.125, bpd_se=0.25,
        bpd_baseline=6.5, nfe=8.0, solver="euler", num_samples=96, features="digits CNN (prepare stage) vs test split",
        source="m/evaluate.json",
        protocol="FID, KID: 96 samples per set, one set; digits CNN (prepare stage) vs test split statistics; "
                 "samples to uint8 by round (docs/FID.md)")
    assert (sweep.origin, sweep.fid, sweep.nfe, sweep.solver, sweep.num_samples) == (
        "this run: sweep best", 18.0, 50.25, "RK45 tol=1e-3", 500)
    assert sweep.features == "digits CNN (prepare stage) vs train split"  # the sweep's own reference split
    assert sweep.source == "m/sweep.csv (lowest FID of 6 settings; checkpoint runs/a/model.pt)"
    assert "500 samples per set, one set (sweep.seed) per setting" in sweep.protocol
    only = tables.our_rows(dict(nll=1.5, fid=NAN), [SWEEP[3]], name="moons", model="m", evaluate_path="e",
                           sweep_path="s", sweep_num_samples=None)
    assert len(only) == 1 and only[0].nll == 1.5 and only[0].fid is None and only[0].protocol == ""


def test_published_rows_compare_each_model_with_ours():
    ours = TableRow(origin="this run: evaluate", data="cifar10", model="x", num_samples=50000,
                    features="clean-fid Inception (legacy_tensorflow) vs train split")
    a, b = tables.published_rows(PUBLISHED, "cifar10", "cifar10", ours)
    assert (a.model, a.fid, a.inception_score, a.nfe, a.nfe_approximate, a.num_samples) == (
        "PFGM A", 2.5, 9.5, 104.0, True, 50000)
    assert a.comparison == ("same data set, same protocol (50000 samples, TF Inception = our clean-fid Inception "
                            "(legacy_tensorflow), training set statistics): compare with our fid")
    assert a.protocol == "FID, IS: 50k | TF; NFE: RK45 mean"
    assert b.comparison.endswith("published FID is the best of 3 seed sets: compare with our fid_min")
    clean = TableRow(origin="this run: evaluate", data="cifar10", model="x", num_samples=10000,
                     features="clean-fid Inception (clean) vs test split")
    assert tables.comparison_note(PUBLISHED[0], "cifar10", clean) == (
        "same data set, different protocol: 50000 samples vs our 10000; TF Inception vs our clean-fid Inception "
        "(clean) vs test split; reference statistics: training set")
    assert tables.comparison_note(_published("C", "FID", 1.0), "cifar10", clean) == (
        "same data set, different protocol: sample count not stated; features not stated vs our clean-fid "
        "Inception (clean) vs test split")
    assert tables.published_rows(PUBLISHED, "cifar10", "digits", ours)[0].comparison == (
        "reference only: published on CIFAR-10, this run is on digits")


def test_markdown_csv_and_metrics_of_a_run_without_published_rows_of_its_own(tmp_path):
    rows = tables.build_table(EVALUATION, SWEEP, PUBLISHED, name="digits", model="PFGM FieldMLP",
                              table_data="cifar10", evaluate_path="e.json", sweep_path="s.csv", sweep_num_samples=500)
    assert [r.origin for r in rows] == ["this run: evaluate", "this run: sweep best", "published", "published"]
    text = tables.markdown(rows, name="digits", table_data="cifar10")
    lines = text.splitlines()
    assert lines[0] == "# PFGM report: digits"
    assert lines[2].startswith("Nothing is published on digits in PFGM.md: the published rows below are CIFAR-10")
    header = next(line for line in lines if line.startswith("| "))
    # Columns no row fills (NLL) are left out.
    assert header == ("|  | data set | model | FID | IS | bits/dim | bits/dim SE | bits/dim, per-pixel histogram | "
                      "NFE | solver | samples | FID features | source | comparison with this run |")
    assert "| this run: evaluate | digits | PFGM FieldMLP | 20.50 |  | 5.125 | 0.250 | 6.500 | 8 | euler | 96 |" in text
    assert "| 18.00 |  |  |  |  | 50.2 | RK45 tol=1e-3 | 500 |" in text  # a mean NFE to one decimal
    assert "| PFGM A | 2.50 | 9.50 |  |  |  | ~104 |" in text
    assert "| README / paper |" in text  # a pipe would split the cell; the notes below are no cells
    assert "- PFGM A (CIFAR-10): FID, IS: 50k | TF; NFE: RK45 mean" in text
    assert "- this run: sweep best: FID, KID: 500 samples per set, one set (sweep.seed) per setting" in text
    assert "Bits/dim: test images dequantised" in text and text.endswith("\n")
    assert "Nothing is published" not in tables.markdown(rows, name="cifar10", table_data="cifar10")

    tables.write_table_csv(rows, tmp_path / "table.csv")
    with open(tmp_path / "table.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == list(TableRow.__dataclass_fields__)
    assert written[0]["fid"] == "20.5" and written[0]["nll"] == "" and written[2]["nfe_approximate"] == "True"
    assert tables.our_metrics(rows) == dict(evaluate_fid=20.5, evaluate_bpd=5.125, evaluate_bpd_se=0.25,
                                            evaluate_bpd_baseline=6.5, evaluate_nfe=8.0, sweep_best_fid=18.0,
                                            sweep_best_nfe=50.25)


def test_the_shipped_published_rows_against_our_protocol():
    ours = TableRow(origin="this run: evaluate", data="cifar10", model="x", num_samples=1000,
                    features="clean-fid Inception vs test split")
    rows = tables.published_rows(load_published(), "cifar10", "cifar10", ours)
    assert rows[0].comparison == ("same data set, different protocol: 10000 samples vs our 1000; "
                                  "TF Inception vs our clean-fid Inception vs test split; "
                                  "reference statistics: training set")
    assert all("match" not in r.comparison for r in rows)
    assert "50000 samples" in rows[-1].comparison and rows[-1].protocol.startswith("FID: quoted in the PFGM++ README")
    assert rows[0].protocol.startswith("FID, IS: 10k samples, TF Inception") and "NFE: official RK45" in rows[0].protocol
    ev = dict(features="inception", fid_mode="legacy_tensorflow", fid_reference="train")
    same = TableRow(origin="this run: evaluate", data="cifar10", model="x", num_samples=50000,
                    features=tables.features_text(ev))
    by_model = {r.model: r for r in tables.published_rows(load_published(), "cifar10", "cifar10", same)}
    # The configs' protocol (50k samples per set, legacy_tensorflow, train split) is the published one.
    assert by_model["PFGM++ NCSN++ D=128"].comparison == (
        "same data set, same protocol (50000 samples, TF Inception = our clean-fid Inception (legacy_tensorflow), "
        "training set statistics): published FID is the best of 3 seed sets: compare with our fid_min")
    assert "fid_min" not in by_model["PFGM DDPM++"].comparison
    assert "10000 samples vs our 50000" in by_model["PFGM DDPM++"].comparison
    clean = TableRow(origin="this run: evaluate", data="cifar10", model="x", num_samples=50000,
                     features=tables.features_text({**ev, "fid_mode": "clean"}))
    assert tables.published_rows(load_published(), "cifar10", "cifar10", clean)[2].comparison.startswith(
        "same data set, different protocol: TF Inception vs our clean-fid Inception (clean) vs train split")
