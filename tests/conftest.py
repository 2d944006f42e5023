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


@pytest.fixture(scope="session")
def prefect_test_env(tmp_path_factory):
    """One temporary Prefect server and database for the whole session (starting one takes ~10 s).

    Flow tests request this fixture. PREFECT_HOME (results, local storage) points into pytest's
    temporary folder; the harness keeps its database in a temporary folder of its own.
    """
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect_home")
    with temporary_settings(updates={PREFECT_HOME: str(home)}), prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def single_thread():
    """One torch thread for tests of many tiny ops, where a second thread only adds overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite tracking store per test module (creating one costs seconds of migrations)."""
    from flows.tracking import configure

    root = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        configure(root=root)
        yield root


@pytest.fixture
def tracking(store, tmp_path, monkeypatch):
    """The module's store, selected afresh; the working folder is tmp_path (main() writes beside it)."""
    import mlflow

    from flows.tracking import configure

    monkeypatch.chdir(tmp_path)
    configure(root=store)
    yield store
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The real digits prepared once per session (with the FID classifier), under pytest's tmp; read only.

    Modules that want the digits without the classifier (plain_digits) define a `digits` of their own.
    """
    from pfgm import data as pdata

    prepared = pdata.add_digits_features(pdata.build_digits(seed=0, test_fraction=0.167), seed=0)
    out = tmp_path_factory.mktemp("digits") / "prepared"
    pdata.write_prepared(prepared, out)
    return out


@pytest.fixture(scope="session")
def plain_digits(tmp_path_factory):
    """The real digits prepared once per session without the FID classifier; read only."""
    from pfgm import data as pdata

    out = tmp_path_factory.mktemp("plain_digits") / "prepared"
    pdata.write_prepared(pdata.build_digits(seed=0, test_fraction=0.167), out)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """A FieldMLP trained 20 steps on the digits (PFGM), one per test module; read only."""
    from helpers import make_checkpoint
    from pfgm import data as pdata

    data = pdata.load_split(digits, "train")
    return make_checkpoint(tmp_path_factory.mktemp("trained") / "model.pt", data=data, steps=20)


@pytest.fixture(scope="session")
def ref():
    """The official DDPM++ reference folder; tests that need it skip when shared/ is not beside the repo."""
    from official import REFERENCE

    if not (REFERENCE / "tiny_ddpmpp_checkpoint.pth").is_file():
        pytest.skip(f"reference fixture folder {REFERENCE} not found (shared/ must be a sibling of the repo root)")
    return REFERENCE


@pytest.fixture(scope="session")
def edm_ref():
    """The official PFGM++ (EDM) reference folder; tests that need it skip when shared/ is not beside the repo."""
    from official import EDM_REFERENCE

    if not (EDM_REFERENCE / "README.md").is_file():
        pytest.skip(f"reference fixture folder {EDM_REFERENCE} not found (shared/ must be a sibling of the repo root)")
    return EDM_REFERENCE
