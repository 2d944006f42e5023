"""flows.report: the table beside the published rows, the pictures, one MLflow run; failures before it.

Data are real digits (without the FID classifier, which the report does not use) and a toy; the model
is a tiny untrained FieldMLP (helpers.make_checkpoint); the evaluate JSON and the sweep CSV
are small fixtures written here, in the sweep stage's columns.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from flows.params import ParamsError, ReportParams
from helpers import make_checkpoint
from pfgm import data as pdata
from pfgm.published import PUBLISHED_CSV, load_published
from pfgm.tables import SWEEP_COLUMNS

SWEEP_ROWS = [  # checkpoint, solver, method, steps, rtol, atol, nfe, nfe_max, seconds_per_sample, fid, run_id
    ("model.pt", "RK45 tol=1e-2", "dopri5", "", 0.01, 0.01, 30.5, 32, 0.001, 25.0, "r1"),
    ("model.pt", "RK45 tol=1e-3", "dopri5", "", 0.001, 0.001, 50.25, 56, 0.002, 18.0, "r2"),
    ("model.pt", "Euler 10 steps", "euler", 10, "", "", 10.0, 10, 0.0005, 40.0, "r3"),
    ("model.pt", "Euler 20 steps", "euler", 20, "", "", 20.0, 20, 0.001, 22.0, "r4"),
    ("model.pt", "Heun 5 steps", "heun2", 5, "", "", 10.0, 10, 0.001, "", "r5"),  # diverged: no FID
]


def write_sweep(path: Path, rows=SWEEP_ROWS, *, with_fid: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*SWEEP_COLUMNS, "objective", "nonfinite_samples"])
        for row in rows:
            writer.writerow([*row[:9], row[9] if with_fid else "", row[10], "pfgm", 0])
    return path


def write_json(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


EVALUATION = dict(fid=20.5, fid_floor=2.0, nfe=8.0, method="euler", num_samples=96, features="digits", bpd=5.125)


@pytest.fixture(scope="module")
def digits(plain_digits) -> Path:
    """The real digits without the FID classifier, which the report does not use."""
    return plain_digits


@pytest.fixture(scope="module")
def moons(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report_moons") / "prepared"
    pdata.write_prepared(pdata.build_toy("moons", n_points=400, seed=0, test_fraction=0.25), out)
    return out


def small_params(tmp_path: Path, **overrides) -> ReportParams:
    values = dict(out=str(tmp_path / "reports"), device="cpu", method="euler", steps=6, num_samples=16,
                  interpolation_pairs=2, interpolation_points=4, temperatures=[0.5, 1.0, 2.0],
                  temperature_samples=3, published=str(PUBLISHED_CSV), animation_points=20, animation_frames=5,
                  z_exp=None)  # the setting these tests were written for
    return ReportParams(**{**values, **overrides})


def report_runs() -> list:
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string="tags.stage = 'report'")


def _table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_on_digits(prefect_test_env, tracking, digits, tmp_path):
    from flows.report import report

    model = make_checkpoint(tmp_path / "models" / "model.pt")
    params = small_params(tmp_path)
    out = Path(params.out)
    out.mkdir()
    (out / "flow.gif").write_bytes(b"stale")  # from an earlier run on 2D points
    (out / "notes.txt").write_text("not ours")
    result = report(params, data_dir=str(digits), model_path=str(model),
                    evaluate_path=str(write_json(tmp_path / "metrics" / "evaluate.json", EVALUATION)),
                    sweep_path=str(write_sweep(tmp_path / "metrics" / "sweep.csv")), sweep_num_samples=500)

    pictures = {"nfe_vs_fid.png", "samples.png", "interpolation.png", "temperature.png", "norm_z.png"}
    assert set(result["files"]) == {"table.csv", "table.md", "norm_z.csv"} | pictures
    assert all((out / name).stat().st_size > 0 for name in result["files"])
    assert all(Image.open(out / name).format == "PNG" for name in pictures)
    assert not (out / "flow.gif").exists() and (out / "notes.txt").exists()

    rows = _table(out / "table.csv")
    evaluate_row, sweep_row, *published = rows
    assert evaluate_row["origin"] == "this run: evaluate" and evaluate_row["data"] == "digits"
    assert float(evaluate_row["fid"]) == 20.5 and float(evaluate_row["bpd"]) == 5.125
    assert evaluate_row["solver"] == "euler" and evaluate_row["num_samples"] == "96"
    # An evaluate.json without the FID protocol keys (older runs) compared with the test split, one set.
    assert evaluate_row["features"] == "digits CNN (prepare stage) vs test split"
    assert evaluate_row["protocol"] == ("FID, KID: 96 samples per set, one set; digits CNN (prepare stage) vs test "
                                        "split statistics; samples to uint8 by round (docs/FID.md)")
    assert sweep_row["origin"] == "this run: sweep best" and float(sweep_row["fid"]) == 18.0
    assert sweep_row["solver"] == "RK45 tol=1e-3" and float(sweep_row["nfe"]) == 50.25
    assert sweep_row["num_samples"] == "500"
    # No published row on digits: the CIFAR-10 ones, marked as a reference, never as a match.
    cifar = [r for r in load_published() if r.data_name == "cifar10"]
    assert [r["model"] for r in published] == list(dict.fromkeys(r.model for r in cifar))
    assert all(r["data"] == "CIFAR-10" and r["comparison"].startswith("reference only") for r in published)
    assert float(published[0]["fid"]) == 2.48 and published[0]["nfe_approximate"] == "True"
    text = (out / "table.md").read_text()
    assert "Nothing is published on digits in PFGM.md: the published rows below are CIFAR-10" in text
    assert "~104" in text and "| 18.00 |" in text
    assert "Protocol of this run's FIDs:" in text and "- this run: sweep best: FID, KID: 500 samples per set" in text
    assert "best of three 50k sets with our `fid_min`" in text

    run = mlflow.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "report"
    assert run.data.tags["stage"] == "report" and run.data.tags["table_data"] == "cifar10"
    assert run.data.metrics["sweep_best_fid"] == 18.0 and run.data.metrics["evaluate_bpd"] == 5.125
    assert run.data.metrics["nfe_interpolation"] > 0 and run.data.params["method"] == "euler"
    # norm_z.csv: the sampling curve has one row per Euler evaluation (6 steps), heights from z_max down.
    norms = _table(out / "norm_z.csv")
    sampling = [r for r in norms if r["curve"] == "sampling"]
    assert len(sampling) == params.steps and {r["variable"] for r in norms} == {"z"}
    assert float(sampling[0]["height"]) > float(sampling[-1]["height"]) and int(sampling[0]["count"]) == 16
    train_rows = min(2000, len(pdata.load_split(digits, "train")))  # flows.report_pictures.NORM_TRAINING_ROWS at most
    assert sum(int(r["count"]) for r in norms if r["curve"] == "training (perturbed)") == train_rows
    assert run.data.metrics["norm_spread_training"] > 0 and run.data.metrics["norm_spread_sampling"] >= 0
    assert {a.path for a in MlflowClient().list_artifacts(run.info.run_id)} == set(result["files"])
    assert not list(tmp_path.glob(".reports.*")), "the staging folder is removed"


def test_report_on_2d_points_writes_the_animation(prefect_test_env, tracking, moons, tmp_path):
    from flows.report import report

    model = make_checkpoint(tmp_path / "model.pt", data=pdata.load_split(moons, "train"), shape=(2,))
    params = small_params(tmp_path)
    result = report(params, data_dir=str(moons), model_path=str(model),
                    evaluate_path=str(write_json(tmp_path / "evaluate.json", dict(nll=1.5, nfe=8.0, method="euler"))),
                    sweep_path=str(write_sweep(tmp_path / "sweep.csv", with_fid=False)))
    assert set(result["files"]) == {"table.csv", "table.md", "samples.png", "flow.gif", "trajectories.png",
                                    "norm_z.png", "norm_z.csv"}
    with Image.open(Path(params.out) / "flow.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == params.animation_frames
    rows = _table(Path(params.out) / "table.csv")
    assert rows[0]["nll"] == "1.5" and rows[0]["fid"] == "" and rows[1]["origin"] == "published"
    assert result["metrics"]["nfe_flow"] == (params.animation_frames - 1) * params.steps
    assert mlflow.get_run(result["run_id"]).info.status == "FINISHED"


def _write_params(tmp_path: Path, digits: Path, report_section: str, *, sweep: Path | None = None) -> Path:
    """A params file over existing inputs; a `sweep` path given here is left unwritten."""
    make_checkpoint(tmp_path / "models" / "model.pt")
    write_json(tmp_path / "metrics" / "evaluate.json", EVALUATION)
    sweep = sweep or write_sweep(tmp_path / "metrics" / "sweep.csv")
    path = tmp_path / "params.yaml"
    path.write_text(f"data:\n  out: {digits}\ntrain:\n  out: {tmp_path / 'models'}\n"
                    f"evaluate:\n  out: {tmp_path / 'metrics' / 'evaluate.json'}\nsweep:\n  table: {sweep}\n"
                    f"report:\n  out: {tmp_path / 'reports'}\n  device: cpu\n  published: {PUBLISHED_CSV}\n"
                    f"{report_section}")
    return path


@pytest.mark.parametrize("section, message", [
    ("  tempratures: [1.0]\n", "report.tempratures"),
    ("  method: euler\n", "report.steps"),
    ("  method: rk45\n", "report.method"),
    ("  temperatures: [1.0, -0.5]\n", "report.temperatures.1"),
    ("  interpolation_points: 1\n", "report.interpolation_points"),
    ("  animation_frames: 2.5\n", "report.animation_frames"),
    ("  table_data: mnist\n", "report.table_data"),
    ("  z_min: 1000.0\n", "report.z_min"),
])
def test_bad_params_fail_before_any_run(prefect_test_env, tracking, digits, tmp_path, section, message):
    from flows.report import main

    before = len(report_runs())
    with pytest.raises(ParamsError, match=message.replace(".", r"\.")):
        main(["--params", str(_write_params(tmp_path, digits, section))])
    assert len(report_runs()) == before and not (tmp_path / "reports").exists()


def test_missing_sweep_table_is_named_and_starts_no_run(prefect_test_env, tracking, digits, tmp_path):
    from flows.report import main

    before = len(report_runs())
    params = _write_params(tmp_path, digits, "", sweep=tmp_path / "metrics" / "sweep.csv")  # never written
    with pytest.raises(FileNotFoundError, match=r"sweep\.csv not found: run the sweep stage first"):
        main(["--params", str(params)])
    assert len(report_runs()) == before
    assert mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string="attributes.status = 'RUNNING'") == []


def test_an_error_during_the_run_fails_it_and_publishes_nothing(prefect_test_env, tracking, digits, tmp_path,
                                                                monkeypatch):
    from flows import report as report_module
    from pfgm import viz

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(viz, "save_image_grid", broken)
    params = small_params(tmp_path)
    with pytest.raises(RuntimeError, match="disk full"):
        report_module.report(params, data_dir=str(digits), model_path=str(make_checkpoint(tmp_path / "model.pt")),
                             evaluate_path=str(write_json(tmp_path / "evaluate.json", EVALUATION)),
                             sweep_path=str(write_sweep(tmp_path / "sweep.csv")))
    failed = [r for r in report_runs() if r.info.status != "FINISHED"]
    assert failed and all(r.info.status == "FAILED" for r in failed)
    assert not (Path(params.out) / "table.csv").exists() and not list(tmp_path.glob(".reports.*"))


def test_images_whose_forward_flow_diverges_are_skipped(prefect_test_env, tracking, digits, tmp_path, monkeypatch):
    from flows import report as module
    from flows.report_pictures import ENCODE_ATTEMPTS
    from pfgm import latent
    from pfgm.sampling import SolveDiverged

    real_encode, calls = latent.encode, []

    def second_gives_up(model, x, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise SolveDiverged("dopri5 gave up: underflow in dt 0.0")
        return real_encode(model, x, **kwargs)

    def always_gives_up(model, x, **kwargs):
        raise SolveDiverged("dopri5 gave up: underflow in dt 0.0")

    paths = dict(data_dir=str(digits), model_path=str(make_checkpoint(tmp_path / "model.pt")),
                 evaluate_path=str(write_json(tmp_path / "evaluate.json", EVALUATION)),
                 sweep_path=str(write_sweep(tmp_path / "sweep.csv")))
    monkeypatch.setattr(latent, "encode", second_gives_up)
    result = module.report(small_params(tmp_path / "one"), **paths)
    assert "interpolation.png" in result["files"]
    assert result["metrics"]["interpolation_skipped_images"] == 1 and result["metrics"]["interpolation_pairs"] == 2

    monkeypatch.setattr(latent, "encode", always_gives_up)
    params = small_params(tmp_path / "all")
    result = module.report(params, **paths)
    assert "interpolation.png" not in result["files"] and "temperature.png" in result["files"]
    assert result["metrics"]["interpolation_skipped_images"] == 2 * params.interpolation_pairs * ENCODE_ATTEMPTS
    assert result["metrics"]["nfe_interpolation"] == 0 and result["metrics"]["interpolation_pairs"] == 0
    assert mlflow.get_run(result["run_id"]).info.status == "FINISHED"


def test_pfgmpp_model_gets_the_table_and_samples_only(prefect_test_env, tracking, digits, tmp_path):
    from flows.report import report

    result = report(small_params(tmp_path), data_dir=str(digits),
                    model_path=str(make_checkpoint(tmp_path / "model.pt", objective="pfgmpp")),
                    evaluate_path=str(write_json(tmp_path / "evaluate.json", EVALUATION)),
                    sweep_path=str(write_sweep(tmp_path / "sweep.csv")))
    assert set(result["files"]) == {"table.csv", "table.md", "nfe_vs_fid.png", "samples.png", "norm_z.png",
                                    "norm_z.csv"}
    assert result["table"][0]["model"] == "PFGM++ D=4 FieldMLP"
    norms = _table(Path(result["out"]) / "norm_z.csv")
    assert {r["variable"] for r in norms} == {"sigma"}  # PFGM++: the norm against sigma
