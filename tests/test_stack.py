"""The team stack for real: scripts/stack.py starts PostgreSQL, the MLflow and Prefect servers, a
Prefect process worker and a Dask cluster of two worker processes, all on 127.0.0.1 under pytest's
temporary folder, once for this module; the tests run the pipeline's flows against it, break it on
purpose, and `down` must leave no process behind.

What is checked: the default pipeline (a short training) logs to the PostgreSQL-backed server with
proxied artifacts and registers a champion that samples through the server; four sweep processes
writing at once lose nothing; a deployment triggered with `prefect deployment run` is executed by the
worker, and the nightly cron is stored; the tracking server killed and restarted during training,
a Dask worker killed during a sweep, and the database restarted are survived.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from flows.params import load_section
from helpers import make_checkpoint
from pfgm import data as pdata

pytestmark = [pytest.mark.stack, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "scripts" / "stack.py"
METRICS = ("loss", "grad_norm", "images_per_s", "lr")
POINT_METRICS = {"nfe", "nfe_max", "seconds_per_sample", "nonfinite_samples", "fid", "kid"}


def run_stack(folder: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    return subprocess.run([sys.executable, str(STACK), "--dir", str(folder), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def children_of(pids: set[int]) -> set[int]:
    """Every live descendant of `pids` (read from /proc): server workers, Dask processes, backends."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), set(pids)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Stack:
    folder: Path
    state: dict
    mlflow_uri: str
    prefect_api: str
    dask_address: str

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a flow process on the stack."""
        return {**os.environ, "MLFLOW_TRACKING_URI": self.mlflow_uri, "PREFECT_API_URL": self.prefect_api,
                "PREFECT_HOME": str(self.folder / "prefect"), **extra}

    def reload(self) -> dict:
        self.state = json.loads((self.folder / "stack.json").read_text())
        return self.state

    def service_pids(self) -> set[int]:
        return {entry["pid"] for entry in self.reload()["services"].values() if entry.get("pid")}

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        done = run_stack(self.folder, *args)
        assert done.returncode == 0, f"stack.py {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done


@pytest.fixture(scope="module")
def stack() -> Stack:
    # A temporary folder of our own, not under pytest's: as root, PostgreSQL runs as the `postgres` user,
    # which must traverse the folders above its data, and every pytest session that starts (another
    # terminal, another agent) resets the mode of pytest's root temporary folder to 0700.
    folder = Path(tempfile.mkdtemp(prefix="pfgm-stack-"))
    done = run_stack(folder, "up", "--ports", "auto", "--workers", "1", "--dask-workers", "2")
    started: set[int] = set()
    try:
        if done.returncode != 0:
            if "binaries are missing" in done.stderr and not os.environ.get("CI"):
                pytest.skip(f"no PostgreSQL here and not root: {done.stderr.strip()}")
            pytest.fail(f"stack.py up failed:\n{done.stdout}\n{done.stderr}")
        state = json.loads((folder / "stack.json").read_text())
        ports = state["ports"]
        stack = Stack(folder, state, f"http://127.0.0.1:{ports['mlflow']}", f"http://127.0.0.1:{ports['prefect']}/api",
                      f"tcp://127.0.0.1:{ports['dask']}")
        started = stack.service_pids()
        yield stack
    finally:
        # The first processes and those the tests restarted (stack.json), with every child of theirs.
        if (folder / "stack.json").exists():
            services = json.loads((folder / "stack.json").read_text()).get("services", {})
            started |= {entry["pid"] for entry in services.values() if entry.get("pid")}
        started |= children_of(started)
        stopped = run_stack(folder, "down")
        assert stopped.returncode == 0, stopped.stderr
        # Whatever the tests restarted is in stack.json; all of it, and every child, must be gone.
        state = json.loads((folder / "stack.json").read_text()) if (folder / "stack.json").exists() else {}
        assert all(not entry.get("pid") for entry in state.get("services", {}).values())
        time.sleep(0.5)
        assert [pid for pid in started if alive(pid)] == []
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def on_stack(stack, tmp_path, monkeypatch):
    """This process's MLflow and Prefect pointed at the stack; the working folder is tmp_path."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.tracking import configure

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_uri)
    monkeypatch.setenv("PREFECT_API_URL", stack.prefect_api)
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}):
        configure()
        yield stack
    while mlflow.active_run() is not None:
        mlflow.end_run()


def wait_for(check, timeout: float, message: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s: {message}")


def api(stack: Stack, path: str, payload: dict | None = None):
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(f"{stack.prefect_api}{path}", data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read().decode())


def write_yaml(path: Path, sections: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def sweep_section(tmp_path: Path, **overrides) -> dict:
    return dict(dict(out=str(tmp_path / "sweep.json"), table=str(tmp_path / "sweep.csv"), device="cpu",
                     num_samples=32, batch_size=32, z_exp=5.0, workers=4, stats_cache=str(tmp_path / "fid-stats"),
                     solvers=[dict(method="euler", steps=[2, 3]), dict(method="heun2", steps=[2, 3])]), **overrides)


# ---------------------------------------------------------------------------------------------------

def test_default_pipeline_on_the_postgres_server(on_stack, digits, tmp_path):
    """params.yaml's train and evaluate sections, shortened: every run FINISHED and complete on the
    server, artifacts through the server, the champion registered and sampling through the server."""
    from flows.evaluate import evaluate
    from flows.params import DataParams
    from flows.train import train

    stack = on_stack
    train_params = load_section(ROOT / "params.yaml", "train").model_copy(update=dict(
        out=str(tmp_path / "model"), device="cpu", steps=40, batch_size=128, warmup=5, checkpoint_every=20,
        sample_every=20))
    data = DataParams(out=str(digits))
    trained = train(train_params, data)
    evaluate_params = load_section(ROOT / "params.yaml", "evaluate").model_copy(update=dict(
        out=str(tmp_path / "evaluate.json"), device="cpu", method="euler", steps=10, num_samples=64, batch_size=64,
        bpd_images=4, bpd_steps=10, model_name="stack-digits", stats_cache=str(tmp_path / "fid-stats")))
    metrics = evaluate(evaluate_params, data_dir=str(digits), model_path=trained["model"])

    client = MlflowClient()
    experiment = client.get_experiment_by_name("pfgm")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs table
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "train digits FieldConvNet pfgm 40 steps lr 0.001 bs 128"
    assert run.data.params["steps"] == "40" and run.data.params["network"] == "FieldConvNet"
    for key in METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, 41)), key
    manifest = pdata.read_manifest(digits)
    from flows.tracking import DIGEST_LENGTH, data_version

    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "digits" and dataset.dataset.digest == data_version(manifest)[:DIGEST_LENGTH]
    assert json.loads(dataset.dataset.source)["uri"] == str(digits.resolve())
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"

    # Artifacts travel through the server: the checkpoint comes back byte for byte.
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="checkpoint/model.pt",
                                                dst_path=str(tmp_path / "download"))
    assert Path(local).read_bytes() == Path(trained["model"]).read_bytes()
    assert {a.path for a in client.list_artifacts(run.info.run_id, "samples")} == {"samples/step_00000020.png",
                                                                                   "samples/step_00000040.png"}
    assert list((stack.folder / "artifacts").rglob("model.pt"))  # stored by the server, in the stack's folder

    evaluation = client.get_run(metrics["run_id"])
    assert evaluation.info.status == "FINISHED" and evaluation.data.metrics["fid"] == pytest.approx(metrics["fid"])
    assert evaluation.info.run_name == "evaluate digits pfgm euler 10 steps 64 samples"
    (dataset,) = evaluation.inputs.dataset_inputs
    assert dataset.dataset.digest == data_version(manifest)[:DIGEST_LENGTH]
    version = client.get_model_version_by_alias("stack-digits", "champion")
    assert int(version.version) == metrics["model_version"]
    sampler = mlflow.pyfunc.load_model("models:/stack-digits@champion")
    assert sampler.metadata.get_input_schema() is None  # no signature: predict checks the keys itself
    samples = sampler.predict({"num_samples": 3, "method": "euler", "steps": 5, "seed": 1})
    assert samples.shape == (3, 1, 8, 8) and torch.isfinite(torch.from_numpy(samples)).all()


def test_four_sweep_processes_lose_no_run_and_no_metric(stack, digits, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "model.pt", data=pdata.load_split(digits, "train"), steps=10)
    processes, folders = [], []
    for i in range(4):
        folder = tmp_path / f"sweep{i}"
        folder.mkdir()
        section = sweep_section(folder, seed=i, num_samples=16, batch_size=16, solvers=[dict(method="euler", steps=[2, 3])])
        params = write_yaml(folder / "params.yaml", dict(data=dict(out=str(digits)), train=dict(out=str(tmp_path)),
                                                         sweep=section))
        log = open(folder / "log.txt", "w")
        processes.append((subprocess.Popen([sys.executable, "-m", "flows.sweep", "--params", str(params)], cwd=ROOT,
                                           env=stack.env(), stdout=log, stderr=subprocess.STDOUT), log))
        folders.append(folder)
    for process, log in processes:
        process.wait(timeout=600)
        log.close()
    for (process, _), folder in zip(processes, folders):
        assert process.returncode == 0, (folder / "log.txt").read_text()[-3000:]
    assert checkpoint.exists()

    client = MlflowClient(stack.mlflow_uri)
    for folder in folders:
        summary = json.loads((folder / "sweep.json").read_text())
        parent = client.get_run(summary["run_id"])
        assert parent.info.status == "FINISHED" and summary["points"] == 2
        children = client.search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
        assert all(set(r.data.metrics) == POINT_METRICS for r in children)
        table = (folder / "sweep.csv").read_text()
        assert all(r.info.run_id in table for r in children)


def test_a_deployment_run_is_executed_by_the_worker(stack, digits, tmp_path):
    from flows.schedule import DEFAULT_CRON

    nightly = api(stack, "/deployments/name/evaluate-champion/nightly")
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == [DEFAULT_CRON] and nightly["schedules"][0]["active"]
    assert nightly["work_pool_name"] == "pfgm"
    assert {d["name"] for d in api(stack, "/deployments/filter", {})} >= {"evaluate", "sweep", "nightly"}

    checkpoint = make_checkpoint(tmp_path / "model" / "model.pt", data=pdata.load_split(digits, "train"), steps=10)
    params = write_yaml(tmp_path / "params.yaml", dict(data=dict(out=str(digits)), train=dict(out=str(checkpoint.parent)),
                                                       sweep=sweep_section(tmp_path, workers=2)))
    done = subprocess.run([str(Path(sys.executable).with_name("prefect")), "deployment", "run", "sweep-stage/sweep",
                           "--param", f"params_path={params}"], capture_output=True, text=True, cwd=tmp_path,
                          env=stack.env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout).group(1)

    def finished():
        run = api(stack, f"/flow_runs/{flow_run_id}")
        return run if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    run = wait_for(finished, 420, f"flow run {flow_run_id} to finish")
    worker_log = Path(stack.state["services"]["prefect-worker-1"]["log"]).read_text()
    assert run["state_type"] == "COMPLETED", worker_log[-4000:]
    assert flow_run_id in worker_log and run["work_pool_name"] == "pfgm"  # picked up by the worker process
    parents = MlflowClient(stack.mlflow_uri).search_runs(
        [mlflow.MlflowClient(stack.mlflow_uri).get_experiment_by_name("pfgm").experiment_id],
        filter_string="tags.trigger = 'deployment'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not (tmp_path / "sweep.csv").exists()  # a deployment leaves the DVC outputs alone


def test_tracking_server_killed_and_restarted_during_training(stack, digits, tmp_path):
    """The train flow buffers its metrics and MLflow's client retries: the run ends FINISHED, every step once."""
    steps = 300
    params = write_yaml(tmp_path / "params.yaml", dict(
        data=dict(out=str(digits)),
        train=dict(out=str(tmp_path / "model"), device="cpu", network="FieldMLP",
                   network_kwargs=dict(hidden=32, depth=2), steps=steps, batch_size=64, small_batch=16, warmup=0,
                   checkpoint_every=25, sample_every=steps)))
    log = open(tmp_path / "train.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "flows.train", "--params", str(params)], cwd=ROOT,
                               env=stack.env(), stdout=log, stderr=subprocess.STDOUT)
    client = MlflowClient(stack.mlflow_uri)

    def first_flush():
        experiment = client.get_experiment_by_name("pfgm")  # the training may be the one to create it
        if experiment is None:
            return None
        for run in client.search_runs([experiment.experiment_id], filter_string="tags.`pfgm.logged_through` != ''"):
            if run.data.params.get("steps") == str(steps) and run.data.params.get("out") == str(tmp_path / "model"):
                return run
        return None

    try:
        run = wait_for(first_flush, 300, "the training's first metrics", interval=0.1)
        pid = stack.reload()["services"]["mlflow"]["pid"]
        os.killpg(pid, signal.SIGKILL)  # the server dies mid-run, as on a crash
        killed_at = time.time()
        time.sleep(2)
        stack.cli("start", "mlflow")
        back_at = time.time()
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    output = (tmp_path / "train.log").read_text()
    assert process.returncode == 0, output[-4000:]
    summary = json.loads(output.strip().splitlines()[-1])
    finished = client.get_run(run.info.run_id)
    assert summary["run_id"] == run.info.run_id and finished.info.status == "FINISHED"
    assert finished.info.end_time / 1000 > back_at > killed_at  # it logged on after the restart
    for key in METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, steps + 1)), key
    assert finished.data.tags["pfgm.logged_through"] == str(steps)


def test_dask_worker_killed_during_a_sweep(on_stack, digits, tmp_path):
    """The point of the lost worker runs again on another worker, in its own child run; nothing else moves."""
    from flows.params import SweepParams
    from flows.sweep import run_sweep

    stack = on_stack
    checkpoint = make_checkpoint(tmp_path / "model.pt", data=pdata.load_split(digits, "train"), steps=10)
    # Long points (hundreds of Heun steps, in batches) leave time to kill a worker in the middle of one.
    params = SweepParams(**sweep_section(tmp_path, runner="dask", dask_address=stack.dask_address, num_samples=200,
                                         batch_size=100, solvers=[dict(method="heun2", steps=[300, 320, 340])]))
    client = MlflowClient()
    killed: dict[str, str] = {}

    def kill_a_busy_worker():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for run in client.search_runs([client.get_experiment_by_name("pfgm").experiment_id],
                                          filter_string="attributes.status = 'RUNNING' and tags.stage = 'sweep-point'"):
                if run.data.params.get("checkpoint") == str(checkpoint) and "worker_pid" in run.data.tags:
                    os.kill(int(run.data.tags["worker_pid"]), signal.SIGKILL)
                    killed.update(pid=run.data.tags["worker_pid"], run_id=run.info.run_id)
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    try:
        result = run_sweep(params, data_dir=str(digits), checkpoints=[str(checkpoint)])
    finally:
        killer.join()
    assert killed, "no point was seen running"
    children = {r.info.run_id: r for r in client.search_runs(
        [client.get_experiment_by_name("pfgm").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")}
    assert sorted(children) == sorted(result.table["run_id"])  # one run per point, the retried one included
    assert all(r.info.status == "FINISHED" for r in children.values())
    retried = children[killed["run_id"]]
    assert retried.data.tags["attempt"] == "2" and retried.data.tags["worker_pid"] != killed["pid"]
    # Every point solved (this barely trained model's samples may diverge: a result, not a failure).
    assert list(result.table["nfe"]) == [600, 640, 680] and mlflow.get_run(result.run_id).info.status == "FINISHED"
    assert not alive(int(killed["pid"]))


def test_database_restart_is_survived(on_stack):
    """PostgreSQL killed (immediate shutdown) and started again: both servers answer from the same data."""
    stack = on_stack
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name("pfgm").experiment_id
    before = client.create_run(experiment_id, run_name="before the restart").info.run_id
    client.log_metric(before, "x", 1.0, step=1)
    stack.cli("kill", "postgres")
    stack.cli("start", "postgres")

    after = client.create_run(experiment_id, run_name="after the restart").info.run_id  # retried until it answers
    client.log_metric(after, "x", 2.0, step=1)
    client.set_terminated(after)
    assert [m.value for m in client.get_metric_history(before, "x")] == [1.0]
    assert client.get_run(after).info.status == "FINISHED"

    def prefect_reads():
        try:
            return api(stack, "/deployments/name/evaluate-champion/nightly")
        except OSError:
            return None

    assert wait_for(prefect_reads, 60, "the Prefect server to read its database again")["name"] == "nightly"
    def not_answering() -> list[str]:
        status = json.loads(stack.cli("status").stdout)
        return [name for name, service in status.items() if not (service["alive"] and service["answering"])]

    # Services reconnect on their own schedule (the Prefect worker's heartbeat, the Dask nanny's restart of
    # a worker an earlier test killed): all must be back within a minute, none may have died.
    lagging = []
    deadline = time.monotonic() + 60
    while (lagging := not_answering()) and time.monotonic() < deadline:
        time.sleep(1)
    assert lagging == [], f"not alive and answering after the database restart: {lagging}"
