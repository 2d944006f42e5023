"""flows.import_official: an official PFGM checkpoint becomes our model.pt, readable by the evaluate flow.

Uses the tiny official-format checkpoint of shared/reference/ddpmpp (skipped when that folder is absent);
nothing full-size is instantiated with weights.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from flows.evaluate import check_inputs
from flows.import_official import CONFIGS, import_official, main, params_text
from flows.params import EvaluateParams, SweepParams, load_params
from flows.sweep import check_inputs as sweep_check
from pfgm import data as pdata
from pfgm.networks.official_snapshot import read_official_snapshot
from pfgm.official import PFGMPP_RELEASES, RELEASES, ImportOfficialError, release_spec
from pfgm.perturb import prior_range
from pfgm.sampling import SamplerSettings, generate, load_trained

TINY_SHAPE = [3, 16, 16]  # tiny_ddpmpp_config.json: 3 channels, image_size 16
TINY_M = 291  # the tiny config has no training.M; CIFAR-10's (PFGM.md section 2)



@pytest.fixture(scope="module")
def tiny_io(ref: Path) -> dict:
    return torch.load(ref / "tiny_ddpmpp_io.pt", weights_only=True)


def prepared_images(folder: Path, shape: list[int]) -> Path:
    """A tiny prepared image folder (random uint8 images of `shape`), as the prepare stage writes it."""
    rng = np.random.default_rng(0)
    arrays = {split: rng.integers(0, 256, size=(n, *shape), dtype=np.uint8) for split, n in (("train", 6), ("test", 4))}
    prepared = pdata.Prepared(name="folder", kind="image", arrays=arrays, source="test images", seed=0,
                              split=dict(kind="seeded", test_fraction=0.4))
    pdata.write_prepared(prepared, folder)
    return folder


def tiny_args(ref: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(ref / "tiny_ddpmpp_checkpoint.pth"), "--config", str(ref / "tiny_ddpmpp_config.json"),
            "--M", str(TINY_M), "--out", str(out), *extra]


def test_tiny_import_reproduces_the_official_ema_outputs(ref, tiny_io, tmp_path, capsys):
    out = tmp_path / "models" / "tiny-official"
    result = main(tiny_args(ref, out, "--params", str(CONFIGS / "cifar10-ddpmpp.yaml")))
    assert "python -m flows.evaluate --params" in capsys.readouterr().out
    for ema in (True, False):  # our `model` and `ema` entries both hold the official EMA weights
        model = load_trained(result["model"], ema=ema)
        with torch.no_grad():
            out_net = model.net(tiny_io["x"], tiny_io["z"])
        torch.testing.assert_close(out_net, tiny_io["out_ema"], atol=1e-5, rtol=1e-5)
    assert model.objective == "pfgm" and list(model.shape) == TINY_SHAPE
    derived = prior_range(TINY_M, 3 * 16 * 16)  # no sampling.z_max in the JSON: derived from M and N
    assert model.hyperparameters == dict(M=TINY_M, gamma=5.0, **derived)
    official = model.metadata["official"]
    assert official["step"] == 0 and official["ema_decay"] == pytest.approx(0.9999)
    assert official["prior_range"] == "derived" and len(official["sha256"]) == 64


def test_the_written_params_file_points_at_the_import(ref, tmp_path):
    out = tmp_path / "tiny-official"
    result = import_official(ref / "tiny_ddpmpp_checkpoint.pth", str(ref / "tiny_ddpmpp_config.json"), out,
                             M=TINY_M, params=CONFIGS / "cifar10-ddpmpp.yaml")
    params = load_params(result["params"])
    assert params.train.out == str(out) and Path(params.evaluate.out).parent == out
    assert params.evaluate.model_name == "pfgm-cifar10-ddpmpp-official"
    assert params.data.name == "cifar10" and params.train.M == 291  # the rest is the paper configuration


def test_evaluate_check_inputs_accepts_the_import(ref, tmp_path):
    data = prepared_images(tmp_path / "prepared", TINY_SHAPE)
    out = tmp_path / "tiny-official"
    result = import_official(ref / "tiny_ddpmpp_checkpoint.pth", str(ref / "tiny_ddpmpp_config.json"), out,
                             M=TINY_M, data=data)
    manifest = pdata.read_manifest(data)
    assert result["data"] == dict(name="folder", sha256=manifest["files"]["train.npy"], kind="image",
                                  shape=TINY_SHAPE)
    inception = tmp_path / "inception-2015-12-05.pt"
    inception.touch()  # check_inputs only checks that the file is there
    params = EvaluateParams(device="cpu", features="inception", inception_path=str(inception), register_model=False)
    plan, model = check_inputs(params, str(data), result["model"])
    assert plan.features == "inception" and list(model.shape) == TINY_SHAPE


def test_every_release_has_its_paper_configuration():
    for name, release in RELEASES.items():
        params = load_params(CONFIGS / release.params)
        assert params.data.name == release.data and params.train.M == release.M, name


def test_params_text_redirects_outputs_into_the_model_folder(tmp_path):
    text = params_text(release_spec("celeba64_ddpmpp", "published"), CONFIGS / "celeba64-ddpmpp.yaml",
                       tmp_path / "m", tmp_path / "d")
    raw = yaml.safe_load(text)
    assert raw["train"]["out"] == str(tmp_path / "m") and raw["data"]["out"] == str(tmp_path / "d")
    assert raw["evaluate"]["out"] == str(tmp_path / "m" / "evaluate.json")
    if "sweep" in raw:  # the pipeline's own metrics files stay untouched
        assert raw["sweep"]["out"] == str(tmp_path / "m" / "sweep.json")
        assert raw["sweep"]["table"] == str(tmp_path / "m" / "sweep.csv")


# ---------------------------------------------------------------------------------------------------------
# Bad inputs: a clear error naming the input, and nothing written


def _bad_json(ref: Path, tmp_path: Path) -> Path:
    config = json.loads((ref / "tiny_ddpmpp_config.json").read_text())
    config["model"]["nf"] = 16  # the checkpoint's layers are twice as wide
    path = tmp_path / "narrow.json"
    path.write_text(json.dumps(config))
    return path


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoint_1.pth"
    path.write_bytes(b"not a checkpoint")
    return path


BAD = {
    "missing checkpoint": (lambda ref, tmp: dict(checkpoint=tmp / "nope.pth"), FileNotFoundError, "nope.pth"),
    "unknown config": (lambda ref, tmp: dict(config="cifar100_ddpmpp"), ImportOfficialError, "cifar10_ddpmpp_deep"),
    "missing json": (lambda ref, tmp: dict(config=str(tmp / "none.json")), FileNotFoundError, "none.json"),
    "not a checkpoint": (lambda ref, tmp: dict(checkpoint=_garbage(tmp)), ImportOfficialError, "checkpoint_1.pth"),
    "state dict mismatch": (lambda ref, tmp: dict(config=str(_bad_json(ref, tmp))), ImportOfficialError,
                            "does not fit"),
    "no M": (lambda ref, tmp: dict(M=None), ImportOfficialError, "--M"),
    "M with a release": (lambda ref, tmp: dict(config="cifar10_ddpmpp"), ImportOfficialError, "--M"),
    "data of another shape": (lambda ref, tmp: dict(data=prepared_images(tmp / "small", [3, 8, 8])),
                              ImportOfficialError, "[3, 8, 8]"),
    "bad params file": (lambda ref, tmp: dict(params=tmp / "missing.yaml"), ImportOfficialError, "missing.yaml"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_fail_clearly_and_write_nothing(ref, tmp_path, case):
    change, error, named = BAD[case]
    args = dict(checkpoint=ref / "tiny_ddpmpp_checkpoint.pth", config=str(ref / "tiny_ddpmpp_config.json"),
                out=tmp_path / "out", M=TINY_M)
    args.update(change(ref, tmp_path))
    with pytest.raises(error, match=named.replace("[", r"\[").replace("]", r"\]")):
        import_official(**args)
    assert not (tmp_path / "out").exists()


def test_an_existing_model_is_replaced_only_with_force(ref, tmp_path):
    out = tmp_path / "out"
    args = (ref / "tiny_ddpmpp_checkpoint.pth", str(ref / "tiny_ddpmpp_config.json"), out)
    first = Path(import_official(*args, M=TINY_M)["model"]).read_bytes()
    with pytest.raises(ImportOfficialError, match="--force"):
        import_official(*args, M=TINY_M)
    assert (out / "model.pt").read_bytes() == first
    import_official(*args, M=TINY_M, force=True, prior="published")
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]  # no temporary files left behind


# ---------------------------------------------------------------------------------------------------------
# Official PFGM++ snapshots (shared/reference/edm): detected by content, imported as EDMPrecond


PFGMPP_SNAPSHOTS = {"ncsnpp": "ncsnpp_snapshot.pkl", "ddpmpp": "ddpmpp_snapshot.pt"}
EDM_SHAPE = [3, 8, 8]  # the tiny fixtures: 3 channels, img_resolution 8


@pytest.mark.parametrize("name", sorted(PFGMPP_SNAPSHOTS))
def test_pfgmpp_snapshot_imports_and_reproduces_the_official_denoiser(edm_ref, name, tmp_path, capsys):
    data = prepared_images(tmp_path / "prepared", EDM_SHAPE)
    out = tmp_path / f"{name}-official"
    # no --config: the file says what it is (the .pkl is a plain pickle, the .pt a torch zip)
    result = main(["--checkpoint", str(edm_ref / PFGMPP_SNAPSHOTS[name]), "--out", str(out), "--data", str(data),
                   "--params", str(CONFIGS / "cifar10-pfgmpp-d128.yaml")])
    assert "python -m flows.evaluate --params" in capsys.readouterr().out
    assert result["objective"] == "pfgmpp" and result["hyperparameters"] == {"D": 128}
    model = load_trained(result["model"])
    assert model.objective == "pfgmpp" and model.network_class == "EDMPrecond" and list(model.shape) == EDM_SHAPE
    io = torch.load(edm_ref / f"{name}_io.pt", weights_only=True)
    with torch.no_grad():
        denoised = model.net(io["x"], io["sigma"], augment_labels=io["augment_labels"])
    torch.testing.assert_close(denoised, io["D_x"], atol=1e-5, rtol=1e-5)
    official = model.metadata["official"]
    assert official["format"] == "pfgmpp-snapshot" and official["key"] == "ema" and official["images"] == 0
    assert official["init_kwargs"]["D"] == 128 and len(official["sha256"]) == 64
    # evaluate and sweep accept it, and it samples with EDM's Heun (NFE 2 steps - 1)
    inception = tmp_path / "inception-2015-12-05.pt"
    inception.touch()
    evaluate = EvaluateParams(device="cpu", features="inception", inception_path=str(inception),
                              register_model=False)
    check_inputs(evaluate, str(data), result["model"])
    sweep_check(SweepParams(device="cpu", features="inception", inception_path=str(inception)), str(data),
                [result["model"]])
    out = generate(model, 3, SamplerSettings(steps=4), batch_size=3, generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (3, *EDM_SHAPE) and out.nfe == [7] and bool(torch.isfinite(out.x).all())
    assert load_params(result["params"]).train.out == str(Path(result["model"]).parent)


def test_a_snapshot_is_imported_whatever_its_name(edm_ref, tmp_path):
    renamed = tmp_path / "checkpoint_8.pth"  # a PFGM-like name does not make it a PFGM checkpoint
    renamed.write_bytes((edm_ref / "ncsnpp_snapshot.pkl").read_bytes())
    assert import_official(renamed, None, tmp_path / "out")["objective"] == "pfgmpp"


def _edm_snapshot(monkeypatch):
    """Make the reader see the fixture as trained with pfgmpp=False (EDM), as the D=inf releases are."""
    import pfgm.official as module

    def as_edm(path, *, key="ema"):
        snapshot = read_official_snapshot(path, key=key)
        return dataclasses.replace(snapshot, init_kwargs={**snapshot.init_kwargs, "pfgmpp": False})

    monkeypatch.setattr(module, "read_official_snapshot", as_edm)


PFGMPP_BAD = {
    "EDM, not PFGM++": (dict(), "pfgmpp=False"),
    "M": (dict(M=291), "--M"),
    "PFGM config": (dict(config="cifar10_ddpmpp"), "PFGM configuration"),
    "unknown release": (dict(config="cifar10_ncsnpp_D_64"), "cifar10_ncsnpp_D_128"),
    "release of another shape": (dict(config="cifar10_ncsnpp_D_128"), "does not fit"),
    "data of another shape": (dict(data="small"), "[3, 8, 8]"),
}


@pytest.mark.parametrize("case", sorted(PFGMPP_BAD))
def test_bad_pfgmpp_imports_fail_clearly_and_write_nothing(edm_ref, tmp_path, monkeypatch, case):
    change, named = PFGMPP_BAD[case]
    if case.startswith("EDM"):
        _edm_snapshot(monkeypatch)
    if change.get("data") == "small":
        change = dict(data=prepared_images(tmp_path / "small", [3, 16, 16]))
    args = {**dict(checkpoint=edm_ref / "ncsnpp_snapshot.pkl", config=None, out=tmp_path / "out"), **change}
    with pytest.raises(ImportOfficialError, match=re.escape(named)):
        import_official(**args)
    assert not (tmp_path / "out").exists()


def test_pfgmpp_releases_have_their_paper_configuration():
    for name, release in PFGMPP_RELEASES.items():
        params = load_params(CONFIGS / release.params)
        assert params.data.name == release.data and params.train.objective == "pfgmpp", name
        assert params.train.D == release.D and params.train.network == "EDMPrecond", name
