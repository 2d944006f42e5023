"""Stage `prepare`: build the data set named in params.yaml `data` and write its prepared folder.

    python -m flows.prepare --params params.yaml

A Prefect flow over the pure functions of pfgm.data: load (read raw files or sample; with
`data.download: true`, fetch CIFAR-10's archive first if its batches are missing), features (digits
only: train the FID classifier), validate, write (atomic, with manifest). Returns the manifest.
"""
from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.cli import command_line
from flows.params import TOY_NAMES, DataParams, load_sections, params_parser
from pfgm import data as pdata


# Arrays travel between tasks in memory; hashing them for Prefect's cache keys would cost a pass
# over the data for nothing, hence NO_CACHE on every task that takes or returns them.
@task(cache_policy=NO_CACHE)
def load(params: DataParams) -> pdata.Prepared:
    """Read or sample the data set named by params.name."""
    if params.name == "digits":
        return pdata.build_digits(seed=params.seed, test_fraction=params.test_fraction)
    if params.name in TOY_NAMES:
        return pdata.build_toy(params.name, n_points=params.n_points, seed=params.seed,
                               test_fraction=params.test_fraction)
    if params.name == "cifar10":
        return pdata.build_cifar10(root=params.root, download=params.download)
    if params.name == "celeba64":
        return pdata.build_celeba64(root=params.root, seed=params.seed, test_fraction=params.test_fraction,
                                    max_images=params.max_images)
    if params.name == "lsun-bedroom256":
        return pdata.build_lsun_bedroom256(root=params.root, seed=params.seed,
                                           test_fraction=params.test_fraction, max_images=params.max_images)
    if params.name == "ffhq64":
        return pdata.build_ffhq64(root=params.root, seed=params.seed, test_fraction=params.test_fraction,
                                  max_images=params.max_images)
    if params.name == "folder":
        return pdata.build_folder(root=params.root, image_size=params.image_size, channels=params.channels,
                                  seed=params.seed, test_fraction=params.test_fraction,
                                  max_images=params.max_images)
    raise ValueError(f"data.name: no builder for {params.name!r}")


@task(cache_policy=NO_CACHE)
def add_features(prepared: pdata.Prepared, seed: int) -> pdata.Prepared:
    """Train and attach the digits FID feature classifier."""
    prepared = pdata.add_digits_features(prepared, seed=seed)
    get_run_logger().info("feature classifier test accuracy %.4f", prepared.info["features"]["test_accuracy"])
    return prepared


@task(cache_policy=NO_CACHE)
def validate(prepared: pdata.Prepared) -> None:
    """Check shapes, dtypes and ranges before anything is written."""
    pdata.validate(prepared)


@task(cache_policy=NO_CACHE)
def write(prepared: pdata.Prepared, out: str) -> dict[str, Any]:
    """Write the prepared folder atomically; return its manifest."""
    return pdata.write_prepared(prepared, out)


@flow(name="prepare-data")
def prepare(params: DataParams) -> dict[str, Any]:
    """Prepare one data set as configured by the `data` section; returns the manifest."""
    if params.download and params.name != "cifar10":
        get_run_logger().warning("data.download applies to cifar10 only: %s is read from %s as it is",
                                 params.name, params.root)
    prepared = load(params)
    if params.name == "digits":
        prepared = add_features(prepared, seed=params.seed)
    validate(prepared)
    manifest = write(prepared, params.out)
    get_run_logger().info("wrote %s: %s %s, %s split", params.out, manifest["counts"], manifest["shape"],
                          manifest["split"].get("method"))
    return manifest


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: read params.yaml's `data` section, run the flow, print the manifest."""
    args = params_parser(__doc__).parse_args(argv)
    (params,) = load_sections(args.params, "data")
    pdata.check_raw_files(params.name, params.root, download=params.download)  # before any server starts
    manifest = prepare(params)
    print(json.dumps({k: manifest[k] for k in ("name", "kind", "shape", "counts")}, sort_keys=True))
    return manifest


if __name__ == "__main__":
    command_line(main)
