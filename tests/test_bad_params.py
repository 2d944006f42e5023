"""Bad input through the real command lines: one `error: <key path>: ...` line, exit status 2, quickly,
before any Prefect server or MLflow store exists, nothing written.

Each row takes the project's params.yaml, changes it (dotted key -> new value, DELETE removes the key),
runs one command on it in a scratch folder and names the key the one error line must lead with. The
stage rows run what dvc.yaml runs: the front door, python -m flows <stage> (flows/__main__.py).
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())
DELETE = object()
PREPARED = "{prepared}"  # a prepared data folder outside the scratch folder (the `prepared` fixture)
# The bound is generous: the commands refuse bad input before importing torch (about a second), but a busy
# shared machine is slow at anything; what it guards against is a Prefect server (10 s and more) or a
# training run starting. benchmarks/bad_input.py measures the seconds.
SECONDS = float(os.environ.get("PFGM_BAD_INPUT_SECONDS", "60"))


@dataclass(frozen=True)
class Case:
    command: str  # "cli" (python -m flows.cli FILE) or a stage (python -m flows <stage> --params FILE)
    changes: dict[str, Any]
    key: str  # what the error line starts with, after `error: `
    text: str | None = field(default=None)  # the whole file instead of changes to params.yaml


CASES = {
    "empty file": Case("cli", {}, "bad.yaml: the file is empty", text=""),
    "not YAML": Case("cli", {}, "bad.yaml: not valid YAML", text="data: [\n"),
    "section missing": Case("cli", {"train": DELETE}, "train: missing"),
    "unknown section": Case("cli", {"trian": {"steps": 1}}, "trian: Extra inputs"),
    "unknown key": Case("cli", {"train.lrr": 0.1}, "train.lrr: Extra inputs"),
    "negative seed": Case("cli", {"data.seed": -1}, "data.seed:"),
    "unknown data set": Case("cli", {"data.name": "mnist"}, "data.name:"),
    "string for a number": Case("cli", {"train.lr": "fast"}, "train.lr:"),
    "training into the root": Case("cli", {"train.out": "."}, "train.out: must name a folder of its own"),
    "data into the root": Case("cli", {"data.out": "./"}, "data.out: must name a folder of its own"),
    "unknown network": Case("cli", {"train.network": "UNet"}, "train.network:"),
    "unknown network argument": Case("cli", {"train.network_kwargs.widht": 3},
                                     "train.network_kwargs: widht: not an argument of FieldConvNet"),
    "missing GPU": Case("cli", {"train.device": "cuda:7"}, "train.device: cuda:7 asked for"),
    "not a device": Case("cli", {"evaluate.device": "gpu"}, "evaluate.device: 'gpu' is not a device"),
    "unknown solver": Case("cli", {"evaluate.method": "rk45"}, "evaluate.method: must be one of"),
    "fixed-step without steps": Case("cli", {"evaluate.method": "euler"}, "evaluate.steps: method 'euler' is fixed"),
    "report fixed-step without steps": Case("cli", {"report.method": "heun"}, "report.steps: method 'heun'"),
    "sweep solver without steps": Case("cli", {"sweep.solvers": [{"method": "euler"}]}, "sweep.solvers.0.steps:"),
    "power schedule without rho": Case("cli", {"evaluate.schedule": "power"}, "evaluate.rho: schedule power"),
    "likelihood solver": Case("cli", {"evaluate.bpd_method": "dpmpp_2m"}, "evaluate.bpd_method: dpmpp_2m steps"),
    "likelihood steps": Case("cli", {"evaluate.bpd_method": "rk4", "evaluate.bpd_steps": None},
                             "evaluate.bpd_steps: method 'rk4'"),
    "scheduler without dask": Case("cli", {"sweep.dask_address": "tcp://h:1"}, "sweep.dask_address:"),
    "prepare: bad fraction": Case("prepare", {"data.test_fraction": 1.5}, "data.test_fraction:"),
    "train: data not prepared": Case("train", {}, "data.out: no prepared data at data/prepared/digits"),
    "train: missing GPU": Case("train", {"train.device": "cuda:7"}, "train.device: cuda:7 asked for"),
    "train: section missing": Case("train", {"train": DELETE}, "train: missing section"),
    "evaluate: model missing": Case("evaluate", {"data.out": PREPARED}, "train.out: no trained model at"),
    "sweep: checkpoint missing": Case("sweep", {"data.out": PREPARED, "sweep.checkpoints": ["gone.pt"]},
                                      "sweep.checkpoints: no trained model at gone.pt"),
    "report: model missing": Case("report", {"data.out": PREPARED}, "train.out: no trained model at"),
}


def _changed(changes: dict[str, Any], prepared: Path) -> dict:
    params = copy.deepcopy(DEFAULT)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        section = params
        for name in parents:
            section = section.setdefault(name, {})
        if value is DELETE:
            del section[last]
        else:
            section[last] = str(prepared) if value == PREPARED else value
    return params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A folder that passes for prepared data (what the checks look for: its manifest)."""
    folder = tmp_path_factory.mktemp("prepared")
    (folder / "manifest.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")


def _environment(prefect_home: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(prefect_home),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    for name in ("PFGM_DEBUG", "PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)  # a flow reaching Prefect would start a server; MLflow would write mlflow.db here
    return env


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_naming_the_key(tmp_path, prepared, prefect_home, case):
    path = tmp_path / "bad.yaml"
    path.write_text(case.text if case.text is not None else yaml.safe_dump(_changed(case.changes, prepared)))
    args = ["-m", "flows.cli", path.name] if case.command == "cli" else \
        ["-m", "flows", case.command, "--params", path.name]
    started = time.monotonic()
    run = subprocess.run([sys.executable, *args], cwd=tmp_path, env=_environment(prefect_home),
                         capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    lines = run.stderr.splitlines()
    print(f"exit {run.returncode}, {elapsed:.1f} s: {run.stderr.strip()}")  # the table of cases, with -rP
    assert len(lines) == 1 and lines[0].startswith(f"error: {case.key}"), run.stderr
    assert run.returncode == 2 and run.stdout == ""
    assert elapsed < SECONDS, f"{elapsed:.1f} s"
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]  # no mlflow.db, no outputs
    assert not list(prefect_home.rglob("*.db"))  # no Prefect server ever started
