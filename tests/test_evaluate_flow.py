"""flows.evaluate: sample a tiny checkpoint on real digits, score it, log it, register it."""
from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from flows.params import EvaluateParams, ParamsError
from helpers import SHAPE, count_extractions, make_checkpoint, save_fake_inception
from pfgm import data as pdata

def small_params(tmp_path: Path, **overrides) -> EvaluateParams:
    values = dict(out=str(tmp_path / "metrics" / "evaluate.json"), device="cpu", method="euler", steps=8,
                  num_samples=96, batch_size=48, bpd_images=8, hutchinson=1, model_name="evaluate-test",
                  z_exp=None, bpd_z_min=None)  # the settings these tests were written for
    return EvaluateParams(**{**values, **overrides})


def runs(**filters) -> list:
    return mlflow.search_runs(search_all_experiments=True, output_format="list", **filters)


def test_evaluate_digits_end_to_end(prefect_test_env, tracking, digits, tmp_path):
    from flows.evaluate import evaluate

    data = pdata.load_split(digits, "train")
    model_path = make_checkpoint(tmp_path / "models" / "model.pt", data=data, steps=30, run_id="train-run-0")
    params = small_params(tmp_path)
    result = evaluate(params, data_dir=str(digits), model_path=str(model_path))

    numeric = ("fid", "fid_untrained", "fid_floor", "bpd", "nfe", "nfe_max", "nfe_untrained",
               "seconds_per_sample", "num_samples", "kid", "fid_seed0", "kid_seed0")
    assert all(math.isfinite(result[k]) for k in numeric), result
    assert result["method"] == "euler" and result["features"] == "digits" and result["num_samples"] == 96
    # One sample set (evaluate.seed): its FID is the mean and the min, with no spread.
    assert result["fid_seed0"] == result["fid"] == result["fid_min"] and result["fid_std"] == 0.0
    assert result["kid_seed0"] == result["kid"] > 0  # 30 training steps: far from the data
    assert (result["fid_reference"], result["fid_mode"], result["quantize"], result["seeds"]) == (
        "test", None, "round", "0")
    assert result["nfe"] == 8 and result["nfe_untrained"] == 20
    assert 0 < result["fid_floor"] < result["fid_untrained"]
    assert json.loads(Path(params.out).read_text()) == result

    run = mlflow.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["train_run_id"] == "train-run-0" and run.data.params["method"] == "euler"
    assert run.data.metrics["fid"] == pytest.approx(result["fid"])
    assert run.data.metrics["kid"] == pytest.approx(result["kid"])
    assert run.data.params["fid_reference"] == "test" and run.data.params["fid_features"] == "digits CNN"
    assert len(run.data.params["fid_reference_key"]) == 64 and run.data.params["fid_mode"] == "None"
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"samples.png", "samples_untrained.png"} <= artifacts

    version = MlflowClient().get_model_version_by_alias("evaluate-test", "champion")
    assert int(version.version) == result["model_version"] and result["champion"] == 1
    assert version.tags["evaluate_run_id"] == result["run_id"]
    samples = mlflow.pyfunc.load_model("models:/evaluate-test@champion").predict(
        {"num_samples": 3, "method": "euler", "steps": 4, "seed": 1})
    assert samples.shape == (3, *SHAPE)


def test_seed_sets_train_reference_truncation_and_the_cache(prefect_test_env, tracking, digits, tmp_path,
                                                            monkeypatch):
    from flows.evaluate import evaluate

    model_path = make_checkpoint(tmp_path / "model.pt", data=pdata.load_split(digits, "train"), steps=20)
    sizes = count_extractions(monkeypatch)
    common = dict(seed=3, num_samples=64, batch_size=64, bpd_images=0, register_model=False,
                  stats_cache=str(tmp_path / "fid-stats"))
    single = evaluate(small_params(tmp_path, **common), data_dir=str(digits), model_path=str(model_path))
    assert sorted(n for n in sizes if n > 64) == [300]  # the test split's features, computed once
    sizes.clear()
    params = small_params(tmp_path, **common, seeds=[3, 5], fid_reference="train", quantize="truncate")
    sets = evaluate(params, data_dir=str(digits), model_path=str(model_path))
    assert sorted(n for n in sizes if n > 64) == [1497]  # the train split's; the test split's came from the cache
    fids = [sets["fid_seed3"], sets["fid_seed5"]]
    assert sets["fid"] == pytest.approx(np.mean(fids)) and sets["fid_min"] == min(fids)
    assert sets["fid_std"] == pytest.approx(np.std(fids, ddof=1)) and fids[0] != fids[1]
    assert sets["kid"] == pytest.approx(np.mean([sets["kid_seed3"], sets["kid_seed5"]]))
    assert sets["fid_floor"] == single["fid_floor"]  # the floor stays train vs test
    assert sets["fid_seed3"] != single["fid"]  # same samples, other reference and quantisation
    assert sets["nfe"] == 8 and (sets["fid_reference"], sets["quantize"], sets["seeds"]) == ("train", "truncate", "3,5")
    run = mlflow.get_run(sets["run_id"])
    assert run.data.params["seeds"] == "3,5" and run.data.params["fid_reference"] == "train"
    assert run.data.metrics["fid_seed5"] == pytest.approx(sets["fid_seed5"])
    # The second run of the same settings extracts the samples' features only, and scores the same.
    sizes.clear()
    again = evaluate(params, data_dir=str(digits), model_path=str(model_path))
    assert all(n <= 64 for n in sizes) and len(sizes) == 4  # two sets, the untrained samples, the floor's rows
    assert {k: again[k] for k in ("fid", "kid", "fid_floor")} == {k: sets[k] for k in ("fid", "kid", "fid_floor")}


def test_inception_weights_download_in_the_checks(digits, tmp_path, monkeypatch):
    """evaluate.download_weights: fetched before any run (here from a file:// URL), or refused when corrupted."""
    from flows.evaluate import check_inputs
    from pfgm import inception
    from pfgm.metrics import WeightsChecksumError

    model_path = make_checkpoint(tmp_path / "model.pt")
    served = tmp_path / "served.pt"
    save_fake_inception(served)
    monkeypatch.setattr(inception, "INCEPTION_URL", served.resolve().as_uri())
    monkeypatch.setattr(inception, "INCEPTION_SHA256", "0" * 64)
    path = tmp_path / "weights" / "inception-2015-12-05.pt"
    params = small_params(tmp_path, features="inception", inception_path=str(path), fid_mode="legacy_tensorflow",
                          download_weights=True)
    with pytest.raises(WeightsChecksumError, match="0" * 64):
        check_inputs(params, str(digits), str(model_path))
    assert not path.exists() and list(path.parent.iterdir()) == []
    monkeypatch.setattr(inception, "INCEPTION_SHA256", inception.sha256_file(served))
    plan, _ = check_inputs(params, str(digits), str(model_path))
    assert path.read_bytes() == served.read_bytes() and plan.features == "inception"
    assert {"kid", "fid_min", "inception_score"} <= set(plan.metric_keys)
    legacy_pytorch = params.model_copy(update=dict(fid_mode="legacy_pytorch", download_weights=False))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    with pytest.raises(FileNotFoundError, match="pytorch-fid"):
        check_inputs(legacy_pytorch, str(digits), str(model_path))


def test_evaluate_pfgmpp_uses_heun_and_scores_bpd_through_the_denoiser(prefect_test_env, tracking, digits, tmp_path):
    from flows.evaluate import evaluate

    model_path = make_checkpoint(tmp_path / "model.pt", objective="pfgmpp")
    params = small_params(tmp_path, steps=4, num_samples=64, batch_size=64, register_model=False,
                          bpd_method="rk4", bpd_steps=4)
    result = evaluate(params, data_dir=str(digits), model_path=str(model_path))
    assert result["method"] == "edm_heun" and result["nfe"] == 2 * 4 - 1 and result["nfe_untrained"] == 19
    assert math.isfinite(result["fid"]) and "model_version" not in result
    assert math.isfinite(result["bpd"]) and result["bpd_se"] > 0 and 0 < result["bpd_baseline"] < math.log2(17)


def test_evaluate_points_logs_nll_and_no_fid(prefect_test_env, tracking, tmp_path):
    from flows.evaluate import evaluate

    folder = tmp_path / "swissroll"
    pdata.write_prepared(pdata.build_toy("swissroll", n_points=400, seed=0, test_fraction=0.25), folder)
    model_path = make_checkpoint(tmp_path / "model.pt", data=pdata.load_split(folder, "train"), steps=10,
                                 shape=(2,))
    params = small_params(tmp_path, hutchinson=None, num_samples=64, batch_size=64, champion_metric="nll",
                          model_name="evaluate-points")
    result = evaluate(params, data_dir=str(folder), model_path=str(model_path))
    assert result["features"] is None and "fid" not in result and "bpd" not in result
    assert math.isfinite(result["nll"]) and result["champion"] == 1
    with pytest.raises(ParamsError, match="evaluate.champion_metric"):
        evaluate(small_params(tmp_path, model_name="evaluate-points"), data_dir=str(folder),
                 model_path=str(model_path))


def test_non_finite_metric_fails_the_run_and_registers_nothing(prefect_test_env, tracking, digits, tmp_path):
    from flows.evaluate import evaluate
    from pfgm.evaluation import NonFiniteMetricError

    model_path = make_checkpoint(tmp_path / "model.pt", nan=True)
    params = small_params(tmp_path, num_samples=64, batch_size=64, model_name="evaluate-nan")
    with pytest.raises(NonFiniteMetricError, match="fid"):
        evaluate(params, data_dir=str(digits), model_path=str(model_path))
    failed = runs(filter_string="attributes.status = 'FAILED'")
    assert failed and all(r.info.status == "FAILED" for r in failed)
    assert not Path(params.out).exists()
    assert MlflowClient().search_registered_models(filter_string="name = 'evaluate-nan'") == []


def _write_params(tmp_path: Path, digits: Path, model_dir: Path, evaluate_section: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(f"data:\n  out: {digits}\ntrain:\n  out: {model_dir}\nevaluate:\n{evaluate_section}")
    return path


@pytest.mark.parametrize("section, message", [
    ("  num_samples: 1\n", "evaluate.num_samples"),
    ("  method: nope\n  device: cpu\n", "evaluate.method"),
    ("  method: euler\n  device: cpu\n", "evaluate.steps"),
    ("  method: euler\n  steps: 4\n  device: cpu\n  champion_metric: accuracy\n", "evaluate.champion_metric"),
    ("  method: euler\n  steps: 4\n  device: cpu\n  features: inception\n"
     "  inception_path: {tmp}/inception-2015-12-05.pt\n",
     "Inception weights not found at"),
    ("  seeds: [1, 1]\n", "evaluate.seeds"),
    ("  seeds: []\n", "evaluate.seeds"),
    ("  fid_reference: validation\n", "evaluate.fid_reference"),
    ("  fid_mode: tensorflow\n", "evaluate.fid_mode"),
    ("  quantize: floor\n", "evaluate.quantize"),
])
def test_invalid_settings_fail_before_any_run(prefect_test_env, tracking, digits, tmp_path, section, message):
    from flows.evaluate import main

    make_checkpoint(tmp_path / "models" / "model.pt")
    params = _write_params(tmp_path, digits, tmp_path / "models", section.format(tmp=tmp_path))
    before = len(runs())
    with pytest.raises((ParamsError, FileNotFoundError), match=message):
        main(["--params", str(params)])
    assert len(runs()) == before
    assert not (tmp_path / "metrics").exists()


def test_missing_model_names_train_out(prefect_test_env, tracking, digits, tmp_path):
    from flows.evaluate import main

    params = _write_params(tmp_path, digits, tmp_path / "nowhere", "  method: euler\n  steps: 4\n  device: cpu\n")
    with pytest.raises(FileNotFoundError, match="train.out: no trained model"):
        main(["--params", str(params)])
