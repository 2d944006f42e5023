"""The prepared format shared by every data set, its manifest, and the loader.

A prepared data set is one folder:

    train.npy, test.npy            images uint8 (N, C, H, W) in 0..255, or points float32 (N, 2)
    train_labels.npy, ...          int64 (N,), only where the source has class labels
    features.pt, features.json     optional extra files (the digits feature extractor)
    manifest.json                  name, kind, shapes, counts, ranges, levels, sha256 of every file, ...

Images record their quantisation as `levels`, L: the uint8 values are L equally spaced intensities,
level k stored as rint(k * 255 / (L - 1)) (`uint8_levels`): 256 for 8-bit data (the value is the
level), 17 for the digits (0..16 stored as 0, 16, 32, ..., 255). Bits/dim are measured at this
quantisation (pfgm.likelihood). Points have none. A folder prepared before levels were recorded
reads as 256 levels (`levels_of`).

The folder is written beside its final place and renamed into it, so a failed preparation never
leaves a half-written folder behind. The loader checks every checksum it relies on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

# Defined without torch, so that the command line can check and catch them before it imports torch.
from pfgm.datafiles import MANIFEST, ChecksumError, DataError, MissingFilesError

FORMAT_VERSION = 1
SPLITS = ("train", "test")
#: Levels of 8-bit images, and of any image manifest written before levels were recorded.
EIGHT_BIT_LEVELS = 256

Kind = Literal["image", "points"]


@dataclasses.dataclass
class Prepared:
    """A data set in memory, ready to be validated and written.

    `arrays` maps a split name to uint8 (N, C, H, W) images or float32 (N, 2) points; `labels`
    (optional) maps the same split names to int64 (N,) class labels. `extra_files` holds bytes
    written beside the arrays (checksummed like them); `info` is merged into the manifest.
    `levels`: images only, the number of intensity levels the uint8 values encode (`uint8_levels`);
    None means 8-bit (256).
    """

    name: str
    kind: Kind
    arrays: dict[str, np.ndarray]
    source: str
    seed: int | None
    split: dict[str, Any]
    labels: dict[str, np.ndarray] | None = None
    extra_files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    levels: int | None = None

    def resolved_levels(self) -> int | None:
        """The levels written to the manifest: `levels`, 256 for images that give none, None for points."""
        if self.kind == "image" and self.levels is None:
            return EIGHT_BIT_LEVELS
        return self.levels


def uint8_levels(levels: int) -> np.ndarray:
    """The uint8 value of each of `levels` equally spaced intensities: rint(k * 255 / (levels - 1)), (levels,).

    256 levels are the identity; 17 (the digits' 0..16) gives 0, 16, 32, 48, 64, 80, 96, 112, 128, 143, ...
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
        raise DataError(f"levels must be an integer from 2 to 256 (uint8 images), got {levels!r}")
    return np.rint(np.arange(levels) * (255.0 / (levels - 1))).astype(np.uint8)


def levels_of(manifest: Mapping[str, Any]) -> int | None:
    """The quantisation levels of a prepared data set: its manifest's `levels`; None for points.

    Image manifests written before levels were recorded have no key and read as 8-bit (256): prepare
    the data again to record other levels (the digits: 17).
    """
    if manifest.get("kind") != "image":
        return None
    return int(manifest.get("levels", EIGHT_BIT_LEVELS))


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random train/test split of range(n).

    Returns (train, test) int64 index arrays, each sorted; the test split holds
    round(n * test_fraction) items, at least one and at most n - 1.
    """
    if n < 2:
        raise DataError(f"need at least 2 items to split into train and test, got {n}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    n_test = min(max(math.floor(n * test_fraction + 0.5), 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def validate(prepared: Prepared) -> None:
    """Check dtypes, shapes, value ranges and label counts; raise DataError naming the problem."""
    name = prepared.name
    if set(prepared.arrays) != set(SPLITS):
        raise DataError(f"{name}: splits must be {SPLITS}, got {sorted(prepared.arrays)}")
    sample_shapes = {a.shape[1:] for a in prepared.arrays.values()}
    if len(sample_shapes) != 1:
        raise DataError(f"{name}: splits differ in sample shape: {sorted(sample_shapes)}")
    for split, a in prepared.arrays.items():
        where = f"{name}/{split}"
        if len(a) == 0:
            raise DataError(f"{where}: empty split")
        if prepared.kind == "image":
            if a.dtype != np.uint8 or a.ndim != 4 or a.shape[1] not in (1, 3):
                raise DataError(f"{where}: images must be uint8 (N, 1|3, H, W), got {a.dtype} {a.shape}")
        else:
            if a.dtype != np.float32 or a.ndim != 2:
                raise DataError(f"{where}: points must be float32 (N, D), got {a.dtype} {a.shape}")
            if not np.isfinite(a).all():
                raise DataError(f"{where}: points contain NaN or infinity")
        if prepared.labels is not None:
            labels = prepared.labels.get(split)
            if labels is None or labels.shape != (len(a),):
                raise DataError(f"{where}: need {len(a)} labels, got {None if labels is None else labels.shape}")
    _validate_levels(prepared)
    for fname in prepared.extra_files:
        if fname == MANIFEST or fname.endswith(".npy") or "/" in fname:
            raise DataError(f"{name}: extra file name {fname!r} is reserved or not a plain name")


def _validate_levels(prepared: Prepared) -> None:
    """Images: levels in 2..256 and every stored value one of its uint8 levels; points: no levels."""
    if prepared.kind != "image":
        if prepared.levels is not None:
            raise DataError(f"{prepared.name}: levels describe uint8 images; points have none (got {prepared.levels})")
        return
    levels = prepared.resolved_levels()
    if levels == EIGHT_BIT_LEVELS:
        return  # every uint8 value is a level
    allowed = np.zeros(256, dtype=bool)
    allowed[uint8_levels(levels)] = True
    for split, a in prepared.arrays.items():
        off_grid = ~allowed[a]
        if off_grid.any():
            raise DataError(f"{prepared.name}/{split}: value {int(a[off_grid][0])} is not one of the {levels} "
                            f"levels rint(k * 255 / {levels - 1}); pass the data's levels to Prepared")


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fresh_sibling(out: Path, tag: str) -> Path:
    # mkdir (unlike tempfile.mkdtemp's 0700) honours the umask, so the renamed folder gets
    # ordinary permissions; the random suffix keeps concurrent runs apart.
    path = out.parent / f".{out.name}.{tag}-{secrets.token_hex(6)}"
    path.mkdir()
    return path


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; on success it replaces `out`.

    On an exception the temporary folder is deleted and `out` is left as it was. An existing
    `out` is moved aside first (two renames, each atomic; POSIX cannot rename onto a non-empty
    folder) and deleted only after the new folder is in place.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_sibling(out, "tmp")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = _fresh_sibling(out, "old")
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _value_range(a: np.ndarray, kind: Kind) -> list[float]:
    if kind == "image":
        return [0, 255]
    return [float(a.min()), float(a.max())]


def write_prepared(prepared: Prepared, out: str | os.PathLike) -> dict[str, Any]:
    """Validate `prepared` and write it to the folder `out` atomically.

    Returns the manifest (also written as out/manifest.json).
    """
    validate(prepared)
    with atomic_folder(out) as tmp:
        files: dict[str, str] = {}
        for split, a in prepared.arrays.items():
            np.save(tmp / f"{split}.npy", np.ascontiguousarray(a), allow_pickle=False)
            files[f"{split}.npy"] = sha256_file(tmp / f"{split}.npy")
            if prepared.labels is not None:
                lname = f"{split}_labels.npy"
                np.save(tmp / lname, prepared.labels[split].astype(np.int64), allow_pickle=False)
                files[lname] = sha256_file(tmp / lname)
        for fname, data in prepared.extra_files.items():
            (tmp / fname).write_bytes(data)
            files[fname] = sha256_file(tmp / fname)
        first = prepared.arrays["train"]
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": prepared.name,
            "kind": prepared.kind,
            "shape": list(first.shape[1:]),
            "dtype": str(first.dtype),
            "counts": {split: int(len(a)) for split, a in prepared.arrays.items()},
            "value_range": {split: _value_range(a, prepared.kind) for split, a in prepared.arrays.items()},
            "scaling": "x / 127.5 - 1" if prepared.kind == "image" else "none",
            "levels": prepared.resolved_levels(),
            "labels": prepared.labels is not None,
            "source": prepared.source,
            "seed": prepared.seed,
            "split": prepared.split,
            "files": files,
            **prepared.info,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared folder; DataError if it is missing or not valid JSON."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise MissingFilesError(f"{path}: no manifest; is {folder} a prepared data folder?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a valid manifest ({err})") from err


def verify_file(folder: str | os.PathLike, fname: str, manifest: Mapping[str, Any]) -> Path:
    """Check one file of a prepared folder against its manifest checksum; return its path."""
    path = Path(folder) / fname
    expected = manifest.get("files", {}).get(fname)
    if expected is None:
        raise DataError(f"{path}: not listed in {Path(folder) / MANIFEST}")
    if not path.is_file():
        raise MissingFilesError(f"{path}: listed in the manifest but missing")
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(f"{path}: sha256 {actual} does not match the manifest ({expected})")
    return path


def verify_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """Check every file listed in the manifest; return the manifest."""
    manifest = read_manifest(folder)
    for fname in manifest.get("files", {}):
        verify_file(folder, fname, manifest)
    return manifest


def load_split(folder: str | os.PathLike, split: str = "train", *, verify: bool = True) -> torch.Tensor:
    """Load one split as a float32 tensor.

    Images: uint8 (N, C, H, W) on disk -> (N, C, H, W) in [-1, 1] via x / 127.5 - 1.
    Points: float32 (N, D) as stored. `verify` checks the file's sha256 against the manifest.
    """
    manifest = read_manifest(folder)
    fname = f"{split}.npy"
    path = verify_file(folder, fname, manifest) if verify else Path(folder) / fname
    a = torch.from_numpy(np.load(path, allow_pickle=False))
    if manifest["kind"] == "image":
        return images_to_unit(a)
    return a.float()


def load_labels(folder: str | os.PathLike, split: str = "train", *, verify: bool = True) -> torch.Tensor:
    """Load the int64 (N,) class labels of one split; DataError if the data set has none."""
    manifest = read_manifest(folder)
    if not manifest.get("labels"):
        raise DataError(f"{Path(folder) / MANIFEST}: data set {manifest.get('name')} has no labels")
    fname = f"{split}_labels.npy"
    path = verify_file(folder, fname, manifest) if verify else Path(folder) / fname
    return torch.from_numpy(np.load(path, allow_pickle=False))


def images_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or float 0..255) images (..., H, W) -> float32 in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def unit_to_images(x: torch.Tensor) -> torch.Tensor:
    """float images in [-1, 1] -> uint8 0..255, rounded and clamped; the inverse of images_to_unit."""
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image of (B, C, H, W) left-right with probability p; returns a new tensor."""
    if x.ndim != 4:
        raise ValueError(f"random_hflip needs images (B, C, H, W), got shape {tuple(x.shape)}")
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device) < p
    flip = flip.to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(-1), x)


def iterate_batches(
    x: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    *,
    hflip: bool = False,
    drop_last: bool = True,
) -> Iterator[torch.Tensor]:
    """One shuffled pass over the rows of x in batches of batch_size.

    With `hflip`, images (B, C, H, W) are flipped left-right at random. The generator (on the
    CPU or on x's device) drives both the order and the flips.
    """
    order = torch.randperm(len(x), generator=generator, device=generator.device).to(x.device)
    stop = len(x) - len(x) % batch_size if drop_last else len(x)
    for start in range(0, stop, batch_size):
        batch = x[order[start : start + batch_size]]
        yield random_hflip(batch, generator) if hflip else batch
