"""Every configuration runs through DVC as `make main PARAMS=...` does, up to missing raw data.

The config becomes params.yaml of a scratch DVC repository holding the project's dvc.yaml and code;
`dvc dag` must parse the whole pipeline. Where the data set needs raw files (the paper data sets),
`dvc repro` must stop at stage `prepare` with one `error:` line naming the raw-data folder, no
traceback, exit status 2 from the stage; where it needs none (the digits), `dvc repro prepare` must
build it (the later stages are what `make main` and the flow tests run).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.params import load_params
from pfgm.data import MissingFilesError, check_raw_files

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
STAGES = ("prepare", "train", "evaluate", "sweep", "report")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A scratch DVC repository (no git) with the project's pipeline and code."""
    folder = tmp_path_factory.mktemp("project")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pfgm", "flows", "paper"):
        shutil.copytree(ROOT / name, folder / name, ignore=skip)
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    _dvc(folder, "init", "--no-scm", "-q", check=True)
    return folder


def _dvc(folder: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(folder / ".dvc" / "site_cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    dvc = Path(sys.executable).parent / "dvc"
    return subprocess.run([str(dvc), *args], cwd=folder, env=env, capture_output=True, text=True, check=check,
                          timeout=300)


def _needs_raw_files(config: Path) -> bool:
    data = load_params(config).data
    try:
        check_raw_files(data.name, ROOT / "nonexistent-raw-folder", download=False)
    except MissingFilesError:
        return True
    return False


NEED_RAW = [c for c in CONFIGS if _needs_raw_files(c)]
OFFLINE = [c for c in CONFIGS if c not in NEED_RAW]


def _use(project: Path, config: Path):
    """Copy `config` over the scratch params.yaml; `dvc dag` parses the whole pipeline with it."""
    params = load_params(config)  # valid as a whole, as `make main PARAMS=...` checks first
    shutil.copy(config, project / "params.yaml")
    dag = _dvc(project, "dag", "--dot")
    assert dag.returncode == 0, dag.stderr
    assert all(stage in dag.stdout for stage in STAGES)
    return params


def test_every_config_is_covered():
    assert NEED_RAW and OFFLINE and len(NEED_RAW) + len(OFFLINE) == len(CONFIGS)


@pytest.mark.parametrize("config", NEED_RAW, ids=[c.stem for c in NEED_RAW])
def test_a_paper_config_runs_through_dvc_to_its_missing_raw_data(project, config):
    params = _use(project, config)
    run = _dvc(project, "repro")
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "Traceback" not in output
    assert "ERROR: failed to reproduce 'prepare'" in output and "exited with 2" in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and params.data.name in errors[0] and params.data.root in errors[0]
    assert not (project / params.data.out).exists()  # nothing written


@pytest.mark.parametrize("config", OFFLINE, ids=[c.stem for c in OFFLINE])
def test_an_offline_config_prepares_its_data_through_dvc(project, config):
    params = _use(project, config)
    run = _dvc(project, "repro", "prepare")
    assert run.returncode == 0, run.stdout + run.stderr
    assert (project / params.data.out / "manifest.json").is_file()
