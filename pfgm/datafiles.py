"""The data's files as far as they are known without reading them: the errors for data that cannot be
used, the prepared folder's manifest name, where each data set's raw files lie, and `check_raw_files`,
the cheap look that they are there.

This module imports neither torch nor numpy, and sits outside the package pfgm.data because importing
that package imports torch (seconds): the command line (flows.cli, python -m flows) checks a params file
and its raw files, and catches these errors, before it imports anything heavy. pfgm.data builds on it
and offers the same names (pfgm.data.DataError, pfgm.data.check_raw_files, ...).
"""
from __future__ import annotations

import os
from pathlib import Path

#: The last file the prepare stage writes into a prepared folder (pfgm.data.store).
MANIFEST = "manifest.json"

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published with the archive; torchvision checks the same

CELEBA_DIR = "img_align_celeba"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"

LSUN_BEDROOM_DIR = "bedroom_train"
LSUN_BEDROOM_LMDB = "bedroom_train_lmdb"
LSUN_BEDROOM_VAL_LMDB = "bedroom_val_lmdb"
LSUN_TOOLS_URL = "https://github.com/fyu/lsun"

FFHQ64_DIR = "ffhq-64x64"
FFHQ_URL = "https://github.com/NVlabs/ffhq-dataset"


class DataError(ValueError):
    """Raw or prepared data that cannot be used; the message names the file or folder."""


class MissingFilesError(DataError, FileNotFoundError):
    """Raw files that are not on disk; the message says what to put where."""


class ChecksumError(DataError):
    """A prepared file whose sha256 differs from the one in its manifest."""


def celeba_hint(root: Path) -> str:
    """Where to get CelebA and where to put it under `root`."""
    return (f"CelebA has no stable unauthenticated download (it is shared through Google Drive and Baidu "
            f"after agreeing to its terms), so data.download does not fetch it: get img_align_celeba.zip "
            f"and Eval/{CELEBA_PARTITION} from {CELEBA_URL}, extract the zip into {root} (giving "
            f"{root / CELEBA_DIR}/000001.jpg ... 202599.jpg) and put {CELEBA_PARTITION} at "
            f"{root / CELEBA_PARTITION} for the official split.")


def lsun_hint(root: Path) -> str:
    """Where to get LSUN bedroom and where to put it under `root`."""
    return (f"LSUN has no stable download with a published checksum (the official tool, {LSUN_TOOLS_URL}: "
            f"`python download.py -c bedroom`, fetches bedroom_train_lmdb.zip and bedroom_val_lmdb.zip from "
            f"a server that is often unavailable), so data.download does not fetch it: download and unzip "
            f"them into {root} (giving {root / LSUN_BEDROOM_LMDB}/data.mdb and "
            f"{root / LSUN_BEDROOM_VAL_LMDB}/data.mdb), or put exported image files under "
            f"{root / LSUN_BEDROOM_DIR}/.")


def ffhq_hint(root: Path) -> str:
    """Where to get FFHQ at 64 x 64 and where to put it under `root`."""
    return (f"FFHQ is distributed through Google Drive after agreeing to its terms ({FFHQ_URL}), so "
            f"data.download does not fetch it. Put the 64x64 images under {root / FFHQ64_DIR}/ (e.g. the "
            f"unzipped ffhq-64x64.zip of EDM's `dataset_tool.py --resolution=64x64`, or any square FFHQ "
            f"images, which are resized to 64 as that tool does).")


def cifar10_missing(folder: Path) -> list[str]:
    """The CIFAR-10 batch files not in `folder`."""
    return [name for name in CIFAR10_TRAIN + CIFAR10_TEST if not (folder / name).is_file()]


def cifar10_hint(root: Path) -> str:
    """Where to get CIFAR-10 and where to put it under `root`."""
    return (f"Download {CIFAR10_URL} (md5 {CIFAR10_MD5}) and extract it into {root} (it unpacks to "
            f"{CIFAR10_DIR}/), or set data.download: true on a machine that is online.")


def missing_folder(name: str, folder: Path, hint: str) -> str | None:
    """What is wrong when the image folder of data set `name` is not there (with `hint`); None when it is."""
    return None if folder.is_dir() else f"{name}: image folder {folder} not found. {hint}"


def _missing_cifar10(root: Path, download: bool) -> str | None:
    missing = cifar10_missing(root / CIFAR10_DIR)
    if missing and not (download or (root / CIFAR10_ARCHIVE).is_file()):
        return f"cifar10: missing {', '.join(missing)} in {root / CIFAR10_DIR}. {cifar10_hint(root)}"
    return None


def _missing_lsun(root: Path) -> str | None:
    if (root / LSUN_BEDROOM_LMDB / "data.mdb").is_file() or (root / LSUN_BEDROOM_DIR).is_dir():
        return None
    return (f"lsun-bedroom256: neither {root / LSUN_BEDROOM_LMDB}/data.mdb nor {root / LSUN_BEDROOM_DIR}/ "
            f"exists. {lsun_hint(root)}")


def check_raw_files(name: str, root: str | os.PathLike, *, download: bool = False) -> None:
    """MissingFilesError, saying what to get and where to put it, when <root> lacks the raw files that
    the builder of data set `name` reads (a cheap look, made before a pipeline run starts and by the
    builders themselves). CIFAR-10 passes when its archive is there or `download` will fetch it; data
    sets made without raw files (digits, the toys) always pass."""
    root = Path(root)
    checks = {
        "cifar10": lambda: _missing_cifar10(root, download),
        "celeba64": lambda: missing_folder("celeba64", root / CELEBA_DIR, celeba_hint(root)),
        "lsun-bedroom256": lambda: _missing_lsun(root),
        "ffhq64": lambda: missing_folder("ffhq64", root / FFHQ64_DIR, ffhq_hint(root)),
        "folder": lambda: missing_folder("folder", root, "Set data.root to a folder of image files."),
    }
    problem = checks[name]() if name in checks else None
    if problem is not None:
        raise MissingFilesError(problem)
