"""The front door (python -m flows <stage>) and the params check (python -m flows.cli) validate without
torch, Prefect or MLflow: importing them costs seconds, and bad input must be refused in about one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from flows import __main__ as front_door

ROOT = Path(__file__).resolve().parents[1]
FRONT_MODULES = ("flows.__main__", "flows.cli", "flows.checks", "flows.params", "pfgm.names", "pfgm.datafiles")
HEAVY = ("torch", "prefect", "mlflow")


def test_the_front_door_imports_no_torch_prefect_or_mlflow():
    # A fresh interpreter: this one has imported them long ago.
    code = (f"import sys\nfor name in {FRONT_MODULES!r}: __import__(name)\n"
            f"print(' '.join(name for name in {HEAVY!r} if name in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.split() == []


def test_every_stage_has_a_module_with_a_main():
    for stage in front_door.STAGES:
        assert (ROOT / "flows" / f"{stage}.py").is_file()
        assert "\ndef main(argv" in (ROOT / "flows" / f"{stage}.py").read_text()


def test_the_stage_gets_its_arguments_after_the_check(monkeypatch):
    calls = []
    monkeypatch.setitem(front_door.STAGES, "prepare", (("data",), lambda data: calls.append(("check", data.name))))
    monkeypatch.setattr(front_door.importlib, "import_module",
                        lambda name: SimpleNamespace(main=lambda argv: calls.append((name, argv))))
    front_door.main(["prepare", "--params", str(ROOT / "params.yaml"), "--extra", "1"])
    assert calls == [("check", "digits"), ("flows.prepare", ["--params", str(ROOT / "params.yaml"), "--extra", "1"])]


def test_a_failed_check_stops_before_the_stage_is_imported(monkeypatch, tmp_path):
    monkeypatch.setattr(front_door.importlib, "import_module", lambda name: pytest.fail(f"imported {name}"))
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text().replace("out: data/prepared/digits",
                                                                 f"out: {tmp_path / 'nothing'}", 1))
    with pytest.raises(FileNotFoundError, match="data.out: no prepared data"):
        front_door.main(["train", "--params", str(params)])


def test_a_missing_gpu_is_refused_without_torch_where_there_is_no_driver():
    from flows.checks import no_cuda_driver

    if not no_cuda_driver():
        pytest.skip("this machine has an NVIDIA driver: torch is asked for the devices")
    code = ("import sys\nfrom flows.checks import check_device\nfrom flows.params import ParamsError\n"
            "try:\n    check_device('train.device', 'cuda:7')\nexcept ParamsError as error:\n    print(error)\n"
            "print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.splitlines() == ["train.device: cuda:7 asked for, but this machine has no CUDA device; "
                                       "use auto or cpu", "False"]

