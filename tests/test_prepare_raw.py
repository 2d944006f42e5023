"""flows.prepare end to end on raw files in their official formats, written by the tests: LSUN's LMDB export,
CelebA with list_eval_partition.txt, and CIFAR-10 fetched with `data.download: true` (a monkeypatched
fetch: offline)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pfgm import data as pdata
from pfgm.data import download, images
from raw_files import CELEBA_COLORS, celeba_raw, fake_cifar_archive, lsun_entries, write_lmdb


def run_prepare(tmp_path, data: dict) -> dict:
    """`python -m flows.prepare --params <file>` in-process, with `data` as the params file's section."""
    from flows.prepare import main

    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"data": data}))  # JSON is YAML
    return main(["--params", str(params)])


def test_prepare_lsun_lmdb(prefect_test_env, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "prepared" / "lsun"
    write_lmdb(raw / images.LSUN_BEDROOM_LMDB, lsun_entries(5))
    write_lmdb(raw / images.LSUN_BEDROOM_VAL_LMDB, lsun_entries(2))
    manifest = run_prepare(tmp_path, {"name": "lsun-bedroom256", "root": str(raw), "out": str(out),
                                      "max_images": 3})
    assert manifest["counts"] == {"train": 3, "test": 2} and manifest["shape"] == [3, 256, 256]
    assert manifest["split"]["method"] == "official" and manifest["split"]["train"] == images.LSUN_BEDROOM_LMDB
    assert pdata.verify_folder(out) == manifest
    x = pdata.load_split(out, "train")
    assert x.shape == (3, 3, 256, 256) and -1.0 <= x.min() and x.max() <= 1.0


def test_prepare_celeba_partition(prefect_test_env, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "prepared" / "celeba64"
    manifest = run_prepare(tmp_path, {"name": "celeba64", "root": str(celeba_raw(raw)), "out": str(out)})
    assert manifest["counts"] == {"train": 4, "test": 2} and manifest["seed"] is None
    assert manifest["split"]["method"] == "official"
    assert manifest["split"]["partition_counts"] == {"train": 4, "valid": 2, "test": 2}
    test = np.load(out / "test.npy")
    assert [tuple(img[:, 32, 32]) for img in test] == CELEBA_COLORS[6:]


def test_prepare_cifar10_download(prefect_test_env, tmp_path, monkeypatch):
    served = fake_cifar_archive(tmp_path / "served.tar.gz")
    monkeypatch.setattr(download, "fetch_url", lambda url, dest: dest.write_bytes(served.read_bytes()))
    monkeypatch.setattr(images, "CIFAR10_MD5", download.md5_file(served))
    raw, out = tmp_path / "raw", tmp_path / "prepared" / "cifar10"
    manifest = run_prepare(tmp_path, {"name": "cifar10", "root": str(raw), "out": str(out), "download": True})
    assert manifest["counts"] == {"train": 10, "test": 2} and manifest["labels"]
    assert sorted(p.name for p in raw.iterdir()) == [images.CIFAR10_DIR, images.CIFAR10_ARCHIVE]


def test_prepare_cifar10_without_download_writes_nothing(prefect_test_env, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "fetch_url", lambda url, dest: pytest.fail("download is off"))
    raw, out = tmp_path / "raw", tmp_path / "prepared" / "cifar10"
    with pytest.raises(pdata.MissingFilesError, match="data.download: true"):
        run_prepare(tmp_path, {"name": "cifar10", "root": str(raw), "out": str(out)})
    assert not raw.exists() and not out.parent.exists()
