"""flows.sweep: a grid of sampler settings on tiny checkpoints, four workers writing one SQLite store.

Checkpoints and data come from tests/helpers.py and conftest.py (real digits, tiny FieldMLPs).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.params import ParamsError, SweepParams
from helpers import count_extractions, make_checkpoint
from pfgm import data as pdata

COLUMNS = ["checkpoint", "solver", "method", "steps", "rtol", "atol", "nfe", "nfe_max", "seconds_per_sample",
           "fid", "run_id"]
POINT_METRICS = {"nfe", "nfe_max", "seconds_per_sample", "nonfinite_samples"}


def small_params(tmp_path: Path, **overrides) -> SweepParams:
    values = dict(out=str(tmp_path / "metrics" / "sweep.json"), table=str(tmp_path / "metrics" / "sweep.csv"),
                  device="cpu", num_samples=32, batch_size=32, z_exp=5.0, workers=4,
                  solvers=[dict(method="dopri5", tolerances=[1e-1, 1e-2]), dict(method="euler", steps=[2, 4, 8]),
                           dict(method="heun", steps=[2, 3, 4]),
                           dict(method="dpmpp_2m", steps=[3], schedule="power", rho=5.0)])
    return SweepParams(**{**values, **overrides})


def children(parent_id: str) -> list:
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def all_runs() -> list:
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_four_workers_lose_no_run_and_no_metric(prefect_test_env, tracking, digits, trained, tmp_path):
    from flows.sweep import run_sweep

    params = small_params(tmp_path)
    result = run_sweep(params, data_dir=str(digits), checkpoints=[str(trained)])
    table = result.table

    assert list(table.columns[: len(COLUMNS)]) == COLUMNS and len(table) == 9
    assert list(table["solver"]) == ["RK45 tol=1e-1", "RK45 tol=1e-2", "Euler 2 steps", "Euler 4 steps",
                                     "Euler 8 steps", "Heun 2 steps", "Heun 3 steps", "Heun 4 steps",
                                     "DPM-Solver++(2M) [rho 5] 3 steps"]
    fixed = table[table["method"] != "dopri5"]
    assert list(fixed["nfe"]) == [2, 4, 8, 3, 5, 7, 3]  # Euler, DPM-Solver++(2M): one a step; Heun: 2 steps - 1
    assert fixed["rtol"].isna().all() and table.loc[:1, "steps"].isna().all()
    assert list(fixed["schedule"]) == ["ln_z"] * 6 + ["power"] and fixed["rho"].iloc[-1] == 5.0
    assert table.loc[:1, "schedule"].isna().all()  # adaptive methods have no grid
    assert table["fid"].map(math.isfinite).all() and (table["nonfinite_samples"] == 0).all()

    parent = mlflow.get_run(result.run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "sweep"
    assert parent.data.tags["stage"] == "sweep"
    assert {a.path for a in MlflowClient().list_artifacts(result.run_id)} == {"sweep.csv", "sweep.md"}

    runs = children(result.run_id)
    assert len(runs) == 9 and {r.info.run_id for r in runs} == set(table["run_id"])
    for run in runs:
        row = table[table["run_id"] == run.info.run_id].iloc[0]
        assert run.info.status == "FINISHED" and run.data.tags["diverged"] == "false"
        assert set(run.data.metrics) == POINT_METRICS | {"fid", "kid"}
        assert run.data.metrics["fid"] == pytest.approx(row["fid"]) and run.data.metrics["nfe"] == row["nfe"]
        assert run.data.metrics["kid"] == pytest.approx(row["kid"])
        assert run.data.params["solver"] == row["solver"] and run.data.params["checkpoint"] == str(trained)
        assert {a.path for a in MlflowClient().list_artifacts(run.info.run_id)} == {"samples.png"}

    on_disk = pd.read_csv(params.table)
    assert list(on_disk.columns[: len(COLUMNS)]) == COLUMNS and list(on_disk["run_id"]) == list(table["run_id"])
    assert list(on_disk.columns[len(COLUMNS):]) == ["objective", "nonfinite_samples", "kid", "schedule", "rho"]
    assert table["kid"].map(math.isfinite).all()
    assert parent.data.params["fid_reference"] == "test" and parent.data.params["quantize"] == "round"
    summary = json.loads(Path(params.out).read_text())
    assert summary == result.summary and summary["points"] == 9 and summary["run_id"] == result.run_id
    assert summary["fid_best"] == pytest.approx(table["fid"].min())


def test_same_prior_draw_for_every_point(prefect_test_env, tracking, digits, trained, tmp_path):
    """Two sweeps of one setting with the same seed give the same FID: the prior draw is seeded."""
    from flows.sweep import run_sweep

    params = small_params(tmp_path, solvers=[dict(method="euler", steps=[3])], workers=1)
    first = run_sweep(params, data_dir=str(digits), checkpoints=[str(trained)]).table
    second = run_sweep(params, data_dir=str(digits), checkpoints=[str(trained)]).table
    assert first["fid"].iloc[0] == pytest.approx(second["fid"].iloc[0], rel=1e-9)


def test_pfgmpp_sweeps_edm_heun(prefect_test_env, tracking, digits, tmp_path):
    from flows.sweep import run_sweep

    model = make_checkpoint(tmp_path / "pfgmpp.pt", objective="pfgmpp")
    params = small_params(tmp_path, heun_steps=[2, 4], workers=2)
    result = run_sweep(params, data_dir=str(digits), checkpoints=[str(model)], labels=["pfgmpp"])
    table = result.table
    assert list(table["solver"]) == ["EDM Heun 2 steps", "EDM Heun 4 steps"]
    assert set(table["method"]) == {"edm_heun"} and list(table["nfe"]) == [3, 7]  # 2 steps - 1
    assert list(table["checkpoint"]) == ["pfgmpp", "pfgmpp"] and table["fid"].map(math.isfinite).all()
    assert {r.data.params["method"] for r in children(result.run_id)} == {"edm_heun"}


def test_points_get_no_fid(prefect_test_env, tracking, tmp_path):
    from flows.sweep import run_sweep

    folder = tmp_path / "moons"
    pdata.write_prepared(pdata.build_toy("moons", n_points=300, seed=0, test_fraction=0.25), folder)
    model = make_checkpoint(tmp_path / "model.pt", data=pdata.load_split(folder, "train"), steps=10, shape=(2,))
    params = small_params(tmp_path, solvers=[dict(method="euler", steps=[4]), dict(method="dopri5",
                                                                                tolerances=[1e-2])])
    result = run_sweep(params, data_dir=str(folder), checkpoints=[str(model)])
    assert result.table["fid"].isna().all() and (result.table["nfe"] > 0).all()
    assert "fid_best" not in result.summary and result.summary["points"] == 2
    runs = children(result.run_id)
    assert len(runs) == 2 and all(set(r.data.metrics) == POINT_METRICS for r in runs)
    assert all(r.info.status == "FINISHED" for r in runs)


def test_diverging_points_are_results(prefect_test_env, tracking, digits, trained, tmp_path):
    """A NaN network: every point's samples are non-finite (dopri5 gives up), the sweep still finishes."""
    from flows.sweep import run_sweep

    broken = make_checkpoint(tmp_path / "nan.pt", nan=True)
    params = small_params(tmp_path, solvers=[dict(method="dopri5", tolerances=[1e-2]),
                                             dict(method="euler", steps=[3])])
    result = run_sweep(params, data_dir=str(digits), checkpoints=[str(trained), str(broken)],
                       labels=["trained", "broken"])
    table = result.table.set_index(["checkpoint", "solver"])
    assert table.loc["broken", "fid"].isna().all() and (table.loc["broken", "nonfinite_samples"] == 32).all()
    assert table.loc["broken", "kid"].isna().all() and table.loc["trained", "kid"].map(math.isfinite).all()
    assert table.loc["trained", "fid"].map(math.isfinite).all()
    assert math.isnan(table.loc[("broken", "RK45 tol=1e-2"), "nfe"])  # the solver gave up
    assert result.summary["diverged_points"] == 2 and result.summary["fid_best_checkpoint"] == "trained"

    runs = {r.info.run_id: r for r in children(result.run_id)}
    broken_runs = [runs[i] for i in table.loc["broken", "run_id"]]
    assert all(r.info.status == "FINISHED" and r.data.tags["diverged"] == "true" for r in broken_runs)
    assert any("underflow in dt" in r.data.tags.get("solver_error", "") for r in broken_runs)
    assert mlflow.get_run(result.run_id).info.status == "FINISHED"


def test_a_failing_point_fails_the_sweep_and_leaves_nothing_running(prefect_test_env, tracking, digits, trained,
                                                                    tmp_path, monkeypatch):
    import pfgm.sweeps as psweeps
    from flows.sweep import run_sweep
    from pfgm.sampling import generate

    def generate_or_fail(model, n, sampler, **kwargs):
        if sampler.method == "heun2":
            raise RuntimeError("out of memory (simulated)")
        return generate(model, n, sampler, **kwargs)

    monkeypatch.setattr(psweeps, "generate", generate_or_fail)
    params = small_params(tmp_path, solvers=[dict(method="euler", steps=[2, 3]), dict(method="heun2", steps=[2])])
    before = {r.info.run_id for r in all_runs()}
    with pytest.raises(RuntimeError, match="simulated"):
        run_sweep(params, data_dir=str(digits), checkpoints=[str(trained)])
    new = [r for r in all_runs() if r.info.run_id not in before]
    status = {(r.info.run_name, r.info.status) for r in new}
    assert status == {("sweep", "FAILED"), ("Euler 2 steps", "FINISHED"), ("Euler 3 steps", "FINISHED"),
                      ("Heun (ln z) 2 steps", "FAILED")}
    assert not Path(params.out).exists()


def test_sweep_reads_the_reference_features_evaluate_cached(prefect_test_env, tracking, digits, trained, tmp_path,
                                                            monkeypatch):
    """evaluate, then sweep with the same stats_cache and reference: the sweep extracts no reference features."""
    from flows.evaluate import evaluate
    from flows.params import EvaluateParams
    from flows.sweep import run_sweep

    sizes = count_extractions(monkeypatch)
    cache = str(tmp_path / "fid-stats")
    evaluate(EvaluateParams(out=str(tmp_path / "evaluate.json"), device="cpu", method="euler", steps=3, z_exp=None,
                            num_samples=32, batch_size=32, bpd_images=0, register_model=False, stats_cache=cache,
                            fid_reference="train", quantize="truncate"),
             data_dir=str(digits), model_path=str(trained))
    assert sorted(n for n in sizes if n > 32) == [300, 1497]  # the train reference and the test one (floor)
    sizes.clear()
    params = small_params(tmp_path, solvers=[dict(method="euler", steps=[3])], workers=1, stats_cache=cache,
                          fid_reference="train", quantize="truncate")
    table = run_sweep(params, data_dir=str(digits), checkpoints=[str(trained)]).table
    assert sizes == [32] and math.isfinite(table["fid"].iloc[0])  # the point's samples only


def _write_params(tmp_path: Path, digits: Path, model_dir: Path, sweep_section: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(f"data:\n  out: {digits}\ntrain:\n  out: {model_dir}\nsweep:\n  device: cpu\n{sweep_section}")
    return path


@pytest.mark.parametrize("section, message", [
    ("  solvers:\n    - {method: nope, steps: [2]}\n", "sweep.solvers.0.method"),
    ("  solvers:\n    - {method: euler}\n", "sweep.solvers.0.steps"),
    ("  solvers:\n    - {method: euler, steps: [4]}\n    - {method: dopri5}\n", "sweep.solvers.1.tolerances"),
    ("  solvers:\n    - {method: euler, tolerances: [1.0e-3]}\n", "sweep.solvers.0.tolerances"),
    ("  heun_steps: [0]\n", "sweep.heun_steps.0"),
    ("  workers: 0\n", "sweep.workers"),
    ("  num_samples: '8'\n", "sweep.num_samples"),
    ("  features: inception\n  inception_path: {tmp}/inception-2015-12-05.pt\n", "Inception weights not found at"),
    ("  fid_reference: validation\n", "sweep.fid_reference"),
    ("  fid_mode: tensorflow\n", "sweep.fid_mode"),
    ("  quantize: floor\n", "sweep.quantize"),
    ("  checkpoints: [{tmp}/missing.pt]\n", "sweep.checkpoints"),
])
def test_invalid_settings_fail_before_any_run(prefect_test_env, tracking, digits, trained, tmp_path, section,
                                              message):
    from flows.sweep import main

    params = _write_params(tmp_path, digits, trained.parent, section.replace("{tmp}", str(tmp_path)))
    before = len(all_runs())
    with pytest.raises((ParamsError, FileNotFoundError), match=message):
        main(["--params", str(params)])
    assert len(all_runs()) == before
    assert not (tmp_path / "metrics").exists()
