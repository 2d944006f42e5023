"""Sweep wall time on Dask: the same sweep on a LocalCluster of 1 worker process, then of 2, and on threads.

    python benchmarks/dask_sweep.py [--params params.yaml] [--model models/digits/model.pt]
                                    [--num-samples 500] [--workers 1 2]

The sweep section of --params (its grid and num_samples, on the CPU) scores --model against the data
of --params. Each Dask cluster is started first and its workers import the flows before the clock
starts, so the time is the sweep's: the points, each worker's one load of the checkpoint and of the FID
reference (read from a cache the first sweep fills), and the logging (to a temporary SQLite store, not
the project's). All sweeps draw from the same seed: the FIDs are compared too. Prints one line per run
and the ratio to the first. Needs a trained model: run `make main` (or pass --model and --params).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def warm_up() -> bool:
    import flows.sweep_dask  # noqa: F401 - torch, MLflow, Prefect and the flows

    return True


def timed_sweep(params, data_dir: str, model: str):
    from flows.sweep import run_sweep

    start = time.perf_counter()
    result = run_sweep(params, data_dir=data_dir, checkpoints=[model])
    return time.perf_counter() - start, result.table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default=None, help="checkpoint (default: <train.out>/model.pt)")
    parser.add_argument("--num-samples", type=int, default=None, help="override sweep.num_samples")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask worker processes per run")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from flows.params import load_sections
    from flows.tracking import configure

    data, train, sweep = load_sections(args.params, "data", "train", "sweep")
    model = args.model or str(Path(train.out) / "model.pt")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        configure(root=folder)
        update = dict(device="cpu", out=str(Path(folder) / "sweep.json"), table=str(Path(folder) / "sweep.csv"),
                      stats_cache=str(Path(sweep.stats_cache).resolve()))
        if args.num_samples:
            update["num_samples"] = args.num_samples
        sweep = sweep.model_copy(update=update)
        runs = []
        for workers in args.workers:
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                              dashboard_address=None) as cluster, Client(cluster) as client:
                client.run(warm_up)  # imports before the clock, as a cluster that served a sweep has them
                params = sweep.model_copy(update=dict(runner="dask", dask_address=cluster.scheduler_address))
                seconds, table = timed_sweep(params, data.out, model)
            runs.append((f"dask, {workers} worker process{'es' if workers > 1 else ''}", seconds, table))
        seconds, table = timed_sweep(sweep.model_copy(update=dict(runner="threads")), data.out, model)
        runs.append((f"threads ({sweep.workers} threads, solves take turns)", seconds, table))

    base_seconds, base_table = runs[0][1], runs[0][2]
    points = len(base_table)
    print(f"{points} points x {sweep.num_samples} samples, {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, seconds, table in runs:
        difference = np.nanmax(np.abs(np.asarray(table["fid"], float) - np.asarray(base_table["fid"], float)))
        print(f"{name:45s} {seconds:7.1f} s   speed-up over the first {base_seconds / seconds:5.2f}x   "
              f"max |FID difference| {difference:.1e}")


if __name__ == "__main__":
    main()
