"""The pipeline's front door: a stage's bad input is refused in about a second, before the stage's
heavy imports.

    python -m flows <stage> --params params.yaml [the stage's own arguments]

runs `python -m flows.<stage> --params params.yaml ...` (what dvc.yaml runs, through this door), after
loading the params sections the stage reads and making its check from flows.checks (devices, prepared
data, the files of earlier stages, raw files). A stage module imports torch, Prefect and MLflow at its top,
several seconds before its `main` can look at anything; this module imports none of them, so a bad key
or a missing file gives its one `error: <key path>: ...` line (status 2, flows.cli) at once. The stage's
`main` then loads and checks the same sections again (cheaply) and runs.
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

from flows.checks import check_evaluate, check_prepare, check_report, check_sweep, check_train
from flows.cli import command_line
from flows.params import load_sections

#: Each stage: the params sections it reads, in the order its check takes them, and its check.
STAGES: dict[str, tuple[tuple[str, ...], Callable[..., None]]] = {
    "prepare": (("data",), check_prepare),
    "train": (("train", "data"), check_train),
    "evaluate": (("data", "train", "evaluate"), check_evaluate),
    "sweep": (("data", "train", "sweep"), check_sweep),
    "report": (("data", "train", "evaluate", "sweep", "report"), check_report),
}


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    door = argparse.ArgumentParser(prog="python -m flows", description=__doc__.splitlines()[0])
    door.add_argument("stage", choices=STAGES, help="the stage to run (its module: flows.<stage>)")
    door.add_argument("arguments", nargs=argparse.REMAINDER, help="the stage's arguments (--params FILE, ...)")
    # The stage's own parser reads the rest (and answers --help); here only its params file matters.
    stage = argparse.ArgumentParser(add_help=False)
    stage.add_argument("--params", default="params.yaml")
    stage.add_argument("-h", "--help", action="store_true")
    return door, stage


def main(argv: list[str] | None = None) -> Any:
    """Check the stage's params and inputs (flows.checks), then import flows.<stage> and return its
    main(arguments)."""
    door, stage_parser = _parsers()
    args = door.parse_args(argv)
    known, _ = stage_parser.parse_known_args(args.arguments)
    if not known.help:
        sections, check = STAGES[args.stage]
        check(*load_sections(known.params, *sections))
    # Looked up in the literal table above: only a stage module is ever imported here.
    return importlib.import_module(f"flows.{args.stage}").main(args.arguments)


if __name__ == "__main__":
    command_line(main)
