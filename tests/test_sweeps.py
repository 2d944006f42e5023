"""pfgm.sweeps: labels, settings from a base, points, drawing, metrics, and the table from hand-made rows."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import make_checkpoint
from pfgm import sweeps
from pfgm.sampling import Generated, SamplerSettings, load_trained
from pfgm.sweeps import Point

BASE = SamplerSettings(z_min=1e-2, z_exp=5.0, clip_prior=False)


@pytest.mark.parametrize("value, text", [(1e-4, "1e-4"), (2.5e-3, "2.5e-3"), (0.1, "1e-1"), (12.0, "1.2e1")])
def test_short_float(value, text):
    assert sweeps.short_float(value) == text


def test_solver_labels():
    assert sweeps.solver_label("dopri5", tolerance=1e-4) == "RK45 tol=1e-4"
    assert sweeps.solver_label("euler", steps=20) == "Euler 20 steps"
    assert sweeps.solver_label("dpmpp_2m", steps=6, rho=5.0) == "DPM-Solver++(2M) [rho 5] 6 steps"
    assert sweeps.solver_label("heun2", steps=3) == "Heun (ln z) 3 steps"
    assert sweeps.solver_label("edm_heun", steps=18) == "EDM Heun 18 steps"
    assert sweeps.solver_label("mystery", steps=2) == "mystery 2 steps"  # unknown methods keep their name


def test_adaptive_settings_take_each_tolerance_for_rtol_and_atol():
    settings = sweeps.solver_settings("dopri5", BASE, tolerances=[1e-3, 2.5e-4])
    assert [label for label, _ in settings] == ["RK45 tol=1e-3", "RK45 tol=2.5e-4"]
    assert [(s.method, s.rtol, s.atol, s.steps) for _, s in settings] == [("dopri5", 1e-3, 1e-3, None),
                                                                          ("dopri5", 2.5e-4, 2.5e-4, None)]
    assert all((s.z_min, s.z_exp, s.clip_prior) == (1e-2, 5.0, False) for _, s in settings)


def test_fixed_step_settings_take_each_step_count_on_the_grid():
    settings = sweeps.solver_settings("dpmpp_2m", BASE, steps=[4, 8], schedule="power", rho=5.0)
    assert [label for label, _ in settings] == ["DPM-Solver++(2M) [rho 5] 4 steps", "DPM-Solver++(2M) [rho 5] 8 steps"]
    assert settings[1][1] == SamplerSettings(method="dpmpp_2m", steps=8, schedule="power", rho=5.0, z_min=1e-2,
                                             z_exp=5.0, clip_prior=False)
    (label, euler), = sweeps.solver_settings("euler", BASE, steps=[10])
    assert label == "Euler 10 steps" and (euler.schedule, euler.rho, euler.rtol) == ("ln_z", None, 1e-4)


def test_edm_heun_settings():
    settings = sweeps.edm_heun_settings([5, 18], BASE)
    assert [label for label, _ in settings] == ["EDM Heun 5 steps", "EDM Heun 18 steps"]
    assert settings[0][1] == SamplerSettings(method="edm_heun", steps=5, z_min=1e-2, z_exp=5.0, clip_prior=False)


def test_checkpoint_labels():
    assert sweeps.checkpoint_labels(["a.pt", "b.pt"]) == ["a.pt", "b.pt"]
    assert sweeps.checkpoint_labels(["a.pt", "b.pt"], ("first", "second")) == ["first", "second"]
    with pytest.raises(ValueError, match="one distinct label per checkpoint"):
        sweeps.checkpoint_labels(["a.pt", "b.pt"], ["same", "same"])
    with pytest.raises(ValueError, match="one distinct label per checkpoint"):
        sweeps.checkpoint_labels(["a.pt", "b.pt"], ["only"])


def test_points_carry_the_method_the_model_samples_with(tmp_path):
    pfgmpp = load_trained(make_checkpoint(tmp_path / "pfgmpp.pt", objective="pfgmpp"), device="cpu")
    points = sweeps.model_points("pp", pfgmpp, sweeps.edm_heun_settings([2], BASE))
    assert points == [Point(checkpoint="pp", solver="EDM Heun 2 steps", method="edm_heun",
                            sampler=SamplerSettings(method="edm_heun", steps=2, z_min=1e-2, z_exp=5.0,
                                                    clip_prior=False))]


def test_settings_of_a_point_that_apply_to_its_method():
    adaptive = Point("c", "RK45 tol=1e-3", "dopri5", SamplerSettings(method="dopri5", rtol=1e-3, atol=2e-3))
    fixed = Point("c", "Euler 4 steps", "euler", SamplerSettings(method="euler", steps=4, schedule="power", rho=7.0))
    edm = Point("c", "EDM Heun 5 steps", "edm_heun", SamplerSettings(method="edm_heun", steps=5, rho=7.0))
    assert sweeps.solver_setting(adaptive) == dict(steps=None, rtol=1e-3, atol=2e-3)
    assert sweeps.solver_setting(fixed) == dict(steps=4, rtol=None, atol=None)
    assert sweeps.grid_setting(adaptive) == dict(schedule=None, rho=None)
    assert sweeps.grid_setting(fixed) == dict(schedule="power", rho=7.0)
    assert sweeps.grid_setting(edm) == dict(schedule=None, rho=None)  # EDM's own sigma grid


def test_draw_is_seeded_and_a_solver_that_gives_up_is_a_result(tmp_path):
    model = load_trained(make_checkpoint(tmp_path / "model.pt"), device="cpu")
    euler = SamplerSettings(method="euler", steps=3, z_exp=5.0)
    first, gave_up = sweeps.draw(model, euler, num_samples=6, batch_size=4, seed=3)
    second, _ = sweeps.draw(model, euler, num_samples=6, batch_size=4, seed=3)
    assert gave_up is None and first.x.shape == (6, *model.shape) and first.nfe == [3, 3]
    assert torch.equal(first.x, second.x)

    broken = load_trained(make_checkpoint(tmp_path / "nan.pt", nan=True), device="cpu")
    drawn, gave_up = sweeps.draw(broken, SamplerSettings(method="dopri5", rtol=1e-2, atol=1e-2, z_exp=5.0),
                                 num_samples=4, batch_size=4, seed=0)
    assert "underflow in dt" in gave_up and drawn.nfe == [] and drawn.seconds > 0
    assert drawn.x.shape == (4, *broken.shape) and drawn.x.isnan().all()


class FakeScorer:
    def sample_scores(self, x: torch.Tensor) -> dict[str, float]:
        return dict(fid=float(len(x)), kid=0.5)


def test_point_metrics():
    x = torch.zeros(4, 2)
    x[1, 0] = math.inf
    x[3, 1] = math.nan
    generated = Generated(x=x, nfe=[3, 6], seconds=2.0)
    assert sweeps.point_metrics(generated, None, 4) == dict(nfe=4.5, nfe_max=6.0, seconds_per_sample=0.5,
                                                            nonfinite_samples=2.0)
    scored = sweeps.point_metrics(generated, FakeScorer(), 4)
    assert scored["fid"] == 4.0 and scored["kid"] == 0.5 and scored["nfe"] == 4.5
    gave_up = sweeps.point_metrics(Generated(x=torch.full((2, 2), math.nan), nfe=[], seconds=1.0), None, 2)
    assert math.isnan(gave_up["nfe"]) and math.isnan(gave_up["nfe_max"]) and gave_up["nonfinite_samples"] == 2.0


def rows() -> list[dict]:
    """Three points by hand: an adaptive one, a fixed-step one on a power grid, a diverged one."""
    rk45 = Point("a", "RK45 tol=1e-3", "dopri5", SamplerSettings(method="dopri5", rtol=1e-3, atol=1e-3))
    dpm = Point("a", "DPM-Solver++(2M) [rho 5] 4 steps", "dpmpp_2m",
                SamplerSettings(method="dpmpp_2m", steps=4, schedule="power", rho=5.0))
    euler = Point("b", "Euler 2 steps", "euler", SamplerSettings(method="euler", steps=2))
    metrics = [dict(nfe=50.0, nfe_max=52.0, seconds_per_sample=0.25, nonfinite_samples=0.0, fid=12.5, kid=0.01),
               dict(nfe=4.0, nfe_max=4.0, seconds_per_sample=0.125, nonfinite_samples=0.0, fid=7.0, kid=0.02),
               dict(nfe=2.0, nfe_max=2.0, seconds_per_sample=0.5, nonfinite_samples=3.0, fid=math.nan,
                    kid=math.nan)]
    return [sweeps.table_row(point, "pfgm", m, f"run{i}") for i, (point, m) in enumerate(zip([rk45, dpm, euler],
                                                                                              metrics))]


def test_table_row_and_table():
    first = rows()[0]
    assert first == dict(checkpoint="a", solver="RK45 tol=1e-3", method="dopri5", steps=None, rtol=1e-3, atol=1e-3,
                         nfe=50.0, nfe_max=52.0, seconds_per_sample=0.25, fid=12.5, run_id="run0", objective="pfgm",
                         nonfinite_samples=0, kid=0.01, schedule=None, rho=None)
    no_fid = sweeps.table_row(Point("a", "Euler 2 steps", "euler", SamplerSettings(method="euler", steps=2)), "pfgm",
                              dict(nfe=2.0, nfe_max=2.0, seconds_per_sample=0.1, nonfinite_samples=0.0), "r")
    assert math.isnan(no_fid["fid"]) and math.isnan(no_fid["kid"])  # 2D points: no scorer

    table = sweeps.sweep_table(rows())
    assert list(table.columns) == [*sweeps.COLUMNS, *sweeps.EXTRA_COLUMNS]
    assert str(table["steps"].dtype) == "Int64" and str(table["nfe_max"].dtype) == "Int64"
    assert table["steps"].isna().tolist() == [True, False, False] and table["steps"].iloc[1] == 4
    assert table["rtol"].dtype == float and math.isnan(table["rtol"].iloc[1])
    assert table["schedule"].isna().iloc[0] and table["schedule"].iloc[1:].tolist() == ["power", "ln_z"]
    assert table["rho"].iloc[1] == 5.0 and table["rho"].isna().tolist() == [True, False, True]
    assert table["nonfinite_samples"].tolist() == [0, 0, 3]


def test_markdown_table():
    table = sweeps.sweep_table(rows())[["solver", "steps", "rtol", "nfe", "fid"]]
    assert sweeps.markdown_table(table) == (
        "| solver | steps | rtol | nfe | fid |\n"
        "|---|---|---|---|---|\n"
        "| RK45 tol=1e-3 |  | 0.001 | 50 | 12.5 |\n"
        "| DPM-Solver++(2M) [rho 5] 4 steps | 4 |  | 4 | 7 |\n"
        "| Euler 2 steps | 2 |  | 2 |  |\n")


def test_summary_names_the_best_finite_fid():
    table = sweeps.sweep_table(rows())
    assert sweeps.best_row(table)["solver"] == "DPM-Solver++(2M) [rho 5] 4 steps"
    assert sweeps.summarize(table, "parent") == dict(
        points=3, diverged_points=1, nfe_min=2.0, run_id="parent", fid_best=7.0,
        fid_best_solver="DPM-Solver++(2M) [rho 5] 4 steps", fid_best_nfe=4.0, fid_best_seconds_per_sample=0.125,
        fid_best_checkpoint="a")


def test_summary_without_a_finite_fid_and_ties():
    table = sweeps.sweep_table(rows())
    table["fid"] = math.nan
    assert sweeps.best_row(table) is None
    assert sweeps.summarize(table, "p") == dict(points=3, diverged_points=1, nfe_min=2.0, run_id="p")
    table["fid"] = [3.0, 3.0, 9.0]
    assert sweeps.best_row(table)["run_id"] == "run0"  # the first of equals
    summary = sweeps.summarize(table, "p")
    assert summary["fid_best"] == 3.0 and summary["fid_best_solver"] == "RK45 tol=1e-3"
