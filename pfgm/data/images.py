"""Image data sets read from raw files on disk: CIFAR-10, CelebA 64, LSUN bedroom 256, FFHQ 64, a folder.

Only CIFAR-10 is ever downloaded, and only when asked (`download=True`): it is the one set with a
stable, unauthenticated URL and a published checksum. CelebA and LSUN have neither, so when their
files are missing the builders raise MissingFilesError saying where to get them and where to put
them. The splits are the published ones where the files carry them: CIFAR-10's batches, CelebA's
list_eval_partition.txt, LSUN's train and validation LMDBs; a seeded random split otherwise.

Crops and resizes follow score_sde's datasets.py (which PFGM's code copies): CelebA is
centre-cropped to 140 x 140, then resized to 64 (bilinear, antialiased); LSUN at 256 takes the
central square of side min(h, w), then resizes it (bicubic, antialiased) -- an exact crop for
LSUN's own images, whose shorter side is already 256. Plain folders are resized so the shorter
side has the target size, then centre-cropped. PIL's resampling widens its filter when
downscaling, like tf.image.resize(antialias=True); PIL rounds to uint8 where TF truncates.
"""
from __future__ import annotations

import io
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from pfgm.data.download import DownloadError, Fetch, download_verified, md5_file, safe_extract_tar
from pfgm.data.store import ChecksumError, DataError, MissingFilesError, Prepared, split_indices
from pfgm.datafiles import (CELEBA_DIR, CELEBA_PARTITION, CIFAR10_ARCHIVE, CIFAR10_DIR, CIFAR10_MD5, CIFAR10_TEST,
                            CIFAR10_TRAIN, CIFAR10_URL, FFHQ64_DIR, LSUN_BEDROOM_DIR, LSUN_BEDROOM_LMDB,
                            LSUN_BEDROOM_VAL_LMDB, celeba_hint, check_raw_files, cifar10_hint, cifar10_missing,
                            ffhq_hint, lsun_hint, missing_folder)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
#: CelebA's partition codes. (The raw files' names and places, and the check that they are there, live in
#: pfgm.datafiles: the command line checks them before it imports torch.)
CELEBA_PARTITIONS = {0: "train", 1: "valid", 2: "test"}


# --- image operations ----------------------------------------------------------------------------

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


def crop_resize(img: Image.Image, size: int) -> Image.Image:
    """score_sde's crop_resize (LSUN at 256): the central min(w, h) square, resized to size x size
    (bicubic, antialiased). Cropping first keeps the square's pixels exact when min(w, h) == size."""
    return center_crop(img, min(img.size)).resize((size, size), Image.BICUBIC)


def celeba_transform(img: Image.Image, size: int = 64, crop: int = 140) -> Image.Image:
    """score_sde's CelebA preprocessing: centre crop 140 x 140, then resize to size x size."""
    return resize_center_crop(center_crop(img, crop), size)


def lsun_transform(img: Image.Image) -> Image.Image:
    """score_sde's LSUN preprocessing at 256 x 256 (crop_resize)."""
    return crop_resize(img, 256)


# --- decoding ------------------------------------------------------------------------------------

def read_image(source: str | os.PathLike | IO[bytes], channels: int, name: str | None = None) -> Image.Image:
    """Open an image (a path, or a binary file object called `name` in errors) as greyscale
    (channels 1) or RGB (channels 3), fully decoded.

    Raises DataError naming the image if it cannot be decoded, or if it has a transparent alpha
    channel (dropping real transparency would change the picture; a fully opaque alpha channel is
    dropped silently).
    """
    where = name or source
    try:
        with Image.open(source) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                if rgba.getchannel("A").getextrema() != (255, 255):
                    raise DataError(f"{where}: image has a transparent alpha channel; flatten it first")
                img = rgba
            return img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{where}: cannot decode image ({err})") from err


def image_to_array(img: Image.Image) -> np.ndarray:
    """A PIL image as uint8 (C, H, W)."""
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


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
        a = image_to_array(transform(read_image(path, channels)))
        if out and a.shape != out[0].shape:
            raise DataError(f"{path}: transformed to shape {a.shape}, others are {out[0].shape}")
        out.append(a)
    return np.stack(out)


def _import_lmdb():
    try:
        import lmdb
    except ImportError as err:  # a dependency of the package; absent only in a hand-made environment
        raise DataError("reading LMDB databases needs the `lmdb` package: pip install lmdb") from err
    return lmdb


def read_lmdb_images(
    db: str | os.PathLike,
    transform: Callable[[Image.Image], Image.Image],
    channels: int,
    max_images: int | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Decode and transform the encoded images stored as values of an LMDB database folder.

    db holds data.mdb (the layout of LSUN's official `*_lmdb` exports: keys are image ids, values
    JPEG or WebP bytes). Reads the first max_images entries in key order (LMDB's own order: bytes,
    lexicographic), or all. Returns uint8 (N, C, H, W) and the N keys. The database is opened
    read-only without a lock file, so a read-only copy works; DataError names a bad entry.
    """
    db = Path(db)
    if not (db / "data.mdb").is_file():
        raise MissingFilesError(f"{db}: no data.mdb (not an LMDB database folder)")
    lmdb = _import_lmdb()
    try:
        env = lmdb.open(str(db), readonly=True, lock=False, readahead=False, subdir=True)
    except lmdb.Error as err:
        raise DataError(f"{db}: cannot open as an LMDB database ({err})") from err
    try:
        with env.begin() as txn:
            entries = txn.stat()["entries"]
            n = entries if max_images is None else min(entries, max_images)
            if n == 0:
                raise DataError(f"{db}: the LMDB database holds no entries")
            return _decode_entries(txn.cursor(), n, db, transform, channels)
    except lmdb.Error as err:
        raise DataError(f"{db}: cannot read the LMDB database ({err})") from err
    finally:
        env.close()


def _decode_entries(cursor, n: int, db: Path, transform: Callable[[Image.Image], Image.Image],
                    channels: int) -> tuple[np.ndarray, list[str]]:
    """The first n (key, encoded image) entries of an LMDB cursor -> uint8 (n, C, H, W) and the keys."""
    images, keys = None, []
    # Filled in place: a list of arrays plus np.stack would hold the whole set twice.
    for key, value in cursor:
        if len(keys) == n:
            break
        name = f"{db} key {key.decode('ascii', errors='replace')}"
        a = image_to_array(transform(read_image(io.BytesIO(value), channels, name)))
        if images is None:
            images = np.empty((n, *a.shape), dtype=np.uint8)
        elif a.shape != images.shape[1:]:
            raise DataError(f"{name}: transformed to shape {a.shape}, others are {images.shape[1:]}")
        images[len(keys)] = a
        keys.append(key.decode("ascii", errors="replace"))
    return images, keys


# --- image folders (seeded split) ----------------------------------------------------------------

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
    problem = missing_folder(name, folder, hint)
    if problem is not None:
        raise MissingFilesError(problem)
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


# --- CelebA --------------------------------------------------------------------------------------

def read_celeba_partition(path: str | os.PathLike) -> dict[str, int]:
    """CelebA's list_eval_partition.txt as {file name: partition}, 0 train, 1 valid, 2 test.

    Each non-empty line is `<file name> <partition>` (e.g. `000001.jpg 0`); DataError names the
    first malformed or repeated line.
    """
    path = Path(path)
    partition: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{path}:{number}: expected `<image> <0|1|2>`, got {line.strip()!r}")
        if fields[0] in partition:
            raise DataError(f"{path}:{number}: {fields[0]} is listed twice")
        partition[fields[0]] = int(fields[1])
    if not partition:
        raise DataError(f"{path}: no entries")
    return partition


def _celeba_official(root: Path, max_images: int | None) -> Prepared:
    """CelebA split by its partition file: train = partition 0, test = partition 2 (1 unused)."""
    folder, partition_file = root / CELEBA_DIR, root / CELEBA_PARTITION
    partition = read_celeba_partition(partition_file)
    counts = {label: sum(p == code for p in partition.values()) for code, label in CELEBA_PARTITIONS.items()}
    names = {label: sorted(f for f, p in partition.items() if p == code)[:max_images]
             for code, label in ((0, "train"), (2, "test"))}
    arrays = {}
    for split, files in names.items():
        if not files:
            raise DataError(f"celeba64: {partition_file} lists no images in the {split} partition")
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise MissingFilesError(
                f"celeba64: {len(missing)} images of the {split} partition listed in {partition_file} are "
                f"not in {folder} (first: {missing[0]}); the partition file and the folder must match")
        arrays[split] = read_images([folder / f for f in files], celeba_transform, 3)
    return Prepared(
        name="celeba64",
        kind="image",
        arrays=arrays,
        source=str(folder),
        seed=None,
        split={"method": "official", "partition_file": str(partition_file),
               "train": "partition 0 (train)", "test": "partition 2 (test)",
               "unused": "partition 1 (valid)", "partition_counts": counts,
               "max_images_per_split": max_images,
               "files": {part: {"first": files[0], "count": len(files)} for part, files in names.items()}},
    )


def build_celeba64(
    root: str | os.PathLike, seed: int, test_fraction: float, max_images: int | None = None
) -> Prepared:
    """CelebA aligned faces from <root>/img_align_celeba/*.jpg: crop 140, resize 64, uint8 (N, 3, 64, 64).

    With <root>/list_eval_partition.txt: CelebA's official split, train = partition 0 (162,770
    images), test = partition 2 (19,962); the valid partition is left out; max_images keeps the
    first max_images files (sorted) of each split; seed and test_fraction are unused. Without it: a
    seeded random split of the first max_images files (sorted). The manifest's split says which.
    """
    root = Path(root)
    check_raw_files("celeba64", root)
    if (root / CELEBA_PARTITION).is_file():
        return _celeba_official(root, max_images)
    prepared = _folder_dataset(
        "celeba64", root / CELEBA_DIR, celeba_transform, 3, seed, test_fraction, max_images, celeba_hint(root)
    )
    prepared.split["note"] = f"no {root / CELEBA_PARTITION}: a seeded random split, not CelebA's partition"
    return prepared


# --- LSUN bedroom --------------------------------------------------------------------------------

def _key_range(keys: list[str]) -> dict[str, object]:
    return {"first": keys[0], "last": keys[-1], "count": len(keys)}


def _lsun_from_lmdb(root: Path, seed: int, test_fraction: float, max_images: int | None) -> Prepared:
    train_db, val_db = root / LSUN_BEDROOM_LMDB, root / LSUN_BEDROOM_VAL_LMDB
    train, train_keys = read_lmdb_images(train_db, lsun_transform, 3, max_images)
    if (val_db / "data.mdb").is_file():
        test, test_keys = read_lmdb_images(val_db, lsun_transform, 3, max_images)
        split = {"method": "official", "train": LSUN_BEDROOM_LMDB, "test": LSUN_BEDROOM_VAL_LMDB,
                 "max_images_per_split": max_images,
                 "keys": {"train": _key_range(train_keys), "test": _key_range(test_keys)}}
        arrays, seed_used = {"train": train, "test": test}, None
    else:
        tr, te = split_indices(len(train), test_fraction, seed)
        split = {"method": "random", "test_fraction": test_fraction, "seed": seed,
                 "note": f"no {val_db}/data.mdb: seeded random split of {LSUN_BEDROOM_LMDB}",
                 "keys": _key_range(train_keys)}
        arrays, seed_used = {"train": train[tr], "test": train[te]}, seed
    return Prepared(name="lsun-bedroom256", kind="image", arrays=arrays, source=str(train_db),
                    seed=seed_used, split=split)


def build_lsun_bedroom256(
    root: str | os.PathLike, seed: int, test_fraction: float, max_images: int | None = None
) -> Prepared:
    """LSUN bedrooms, score_sde's crop_resize to 256: uint8 (N, 3, 256, 256).

    Reads the official LMDB export <root>/bedroom_train_lmdb/ (the first max_images keys in key
    order) when its data.mdb exists, else image files exported under <root>/bedroom_train/ (the
    first max_images files, sorted by path, which for the LSUN tool's export is also key order).
    Test split: <root>/bedroom_val_lmdb/ (LSUN's validation set, 300 images, score_sde's eval
    split) when reading LMDBs and it exists; otherwise a seeded share test_fraction of the images.
    """
    root = Path(root)
    check_raw_files("lsun-bedroom256", root)
    if (root / LSUN_BEDROOM_LMDB / "data.mdb").is_file():
        return _lsun_from_lmdb(root, seed, test_fraction, max_images)
    return _folder_dataset("lsun-bedroom256", root / LSUN_BEDROOM_DIR, lsun_transform, 3,
                           seed, test_fraction, max_images, lsun_hint(root))


# --- FFHQ 64 -------------------------------------------------------------------------------------

def ffhq_transform(img: Image.Image, size: int = 64) -> Image.Image:
    """EDM's dataset_tool `--resolution=64x64` on FFHQ's square images: unchanged at size x size, else
    resized with Lanczos. FFHQ is aligned and square; a non-square image is an error, not cropped."""
    if img.size == (size, size):
        return img
    if img.width != img.height:
        raise DataError(f"ffhq64: images must be square (FFHQ's are), got {img.width} x {img.height}")
    return img.resize((size, size), Image.LANCZOS)


def build_ffhq64(
    root: str | os.PathLike, seed: int, test_fraction: float, max_images: int | None = None
) -> Prepared:
    """FFHQ at 64 x 64 from the image files under <root>/ffhq-64x64/ (sorted by path; the first
    max_images): uint8 (N, 3, 64, 64), seeded random split.

    EDM and PFGM++ train on all 70,000 images and take FID statistics of all of them; a prepared folder
    needs a test split, so a seeded share test_fraction is held out (keep it small).
    """
    root = Path(root)
    return _folder_dataset("ffhq64", root / FFHQ64_DIR, ffhq_transform, 3, seed, test_fraction, max_images,
                           ffhq_hint(root))


# --- CIFAR-10 ------------------------------------------------------------------------------------

def _install_cifar10(archive: Path, root: Path) -> None:
    """Extract the verified archive into a hidden folder in root, then rename its batches folder
    into place: <root>/cifar-10-batches-py appears complete or not at all."""
    folder = root / CIFAR10_DIR
    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"cifar10: {folder} exists but lacks {', '.join(cifar10_missing(folder))}; "
                        f"remove it so that {archive} can be extracted there")
    staging = Path(tempfile.mkdtemp(prefix=f".{CIFAR10_DIR}.tmp-", dir=root))
    try:
        safe_extract_tar(archive, staging)
        missing = cifar10_missing(staging / CIFAR10_DIR)
        if missing:
            raise DataError(f"{archive}: holds no {CIFAR10_DIR}/{missing[0]}; not the CIFAR-10 python archive")
        os.replace(staging / CIFAR10_DIR, folder)  # onto an absent or empty folder: atomic
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_cifar10(root: str | os.PathLike, *, url: str | None = None, md5: str | None = None,
                  fetch: Fetch | None = None) -> Path:
    """Make <root>/cifar-10-batches-py from the official archive; return that folder.

    Uses <root>/cifar-10-python.tar.gz if it is there, else downloads it from `url` (default the
    official CIFAR10_URL) with `fetch` (default pfgm.data.download.fetch_url). Either way the
    archive must have the published md5 (default CIFAR10_MD5) before anything is extracted: a
    download that does not is deleted (ChecksumError); an archive already there is left for you
    to remove. The archive is kept beside the batches, as torchvision keeps it.
    """
    root = Path(root)
    url, md5 = url or CIFAR10_URL, md5 or CIFAR10_MD5
    archive = root / CIFAR10_ARCHIVE
    if archive.is_file():
        actual = md5_file(archive)
        if actual != md5:
            raise ChecksumError(f"cifar10: {archive} has md5 {actual}, not the published {md5}; delete it "
                                f"(or replace it with the official archive from {url}) and run again")
    else:
        try:
            download_verified(url, archive, md5, fetch=fetch)
        except DownloadError as err:
            raise DownloadError(f"cifar10: {err}. {cifar10_hint(root)}") from err
    _install_cifar10(archive, root)
    return root / CIFAR10_DIR


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


def build_cifar10(root: str | os.PathLike, download: bool = False, *, fetch: Fetch | None = None) -> Prepared:
    """CIFAR-10 from the python batches in <root>/cifar-10-batches-py: the official 50,000 / 10,000
    split as uint8 (N, 3, 32, 32) with int64 labels.

    Missing batches are made from <root>/cifar-10-python.tar.gz when it is there, or downloaded
    first with `download` (fetch_cifar10: md5-verified, extracted safely); otherwise
    MissingFilesError names the URL and the folder. The batches are pickles (as torchvision reads
    them too): only use files from the official archive.
    """
    root = Path(root)
    folder = root / CIFAR10_DIR
    check_raw_files("cifar10", root, download=download)
    if cifar10_missing(folder):
        fetch_cifar10(root, fetch=fetch)
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
