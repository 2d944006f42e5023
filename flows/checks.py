"""What a stage needs beyond valid params: a device this machine has, the prepared data, the files of
earlier stages. Params validation cannot see them (they depend on the machine and on what ran before),
yet all are known before any work: each flow's `main` calls its `check_<stage>` before Prefect or MLflow start,
and `python -m flows.cli` checks the devices before a pipeline starts. Every refusal is an exception
(a ParamsError, or FileNotFoundError for a missing file) whose message leads with the key to change, so
the command line prints `error: <key>: ...` and exits 2.

Nothing here imports torch, Prefect or MLflow at import time (the front door, python -m flows, runs these
checks before the stage imports them): torch only when a cuda or mps device must be asked for.
"""
from __future__ import annotations

import ctypes
import re
import sys
from pathlib import Path

from flows.params import (DataParams, EvaluateParams, Params, ParamsError, ReportParams, SweepParams,
                           TrainParams)
from pfgm.datafiles import MANIFEST, check_raw_files

#: The trained model's file name inside train.out (what the train stage writes, the later stages read).
MODEL_FILE = "model.pt"
#: Devices every machine has, and those check_device asks the machine for; any other is refused without
#: importing torch (the pipeline runs on cpu, cuda and mps only).
_EVERY_MACHINE, _MACHINE_DEVICE = re.compile(r"auto|cpu(:\d+)?"), re.compile(r"(cuda|mps)(:\d+)?")


def check_device(key: str, spec: str) -> None:
    """`auto`, `cpu`, or a device this machine has (cuda, cuda:N, mps); ParamsError naming `key` otherwise."""
    if _EVERY_MACHINE.fullmatch(spec):
        return
    if not _MACHINE_DEVICE.fullmatch(spec):
        raise ParamsError(f"{key}: {spec!r} is not a device; use auto, cpu, cuda or cuda:N")
    if spec.startswith("cuda") and no_cuda_driver():
        raise ParamsError(f"{key}: {spec} asked for, but this machine has no CUDA device; use auto or cpu")
    import torch  # only now: asking the machine for its devices needs it, and importing it takes seconds

    device = torch.device(spec)
    if device.type == "cuda":
        # device_count asks the driver without starting a CUDA context: cheap, and safe before a fork.
        count = torch.cuda.device_count()
        if count == 0:
            raise ParamsError(f"{key}: {spec} asked for, but this machine has no CUDA device; use auto or cpu")
        if device.index is not None and device.index >= count:
            raise ParamsError(f"{key}: {spec} asked for, but this machine has {count} CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}; use one of them or auto")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ParamsError(f"{key}: mps asked for, but it is not available here; use auto or cpu")


def no_cuda_driver() -> bool:
    """True on Linux when the NVIDIA driver's library (libcuda.so.1) cannot be loaded: torch then sees no CUDA
    device either, and saying so this way takes milliseconds instead of a torch import. Loading the library
    starts nothing (no cuInit), so a later fork is unaffected. False elsewhere: there torch is asked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return True
    return False


def check_devices(params: Params) -> None:
    """check_device for every section that has a `device` key."""
    for name in Params.model_fields:
        section = getattr(params, name)
        if "device" in type(section).model_fields:
            check_device(f"{name}.device", section.device)


def require_prepared(data_out: str) -> None:
    """The prepare stage has written data.out (its manifest is the last file it writes)."""
    if not (Path(data_out) / MANIFEST).is_file():
        raise FileNotFoundError(f"data.out: no prepared data at {data_out} (run the prepare stage first: "
                                "dvc repro prepare)")


def require_file(key: str, path: str | Path, remedy: str) -> None:
    """`path` exists as a file; FileNotFoundError naming `key` and what to do otherwise."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}: {path} not found: {remedy}")


def _require_model(key: str, path: str | Path) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}: no trained model at {path} (run the train stage first: dvc repro train)")


def check_prepare(data: DataParams) -> None:
    """What flows.prepare needs before it starts: the raw files of its data set (or their download)."""
    check_raw_files(data.name, data.root, download=data.download)


def check_train(train: TrainParams, data: DataParams) -> None:
    """What flows.train needs before it starts: its device and the prepared data."""
    check_device("train.device", train.device)
    require_prepared(data.out)


def check_evaluate(data: DataParams, train: TrainParams, evaluate: EvaluateParams) -> None:
    """What flows.evaluate needs before it starts: its device, the prepared data, the trained model."""
    check_device("evaluate.device", evaluate.device)
    require_prepared(data.out)
    _require_model("train.out", Path(train.out) / MODEL_FILE)


def check_sweep(data: DataParams, train: TrainParams, sweep: SweepParams) -> None:
    """What flows.sweep needs before it starts: its device, the prepared data, every checkpoint swept."""
    check_device("sweep.device", sweep.device)
    require_prepared(data.out)
    for checkpoint in sweep.checkpoints:
        _require_model("sweep.checkpoints", checkpoint)
    if not sweep.checkpoints:
        _require_model("train.out", Path(train.out) / MODEL_FILE)


def check_report(data: DataParams, train: TrainParams, evaluate: EvaluateParams, sweep: SweepParams,
                 report: ReportParams) -> None:
    """What flows.report needs before it starts: its device, the prepared data and the files of every
    earlier stage, and the published numbers."""
    check_device("report.device", report.device)
    require_prepared(data.out)
    _require_model("train.out", Path(train.out) / MODEL_FILE)
    require_file("evaluate.out", evaluate.out, "run the evaluate stage first: dvc repro evaluate")
    require_file("sweep.table", sweep.table, "run the sweep stage first: dvc repro sweep")
    require_file("report.published", report.published, "it ships with the repository as paper/published.csv")
