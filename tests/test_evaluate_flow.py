"""flows.evaluate: sample a tiny checkpoint on real digits, score it, log it, register it.

The helpers `digits_dir` and `make_checkpoint` are shared with test_registry.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from flows.params import EvaluateParams, ParamsError
from pfgm import data as pdata
from pfgm.networks.mlp import FieldMLP
from pfgm.perturb import hyperparameters
from pfgm.training import PFGMLoss, PFGMppLoss, TrainConfig, create_state, save_checkpoint, train

SHAPE = (1, 8, 8)
_DIGITS: dict[str, Path] = {}


def digits_dir(tmp_path_factory) -> Path:
    """The real digits prepared once per session (with the FID classifier), under pytest's tmp."""
    if "dir" not in _DIGITS:
        prepared = pdata.add_digits_features(pdata.build_digits(seed=0, test_fraction=0.167), seed=0)
        out = tmp_path_factory.mktemp("digits") / "prepared"
        pdata.write_prepared(prepared, out)
        _DIGITS["dir"] = out
    return _DIGITS["dir"]


def make_checkpoint(path: Path, *, data: torch.Tensor | None = None, steps: int = 0, objective: str = "pfgm",
                    seed: int = 0, nan: bool = False, run_id: str | None = None,
                    shape: tuple[int, ...] = SHAPE) -> Path:
    """A tiny FieldMLP checkpoint as the train stage writes it (trained `steps` steps on `data`)."""
    generator = torch.Generator().manual_seed(seed)
    if data is None:
        data = torch.rand(256, *shape, generator=generator) * 2 - 1
    hp = hyperparameters(data)
    if objective == "pfgmpp":
        hp = dict(hp, D=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FieldMLP(data_shape=list(shape), hidden=32, depth=2, embed_dim=16,
                       embedding="log" if objective == "pfgm" else "positional")
    config = TrainConfig(steps=max(steps, 1), batch_size=128, lr=2e-3, warmup=0, ema_decay=0.5)
    state = create_state(net, config, generator)
    if steps:
        loss = PFGMLoss(M=hp["M"], small_batch=32) if objective == "pfgm" else PFGMppLoss(D=hp["D"])
        train(state, loss, data, config, progress=False)
    if nan:
        with torch.no_grad():
            for p in state.ema.module.parameters():
                p.fill_(float("nan"))
    metadata = dict(hyperparameters=hp, objective=objective, data=dict(name="digits", sha256="0" * 64),
                    mlflow_run_id=run_id)
    return save_checkpoint(path, state, config=config, metadata=metadata)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return digits_dir(tmp_path_factory)


def small_params(tmp_path: Path, **overrides) -> EvaluateParams:
    values = dict(out=str(tmp_path / "metrics" / "evaluate.json"), device="cpu", method="euler", steps=8,
                  num_samples=96, batch_size=48, bpd_images=8, hutchinson=1, model_name="evaluate-test")
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
               "seconds_per_sample", "num_samples")
    assert all(math.isfinite(result[k]) for k in numeric), result
    assert result["method"] == "euler" and result["features"] == "digits" and result["num_samples"] == 96
    assert result["nfe"] == 8 and result["nfe_untrained"] == 20
    assert 0 < result["fid_floor"] < result["fid_untrained"]
    assert json.loads(Path(params.out).read_text()) == result

    run = mlflow.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["train_run_id"] == "train-run-0" and run.data.params["method"] == "euler"
    assert run.data.metrics["fid"] == pytest.approx(result["fid"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"samples.png", "samples_untrained.png"} <= artifacts

    version = MlflowClient().get_model_version_by_alias("evaluate-test", "champion")
    assert int(version.version) == result["model_version"] and result["champion"] == 1
    assert version.tags["evaluate_run_id"] == result["run_id"]
    samples = mlflow.pyfunc.load_model("models:/evaluate-test@champion").predict(
        {"num_samples": 3, "method": "euler", "steps": 4, "seed": 1})
    assert samples.shape == (3, *SHAPE)


def test_evaluate_pfgmpp_uses_heun_and_skips_bpd(prefect_test_env, tracking, digits, tmp_path):
    from flows.evaluate import evaluate

    model_path = make_checkpoint(tmp_path / "model.pt", objective="pfgmpp")
    params = small_params(tmp_path, steps=4, num_samples=64, batch_size=64, register_model=False)
    result = evaluate(params, data_dir=str(digits), model_path=str(model_path))
    assert result["method"] == "heun" and result["nfe"] == 2 * 4 - 1 and result["nfe_untrained"] == 19
    assert "bpd" not in result and math.isfinite(result["fid"]) and "model_version" not in result


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
    from flows.evaluate import NonFiniteMetricError, evaluate

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
