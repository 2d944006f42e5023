"""flows.robustness: the cells, the sampler protocol, the table, and a tiny end-to-end run on real digits."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from flows.params import ParamsError, RobustnessParams, TrainParams, load_experiment_section, load_sections

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "robustness-digits.yaml"

BACKBONES = [
    dict(name="weak", network="NCSNv2Small", network_kwargs=dict(channels=4, dilations=[]),
         embedding=dict(pfgm="log", pfgmpp="raw")),
    dict(name="reference", network="FieldConvNet", network_kwargs=dict(channels=8, blocks=1, groups=4, embed_dim=8),
         embedding=dict(pfgm="log", pfgmpp="positional")),
]
OBJECTIVES = [
    dict(name="PFGM", objective="pfgm"),
    dict(name="EDM (D=inf)", objective="pfgmpp", D=math.inf, train=dict(batch_size=32, small_batch=None)),
]


def tiny(tmp_path: Path, **overrides) -> RobustnessParams:
    values = dict(out=str(tmp_path / "reports"), models=str(tmp_path / "models"), backbones=BACKBONES,
                  objectives=OBJECTIVES, steps=[2, 3], norm_samples=8,
                  published=str(ROOT / "paper" / "backbone_robustness.csv"))
    return RobustnessParams.model_validate({**values, **overrides})


def tiny_train(**overrides) -> TrainParams:
    return TrainParams(**{**dict(steps=3, batch_size=64, small_batch=32, warmup=0, lr=1e-3, device="cpu",
                                 checkpoint_every=3, sample_every=3), **overrides})


def test_the_experiment_file_is_valid_and_compares_two_backbones_under_three_objectives():
    data, train, sweep = load_sections(EXPERIMENT, "data", "train", "sweep")
    params = load_experiment_section(EXPERIMENT, "robustness", RobustnessParams)
    assert [b.network for b in params.backbones] == ["NCSNv2Small", "FieldConvNet"]
    assert [(o.objective, o.D) for o in params.objectives] == [("pfgm", 1), ("pfgmpp", 128), ("pfgmpp", math.inf)]
    from flows.robustness import cells

    found = cells(train, params)
    assert len({cell.params.out for cell in found}) == 6
    # The same budget everywhere: steps, lr, seed, EMA; 128 trained rows a step for every objective.
    assert {(c.params.steps, c.params.lr, c.params.seed, c.params.ema_decay) for c in found} == {
        (train.steps, train.lr, train.seed, train.ema_decay)}
    assert {c.params.small_batch if c.params.objective == "pfgm" else c.params.batch_size for c in found} == {128}


def test_cells_fill_network_objective_embedding_and_folder(tmp_path):
    from flows.robustness import cells

    found = cells(tiny_train(), tiny(tmp_path))
    assert [c.label for c in found] == ["weak / PFGM", "weak / EDM (D=inf)", "reference / PFGM",
                                        "reference / EDM (D=inf)"]
    weak_edm = found[1].params
    assert weak_edm.network == "NCSNv2Small" and weak_edm.network_kwargs == dict(channels=4, dilations=[],
                                                                                 embedding="raw")
    assert weak_edm.objective == "pfgmpp" and weak_edm.D == math.inf and weak_edm.batch_size == 32
    assert found[0].params.network_kwargs["embedding"] == "log" and found[0].params.batch_size == 64
    assert weak_edm.out == str(tmp_path / "models" / "NCSNv2Small-edm-d-inf")


def test_a_bad_cell_is_named_before_anything_is_trained(tmp_path):
    from flows.robustness import cells

    objectives = [OBJECTIVES[0], dict(name="PFGM++", objective="pfgmpp", D=4, train=dict(lr=-1.0))]
    with pytest.raises(ParamsError, match=r"cell 'weak' x 'PFGM\+\+' \(robustness.objectives.1.train.*train.lr"):
        cells(tiny_train(), tiny(tmp_path, objectives=objectives))
    with pytest.raises(ValueError, match="names must be distinct"):
        tiny(tmp_path, objectives=[OBJECTIVES[0], OBJECTIVES[0]])
    with pytest.raises(ValueError, match=r"\.inf"):
        tiny(tmp_path, objectives=[dict(name="x", objective="pfgmpp", D=0.5)])


def test_one_protocol_for_every_objective():
    from flows.robustness import protocol_sweep
    from flows.params import SweepParams
    from flows.sweep import grid_samplers

    sweep = protocol_sweep(SweepParams(), tiny(Path("/tmp/unused")))
    pfgm, pfgmpp = grid_samplers(sweep, "pfgm"), grid_samplers(sweep, "pfgmpp")
    # PFGM: the official improved Euler in z on EDM's rho = 7 grid; PFGM++: EDM's Heun; same step counts.
    assert [(s.method, s.steps, s.schedule, s.rho) for _, s in pfgm] == [("heun", 2, "power", 7.0),
                                                                         ("heun", 3, "power", 7.0)]
    assert [(s.method, s.steps) for _, s in pfgmpp] == [("edm_heun", 2), ("edm_heun", 3)]


def test_the_sweep_table_becomes_one_row_per_cell_in_cell_order(tmp_path):
    from flows.robustness import cells
    from pfgm.robustness import table_rows

    found = cells(tiny_train(), tiny(tmp_path))
    sweep = pd.DataFrame([dict(checkpoint=c.label, steps=n, nfe=2 * n - 1, fid=10.0 * i + n)
                          for i, c in enumerate(reversed(found)) for n in (2, 3)])
    rows = table_rows([(c.backbone, c.objective) for c in found], sweep, [2, 3])
    assert [(r["backbone"], r["objective"], r["fid_3"]) for r in rows] == [
        ("weak", "PFGM", 33.0), ("weak", "EDM (D=inf)", 23.0), ("reference", "PFGM", 13.0),
        ("reference", "EDM (D=inf)", 3.0)]


@pytest.mark.slow
def test_tiny_experiment_end_to_end(prefect_test_env, tracking, digits, tmp_path):
    from flows.params import DataParams, SweepParams
    from flows.robustness import robustness

    data = DataParams(out=str(digits))
    sweep = SweepParams(out=str(tmp_path / "sweep.json"), table=str(tmp_path / "sweep.csv"), device="cpu",
                        num_samples=40, batch_size=40, workers=2, stats_cache=str(tmp_path / "stats"), z_exp=None)
    params = tiny(tmp_path)
    result = robustness(data, tiny_train(), sweep, params)

    out = Path(params.out)
    assert sorted(p.name for p in out.iterdir()) == sorted(["table.md", "table.csv", "norm_z.png", "norm_z.csv"])
    with open(out / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["backbone"], r["objective"]) for r in rows] == [("weak", "PFGM"), ("weak", "EDM (D=inf)"),
                                                               ("reference", "PFGM"), ("reference", "EDM (D=inf)")]
    assert all(float(r["nfe_2"]) == 3 and float(r["nfe_3"]) == 5 for r in rows)
    with open(out / "norm_z.csv", newline="") as f:
        norms = list(csv.DictReader(f))
    assert {(r["model"], r["variable"]) for r in norms if r["curve"] == "sampling"} == {
        ("weak / PFGM", "z"), ("weak / EDM (D=inf)", "sigma"), ("reference / PFGM", "z"),
        ("reference / EDM (D=inf)", "sigma")}
    run = mlflow.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "robustness"
    assert "fid_floor" in run.data.metrics and "norm_spread_training/weak/pfgm" in run.data.metrics
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)} == set(result["files"])
    trained = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                 filter_string="attributes.run_name LIKE 'train %'")
    assert len(trained) >= 4
