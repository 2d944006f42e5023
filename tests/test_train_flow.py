"""flows.train: a tracked run, exact resumption in the same MLflow run, and clean failures."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from flows.params import DataParams, ParamsError, TrainParams
from pfgm import data as pdata
from pfgm.training import DivergenceError, latest_checkpoint, load_checkpoint
from pfgm.training import loop as loop_module

METRICS = ("loss", "grad_norm", "images_per_s", "lr")


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def moons(tmp_path_factory) -> DataParams:
    """A prepared moons folder: 320 training points."""
    out = tmp_path_factory.mktemp("data") / "moons"
    pdata.write_prepared(pdata.build_toy("moons", n_points=400, seed=0, test_fraction=0.2), out)
    return DataParams(name="moons", out=str(out))


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty SQLite tracking store: creating its tables takes seconds, copying it milliseconds."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def client(tmp_path, monkeypatch, empty_store) -> MlflowClient:
    """A private SQLite tracking store in tmp_path (artifacts go to tmp_path/mlartifacts)."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(uri)


def _params(out: Path, **changes) -> TrainParams:
    base = dict(out=str(out), seed=0, device="cpu", network="FieldMLP",
                network_kwargs=dict(hidden=32, depth=2, embed_dim=8), steps=20, batch_size=64, small_batch=32,
                lr=1e-3, warmup=5, ema_decay=0.9, checkpoint_every=5, sample_every=10)
    return TrainParams(**{**base, **changes})


def _runs(client: MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def _history(client: MlflowClient, run_id: str, key: str) -> list:
    return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)


def _metadata(path: Path) -> dict:
    return json.loads(load_checkpoint(path)["metadata"])


def _artifacts(client: MlflowClient, run_id: str, folder: str) -> list[str]:
    return sorted(a.path for a in client.list_artifacts(run_id, folder))


def test_train_tracks_one_finished_run_and_reruns_only_when_params_change(prefect_test_env, tmp_path, client,
                                                                           moons):
    from flows.train import train

    params = _params(tmp_path / "model")
    result = train(params, moons, root=str(tmp_path))
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert result["steps"] == 20 and result["history_length"] == 20 and result["resumed_from"] is None
    assert math.isfinite(result["loss"]) and result["model"] == str(tmp_path / "model" / "model.pt")
    assert run.data.params["lr"] == "0.001" and run.data.params["network_kwargs.hidden"] == "32"
    assert run.data.params["data.name"] == "moons"
    assert run.data.params["hyperparameters.M"] == str(result["hyperparameters"]["M"])
    assert {k: run.data.tags[k] for k in ("objective", "data", "network")} == dict(
        objective="pfgm", data="moons", network="FieldMLP")
    for key in METRICS:
        assert [m.step for m in _history(client, run.info.run_id, key)] == list(range(1, 21))
    assert _history(client, run.info.run_id, "loss")[-1].value == result["loss"]
    assert _artifacts(client, run.info.run_id, "checkpoint") == ["checkpoint/model.pt"]
    assert _artifacts(client, run.info.run_id, "samples") == ["samples/step_00000010.png",
                                                              "samples/step_00000020.png"]

    manifest = pdata.read_manifest(moons.out)
    meta = _metadata(tmp_path / "model" / "model.pt")
    assert meta["hyperparameters"] == result["hyperparameters"] and set(meta["hyperparameters"]) == {
        "M", "z_max", "upper_norm", "gamma"}
    assert meta["objective"] == "pfgm" and meta["mlflow_run_id"] == run.info.run_id
    assert meta["data"]["name"] == "moons" and meta["data"]["sha256"] == manifest["files"]["train.npy"]
    # Only the newest checkpoint is kept beside the model: the folder is a DVC output.
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["checkpoint_00000020.pt", "model.pt"]

    again = train(params, moons, root=str(tmp_path))  # complete: nothing to do
    assert again["run_id"] == run.info.run_id and again["history_length"] == 0 and again["loss"] == result["loss"]
    assert len(_runs(client)) == 1

    changed = train(_params(tmp_path / "model", lr=2e-3), moons, root=str(tmp_path))
    assert changed["run_id"] != run.info.run_id and changed["history_length"] == 20
    assert {r.info.run_id: r.info.status for r in _runs(client)} == {
        run.info.run_id: "FINISHED", changed["run_id"]: "FINISHED"}
    new_meta = _metadata(tmp_path / "model" / "model.pt")
    assert new_meta["fingerprint"] != meta["fingerprint"] and new_meta["mlflow_run_id"] == changed["run_id"]
    assert {_metadata(p)["mlflow_run_id"] for p in (tmp_path / "model").glob("checkpoint_*.pt")} == {
        changed["run_id"]}


def test_interrupted_run_resumes_the_same_run_bit_identically(prefect_test_env, tmp_path, client, moons,
                                                              monkeypatch):
    from flows.train import train

    whole = train(_params(tmp_path / "whole"), moons, root=str(tmp_path))

    step = loop_module.train_step

    def interrupt_after_12(state, *args, **kwargs):
        if state.step == 12:
            raise KeyboardInterrupt
        return step(state, *args, **kwargs)

    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(loop_module, "train_step", interrupt_after_12)
        with pytest.raises(KeyboardInterrupt):
            train(_params(out), moons, root=str(tmp_path))
    (interrupted,) = [r for r in _runs(client) if r.info.run_id != whole["run_id"]]
    assert interrupted.info.status == "KILLED" and interrupted.data.tags["failure"] == "interrupted"
    assert not (out / "model.pt").exists() and latest_checkpoint(out).name == "checkpoint_00000010.pt"

    # Resumed, it fails again writing checkpoint 15, after the metrics of steps 11-15 went out.
    write = loop_module.save_checkpoint

    def disk_full_at_15(path, state, **kwargs):
        if state.step == 15:
            raise OSError("No space left on device")
        return write(path, state, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(loop_module, "save_checkpoint", disk_full_at_15)
        with pytest.raises(OSError, match="No space left"):
            train(_params(out), moons, root=str(tmp_path))
    run = client.get_run(interrupted.info.run_id)
    assert run.info.status == "FAILED" and "No space left" in run.data.tags["failure"]
    assert run.data.tags["pfgm.logged_through"] == "15"

    resumed = train(_params(out), moons, root=str(tmp_path))
    assert resumed["run_id"] == interrupted.info.run_id and resumed["resumed_from"] == 10
    assert resumed["history_length"] == 10 and len(_runs(client)) == 2
    run = client.get_run(resumed["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["pfgm.resumed_from"] == "10,10"
    assert "failure" not in run.data.tags
    for key in ("loss", "grad_norm", "lr"):
        logged = _history(client, resumed["run_id"], key)
        assert [m.step for m in logged] == list(range(1, 21))
        assert [m.value for m in logged] == [m.value for m in _history(client, whole["run_id"], key)]

    a, b = load_checkpoint(tmp_path / "whole" / "model.pt"), load_checkpoint(out / "model.pt")
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])


def test_invalid_params_fail_naming_the_key_before_any_run(prefect_test_env, tmp_path, client, moons,
                                                           monkeypatch):
    from flows.train import main
    from flows.train_runs import setup

    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  name: moons\n  out: {moons.out}\ntrain:\n  out: model\n  lr: -1.0\n")
    with pytest.raises(ParamsError, match=r"train\.lr"):
        main(["--params", str(params)])
    with pytest.raises(ValidationError, match=r"widht: not an argument of FieldMLP"):  # refused with the params
        _params(tmp_path / "model", network_kwargs=dict(hidden=32, widht=3))
    assert _runs(client) == [] and not (tmp_path / "model").exists()

    charges, manifest = pdata.load_split(moons.out), pdata.read_manifest(moons.out)
    cases = {r"train\.network_kwargs\.data_shape": dict(network_kwargs=dict(data_shape=[3])),
             r"train\.network_kwargs\.embedding": dict(objective="pfgmpp", network_kwargs=dict(embedding="log")),
             r"train\.network_kwargs: FieldMLP": dict(network_kwargs=dict(depth=0)),
             r"train\.network: DDPMpp needs square images": dict(network="DDPMpp", network_kwargs={}),
             r"train\.network: FieldConvNet needs images": dict(network="FieldConvNet", network_kwargs={}),
             r"train\.batch_size": dict(batch_size=1000),
             r"train\.flip": dict(flip=True),
             r"train\.betas": dict(betas=[0.9, 1.5])}
    for key, changes in cases.items():
        with pytest.raises(ParamsError, match=key):
            setup(_params(tmp_path / "model", **changes), charges, manifest)


def test_an_imported_official_checkpoint_is_never_trained_over(prefect_test_env, tmp_path, client, moons):
    from flows.train import train
    from pfgm.training.checkpoint import FORMAT, VERSION

    out = tmp_path / "official"
    out.mkdir()
    imported = out / "model.pt"  # what flows.import_official writes: our format, metadata naming its source
    torch.save(dict(format=FORMAT, version=VERSION, metadata=json.dumps(dict(official=dict(step=0)))), imported)
    before = imported.read_bytes()
    with pytest.raises(ParamsError, match=r"train\.out: .* imported official checkpoint"):
        train(_params(out), moons, root=str(tmp_path))
    assert imported.read_bytes() == before and _runs(client) == []


def test_divergence_fails_the_run_with_its_message_and_writes_no_model(prefect_test_env, tmp_path, client,
                                                                       moons):
    from flows.train import train

    out = tmp_path / "model"
    with pytest.raises(DivergenceError, match="diverged at step"):
        train(_params(out, lr=1e30, warmup=0, grad_clip=None), moons, root=str(tmp_path))
    (run,) = _runs(client)
    assert run.info.status == "FAILED" and "diverged at step" in run.data.tags["failure"]
    assert not (out / "model.pt").exists() and not list(out.glob(".*.tmp"))
    steps = [m.step for m in _history(client, run.info.run_id, "loss")]
    assert steps == list(range(1, len(steps) + 1))  # what was trained is logged, without gaps


def test_main_trains_pfgmpp_from_a_params_file(prefect_test_env, tmp_path, client, moons, monkeypatch):
    from flows.train import main

    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  name: moons\n  out: {moons.out}\n"
                      "train:\n  out: models/moons\n  device: cpu\n  network: FieldMLP\n  network_kwargs: {hidden: 32, depth: 1}\n"
                      "  objective: pfgmpp\n  D: 4\n  steps: 6\n  batch_size: 32\n  warmup: 2\n"
                      "  checkpoint_every: 3\n  sample_every: 3\n")
    result = main(["--params", str(params), "--history", "metrics/train_history.csv"])
    meta = _metadata(tmp_path / "models" / "moons" / "model.pt")
    assert meta["objective"] == "pfgmpp" and meta["hyperparameters"]["D"] == 4
    assert result["hyperparameters"] == meta["hyperparameters"] and result["steps"] == 6
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    assert _artifacts(client, result["run_id"], "samples") == ["samples/step_00000003.png",
                                                               "samples/step_00000006.png"]
    with open(tmp_path / "metrics" / "train_history.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["step"]) for r in rows] == list(range(1, 7)) and float(rows[-1]["loss"]) == result["loss"]
    assert list(rows[0]) == ["step", *METRICS]


# ---------------------------------------------------------------------------------------------------------
# PFGM++ with EDM's network and recipe: EDMPrecond, augmentation, lr ramp-up and EMA half-life in images


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> DataParams:
    """A prepared folder of 48 random 1x8x8 images (the digits' shape)."""
    out = tmp_path_factory.mktemp("data") / "images"
    rng = np.random.default_rng(0)
    arrays = {split: rng.integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8) for split, n in (("train", 40),
                                                                                            ("test", 8))}
    pdata.write_prepared(pdata.Prepared(name="folder", kind="image", arrays=arrays, source="test images", seed=0,
                                        split=dict(kind="seeded", test_fraction=0.2)), out)
    return DataParams(name="folder", out=str(out))


EDM_KWARGS = dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.1,
                  augment_dim=9)


def _edm_params(out: Path, **changes) -> TrainParams:
    base = dict(out=str(out), seed=0, device="cpu", network="EDMPrecond", network_kwargs=EDM_KWARGS,
                objective="pfgmpp", D=16, steps=4, batch_size=8, lr=1e-3, warmup=0, lr_rampup_kimg=0.016,
                grad_clip=None, ema_halflife_kimg=0.02, ema_rampup_ratio=0.05, augment=0.12,
                checkpoint_every=2, sample_every=4)
    return TrainParams(**{**base, **changes})


def test_an_unknown_network_argument_is_refused_with_the_params():
    with pytest.raises(ValidationError, match=r"nf: not an argument of EDMPrecond \(known: .*channel_mult"):
        _edm_params(Path("unused"), network_kwargs={**EDM_KWARGS, "nf": 8})


def test_train_edmprecond_with_edm_recipe_and_sample_it(prefect_test_env, tmp_path, client, tiny_images):
    from pfgm.sampling import SamplerSettings, generate, load_trained
    from flows.train import train

    result = train(_edm_params(tmp_path / "model"), tiny_images, root=str(tmp_path))
    assert client.get_run(result["run_id"]).info.status == "FINISHED" and result["steps"] == 4
    lrs = [m.value for m in _history(client, result["run_id"], "lr")]
    assert lrs == pytest.approx([0.0, 0.5e-3, 1e-3, 1e-3])  # 16 images of ramp-up at 8 per step
    payload = load_checkpoint(tmp_path / "model" / "model.pt")
    assert payload["network"]["class"] == "EDMPrecond" and int(payload["ema"]["num_updates"]) == 4
    model = load_trained(tmp_path / "model" / "model.pt")
    assert model.objective == "pfgmpp" and model.shape == (1, 8, 8) and model.net.augment_dim == 9
    out = generate(model, 4, SamplerSettings(steps=3), batch_size=4, generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (4, 1, 8, 8) and out.nfe == [5] and bool(torch.isfinite(out.x).all())
