"""Seconds from a command with bad input to its one `error:` line: python -m flows.cli and the front door.

    python benchmarks/bad_input.py [--rounds 3]

Each case writes the project's params.yaml with one change into a scratch folder and runs the command
there, as a user would (a fresh interpreter each time), checking that it exits 2 with one `error:` line.
For scale on the same machine at the same moment it also times `python -c pass` and
`python -c "import torch"`, `import prefect` and `import mlflow`: the imports bad input must not wait for.
Prints the median of `rounds` runs per case. The machine's load matters more than anything here: quote
these scale lines with the cases.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

#: name -> (command after `python`, a change to params.yaml: section, key, value)
CASES = {
    "cli: unknown key": (["-m", "flows.cli", "bad.yaml"], ("train", "lrr", 0.1)),
    "cli: unknown network argument": (["-m", "flows.cli", "bad.yaml"], ("train", "network_kwargs", {"widht": 3})),
    "cli: raw files missing (cifar10)": (["-m", "flows.cli", "bad.yaml"], ("data", "name", "cifar10")),
    "prepare: bad fraction": (["-m", "flows", "prepare", "--params", "bad.yaml"], ("data", "test_fraction", 1.5)),
    "train: data not prepared": (["-m", "flows", "train", "--params", "bad.yaml"], ("data", "out", "nowhere")),
    "train: missing GPU": (["-m", "flows", "train", "--params", "bad.yaml"], ("train", "device", "cuda:7")),
    "evaluate: unknown solver": (["-m", "flows", "evaluate", "--params", "bad.yaml"], ("evaluate", "method", "rk45")),
    "report: model missing": (["-m", "flows", "report", "--params", "bad.yaml"], ("train", "out", "nowhere")),
}
SCALE = {
    "python -c pass": ["-c", "pass"],
    "import torch": ["-c", "import torch"],
    "import prefect": ["-c", "import prefect"],
    "import mlflow": ["-c", "import mlflow"],
}


def _seconds(args: list[str], folder: Path, bad_input: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PFGM_DEBUG": ""}
    started = time.monotonic()
    run = subprocess.run([sys.executable, *args], cwd=folder, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if bad_input and (run.returncode != 2 or len(run.stderr.splitlines()) != 1 or not run.stderr.startswith("error:")):
        raise SystemExit(f"{' '.join(args)}: expected one error line and status 2, got {run.returncode}:\n{run.stderr}")
    return elapsed


def _write_case(folder: Path, change: tuple[str, str, object]) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    section, key, value = change
    params[section][key] = value
    params["data"]["root"] = str(folder / "raw")  # an empty raw folder: cifar10's files are missing
    (folder / "bad.yaml").write_text(yaml.safe_dump(params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name, args in SCALE.items():
            times = [_seconds(args, folder, bad_input=False) for _ in range(rounds)]
            print(f"{'scale: ' + name:45s} {statistics.median(times):6.2f} s")
        for name, (args, change) in CASES.items():
            _write_case(folder, change)
            times = [_seconds(args, folder, bad_input=True) for _ in range(rounds)]
            print(f"{name:45s} {statistics.median(times):6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
