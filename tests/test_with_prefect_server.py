"""scripts/with_prefect_server.py: one real Prefect server for a command, stopped however it ends."""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "with_prefect_server.py"

pytestmark = pytest.mark.slow

PROBE = ("import os, sys, urllib.request; api = os.environ['PREFECT_API_URL']; "
         "urllib.request.urlopen(api + '/health', timeout=5); print(api); sys.exit(3)")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    bin_dir = str(Path(sys.executable).parent)
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", **extra}


def test_the_command_runs_against_a_server_that_is_gone_afterwards(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--log", str(tmp_path / "server.log"), "--",
                          sys.executable, "-c", PROBE], env=_env(tmp_path), capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 3, run.stderr  # the command's own exit status
    api = run.stdout.strip().splitlines()[-1]
    assert api.startswith("http://127.0.0.1:") and api.endswith("/api")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(api + "/health", timeout=2)


def test_a_given_server_is_used_and_none_is_started(tmp_path):
    given = "http://127.0.0.1:9/api"  # nothing listens: the command only reads the variable
    run = subprocess.run([sys.executable, str(SCRIPT), "--log", str(tmp_path / "server.log"), "--",
                          sys.executable, "-c", "import os; print(os.environ['PREFECT_API_URL'])"],
                         env=_env(tmp_path, PREFECT_API_URL=given), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == given
    assert not (tmp_path / "server.log").exists()
