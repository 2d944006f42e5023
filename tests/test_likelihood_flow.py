"""The levels a prepared data set records, and flows.evaluate's checks of the likelihood settings.

The likelihood metrics themselves are tested with pfgm.evaluation (tests/test_evaluation.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from flows.evaluate import check_likelihood
from flows.params import EvaluateParams, ParamsError
from pfgm import data as pdata

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits(plain_digits) -> Path:
    """The real digits, prepared without the FID classifier (the likelihood needs none)."""
    return plain_digits


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
