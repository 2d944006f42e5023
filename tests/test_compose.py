"""compose.yaml describes the stack of scripts/stack.py: same services, commands, images, databases and
ports (published on 127.0.0.1 only). Docker cannot run here, so the file is parsed and compared with
the script's own command builders, called with the containers' hostnames and paths."""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: The port each server listens on inside its container (the images' and programs' defaults).
CONTAINER_PORTS = {"postgres": 5432, "mlflow": 5000, "prefect": 4200, "dask": 8786}
SERVICE_PORT = {"postgres": "postgres", "mlflow": "mlflow", "prefect": "prefect", "dask-scheduler": "dask"}


@pytest.fixture(scope="module")
def stack():
    spec = importlib.util.spec_from_file_location("stack_script", ROOT / "scripts" / "stack.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def context(stack, compose):
    """The script's Context as the containers see each other."""
    mlflow = compose["services"]["mlflow"]["command"]
    return stack.Context(host="0.0.0.0", ports=dict(CONTAINER_PORTS), db_host="postgres", mlflow_host="mlflow",
                         prefect_host="prefect", dask_host="dask-scheduler", artifacts="/data/artifacts",
                         dask_dir="/tmp/dask", bin="", allowed_hosts=mlflow[mlflow.index("--allowed-hosts") + 1],
                         dask_workers=2)


def test_the_services_are_the_scripts(stack, compose):
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "prefect", "prefect-worker", "dask-scheduler", "dask-worker",
                             "deploy"}
    assert services["postgres"]["image"] == stack.IMAGES["postgres"]
    assert all(service["image"] == stack.IMAGES["pfgm"] for name, service in services.items() if name != "postgres")
    assert services["mlflow"]["build"] == "."  # the project's Dockerfile: servers and clients share versions


def test_commands_match_the_scripts(stack, compose):
    ctx = context(stack, compose)
    services = compose["services"]
    assert services["mlflow"]["command"] == stack.mlflow_command(ctx)
    assert services["prefect"]["command"] == stack.prefect_command(ctx)
    assert services["prefect-worker"]["command"] == stack.worker_command(ctx, f"{stack.POOL}-worker-1")
    assert services["dask-scheduler"]["command"] == stack.scheduler_command(ctx)
    assert services["dask-worker"]["command"] == stack.dask_worker_command(ctx)
    assert services["deploy"]["command"] == ["prefect", "--no-prompt", "deploy", "--all"]


def test_ports_are_the_scripts_and_bound_to_loopback(stack, compose):
    for name, port in SERVICE_PORT.items():
        (published,) = compose["services"][name]["ports"]
        assert published == f"127.0.0.1:{stack.DEFAULT_PORTS[port]}:{CONTAINER_PORTS[port]}", name
    unpublished = {"prefect-worker", "dask-worker", "deploy"}
    assert all("ports" not in compose["services"][name] for name in unpublished)


def test_databases_environment_and_telemetry(stack, compose):
    ctx = context(stack, compose)
    services = compose["services"]
    postgres = services["postgres"]["environment"]
    assert postgres["POSTGRES_USER"] == stack.DB_USER and postgres["POSTGRES_DB"] == "mlflow"
    # The other databases come from the SQL file the script runs too.
    assert "./scripts/postgres-init.sql:/docker-entrypoint-initdb.d/postgres-init.sql:ro" in services["postgres"]["volumes"]
    assert re.findall(r"CREATE DATABASE (\w+)", stack.INIT_SQL.read_text()) == [d for d in stack.DATABASES if d != "mlflow"]
    for name in ("mlflow", "prefect"):
        environment = services[name]["environment"]
        assert stack.server_env(ctx).items() <= environment.items(), name
        assert environment["PGPASSWORD"].startswith("${PFGM_DB_PASSWORD")  # from the host, never in the file
    for name in ("prefect-worker", "dask-worker", "deploy"):
        assert stack.client_env(ctx).items() <= services[name]["environment"].items(), name
    for name, service in services.items():
        if name != "postgres":
            assert stack.TELEMETRY_OFF.items() <= service["environment"].items(), name
    assert services["deploy"]["profiles"] == ["deploy"] and "./prefect.yaml:/app/prefect.yaml:ro" in \
        services["deploy"]["volumes"]


def test_prefect_yaml_deploys_the_three_flows_on_the_pool(stack):
    from flows.schedule import DEFAULT_CRON

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert {name: d["entrypoint"] for name, d in deployments.items()} == {
        "evaluate": "flows/deployments.py:evaluate_stage", "sweep": "flows/deployments.py:sweep_stage",
        "nightly": "flows/schedule.py:evaluate_champion"}
    assert all(d["work_pool"]["name"] == stack.POOL for d in deployments.values())
    assert [s["cron"] for s in deployments["nightly"]["schedules"]] == [DEFAULT_CRON]
    for d in deployments.values():  # every entrypoint names a flow of that module
        path, function = d["entrypoint"].split(":")
        module = path.removesuffix(".py").replace("/", ".")
        assert hasattr(importlib.import_module(module), function)
