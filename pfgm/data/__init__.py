"""Data sets for PFGM: builders, the prepared on-disk format and its loader.

Builders return a `Prepared` (arrays in memory); `write_prepared` writes it atomically with a
manifest; `load_split` reads a split back as a float tensor, images scaled to [-1, 1].
This package knows nothing of Prefect, MLflow or DVC.
"""
from pfgm.data.digits import build_digits, load_digits_uint8
from pfgm.data.features import (
    DigitsClassifier,
    add_digits_features,
    cleanfid_extractor,
    digits_feature_extractor,
    load_digits_classifier,
    train_digits_classifier,
)
from pfgm.data.images import (
    build_celeba64,
    build_cifar10,
    build_ffhq64,
    build_folder,
    build_lsun_bedroom256,
    celeba_transform,
    resize_center_crop,
)
from pfgm.data.store import (
    Prepared,
    images_to_unit,
    iterate_batches,
    levels_of,
    load_labels,
    load_split,
    random_hflip,
    read_manifest,
    split_indices,
    uint8_levels,
    unit_to_images,
    validate,
    verify_folder,
    write_prepared,
)
from pfgm.data.toys import TOYS, build_toy
from pfgm.datafiles import ChecksumError, DataError, MissingFilesError, check_raw_files

__all__ = [
    "TOYS",
    "ChecksumError",
    "DataError",
    "DigitsClassifier",
    "MissingFilesError",
    "Prepared",
    "add_digits_features",
    "build_celeba64",
    "build_cifar10",
    "check_raw_files",
    "build_digits",
    "build_ffhq64",
    "build_folder",
    "build_lsun_bedroom256",
    "build_toy",
    "celeba_transform",
    "cleanfid_extractor",
    "digits_feature_extractor",
    "images_to_unit",
    "iterate_batches",
    "levels_of",
    "load_digits_classifier",
    "load_digits_uint8",
    "load_labels",
    "load_split",
    "random_hflip",
    "read_manifest",
    "resize_center_crop",
    "split_indices",
    "train_digits_classifier",
    "uint8_levels",
    "unit_to_images",
    "validate",
    "verify_folder",
    "write_prepared",
]
