"""The flows' command lines: bad input is one `error:` line and exit status 2, before any server starts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
    environment.pop("PFGM_DEBUG", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=120)


def _bad_params(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  seed: -1\ntrain:\n  lr: -1\n")  # every stage reads data or train
    return path


def test_the_default_params_and_a_paper_config_without_its_raw_data(tmp_path):
    ok = _run("-m", "flows.cli", str(ROOT / "params.yaml"), cwd=tmp_path)
    assert ok.returncode == 0 and ok.stderr == ""
    missing = _run("-m", "flows.cli", str(ROOT / "configs" / "cifar10-ddpmpp.yaml"), cwd=tmp_path)
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cifar10: missing") and "data/raw" in lines[0]


def test_a_bad_params_file_is_one_line_naming_the_key(tmp_path):
    checked = _run("-m", "flows.cli", str(_bad_params(tmp_path)), cwd=tmp_path)
    assert checked.returncode == 2
    assert checked.stderr.strip().splitlines() == [checked.stderr.strip()]
    assert "data.seed" in checked.stderr and "Traceback" not in checked.stderr


@pytest.mark.parametrize("stage", ["prepare", "train", "evaluate", "sweep", "report"])
def test_every_stage_refuses_bad_params_in_one_line_writing_nothing(tmp_path, stage):
    run = _run("-m", f"flows.{stage}", "--params", str(_bad_params(tmp_path)), cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and run.stderr.startswith("error: ")
    assert ("train.lr" in run.stderr or "data.seed" in run.stderr) and "Traceback" not in run.stderr
    assert "temporary server" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no mlflow.db, no outputs


def test_debug_lets_the_traceback_through(tmp_path):
    run = _run("-m", "flows.train", "--params", str(_bad_params(tmp_path)), "--debug", cwd=tmp_path)
    assert run.returncode != 0 and "Traceback" in run.stderr and ("train.lr" in run.stderr or "data.seed" in run.stderr)
