"""Shared test configuration: offline, quiet, deterministic."""
from __future__ import annotations

import os

# Telemetry off and everything local before any of these libraries is imported.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator: the only source of randomness in physics tests."""
    return torch.Generator().manual_seed(1234)
