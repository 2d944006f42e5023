#!/usr/bin/env python3
"""The team stack on one machine: PostgreSQL, an MLflow tracking server, a Prefect server with process
workers on the work pool `pfgm`, and a Dask cluster for sweeps. README "Team setup".

    python scripts/stack.py up      [--dir .stack] [--workers 1] [--dask-workers 2] [--host 127.0.0.1]
                                    [--ports default|auto] [--no-deploy]
    python scripts/stack.py status  # each service: pid, alive, answering
    python scripts/stack.py env     # export MLFLOW_TRACKING_URI=... PREFECT_API_URL=... (for eval)
    python scripts/stack.py deploy  # register the deployments of prefect.yaml on the stack's server
    python scripts/stack.py down    # stop everything (data and logs stay in --dir)
    python scripts/stack.py stop|start|restart|kill SERVICE    # one service (kill: SIGKILL, for drills)

Everything lives under one folder (--dir, default .stack in the project root, ignored by git):
stack.json (ports, pids), logs/<service>.log, postgres/ (the database cluster), artifacts/ (MLflow's
proxied artifact store), prefect/ (PREFECT_HOME of the server and workers), dask/ (worker scratch).
Every server binds to --host, 127.0.0.1 by default; PostgreSQL always listens on 127.0.0.1 only (only
the MLflow and Prefect servers on this machine talk to it). `up` is idempotent: it starts what is not
running and keeps the ports of stack.json.

PostgreSQL comes from Debian's `postgresql` package, which this machine's image ships; where its
binaries are missing, `up` installs the package with apt-get (as root) once. The server refuses to run
as root, so as root it runs as the package's `postgres` user (which then needs to traverse the folders
above --dir: `up` adds the search bit, o+x, where it is missing, and says so). The database role `pfgm`
owns the databases `mlflow` and `prefect`; its generated password is in postgres/pgpass, read by the
servers through PGPASSFILE, so no password appears on a command line.

The MLflow server keeps run metadata in PostgreSQL and proxies artifacts (--artifacts-destination), so
clients need no storage credentials. The Prefect server keeps its state in PostgreSQL too. Workers run
in the project root with MLFLOW_TRACKING_URI and PREFECT_API_URL set, so flow runs and Dask tasks log to
the stack. Telemetry is off everywhere.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtualenv's bin: mlflow, prefect, dask
DEFAULT_DIR = ROOT / ".stack"
DEFAULT_HOST = "127.0.0.1"
#: Default ports on the host; compose.yaml publishes the same ones (PostgreSQL off 5432, where a system
#: server of the Debian package may already listen).
DEFAULT_PORTS = {"postgres": 15432, "mlflow": 5000, "prefect": 4200, "dask": 8786}
#: Images of compose.yaml: PostgreSQL of the same major version as Debian 12's package, and the
#: project's own image (Dockerfile) for everything else, so that servers and clients share versions.
IMAGES = {"postgres": "postgres:15-bookworm", "pfgm": "pfgm"}
POOL = "pfgm"
DB_USER = "pfgm"
DATABASES = ("mlflow", "prefect")
INIT_SQL = ROOT / "scripts" / "postgres-init.sql"  # the databases besides mlflow (compose runs it too)
TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                 "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1"}
#: Seconds each kind of service gets to answer after it starts (MLflow migrates an empty database first).
START_TIMEOUT = {"postgres": 60, "mlflow": 180, "prefect": 180, "prefect-worker": 120, "dask-scheduler": 60,
                 "dask-worker": 180}
STOP_TIMEOUT = 30
#: The port (a key of DEFAULT_PORTS) each kind of server listens on.
PORT_OF = {"postgres": "postgres", "mlflow": "mlflow", "prefect": "prefect", "dask-scheduler": "dask"}


class StackError(RuntimeError):
    """Something the user can act on: a busy port, a missing PostgreSQL, a service that did not start."""


# --- commands: what each service runs (compose.yaml runs the same, tests/test_compose.py checks it) ---

@dataclass(frozen=True)
class Context:
    """Where the services find each other: bind host, ports, hostnames of the others, paths, programs."""
    host: str = DEFAULT_HOST
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    db_host: str = "127.0.0.1"
    mlflow_host: str = "127.0.0.1"
    prefect_host: str = "127.0.0.1"
    dask_host: str = "127.0.0.1"
    artifacts: str = "artifacts"
    dask_dir: str = "dask"
    bin: str = ""  # folder of mlflow/prefect/dask ("" : on PATH)
    allowed_hosts: str | None = None
    dask_workers: int = 2

    def program(self, name: str) -> str:
        return str(Path(self.bin) / name) if self.bin else name

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.mlflow_host}:{self.ports['mlflow']}"

    @property
    def prefect_api(self) -> str:
        return f"http://{self.prefect_host}:{self.ports['prefect']}/api"

    @property
    def dask_address(self) -> str:
        return f"tcp://{self.dask_host}:{self.ports['dask']}"

    def database_uri(self, database: str, driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{DB_USER}@{self.db_host}:{self.ports['postgres']}/{database}"


def mlflow_command(ctx: Context) -> list[str]:
    """The tracking server: metadata in PostgreSQL, artifacts proxied to ctx.artifacts (one worker
    process: the load of a team fits, and two would double the start-up time on a small machine)."""
    command = [ctx.program("mlflow"), "server", "--host", ctx.host, "--port", str(ctx.ports["mlflow"]),
               "--backend-store-uri", ctx.database_uri("mlflow"), "--artifacts-destination", ctx.artifacts,
               "--workers", "1"]
    return command + (["--allowed-hosts", ctx.allowed_hosts] if ctx.allowed_hosts else [])


def prefect_command(ctx: Context) -> list[str]:
    return [ctx.program("prefect"), "server", "start", "--host", ctx.host, "--port", str(ctx.ports["prefect"])]


def worker_command(ctx: Context, name: str) -> list[str]:
    return [ctx.program("prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", name]


def scheduler_command(ctx: Context) -> list[str]:
    return [ctx.program("dask"), "scheduler", "--host", ctx.host, "--port", str(ctx.ports["dask"]), "--no-dashboard"]


def dask_worker_command(ctx: Context) -> list[str]:
    """One single-threaded process per worker (one solve at a time: sweep timings stay comparable), which
    imports the sweep's code when it starts (--preload), so that the first point of a sweep does not."""
    return [ctx.program("dask"), "worker", ctx.dask_address, "--nworkers", str(ctx.dask_workers), "--nthreads", "1",
            "--no-dashboard", "--host", ctx.host, "--local-directory", ctx.dask_dir, "--preload", "flows.sweep_dask"]


def server_env(ctx: Context) -> dict[str, str]:
    """What the MLflow and Prefect servers need besides the telemetry switches."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no GenAI job runner process
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": ctx.database_uri("prefect", driver="asyncpg")}


def client_env(ctx: Context) -> dict[str, str]:
    """What flows need to log to the stack: the servers' addresses."""
    return {"MLFLOW_TRACKING_URI": ctx.mlflow_uri, "PREFECT_API_URL": ctx.prefect_api}


# --- state -----------------------------------------------------------------------------------------

class Stack:
    """The stack under one folder: its state file, logs, data and processes."""

    def __init__(self, folder: str | os.PathLike):
        self.dir = Path(folder).resolve()
        self.state_file = self.dir / "stack.json"
        self.state: dict[str, Any] = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        partial = self.state_file.with_suffix(".tmp")
        partial.write_text(json.dumps(self.state, indent=2, sort_keys=True) + "\n")
        os.replace(partial, self.state_file)

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return self.state.setdefault("services", {})

    def context(self) -> Context:
        host = self.state["host"]
        here = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # where clients on this machine connect
        return Context(host=host, ports=self.state["ports"], mlflow_host=here, prefect_host=here, dask_host=here,
                       artifacts=str(self.dir / "artifacts"), dask_dir=str(self.dir / "dask"), bin=str(BIN),
                       allowed_hosts=self.state.get("allowed_hosts"), dask_workers=self.state["dask_workers"])

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def pgpass(self) -> Path:
        return self.dir / "postgres" / "pgpass"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment every service starts with: telemetry off, PGPASSFILE, Prefect's home here."""
        env = {**os.environ, **TELEMETRY_OFF, "PGPASSFILE": str(self.pgpass()),
               "PREFECT_HOME": str(self.dir / "prefect"), "PYTHONUNBUFFERED": "1"}
        for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):  # the caller's own servers are not ours
            env.pop(key, None)
        return {**env, **(extra or {})}


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def http_json(url: str, payload: dict | None = None, timeout: float = 5.0) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode() or "null")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- PostgreSQL --------------------------------------------------------------------------------------

def postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL's bin folder (/usr/lib/postgresql/<major>/bin), or pg_config's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    return None


def ensure_postgres() -> Path:
    """PostgreSQL's bin folder, installing Debian's package first when it is missing (as root, once)."""
    bindir = postgres_bindir()
    if bindir is not None:
        return bindir
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError("PostgreSQL's server binaries are missing: install Debian's package (sudo apt-get install "
                         "postgresql), or run this script as root, which installs it")
    print("installing PostgreSQL (apt-get install postgresql) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    bindir = postgres_bindir()
    if bindir is None:
        raise StackError("apt-get installed postgresql, but no /usr/lib/postgresql/*/bin/postgres was found")
    return bindir


def postgres_user() -> pwd.struct_passwd | None:
    """The OS user PostgreSQL runs as: None (ourselves) unless we are root, then Debian's `postgres`."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
                       check=True)
        return pwd.getpwnam("postgres")


def ensure_traversable(folder: Path, user: pwd.struct_passwd) -> None:
    """Let `user` reach `folder`: add o+x (search, not read) to each parent folder that denies it."""
    for parent in [*reversed(folder.parents), folder]:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            continue
        bit = stat.S_IXGRP if st.st_gid == user.pw_gid else stat.S_IXOTH
        if not st.st_mode & bit:
            os.chmod(parent, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            print(f"note: added o+x to {parent} so that the '{user.pw_name}' user can reach the database folder",
                  flush=True)


def init_postgres(stack: Stack, bindir: Path) -> None:
    """A new database cluster in postgres/data, owned by the role pfgm with a generated password."""
    folder, data = stack.dir / "postgres", stack.dir / "postgres" / "data"
    if (data / "PG_VERSION").is_file():
        return
    user = postgres_user()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o711)
    if data.exists():
        shutil.rmtree(data)  # a half-made cluster from an interrupted init
    password = secrets.token_urlsafe(24)
    pwfile = folder / ".initdb-password"
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    data.mkdir(mode=0o700)
    if user is not None:
        ensure_traversable(folder, user)
        os.chown(data, user.pw_uid, user.pw_gid)
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    try:
        done = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", DB_USER, f"--pwfile={pwfile}",
                               "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
                               "--no-locale", "--no-instructions"],
                              capture_output=True, text=True, cwd=folder, **run_as(user))
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise StackError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
    write_pgpass(stack, password)


def write_pgpass(stack: Stack, password: str) -> None:
    """postgres/pgpass (0600): the role's password for any host, port and database (libpq's format)."""
    path = stack.pgpass()
    path.write_text(f"*:*:*:{DB_USER}:{password}\n")
    os.chmod(path, 0o600)


def run_as(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess keyword arguments running the child as `user` (root only), or nothing."""
    if user is None:
        return {}
    return dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[])


def create_databases(stack: Stack) -> None:
    """The databases mlflow (here) and those of scripts/postgres-init.sql (prefect), if missing."""
    import psycopg

    ctx = stack.context()
    with psycopg.connect(host="127.0.0.1", port=ctx.ports["postgres"], user=DB_USER, dbname="postgres",
                         passfile=str(stack.pgpass()), autocommit=True, connect_timeout=10) as connection:
        existing = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
        if "mlflow" not in existing:
            connection.execute("CREATE DATABASE mlflow")
        for statement in INIT_SQL.read_text().split(";"):
            statement = "\n".join(line for line in statement.splitlines() if not line.strip().startswith("--"))
            words = statement.split()
            if words[:2] == ["CREATE", "DATABASE"] and words[2] in existing:
                continue
            if words:
                connection.execute(statement)


def postgres_ready(stack: Stack) -> bool:
    import psycopg

    try:
        with psycopg.connect(host="127.0.0.1", port=stack.state["ports"]["postgres"], user=DB_USER, dbname="postgres",
                             passfile=str(stack.pgpass()), connect_timeout=2) as connection:
            connection.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


# --- services ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Service:
    """How to start one service, when it answers, and how it stops."""
    name: str
    kind: str
    command: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    user: pwd.struct_passwd | None = None
    stop_signal: int = signal.SIGTERM
    cwd: Path = ROOT


def services(stack: Stack) -> list[Service]:
    """Every service of the stack, in start order (down stops them in reverse)."""
    ctx = stack.context()
    bindir = Path(stack.state["postgres_bindir"])
    data = stack.dir / "postgres" / "data"
    postgres = Service(
        "postgres", "postgres",
        # Fast shutdown on SIGINT: SIGTERM would wait for the servers' pooled connections to close.
        [str(bindir / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1", "-p",
         str(ctx.ports["postgres"]), "-c", "unix_socket_directories=", "-c", "max_connections=200"],
        ready=lambda: postgres_ready(stack), user=postgres_user(), stop_signal=signal.SIGINT, cwd=data)
    mlflow = Service("mlflow", "mlflow", mlflow_command(ctx), env=server_env(ctx),
                     ready=lambda: http_ok(f"{ctx.mlflow_uri}/health"))
    prefect = Service("prefect", "prefect", prefect_command(ctx), env=server_env(ctx),
                      ready=lambda: http_ok(f"{ctx.prefect_api}/health"))
    # Workers poll every few seconds (Prefect's default is 10 s) and send heartbeats to the server.
    worker_env = {**client_env(ctx), "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_HEARTBEAT_SECONDS": "10"}
    workers = [Service(f"prefect-worker-{i}", "prefect-worker", worker_command(ctx, f"{POOL}-worker-{i}"),
                       env=worker_env, ready=lambda name=f"{POOL}-worker-{i}": worker_online(ctx, name))
               for i in range(1, stack.state["workers"] + 1)]
    scheduler = Service("dask-scheduler", "dask-scheduler", scheduler_command(ctx),
                        ready=lambda: port_open("127.0.0.1", ctx.ports["dask"]))
    dask_workers = Service("dask-worker", "dask-worker", dask_worker_command(ctx), env=client_env(ctx),
                           ready=lambda: dask_workers_ready(ctx))
    return [postgres, mlflow, prefect, *workers, scheduler, dask_workers]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def worker_online(ctx: Context, name: str) -> bool:
    try:
        found = http_json(f"{ctx.prefect_api}/work_pools/{POOL}/workers/filter", {})
    except (OSError, urllib.error.URLError, json.JSONDecodeError):
        return False
    return any(w["name"] == name and w.get("status") == "ONLINE" for w in found or [])


def dask_workers_ready(ctx: Context) -> bool:
    """All ctx.dask_workers worker processes joined the scheduler (asked through its own client)."""
    if not port_open("127.0.0.1", ctx.ports["dask"]):
        return False
    from distributed import Client

    # A connection attempt that times out while the scheduler starts leaves an unretrieved future, which
    # asyncio would report on stderr as an error; the attempt is simply repeated.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        with Client(ctx.dask_address, timeout=5) as client:
            return len(client.scheduler_info(n_workers=-1)["workers"]) >= ctx.dask_workers
    except (OSError, TimeoutError):
        return False


def start(stack: Stack, service: Service) -> None:
    """Start `service` in a session of its own (its process group is what stop signals)."""
    if pid_alive(stack.services.get(service.name, {}).get("pid")):
        return
    port = stack.state["ports"].get(PORT_OF.get(service.kind, ""))
    if port is not None and not port_free("127.0.0.1", port):
        raise StackError(f"{service.name}: port {port} is in use (another server?); stop it, or start the stack "
                         "in another --dir with --ports auto")
    stack.log(service.name).parent.mkdir(parents=True, exist_ok=True)
    with open(stack.log(service.name), "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(service.command)}\n".encode())
        log.flush()
        process = subprocess.Popen(service.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=service.cwd, env=stack.env(service.env), start_new_session=True,
                                   **run_as(service.user))
    stack.services[service.name] = {"pid": process.pid, "kind": service.kind, "log": str(stack.log(service.name)),
                                    "command": service.command, "stop_signal": int(service.stop_signal),
                                    "started": time.time()}
    stack.save()


def wait_ready(stack: Stack, service: Service) -> float:
    """Seconds from its start until `service` answers; StackError with the end of its log if it dies or
    times out."""
    deadline = time.monotonic() + START_TIMEOUT[service.kind]
    while not service.ready():
        if not pid_alive(stack.services[service.name]["pid"]):
            raise StackError(f"{service.name} exited; the end of {stack.log(service.name)}:\n"
                             f"{tail(stack.log(service.name))}")
        if time.monotonic() > deadline:
            raise StackError(f"{service.name} did not answer within {START_TIMEOUT[service.kind]} s; the end of "
                             f"{stack.log(service.name)}:\n{tail(stack.log(service.name))}")
        time.sleep(0.25)
    return time.time() - stack.services[service.name]["started"]


def stop(stack: Stack, name: str, *, kill: bool = False) -> None:
    """Stop one service: its stop signal, then SIGKILL to its process group if it lingers.

    kill: SIGKILL to the group at once (a crash); for PostgreSQL an immediate shutdown (SIGQUIT), since
    its backends run in sessions of their own and would outlive a killed postmaster.
    """
    entry = stack.services.get(name)
    if not entry:
        return
    pid = entry["pid"]
    if pid_alive(pid):
        try:
            if kill and entry["kind"] == "postgres":
                os.kill(pid, signal.SIGQUIT)
            elif kill:
                os.killpg(pid, signal.SIGKILL)
            elif entry["stop_signal"] == signal.SIGINT:
                os.kill(pid, signal.SIGINT)  # PostgreSQL: the postmaster shuts its backends down itself
            else:
                os.killpg(pid, entry["stop_signal"])
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    group_kill(pid)
    entry["pid"] = None
    stack.save()


def group_kill(pgid: int) -> None:
    """SIGKILL whatever is left in the process group (a worker's children, the server's workers)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        time.sleep(0.1)


# --- the commands -------------------------------------------------------------------------------------

def choose_ports(stack: Stack, mode: str) -> dict[str, int]:
    if stack.state.get("ports"):
        return stack.state["ports"]
    if mode == "auto":
        return {name: free_port("127.0.0.1") for name in DEFAULT_PORTS}
    ports = {name: int(os.environ.get(f"PFGM_STACK_{name.upper()}_PORT", port)) for name, port in DEFAULT_PORTS.items()}
    busy = [f"{name} {port}" for name, port in ports.items() if not port_free("127.0.0.1", port)]
    if busy:
        raise StackError(f"ports in use: {', '.join(busy)}; free them, set PFGM_STACK_<SERVICE>_PORT, or use --ports auto")
    return ports


def ensure_pool(stack: Stack) -> None:
    """The process work pool `pfgm` on the server (created with Prefect's default process job template)."""
    ctx = stack.context()
    try:
        http_json(f"{ctx.prefect_api}/work_pools/{POOL}")
        return
    except urllib.error.HTTPError as err:
        if err.code != 404:
            raise
    done = subprocess.run([ctx.program("prefect"), "work-pool", "create", POOL, "--type", "process"],
                          capture_output=True, text=True, cwd=ROOT, env=stack.env(client_env(ctx)))
    if done.returncode != 0 and "already exists" not in done.stdout + done.stderr:
        raise StackError(f"prefect work-pool create {POOL} failed:\n{done.stdout}\n{done.stderr}")


def start_deploy(stack: Stack) -> subprocess.Popen:
    """`prefect --no-prompt deploy --all` in the project root, against the stack's server (not waited for)."""
    ctx = stack.context()
    return subprocess.Popen([ctx.program("prefect"), "--no-prompt", "deploy", "--all"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=stack.env(client_env(ctx)))


def finish_deploy(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        raise StackError(f"prefect deploy --all failed:\n{output[-6000:]}")


def deploy(stack: Stack) -> None:
    """Register the deployments of prefect.yaml on the stack's Prefect server, on the pool `pfgm`."""
    ensure_pool(stack)
    finish_deploy(start_deploy(stack))


def start_all(stack: Stack, group: list[Service]) -> dict[str, float]:
    """Start a group of services at once, then wait for each: {name: seconds until it answered}."""
    for service in group:
        start(stack, service)
    return {service.name: round(wait_ready(stack, service), 1) for service in group}


def up(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    begin = time.monotonic()
    stack.state.setdefault("root", str(ROOT))
    stack.state.setdefault("host", args.host)
    stack.state["workers"], stack.state["dask_workers"] = args.workers, args.dask_workers
    if args.allowed_hosts:
        stack.state["allowed_hosts"] = args.allowed_hosts
    stack.state["ports"] = choose_ports(stack, args.ports)
    stack.state["postgres_bindir"] = str(ensure_postgres())
    stack.save()
    init_postgres(stack, Path(stack.state["postgres_bindir"]))
    (stack.dir / "artifacts").mkdir(exist_ok=True)
    by_name = {service.name: service for service in services(stack)}
    timings = start_all(stack, [by_name["postgres"]])
    create_databases(stack)
    timings |= start_all(stack, [by_name["mlflow"], by_name["prefect"], by_name["dask-scheduler"]])
    # The rest overlaps: Dask's workers start while the pool is made, then Prefect's workers and the
    # registration of the deployments (each a Python process importing the flows) run side by side.
    start(stack, by_name["dask-worker"])
    ensure_pool(stack)
    workers = [s for s in by_name.values() if s.kind == "prefect-worker"]
    deploy_start = time.monotonic()
    deployer = None if args.no_deploy else start_deploy(stack)
    timings |= start_all(stack, [*workers, by_name["dask-worker"]])
    if deployer is not None:
        finish_deploy(deployer)
        timings["deploy"] = round(time.monotonic() - deploy_start, 1)
    timings["total"] = round(time.monotonic() - begin, 1)
    stack.state["up_seconds"] = timings
    stack.save()
    return timings


def down(stack: Stack) -> None:
    for name in reversed(list(stack.services)):
        stop(stack, name)


def status(stack: Stack) -> dict[str, Any]:
    by_name = {service.name: service for service in services(stack)} if stack.state else {}
    report = {}
    for name, entry in stack.services.items():
        alive = pid_alive(entry.get("pid"))
        report[name] = dict(pid=entry.get("pid"), alive=alive,
                            answering=bool(alive and name in by_name and by_name[name].ready()), log=entry["log"])
    return report


def service_named(stack: Stack, name: str) -> Service:
    by_name = {service.name: service for service in services(stack)}
    if name not in by_name:
        raise StackError(f"unknown service {name!r}; known: {', '.join(by_name)}")
    return by_name[name]


def environment_lines(stack: Stack) -> str:
    ctx = stack.context()
    lines = [f"export {key}={value}" for key, value in client_env(ctx).items()]
    lines.append(f"# sweeps on the stack's Dask cluster: -S sweep.runner=dask -S sweep.dask_address={ctx.dask_address}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=os.environ.get("PFGM_STACK_DIR", str(DEFAULT_DIR)),
                   help="the stack's folder (default: .stack in the project root)")
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="start whatever is not running, then register the deployments")
    u.add_argument("--workers", type=int, default=1, help="Prefect process workers (default 1)")
    u.add_argument("--dask-workers", type=int, default=2, help="Dask worker processes, one thread each (default 2)")
    u.add_argument("--host", default=DEFAULT_HOST, help="address the servers bind to (default 127.0.0.1)")
    u.add_argument("--allowed-hosts", default=None,
                   help="MLflow's allowed Host headers when binding beyond 127.0.0.1 (e.g. 'mlflow.internal:5000')")
    u.add_argument("--ports", choices=("default", "auto"), default="default",
                   help="default: 15432/5000/4200/8786 (PFGM_STACK_<SERVICE>_PORT overrides); auto: free ports")
    u.add_argument("--no-deploy", action="store_true", help="do not register the deployments")
    for name in ("down", "status", "env", "deploy"):
        sub.add_parser(name)
    for name in ("start", "stop", "restart", "kill"):
        one = sub.add_parser(name, help=f"{name} one service")
        one.add_argument("service")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    stack = Stack(args.dir)
    if args.command != "up" and not stack.state:
        raise StackError(f"no stack in {stack.dir} (run: python scripts/stack.py --dir {stack.dir} up)")
    if args.command == "up":
        timings = up(stack, args)
        print(json.dumps({"dir": str(stack.dir), "seconds": timings}, sort_keys=True))
        print(environment_lines(stack))
    elif args.command == "down":
        down(stack)
    elif args.command == "status":
        print(json.dumps(status(stack), indent=2, sort_keys=True))
    elif args.command == "env":
        print(environment_lines(stack))
    elif args.command == "deploy":
        deploy(stack)
    elif args.command in ("stop", "kill"):
        stop(stack, service_named(stack, args.service).name, kill=args.command == "kill")
    elif args.command in ("start", "restart"):
        service = service_named(stack, args.service)
        if args.command == "restart":
            stop(stack, service.name)
        start(stack, service)
        wait_ready(stack, service)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
