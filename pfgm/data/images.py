"""Image data sets read from raw files on disk: CIFAR-10, CelebA 64, LSUN bedroom 256, a folder.

Nothing here downloads. When the raw files are missing the builders raise MissingFilesError
saying which files to put where. Crops and resizes follow score_sde (which PFGM builds on):
CelebA is centre-cropped to 140 x 140 then resized to 64; LSUN and plain folders are resized so
the shorter side has the target size, then centre-cropped. Resizing is PIL bilinear, which is
antialiased when downscaling, like score_sde's tf.image.resize(antialias=True).
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pfgm.data.store import DataError, MissingFilesError, Prepared, split_indices

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CELEBA_DIR = "img_align_celeba"
LSUN_BEDROOM_DIR = "bedroom_train"


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central size x size square of img (which must be at least that large)."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"cannot crop {size} x {size} from a {w} x {h} image")
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size` (bilinear, antialiased), then centre-crop size x size."""
    w, h = img.size
    scale = size / min(w, h)
    resized = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    return center_crop(resized, size)


def celeba_transform(img: Image.Image, size: int = 64, crop: int = 140) -> Image.Image:
    """score_sde's CelebA preprocessing: centre crop 140 x 140, then resize to size x size."""
    return resize_center_crop(center_crop(img, crop), size)


def read_image(path: str | os.PathLike, channels: int) -> Image.Image:
    """Open an image file as greyscale (channels 1) or RGB (channels 3), fully decoded.

    Raises DataError naming the file if it cannot be decoded, or if it has a transparent alpha
    channel (dropping real transparency would change the picture; a fully opaque alpha channel is
    dropped silently).
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                if rgba.getchannel("A").getextrema() != (255, 255):
                    raise DataError(f"{path}: image has a transparent alpha channel; flatten it first")
                img = rgba
            return img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: cannot decode image ({err})") from err


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by extension, case-insensitive) under folder, recursively, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFilesError(f"{folder}: image folder not found")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_images(
    paths: Sequence[Path], transform: Callable[[Image.Image], Image.Image], channels: int
) -> np.ndarray:
    """Decode, transform and stack images into uint8 (N, C, H, W); DataError names a bad file."""
    out = []
    for path in paths:
        img = transform(read_image(path, channels))
        a = np.asarray(img, dtype=np.uint8)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if out and a.shape != out[0].shape:
            raise DataError(f"{path}: transformed to shape {a.shape}, others are {out[0].shape}")
        out.append(a)
    return np.stack(out)


def _folder_dataset(
    name: str,
    folder: Path,
    transform: Callable[[Image.Image], Image.Image],
    channels: int,
    seed: int,
    test_fraction: float,
    max_images: int | None,
    hint: str,
) -> Prepared:
    if not folder.is_dir():
        raise MissingFilesError(f"{name}: image folder {folder} not found. {hint}")
    paths = list_images(folder)
    if not paths:
        raise DataError(f"{name}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    if max_images is not None:
        paths = paths[:max_images]
    images = read_images(paths, transform, channels)
    train, test = split_indices(len(images), test_fraction, seed)
    return Prepared(
        name=name,
        kind="image",
        arrays={"train": images[train], "test": images[test]},
        source=str(folder),
        seed=seed,
        split={"method": "random", "test_fraction": test_fraction, "seed": seed,
               "files": {"first": str(paths[0].relative_to(folder)), "count": len(paths)}},
    )


def build_folder(
    root: str | os.PathLike,
    image_size: int,
    channels: int,
    seed: int,
    test_fraction: float,
    max_images: int | None = None,
) -> Prepared:
    """Every image under `root` (sorted; the first max_images), resized and centre-cropped to
    image_size, as uint8 (N, channels, image_size, image_size) with a seeded split."""
    return _folder_dataset(
        "folder", Path(root), lambda img: resize_center_crop(img, image_size), channels,
        seed, test_fraction, max_images, hint="Set data.root to a folder of image files.",
    )


def build_celeba64(
    root: str | os.PathLike, seed: int, test_fraction: float, max_images: int | None = None
) -> Prepared:
    """CelebA aligned faces from <root>/img_align_celeba/*.jpg: crop 140, resize 64, uint8
    (N, 3, 64, 64) with a seeded split (not the official partition)."""
    hint = (f"Put the aligned CelebA images (img_align_celeba.zip, extracted) at "
            f"{Path(root) / CELEBA_DIR}/000001.jpg ... 202599.jpg.")
    return _folder_dataset(
        "celeba64", Path(root) / CELEBA_DIR, celeba_transform, 3, seed, test_fraction, max_images, hint
    )


def build_lsun_bedroom256(
    root: str | os.PathLike, seed: int, test_fraction: float, max_images: int | None = None
) -> Prepared:
    """LSUN bedrooms exported as image files under <root>/bedroom_train/: shorter side resized to
    256, centre crop 256, uint8 (N, 3, 256, 256) with a seeded split."""
    hint = (f"Export the LSUN bedroom_train_lmdb to image files (e.g. with the LSUN tools' "
            f"`python data.py export bedroom_train_lmdb --out_dir ...`) under {Path(root) / LSUN_BEDROOM_DIR}.")
    return _folder_dataset(
        "lsun-bedroom256", Path(root) / LSUN_BEDROOM_DIR, lambda img: resize_center_crop(img, 256), 3,
        seed, test_fraction, max_images, hint,
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {err})") from err
    if len(data) != len(labels):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def build_cifar10(root: str | os.PathLike) -> Prepared:
    """CIFAR-10 from the python batches in <root>/cifar-10-batches-py: the official 50,000 / 10,000
    split as uint8 (N, 3, 32, 32) with int64 labels.

    The batches are pickles (as torchvision reads them too): only use files from the official
    archive.
    """
    folder = Path(root) / CIFAR10_DIR
    missing = [name for name in CIFAR10_TRAIN + CIFAR10_TEST if not (folder / name).is_file()]
    if missing:
        raise MissingFilesError(
            f"cifar10: missing {', '.join(missing)} in {folder}. Download {CIFAR10_URL} and extract it "
            f"into {Path(root)} (it unpacks to {CIFAR10_DIR}/), or on a machine that is online run "
            f"`python -c \"import torchvision; torchvision.datasets.CIFAR10('{root}', download=True)\"` "
            f"and copy {CIFAR10_DIR}/ here."
        )
    arrays, labels = {}, {}
    for split, names in (("train", CIFAR10_TRAIN), ("test", CIFAR10_TEST)):
        parts = [_read_cifar_batch(folder / name) for name in names]
        arrays[split] = np.concatenate([p[0] for p in parts])
        labels[split] = np.concatenate([p[1] for p in parts])
    return Prepared(
        name="cifar10",
        kind="image",
        arrays=arrays,
        labels=labels,
        source=str(folder),
        seed=None,
        split={"method": "official", "train": list(CIFAR10_TRAIN), "test": list(CIFAR10_TEST)},
    )
