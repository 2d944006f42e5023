"""Stage `report`: our numbers beside the published ones, and the pictures of the paper.

    python -m flows.report --params params.yaml

Reads `data` (data.out), `train` (train.out: <train.out>/model.pt), `evaluate` (evaluate.out: the
metrics JSON), `sweep` (sweep.table: the sweep's CSV; sweep.num_samples, which its FIDs used) and
`report` (everything else). Writes into report.out (docs/REPORT.md explains every file):
  table.csv, table.md   this run's numbers (the evaluate run; the best FID of the sweep with its solver
                        and NFE) above the published rows (paper/published.csv) of the same data set,
                        or, when nothing is published on it (digits, the toys), the CIFAR-10 rows marked
                        as a reference only. A published row is never called a match: its protocol
                        (samples, features, solver) is spelled out beside ours.
  nfe_vs_fid.png        FID against NFE from the sweep, one line per solver family (images only);
  samples.png           a grid of samples (a scatter plot for 2D points);
  interpolation.png     pairs of test images encoded to the plane z_max, their latents interpolated
                        (pfgm.latent.slerp) and decoded; the originals at both ends of each row;
  temperature.png       prior draws decoded with the latent scaled by each temperature;
  flow.gif, trajectories.png   2D points only: particles following the field from z_max to the data;
  norm_z.png, norm_z.csv   the paper's norm-z figure (norm-sigma for PFGM++): mean and std of ||x|| against
                        the height while sampling num_samples with the report's solver, and for perturbed
                        training rows (pfgm.diagnostics); metrics norm_spread_sampling, norm_spread_training.
Everything is logged as artifacts of one MLflow run (run name "report", tag stage=report) that ends
FINISHED, or FAILED on any error. Invalid settings and missing inputs fail before any run.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger

from flows.checks import check_report
from flows.cli import command_line
from flows.common import MODEL_FILE, check_model_fits, torch_threads
from flows.report_pictures import Inputs, draw_pictures
from flows.params import ReportParams, load_sections, params_parser
from flows.tracking import configure, resolve_device
from pfgm import data as pdata
from pfgm import tables
from pfgm.files import staged_folder
from pfgm.published import load_published
from pfgm.sampling import load_trained

#: Every file the report may write; a file of this list that a run does not produce is removed.
REPORT_FILES = ("table.csv", "table.md", "nfe_vs_fid.png", "samples.png", "interpolation.png", "temperature.png",
                "norm_z.png", "norm_z.csv", "flow.gif", "trajectories.png")
def _require(path: str | os.PathLike, key: str, remedy: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {remedy} ({key})")
    return path


def check_inputs(params: ReportParams, data_dir: str, model_path: str, evaluate_path: str,
                 sweep_path: str) -> Inputs:
    """Every check that can fail before the MLflow run: files, their contents, the model, the heights."""
    manifest = pdata.read_manifest(data_dir)
    _require(model_path, "train.out", "run the train stage first")
    evaluation = json.loads(_require(evaluate_path, "evaluate.out", "run the evaluate stage first").read_text())
    sweep = tables.read_sweep_table(_require(sweep_path, "sweep.table", "run the sweep stage first"))
    published = load_published(_require(params.published, "report.published",
                                        "the published numbers ship with the repository as paper/published.csv"))
    model = load_trained(model_path, device=resolve_device(params.device))
    check_model_fits(model, model_path, z_min=params.z_min, section="report", manifest=manifest, data_dir=data_dir)
    return Inputs(kind=manifest["kind"], name=manifest["name"], model=model, evaluation=evaluation, sweep=sweep,
                  published=published,
                  table_data=tables.resolve_table_data(params.table_data, manifest["name"], published))


# --- the flow --------------------------------------------------------------------------------------

def _run_params(params: ReportParams, inputs: Inputs, data_dir: str, model_path: str, evaluate_path: str,
                sweep_path: str) -> dict[str, Any]:
    values = params.model_dump()
    values["temperatures"] = ",".join(f"{t:g}" for t in params.temperatures)
    return dict(values, table_data_resolved=inputs.table_data, data_dir=data_dir, model_path=model_path,
                evaluate_path=evaluate_path, sweep_path=sweep_path, objective=inputs.model.objective)


def write_table(inputs: Inputs, folder: Path, **sources: Any) -> list[tables.TableRow]:
    """table.csv and table.md in `folder`; `sources` are pfgm.tables.build_table's paths and sweep settings."""
    rows = tables.build_table(inputs.evaluation, inputs.sweep, inputs.published, name=inputs.name,
                              model=tables.model_label(inputs.model), table_data=inputs.table_data, **sources)
    tables.write_table_csv(rows, folder / "table.csv")
    (folder / "table.md").write_text(tables.markdown(rows, name=inputs.name, table_data=inputs.table_data))
    return rows


@flow(name="report")
def report(params: ReportParams, data_dir: str, model_path: str, evaluate_path: str, sweep_path: str,
           sweep_num_samples: int | None = None, sweep_protocol: dict[str, Any] | None = None,
           perturbation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the table and the pictures into params.out and log them to one MLflow run.

    `sweep_num_samples` (the sweep section's num_samples) is shown beside the sweep's best FID, whose
    table does not record it: FID depends on the sample count. `sweep_protocol` (the sweep section's
    features, fid_mode, fid_reference, quantize) names how its FIDs were measured (None: as evaluate's).
    `perturbation` (the train section's sigma, tau, restrict_M) perturbs the training rows of norm_z.png as
    training did (None: PFGM.md's defaults).

    Returns dict(out, files, table (list of row dicts), metrics, run_id).
    """
    inputs = check_inputs(params, data_dir, model_path, evaluate_path, sweep_path)
    out = Path(params.out)
    tags = {"stage": "report", "data": inputs.name, "table_data": inputs.table_data}
    with staged_folder(out, REPORT_FILES) as staging, mlflow.start_run(run_name="report", tags=tags) as run:
        mlflow.log_params(_run_params(params, inputs, data_dir, model_path, evaluate_path, sweep_path))
        rows = write_table(inputs, staging, evaluate_path=evaluate_path, sweep_path=sweep_path,
                           sweep_num_samples=sweep_num_samples, sweep_protocol=sweep_protocol)
        with torch_threads(params.threads):
            metrics = draw_pictures(params, inputs, data_dir, staging, perturbation)
        metrics |= tables.our_metrics(rows)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(staging))
        files = sorted(p.name for p in staging.iterdir())
    get_run_logger().info("report written to %s: %s", out, ", ".join(files))
    return dict(out=str(out), files=files, table=[asdict(r) for r in rows], metrics=metrics, run_id=run.info.run_id)


def sweep_protocol(sweep: Any) -> dict[str, Any]:
    """The sweep section's FID settings, as the protocol text reads them (features: as evaluate resolved them)."""
    return dict(fid_reference=sweep.fid_reference, fid_mode=sweep.fid_mode, quantize=sweep.quantize)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: read data.out, train.out, evaluate.out, sweep.table (and num_samples) and `report`; run."""
    args = params_parser(__doc__).parse_args(argv)
    data, train, evaluation, sweep, params = load_sections(args.params, "data", "train", "evaluate", "sweep",
                                                           "report")
    check_report(data, train, evaluation, sweep, params)  # before MLflow and Prefect start
    configure()
    result = report(params, data_dir=data.out, model_path=str(Path(train.out) / MODEL_FILE),
                    evaluate_path=evaluation.out, sweep_path=sweep.table, sweep_num_samples=sweep.num_samples,
                    sweep_protocol=sweep_protocol(sweep),
                    perturbation=dict(sigma=train.sigma, tau=train.tau, restrict_M=train.restrict_M))
    print(json.dumps({k: result[k] for k in ("out", "files", "metrics", "run_id")}, sort_keys=True))
    return result


if __name__ == "__main__":
    command_line(main)
