"""The sweep's points on a Dask cluster: `sweep.runner: dask` (docs/SWEEPS.md).

Each point is a Prefect task run executed by a Dask worker process (prefect-dask's DaskTaskRunner):
`sweep.dask_address` names the scheduler of a running cluster (tcp://host:8786, e.g. the one
`scripts/stack.py up` starts); empty, the flow starts a LocalCluster of `sweep.workers` processes on
this machine and closes it afterwards.

What travels to a worker is the point's setting and paths, not loaded objects. A worker loads the
checkpoint and builds the FID scorer on its first point and keeps them in a small cache of its process
for the next points (keyed by the checkpoint's path, size and modification time, and by the data's
manifest and the FID settings), so a sweep loads each checkpoint once per worker, not once per point.
The reference statistics are computed once, by the flow, into `sweep.stats_cache` before any point is
submitted (pfgm.metrics caches them on disk); workers only read that file. Paths are made absolute
before they travel: a remote worker needs the same paths (a shared file system, or the same checkout
and `dvc pull` at the same place) and an MLflow tracking URI it can reach (a server, not SQLite).

Timing stays honest: a worker runs one task at a time (threads_per_worker=1 here, `dask worker
--nthreads 1` in the stack) and Dask's nanny starts it with OMP_NUM_THREADS=1, so seconds_per_sample
is one single-threaded solve per worker process. On GPU machines run one worker per GPU, each with
CUDA_VISIBLE_DEVICES=<i> (`sweep.device: auto` then takes that GPU as cuda:0).

A worker lost in the middle of a point: the scheduler runs the point again on another worker (up to
`distributed.scheduler.allowed-failures` times); the retry finds the child run the lost worker opened
and goes on in it with the tag `attempt`, so the point keeps one child run. A point that
fails on every attempt fails, and with it the sweep once the other points are done, as on threads.
"""
from __future__ import annotations

import os
import socket
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from flows.common import fid_scorer
from flows.params import SweepParams
from flows.sweep_runs import Parent, score_point
from flows.tracking import resolve_device
from pfgm import data as pdata
from pfgm import metrics as pmetrics
from pfgm.sampling import TrainedModel, load_trained
from pfgm.sweeps import Plan, Point

#: Loaded checkpoints and scorers a worker process keeps (the oldest goes first): a long-lived worker
#: serving many sweeps holds a few models, not all it ever saw.
CACHE_SIZE = 4
_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()
#: What this process built, by kind ("model", "scorer"): read by tests and `worker_state`.
BUILT: Counter[str] = Counter()

T = TypeVar("T")


def dask_task_runner(params: SweepParams):
    """A DaskTaskRunner on params.dask_address, or on a LocalCluster of params.workers single-threaded
    processes bound to 127.0.0.1 (no dashboard: it needs bokeh, and nothing should listen beyond the sweep)."""
    from prefect_dask import DaskTaskRunner

    if params.dask_address:
        return DaskTaskRunner(address=params.dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs=dict(n_workers=params.workers, threads_per_worker=1, processes=True,
                                              host="127.0.0.1", dashboard_address=None))


def _cached(key: tuple, kind: str, build: Callable[[], T]) -> T:
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        value = build()
        BUILT[kind] += 1
        _CACHE[key] = value
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return value


def worker_model(path: str, device: str) -> TrainedModel:
    """The checkpoint at `path` on `device`, loaded once per process (again if the file changes)."""
    stat = os.stat(path)
    key = ("model", path, stat.st_size, stat.st_mtime_ns, device)
    return _cached(key, "model", lambda: load_trained(path, device=device))


def worker_scorer(params: SweepParams, features: str, data_dir: str) -> pmetrics.FidScorer:
    """The sweep's FID scorer, built once per process; its reference is read from params.stats_cache."""
    files = pdata.read_manifest(data_dir)["files"]
    key = ("scorer", features, data_dir, tuple(sorted(files.items())), params.fid_reference, params.fid_mode,
           params.quantize, params.stats_cache, params.inception_path, params.batch_size, params.device)
    return _cached(key, "scorer", lambda: fid_scorer(params, features, data_dir))


def worker_name() -> str:
    """The Dask worker's address, or host:pid outside a worker."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def worker_state() -> dict[str, Any]:
    """What this process built and holds (run it on every worker with `Client.run(worker_state)`)."""
    with _CACHE_LOCK:
        return dict(pid=os.getpid(), models_loaded=BUILT["model"], scorers_built=BUILT["scorer"],
                    cached=len(_CACHE))


def earlier_attempt(client: MlflowClient, parent: Parent, point: Point) -> tuple[str | None, int]:
    """(run id, attempts) of this point's child run if an earlier attempt opened one, or (None, 0).

    Dask runs a point again only when its worker was lost: the run is left RUNNING, or FINISHED when
    the worker died between ending it and handing its result back. Either way the retry goes on in it.
    """
    runs = client.search_runs([parent.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'",
                              max_results=5000)
    for run in runs:
        # The params come in a second call: a worker lost in between left a run without them.
        if run.data.tags.get("solver") == point.solver and run.data.params.get("checkpoint",
                                                                               point.checkpoint) == point.checkpoint:
            return run.info.run_id, int(run.data.tags.get("attempt", "1"))
    return None, 0


@task(cache_policy=NO_CACHE, task_run_name="{point.solver}")
def evaluate_point_on_worker(point: Point, checkpoint: str, *, params: SweepParams, kind: str, features: str | None,
                             data_dir: str, parent: Parent) -> dict[str, Any]:
    """score_point in a Dask worker, with the model and scorer of its process cache; returns the table row."""
    model = worker_model(checkpoint, str(resolve_device(params.device)))
    scorer = worker_scorer(params, features, data_dir) if features is not None else None
    run_id, attempts = earlier_attempt(MlflowClient(parent.tracking_uri), parent, point)
    # What this worker process has loaded so far: 1 and 1 on every point of a sweep of one checkpoint.
    # (Read through worker_state: this task's function travels by value, with copies of module globals.)
    state = worker_state()
    tags = {"worker": worker_name(), "worker_pid": str(state["pid"]), "attempt": str(attempts + 1),
            "worker_models_loaded": str(state["models_loaded"]), "worker_scorers_built": str(state["scorers_built"])}
    return score_point(point, model, params=params, scorer=scorer, kind=kind, parent=parent, run_id=run_id, tags=tags)


def absolute_paths(params: SweepParams) -> SweepParams:
    """The section with its file paths made absolute: workers may run in another folder."""
    return params.model_copy(update=dict(stats_cache=str(Path(params.stats_cache).resolve()),
                                         inception_path=str(Path(params.inception_path).resolve())))


def submit_points(plan: Plan, params: SweepParams, parent: Parent, data_dir: str) -> list[PrefectFuture]:
    """Submit every point of `plan` to the flow's DaskTaskRunner; returns the futures in plan order."""
    params = absolute_paths(params)
    data_dir = str(Path(data_dir).resolve())
    return [evaluate_point_on_worker.submit(point, str(Path(plan.paths[point.checkpoint]).resolve()), params=params,
                                            kind=plan.kind, features=plan.features, data_dir=data_dir, parent=parent)
            for point in plan.points]
