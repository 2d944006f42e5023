"""Glue the stage flows share, so that no stage flow imports another.

Only what is pipeline-specific lives here (file names, a section's FID scorer, checks that name a params
key); the sampling and the metrics themselves are pfgm's.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator

import torch

from flows.checks import MODEL_FILE
from flows.params import EvaluateParams, ParamsError, SweepParams
from flows.tracking import resolve_device
from pfgm import metrics as pmetrics

from pfgm.sampling import SamplerSettings

if TYPE_CHECKING:
    from pfgm.sampling import TrainedModel

__all__ = ["MODEL_FILE", "check_model_fits", "fid_scorer", "resolve_features", "sampler_settings", "torch_threads"]


def check_model_fits(model: TrainedModel, path: str, *, z_min: float, section: str, manifest: dict[str, Any],
                     data_dir: str) -> None:
    """The model samples the data's shape and, for PFGM, z_min lies below its z_max (ParamsError naming
    <section>.z_min otherwise): the checks every flow that samples a checkpoint makes before its run."""
    z_max = model.hyperparameters.get("z_max")
    if model.objective == "pfgm" and z_min >= float(z_max):
        raise ParamsError(f"{section}.z_min: must be below the z_max {z_max} of {path}, got {z_min}")
    if model.shape != tuple(manifest["shape"]):
        raise ValueError(f"{path} samples shape {model.shape} but {data_dir} holds {tuple(manifest['shape'])}")


def resolve_features(params: EvaluateParams, manifest: dict[str, Any], section: str = "evaluate") -> str | None:
    """digits | inception | None (points: no FID); ParamsError naming <section>.features otherwise.

    `params` is any section with a `features` key (evaluate, sweep).
    """
    kind, name = manifest["kind"], manifest["name"]
    if kind == "points":
        if params.features != "auto":
            raise ParamsError(f"{section}.features: {params.features!r} needs image data; {name} is 2D points "
                              "(points get no FID; use auto)")
        return None
    features = params.features
    if features == "auto":
        features = "digits" if name == "digits" else "inception"
    if features == "digits" and "features" not in manifest:
        raise ParamsError(f"{section}.features: digits features need the classifier saved by the prepare stage; "
                          f"the prepared {name} data has none")
    return features


def fid_scorer(params: EvaluateParams | SweepParams, features: str, data_dir: str, *,
               split: str | None = None) -> pmetrics.FidScorer:
    """The scorer a section's FID settings describe, against `split` (default: <section>.fid_reference).

    `params` is any section with the FID keys (evaluate, sweep); the reference features come from
    <section>.stats_cache, computed there on the first use.
    """
    extractor = pmetrics.feature_extractor(features, data_dir, inception_path=params.inception_path,
                                           mode=params.fid_mode, batch_size=params.batch_size,
                                           device=resolve_device(params.device), download=params.download_weights)
    return pmetrics.fid_scorer(extractor, data_dir, split=split or params.fid_reference,
                               cache_dir=params.stats_cache, quantize=params.quantize)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` torch CPU threads (None: leave them), restoring the previous count after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def sampler_settings(section: Any) -> SamplerSettings:
    """The library's sampler setting from a section that carries the sampler keys (evaluate, report): the keys
    have the library's names, so they are taken as they are."""
    return SamplerSettings(**section.model_dump(include=set(SamplerSettings.__dataclass_fields__)))

