"""flows.prepare: the Prefect flow writes a verified prepared folder and returns its manifest."""
from __future__ import annotations

import json

import numpy as np
import pytest

from flows.params import DataParams, load_section
from pfgm import data as pdata


@pytest.mark.slow
def test_prepare_flow_digits(prefect_test_env, tmp_path):
    from flows.prepare import prepare

    out = tmp_path / "prepared" / "digits"
    manifest = prepare(DataParams(name="digits", out=str(out), seed=0, test_fraction=0.167))
    assert manifest["name"] == "digits" and manifest["counts"] == {"train": 1497, "test": 300}
    assert manifest["shape"] == [1, 8, 8] and manifest["features"]["test_accuracy"] > 0.95
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert pdata.verify_folder(out) == manifest
    assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir() if p.name != "manifest.json")
    assert sorted(p.name for p in out.parent.iterdir()) == ["digits"]


def test_prepare_main_toy(prefect_test_env, tmp_path):
    from flows.prepare import main

    params = tmp_path / "params.yaml"
    out = tmp_path / "prepared" / "swissroll"
    params.write_text(f"data:\n  name: swissroll\n  n_points: 500\n  test_fraction: 0.2\n  out: {out}\n")
    manifest = main(["--params", str(params)])
    assert manifest["kind"] == "points" and manifest["counts"] == {"train": 400, "test": 100}
    x = pdata.load_split(out, "test")
    assert x.shape == (100, 2) and np.isfinite(x.numpy()).all()
    assert load_section(params, "data").out == str(out)


def test_prepare_flow_fails_cleanly(prefect_test_env, tmp_path):
    from flows.prepare import prepare

    out = tmp_path / "prepared" / "cifar10"
    with pytest.raises(pdata.MissingFilesError, match="cifar-10-batches-py"):
        prepare(DataParams(name="cifar10", root=str(tmp_path / "raw"), out=str(out)))
    assert not (tmp_path / "prepared").exists() or list((tmp_path / "prepared").iterdir()) == []
