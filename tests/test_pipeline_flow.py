"""The whole pipeline end to end on a toy data set in a tmp dir: prepare -> train -> evaluate -> registry."""
from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.params import DataParams, EvaluateParams, Params, ReportParams, SweepParams, TrainParams
from flows.pipeline import pipeline


@pytest.mark.slow
def test_pipeline_end_to_end_on_moons(tmp_path, monkeypatch, prefect_test_env):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = Params(
        data=DataParams(name="moons", out=str(tmp_path / "data" / "moons"), n_points=600),
        train=TrainParams(out=str(tmp_path / "models" / "moons"), device="cpu", network="FieldMLP",
                          network_kwargs=dict(hidden=64, depth=2), steps=60, batch_size=256, small_batch=64,
                          lr=5e-4, warmup=10, checkpoint_every=30, sample_every=60),
        evaluate=EvaluateParams(out=str(tmp_path / "metrics.json"), device="cpu", num_samples=128,
                                batch_size=128, bpd_images=16, bpd_z_min=None, hutchinson=None, z_exp=None,
                                model_name="pfgm-moons", champion_metric="nll"),
        sweep=SweepParams(), report=ReportParams(),  # every section is given; the pipeline reads the first three
    )
    result = pipeline(params, root=str(tmp_path), history=str(tmp_path / "history.csv"))

    assert result["manifest"]["name"] == "moons"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == result["evaluate"] and metrics["champion"] == 1 and metrics["nfe"] > 0
    client = MlflowClient(uri)
    assert client.get_run(result["train"]["run_id"]).info.status == "FINISHED"
    assert client.get_run(metrics["run_id"]).info.status == "FINISHED"
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 61  # header + 60 steps

    mlflow.set_tracking_uri(uri)
    samples = mlflow.pyfunc.load_model("models:/pfgm-moons@champion").predict(
        {"num_samples": 5, "method": "euler", "steps": 10, "seed": 1})
    assert len(samples) == 5
