"""flows.registry and flows.pyfunc_model: pyfunc from code, versions, the champion alias, a real server."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.registry import CHAMPION, champion, log_pyfunc, register
from flows.tracking import configure
from helpers import SHAPE, make_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture
def tracking(store):
    configure(root=store)
    yield store
    while mlflow.active_run() is not None:
        mlflow.end_run()


def evaluated(checkpoint: Path, metrics: dict[str, float]) -> tuple[str, str]:
    """A finished run that logged `metrics` and the pyfunc model: (run id, model uri)."""
    with mlflow.start_run() as run:
        mlflow.log_metrics(metrics)
        info = log_pyfunc(checkpoint)
    return run.info.run_id, info.model_uri


def test_champion_moves_only_to_a_better_version(tracking, checkpoint):
    name = "registry-alias"
    assert champion(name) is None
    first, promoted = _register(checkpoint, name, fid=5.0)
    assert promoted and champion(name).version == first.version
    second, promoted = _register(checkpoint, name, fid=3.0)
    assert promoted and champion(name).version == second.version
    third, promoted = _register(checkpoint, name, fid=4.0)
    assert not promoted and champion(name).version == second.version
    assert [int(v.version) for v in (first, second, third)] == [1, 2, 3]
    assert third.tags["metric.fid"] == "4" and third.tags["evaluate_run_id"]


def register_args(checkpoint: Path, name: str, **metrics) -> dict:
    """The keyword arguments of flows.registry.register for a fresh finished run with `metrics`."""
    run_id, uri = evaluated(checkpoint, metrics)
    return dict(model_uri=uri, model_name=name, run_id=run_id, metrics=metrics, champion_metric="fid")


def _register(checkpoint: Path, name: str, **metrics):
    return register(**register_args(checkpoint, name, **metrics))


def test_failed_runs_and_non_finite_metrics_are_refused(tracking, checkpoint):
    with pytest.raises(ValueError, match="non-finite"):
        register(**register_args(checkpoint, "registry-refused", fid=math.nan))
    run_id, uri = evaluated(checkpoint, {"fid": 1.0})
    MlflowClient().set_terminated(run_id, status="FAILED")
    with pytest.raises(ValueError, match="FAILED"):
        register(uri, "registry-refused", run_id=run_id, metrics={"fid": 1.0}, champion_metric="fid")
    assert MlflowClient().search_registered_models(filter_string="name = 'registry-refused'") == []


def test_champion_predicts_samples(tracking, checkpoint):
    version, promoted = _register(checkpoint, "registry-predict", fid=2.0)
    assert promoted
    model = mlflow.pyfunc.load_model("models:/registry-predict@champion")
    request = pd.DataFrame([{"num_samples": 5, "method": "euler", "steps": 4, "seed": 3}])
    samples = model.predict(request)
    assert samples.shape == (5, *SHAPE) and samples.dtype == np.float32 and np.isfinite(samples).all()
    again = model.predict({"num_samples": 5, "method": "euler", "steps": 4, "seed": 3})
    np.testing.assert_array_equal(samples, again)
    with pytest.raises(ValueError, match="unknown predict keys"):
        model.predict({"num_samples": 2, "temperature": 1.0})
    # Models from code: the logged model holds our source file and the checkpoint, no pickle.
    logged = mlflow.artifacts.download_artifacts(f"models:/registry-predict/{version.version}")
    files = {p.name for p in Path(logged).rglob("*")}
    assert {"pyfunc_model.py", "model.pt", "requirements.txt"} <= files
    assert not any(f.endswith((".pkl", ".cloudpickle")) for f in files)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read().decode()
    return json.loads(body) if body.strip().startswith("{") else {"text": body}


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=5.0) as response:
        return json.loads(response.read().decode())


def test_tracking_server_serves_runs_metrics_and_champion(tmp_path, monkeypatch, checkpoint):
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    experiment_id = configure(root=tmp_path)
    version, _ = _register(checkpoint, "served-model", fid=1.5)
    run_id = version.tags["evaluate_run_id"]

    port = _free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{db}", "--default-artifact-root", str(tmp_path / "artifacts"),
               "--workers", "1"]
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(f"{base}/health", timeout=1.0):
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not answer /health:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.5)

        found = _post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
        served = {r["info"]["run_id"]: r for r in found}
        assert run_id in served and served[run_id]["info"]["status"] == "FINISHED"
        metrics = {m["key"]: m["value"] for m in served[run_id]["data"]["metrics"]}
        assert metrics["fid"] == 1.5

        query = urllib.parse.urlencode({"name": "served-model"})
        model = _get(f"{base}/api/2.0/mlflow/registered-models/get?{query}")["registered_model"]
        assert model["name"] == "served-model"
        assert {a["alias"]: a["version"] for a in model.get("aliases", [])} == {CHAMPION: str(version.version)}
        query = urllib.parse.urlencode({"name": "served-model", "alias": CHAMPION})
        held = _get(f"{base}/api/2.0/mlflow/registered-models/alias?{query}")["model_version"]
        assert held["version"] == str(version.version)
        assert {t["key"]: t["value"] for t in held["tags"]}["evaluate_run_id"] == run_id
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=5)
        except ProcessLookupError:
            pass
        log.close()
