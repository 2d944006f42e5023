"""The levels a prepared data set records, and flows.evaluate's likelihood task and settings."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from flows.evaluate import check_likelihood, expected_metrics, likelihood_metrics
from flows.params import EvaluateParams, ParamsError
from pfgm.sampling import SamplerSettings, load_trained
from helpers import make_checkpoint
from pfgm import data as pdata
from pfgm.likelihood import (bits_per_dim, dequantize, histogram_bits_per_dim, log_likelihood,
                             pfgmpp_log_likelihood_per_probe)
from pfgm.networks.edm import as_denoiser

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits(plain_digits) -> Path:
    """The real digits, prepared without the FID classifier (the likelihood needs none)."""
    return plain_digits


@pytest.fixture(scope="module")
def model(digits, tmp_path_factory):
    """A tiny untrained FieldMLP checkpoint of the digits' shape, loaded as the evaluate flow does."""
    data = pdata.load_split(digits, "train")
    return load_trained(make_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", data=data))


def _images(levels: int | None, values: list[int]) -> pdata.Prepared:
    arrays = {split: np.array(values, dtype=np.uint8).reshape(-1, 1, 1, len(values)).repeat(2, axis=0)
              for split in pdata.store.SPLITS}
    return pdata.Prepared(name="tiny", kind="image", arrays=arrays, source="test", seed=0, split={}, levels=levels)


def test_manifests_record_the_levels_and_old_ones_read_as_eight_bit(digits, tmp_path):
    manifest = pdata.read_manifest(digits)
    assert manifest["levels"] == 17 and pdata.levels_of(manifest) == 17
    stored = np.unique(np.load(digits / "train.npy"))
    assert set(stored) <= set(pdata.uint8_levels(17)) and len(stored) == 17
    toy = pdata.write_prepared(pdata.build_toy("moons", n_points=20, seed=0, test_fraction=0.25), tmp_path / "toy")
    assert toy["levels"] is None and pdata.levels_of(toy) is None
    eight_bit = pdata.write_prepared(_images(None, [0, 1, 254]), tmp_path / "eight")
    assert eight_bit["levels"] == 256
    # A folder prepared before levels were recorded: its manifest has no key and reads as 8-bit.
    legacy = {key: value for key, value in manifest.items() if key != "levels"}
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "manifest.json").write_text(json.dumps(legacy))
    assert pdata.levels_of(pdata.read_manifest(tmp_path / "legacy")) == 256


def test_values_off_the_levels_or_levels_on_points_are_refused(tmp_path):
    with pytest.raises(pdata.DataError, match="value 1 is not one of the 17 levels"):
        pdata.write_prepared(_images(17, [0, 1, 255]), tmp_path / "bad")
    with pytest.raises(pdata.DataError, match="levels must be an integer from 2 to 256"):
        pdata.write_prepared(_images(300, [0, 255]), tmp_path / "bad")
    toy = pdata.build_toy("moons", n_points=20, seed=0, test_fraction=0.25)
    toy.levels = 17
    with pytest.raises(pdata.DataError, match="points have none"):
        pdata.write_prepared(toy, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def _params(tmp_path: Path, **overrides) -> EvaluateParams:
    values = dict(out=str(tmp_path / "evaluate.json"), device="cpu", bpd_images=6, batch_size=4,
                  bpd_method="rk4", bpd_steps=4, hutchinson=None)
    return EvaluateParams(**{**values, **overrides})


def test_bits_per_dim_at_the_data_levels_with_errors_and_the_baseline(model, digits, tmp_path):
    params = _params(tmp_path)
    sampler = SamplerSettings(z_min=params.z_min)
    metrics = likelihood_metrics.fn(model, kind="image", levels=17, data_dir=str(digits), params=params,
                                    sampler=sampler)
    assert set(metrics) == {"bpd", "bpd_se", "bpd_baseline"}
    assert set(metrics) <= set(expected_metrics(params, "image", None, "pfgm"))
    # Recomputed from the library: the first 6 test images, dequantised at 17 levels with evaluate.seed.
    images = pdata.unit_to_images(pdata.load_split(digits, "test")[:6])
    x = dequantize(images, levels=17, generator=torch.Generator().manual_seed(params.seed))
    log_p = log_likelihood(model.net, x, z_min=params.bpd_z_min, z_max=float(model.hyperparameters["z_max"]),
                           method="rk4", steps=4)
    per_image = bits_per_dim(log_p.double(), 64, levels=17)
    assert metrics["bpd"] == pytest.approx(per_image.mean().item(), rel=1e-6)
    assert metrics["bpd_se"] == pytest.approx(per_image.std().item() / math.sqrt(6), rel=1e-5)
    train = pdata.unit_to_images(pdata.load_split(digits, "train"))
    assert metrics["bpd_baseline"] == histogram_bits_per_dim(train, images, levels=17).mean().item()
    assert 0 < metrics["bpd_baseline"] < math.log2(17)  # better than uniform: the digits have structure


def test_probes_add_their_own_standard_error(model, digits, tmp_path):
    params = _params(tmp_path, hutchinson=3)
    metrics = likelihood_metrics.fn(model, kind="image", levels=17, data_dir=str(digits), params=params,
                                    sampler=SamplerSettings(z_min=params.z_min))
    assert set(metrics) == {"bpd", "bpd_se", "bpd_probe_se", "bpd_baseline"}
    assert set(metrics) <= set(expected_metrics(params, "image", None, "pfgm"))
    assert all(math.isfinite(value) for value in metrics.values()) and metrics["bpd_probe_se"] > 0


def test_likelihood_settings_are_checked_by_key(tmp_path):
    digits = {"name": "digits", "shape": [1, 8, 8]}
    check_likelihood(_params(tmp_path), digits)
    with pytest.raises(ValidationError, match="dpmpp_2m steps the data point alone"):  # refused with the params
        _params(tmp_path, bpd_method="dpmpp_2m")
    with pytest.raises(ParamsError, match="evaluate.hutchinson: null takes the exact trace, 3072"):
        check_likelihood(_params(tmp_path), {"name": "cifar10", "shape": [3, 32, 32]})
    check_likelihood(_params(tmp_path, hutchinson=1), {"name": "cifar10", "shape": [3, 32, 32]})
    check_likelihood(_params(tmp_path, bpd_images=0), {"name": "cifar10", "shape": [3, 32, 32]})
    with pytest.raises(ValidationError, match="one image has no standard error"):
        _params(tmp_path, bpd_images=1)


def test_pfgmpp_models_get_bits_per_dim_through_their_denoiser(digits, tmp_path):
    # The same protocol (levels, baseline, errors); the density comes from the denoiser's ODE from
    # bpd_sigma_min, recomputed here from the library.
    data = pdata.load_split(digits, "train")[:256]
    pfgmpp_model = load_trained(make_checkpoint(tmp_path / "pfgmpp.pt", data=data, steps=2, objective="pfgmpp"))
    params = _params(tmp_path, bpd_sigma_min=0.01)
    metrics = likelihood_metrics.fn(pfgmpp_model, kind="image", levels=17, data_dir=str(digits), params=params,
                                    sampler=SamplerSettings(z_min=params.z_min))
    assert set(metrics) == {"bpd", "bpd_se", "bpd_baseline"}
    images = pdata.unit_to_images(pdata.load_split(digits, "test")[:6])
    x = dequantize(images, levels=17, generator=torch.Generator().manual_seed(params.seed))
    log_p = pfgmpp_log_likelihood_per_probe(as_denoiser(pfgmpp_model.net), x, D=4, sigma_min=0.01, method="rk4",
                                            steps=4)[:, 0]
    assert metrics["bpd"] == pytest.approx(bits_per_dim(log_p.double(), 64, levels=17).mean().item(), rel=1e-6)
