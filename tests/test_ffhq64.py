"""pfgm.data.build_ffhq64: an FFHQ folder at 64 x 64, as EDM's dataset_tool prepares it (on files written here)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.params import DataParams
from flows.prepare import load
from pfgm.data import DataError, MissingFilesError, build_ffhq64


def _write(path: Path, side: int, seed: int, height: int | None = None) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height or side, side, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def ffhq(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """data/raw/ffhq-64x64 in EDM's zip layout (00000/img<8 digits>.png): five 64x64 images, one 128x128."""
    folder = tmp_path / "raw" / "ffhq-64x64" / "00000"
    pixels = {f"img{i:08d}.png": _write(folder / f"img{i:08d}.png", 64, i) for i in range(5)}
    pixels["img00000005.png"] = _write(folder / "img00000005.png", 128, 5)
    return tmp_path / "raw", pixels


def test_64px_images_are_kept_exactly_and_larger_ones_resized_as_edm(ffhq):
    root, pixels = ffhq
    prepared = build_ffhq64(root, seed=0, test_fraction=0.34)
    images = np.concatenate([prepared.arrays["train"], prepared.arrays["test"]])
    assert prepared.name == "ffhq64" and prepared.kind == "image"
    assert images.shape == (6, 3, 64, 64) and images.dtype == np.uint8 and len(prepared.arrays["test"]) == 2
    expected = [p.transpose(2, 0, 1) for name, p in sorted(pixels.items()) if p.shape[0] == 64]
    # EDM's dataset_tool: PIL's Lanczos resize of the whole (square) image, no crop
    lanczos = np.asarray(Image.fromarray(pixels["img00000005.png"]).resize((64, 64), Image.LANCZOS))
    expected.append(lanczos.transpose(2, 0, 1))
    found = {img.tobytes() for img in images}
    assert found == {img.tobytes() for img in expected}
    assert prepared.split["files"]["count"] == 6 and prepared.split["method"] == "random"


def test_prepare_reads_it_by_name_and_max_images(ffhq):
    root, _ = ffhq
    prepared = load.fn(DataParams(name="ffhq64", root=str(root), test_fraction=0.5, max_images=4))
    assert sum(len(a) for a in prepared.arrays.values()) == 4 and prepared.arrays["train"].shape[1:] == (3, 64, 64)


def test_missing_folder_and_non_square_images_are_refused(tmp_path, ffhq):
    with pytest.raises(MissingFilesError, match="ffhq-64x64.*Google Drive"):
        build_ffhq64(tmp_path / "nowhere", seed=0, test_fraction=0.2)
    root, _ = ffhq
    _write(root / "ffhq-64x64" / "00001" / "img00001000.png", 96, 7, height=64)
    with pytest.raises(DataError, match="square"):
        build_ffhq64(root, seed=0, test_fraction=0.2)
