"""Run a command with one Prefect server for all of its flows, then stop the server.

    python scripts/with_prefect_server.py [--log FILE] -- dvc repro

Without PREFECT_API_URL every flow process starts a temporary Prefect server of its own (about 10 s
each on two cores) and stops it when the flow ends: `dvc repro` of the five stages starts five. This
starts one `prefect server start` on a free port of 127.0.0.1, runs the command with PREFECT_API_URL
pointing at it, and stops the server however the command ends; the command's exit status is this
script's. When PREFECT_API_URL is already set (the team stack, `make -s stack-env`), the command runs
against that server and nothing is started. The server keeps its state where a temporary server does
(PREFECT_HOME, ~/.prefect by default).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stack import free_port, group_kill, http_ok, tail  # scripts/stack.py, beside this file

START_TIMEOUT_S = 120


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on 127.0.0.1 in a session of its own; (process, API URL) once it answers."""
    port = free_port("127.0.0.1")
    prefect = Path(sys.executable).parent / "prefect"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not http_ok(f"{api}/health"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError(f"the Prefect server did not start; the end of {log}:\n{tail(log)}")
        time.sleep(0.25)
    return process, api


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, then SIGKILL to whatever lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    group_kill(process.pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, default=Path(".prefect/server.log"), help="the server's output")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if os.environ.get("PREFECT_API_URL"):
        return subprocess.run(command).returncode
    try:
        process, api = start_server(args.log)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        return subprocess.run(command, env={**os.environ, "PREFECT_API_URL": api}).returncode
    finally:
        stop_server(process)


if __name__ == "__main__":
    sys.exit(main())
