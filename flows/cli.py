"""The flows as commands: bad input is one line on stderr, never a traceback.

    python -m flows <stage> --params params.yaml [--debug]     (the front door: flows/__main__.py)
    python -m flows.<stage> --params params.yaml [--debug]

`command_line(main)` runs a flow module's `main(argv)`. What the user can fix — a bad or missing
params key (ParamsError), missing or bad data (pfgm.data.DataError, MissingFilesError), a missing
file (FileNotFoundError: no trained model, no Inception weights) — prints `error: <message>` and exits
with status 2; any other failure prints `error: <type>: <message>` and exits with 1 (the run failed;
the flows mark their MLflow runs FAILED themselves). `--debug` (anywhere in the arguments) or the
environment variable PFGM_DEBUG=1 lets the traceback through instead. DVC, MLflow and Prefect print
their own `ERROR: ...` lines the same way.

    python -m flows.cli params.yaml

checks a params file before a pipeline starts any server (`make main` does): every section present
and valid, every device on this machine, and the raw files its data set needs in place (or to be
downloaded). What earlier stages produce (prepared data, the model) each stage checks at its start.
This module imports no torch, Prefect or MLflow (flows.checks asks torch only about cuda and mps
devices), so that both commands answer bad input in about a second.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from flows.checks import check_devices, check_prepare
from flows.params import ParamsError, load_params
from pfgm.datafiles import DataError, MissingFilesError

BAD_INPUT = (ParamsError, DataError, MissingFilesError, FileNotFoundError)
BAD_INPUT_STATUS, FAILED_STATUS = 2, 1


def _debugging(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("PFGM_DEBUG", "") not in ("", "0")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def command_line(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run `main(argv)` (argv: sys.argv[1:] by default) and exit as described in the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if _debugging(argv):
        main([arg for arg in argv if arg != "--debug"])
        return
    try:
        main(argv)
    except BAD_INPUT as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        sys.exit(BAD_INPUT_STATUS)
    except Exception as error:  # noqa: BLE001 - the command's last word; --debug shows the traceback
        print(f"error: {type(error).__name__}: {_one_line(error)} (run again with --debug for the traceback)",
              file=sys.stderr)
        sys.exit(FAILED_STATUS)


def check_params(argv: list[str] | None = None) -> None:
    """Validate the params file argv[0] (default params.yaml), its devices and its data's raw files."""
    path = (argv or ["params.yaml"])[0]
    params = load_params(path)
    check_devices(params)
    check_prepare(params.data)


if __name__ == "__main__":
    command_line(check_params)
