"""Small raw data sets in their official on-disk formats, written by tests: CIFAR-10's python archive,
LSUN's LMDB export, CelebA's aligned folder with list_eval_partition.txt."""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from pfgm.data import images

CIFAR_BATCHES = images.CIFAR10_TRAIN + images.CIFAR10_TEST
CELEBA_COLORS = [(20 * i, 255 - 20 * i, 7 * i) for i in range(1, 9)]
LSUN_COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fake_cifar_archive(path: Path, rows: int = 2) -> Path:
    """A .tar.gz laid out like cifar-10-python.tar.gz: cifar-10-batches-py/{data_batch_1..5, test_batch,
    batches.meta}; batch i (0-based) holds `rows` images whose every byte is 10 * (i + 1), labels i."""
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(images.CIFAR10_DIR)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for i, name in enumerate(CIFAR_BATCHES):
            batch = {b"data": np.full((rows, 3072), 10 * (i + 1), np.uint8), b"labels": [i] * rows}
            add_bytes(tar, f"{images.CIFAR10_DIR}/{name}", pickle.dumps(batch))
        add_bytes(tar, f"{images.CIFAR10_DIR}/batches.meta", pickle.dumps({b"label_names": [b"x"] * 10}))
    return path


def celeba_raw(root: Path, partition: tuple[int, ...] | None = (0, 0, 0, 0, 1, 1, 2, 2)) -> Path:
    """Eight 178 x 218 faces <root>/img_align_celeba/000001.jpg ... in CELEBA_COLORS (PNG bytes, so the
    colours are exact) and, unless `partition` is None, <root>/list_eval_partition.txt (`000001.jpg 0`)."""
    for i, color in enumerate(CELEBA_COLORS, start=1):
        path = root / images.CELEBA_DIR / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (178, 218), color).save(path, format="PNG")
    if partition is not None:
        lines = [f"{i:06d}.jpg {p}" for i, p in enumerate(partition, start=1)]
        (root / images.CELEBA_PARTITION).write_text("\n".join(lines) + "\n")
    return root


def encoded(img: Image.Image, fmt: str = "JPEG") -> bytes:
    """img encoded as fmt: JPEG at quality 95, WebP lossless, anything else with PIL's defaults."""
    options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_lmdb(db: Path, entries: dict[str, bytes]) -> Path:
    """An LMDB folder (data.mdb, lock.mdb) as LSUN's export: key = image id (ASCII), value = encoded image."""
    import lmdb

    db.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(db), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in entries.items():
            txn.put(key.encode("ascii"), value)
    env.close()
    return db


def lsun_key(i: int) -> str:
    """An id like LSUN's: 40 hex digits (a sha1), so key order differs from i's order."""
    return hashlib.sha1(str(i).encode()).hexdigest()


def lsun_entries(n: int, fmt: str = "JPEG") -> dict[str, bytes]:
    """n landscape 320 x 256 images (LSUN's shorter side is 256) in LSUN_COLORS[:n], keyed lsun_key(i)."""
    return {lsun_key(i): encoded(Image.new("RGB", (320, 256), LSUN_COLORS[i]), fmt) for i in range(n)}


def lsun_colors_in_key_order(n: int) -> list[tuple[int, int, int]]:
    """The colours of lsun_entries(n) in LMDB key order."""
    return [LSUN_COLORS[i] for i in sorted(range(n), key=lsun_key)]


def centre_colors(a: np.ndarray) -> list[tuple[int, ...]]:
    """The centre pixel of each uint8 (N, C, H, W) image."""
    h, w = a.shape[2] // 2, a.shape[3] // 2
    return [tuple(int(v) for v in img[:, h, w]) for img in a]


def near(colors: list[tuple[int, ...]], expected: list[tuple[int, ...]], tol: int = 4) -> bool:
    """Same length and every channel within tol (JPEG's error on flat colours)."""
    return len(colors) == len(expected) and all(
        max(abs(a - b) for a, b in zip(c, e, strict=True)) <= tol for c, e in zip(colors, expected, strict=True))
