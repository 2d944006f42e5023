"""The official PFGM and PFGM++ releases, read into our networks and checkpoint metadata.

Two kinds of file are read, told apart by content (`pfgm.networks.official_snapshot.is_pfgmpp_snapshot`):
- a PFGM checkpoint (Newbeeer/Poisson_flow, score_sde's layout: a torch.save dict with `model`, `ema`
  with `shadow_params`, `step`), whose configuration is a released one (`RELEASES`) or an official
  config saved as JSON (shaped like shared/reference/ddpmpp/tiny_ddpmpp_config.json). Its EMA weights
  (what the official sampler uses) become our DDPMpp (pfgm.networks.ddpmpp.from_official);
- a PFGM++ (or EDM) snapshot (Newbeeer/pfgmpp's `training-state-*.pt` / `.pkl`, EDM's
  `network-snapshot-*.pkl`), read without running the code it carries; its `ema` network becomes our
  EDMPrecond. A release name (`PFGMPP_RELEASES`, the PFGM++ README's checkpoint folders) is optional and
  checked against the file; an EDM model (pfgmpp=False, D -> infinity) is refused.

A `Spec` is what a configuration resolves to: the official config, the hyperparameters the sampler needs
and the provenance the metadata records. PFGM's z_max and upper_norm: a released configuration samples
with the values of PFGM.md section 3 (CIFAR-10: 40 and 3000), which differ from those M implies through
the section 2 formula (pfgm.perturb.prior_range; CIFAR-10: 43.4 and 3015); prior="derived" takes the
latter. A JSON config gives them in sampling.z_max / sampling.upper_norm, or they are derived from its
training.M (or M) and the data dimension.

The errors are `ImportOfficialError`s whose messages name the import command's inputs (--checkpoint,
--config, --M, --data), since that command is how a person meets them.
"""
from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pfgm import data as pdata
from pfgm.data.store import sha256_file
from pfgm.networks.ddpmpp import RELEASED_CONFIGS, from_official, kwargs_from_official
from pfgm.networks.edm import EDMPrecond, precond_from_snapshot
from pfgm.networks.official_snapshot import read_official_snapshot
from pfgm.perturb import prior_range
from pfgm.training import RunSpec, network_kwargs

__all__ = [
    "GAMMA", "PFGMPP_RELEASES", "RELEASES", "SIGMA", "TAU", "TRAINING_ONLY", "ImportOfficialError",
    "PfgmppRelease", "Release", "Spec", "check_architecture", "check_pfgmpp_options", "checkpoint_info",
    "data_metadata", "json_spec", "load_network", "model_metadata", "official_config", "pfgmpp_release",
    "pfgmpp_spec", "read_pfgm", "read_pfgmpp_snapshot", "release_spec", "resolve_config",
]

#: PFGM.md section 2: shared by every released configuration.
SIGMA, TAU, GAMMA = 0.01, 0.03, 5.0


class ImportOfficialError(ValueError):
    """An input of the import is unusable; the message names it (file, config, option)."""


@dataclass(frozen=True)
class Release:
    """A released PFGM configuration: its network, its data set, M and the prior range it samples with."""
    network: str  # key of pfgm.networks.ddpmpp.RELEASED_CONFIGS
    data: str  # our data set name (params.yaml data.name)
    M: int  # PFGM.md section 2
    z_max: float  # PFGM.md section 3 table
    upper_norm: float
    params: str  # its paper configuration in configs/


RELEASES = {
    "cifar10_ddpmpp": Release("cifar10", "cifar10", 291, 40.0, 3000.0, "cifar10-ddpmpp.yaml"),
    "cifar10_ddpmpp_deep": Release("cifar10_deep", "cifar10", 291, 40.0, 3000.0, "cifar10-ddpmpp-deep.yaml"),
    "celeba64_ddpmpp": Release("celeba64", "celeba64", 291, 60.0, 6000.0, "celeba64-ddpmpp.yaml"),
    "bedroom_ddpmpp": Release("bedroom256", "lsun-bedroom256", 356, 100.0, 30000.0,
                              "lsun-bedroom256-ddpmpp.yaml"),
}


@dataclass(frozen=True)
class PfgmppRelease:
    """A released PFGM++ model: its D, data set, the image shape it generates, its paper configuration."""
    D: int
    data: str
    shape: tuple[int, int, int]
    params: str  # its paper configuration in configs/


#: Named as the PFGM++ README's checkpoint folders (pfgmpp/<name>/), with the README's training options.
PFGMPP_RELEASES = {
    "cifar10_ncsnpp_D_128": PfgmppRelease(128, "cifar10", (3, 32, 32), "cifar10-pfgmpp-d128.yaml"),
    "cifar10_ncsnpp_D_2048": PfgmppRelease(2048, "cifar10", (3, 32, 32), "cifar10-pfgmpp-d2048.yaml"),
    "ffhq_ddpm_D_128": PfgmppRelease(128, "ffhq64", (3, 64, 64), "ffhq64-pfgmpp-d128.yaml"),
}
#: Constructor arguments that change training only, not the network a snapshot holds.
TRAINING_ONLY = ("use_fp16", "dropout", "label_dropout")


@dataclass(frozen=True)
class Spec:
    """What a configuration resolved to: the official config, hyperparameters, provenance, and the
    data set name and paper configuration (a file name in configs/) when a release says them."""
    name: str
    official_config: dict[str, Any]
    hyperparameters: dict[str, float]
    official: dict[str, Any]  # sigma, tau, where the prior range came from, the derived range
    data_name: str | None
    params: str | None


# ---------------------------------------------------------------------------------------------------
# PFGM configurations

def official_config(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The official config sections that from_official reads, for DDPMpp keyword arguments (the inverse
    of kwargs_from_official; the code-path flags take the only values DDPMpp implements)."""
    model = dict(name="ncsnpp", nf=kwargs["nf"], ch_mult=list(kwargs["ch_mult"]),
                 num_res_blocks=kwargs["num_res_blocks"], attn_resolutions=list(kwargs["attn_resolutions"]),
                 dropout=kwargs["dropout"], skip_rescale=kwargs["skip_rescale"],
                 embedding_type=kwargs["embedding"], fourier_scale=kwargs["fourier_scale"],
                 init_scale=kwargs["init_scale"], conditional=True, fir=False, resblock_type="biggan",
                 progressive="none", progressive_input="none", scale_by_sigma=False, nonlinearity="swish")
    channels, side, _ = kwargs["data_shape"]
    data = dict(image_size=side, num_channels=channels, centered=True)
    return dict(data=data, model=model, training=dict(sde="poisson"))


def _dims(kwargs: dict[str, Any]) -> int:
    return math.prod(int(s) for s in kwargs["data_shape"])


def release_spec(name: str, prior: str) -> Spec:
    """The Spec of a released configuration; z_max/upper_norm as published (section 3) or derived."""
    release = RELEASES[name]
    kwargs = RELEASED_CONFIGS[release.network]
    derived = prior_range(release.M, _dims(kwargs), sigma=SIGMA, tau=TAU)
    published = dict(z_max=release.z_max, upper_norm=release.upper_norm)
    chosen = derived if prior == "derived" else published
    return Spec(name=name, official_config=official_config(kwargs),
                hyperparameters=dict(M=release.M, **chosen, gamma=GAMMA),
                official=dict(sigma=SIGMA, tau=TAU, prior_range=prior, derived=derived),
                data_name=release.data, params=release.params)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ImportOfficialError(f"--config {path}: not a readable JSON file ({err})") from None
    if not isinstance(config, dict):
        raise ImportOfficialError(f"--config {path}: the top level must be an object of config sections")
    return config


def json_spec(path: Path, prior: str, M: int | None) -> Spec:
    """The Spec of an official config saved as JSON. M: training.M, or `M` when the file has none."""
    config = _read_json(path)
    try:
        kwargs = kwargs_from_official(config)
    except ValueError as err:
        raise ImportOfficialError(f"--config {path}: {err}") from None
    training, sampling = config.get("training", {}), config.get("sampling", {})
    M = M if M is not None else training.get("M")
    if not isinstance(M, int) or isinstance(M, bool) or M < 1:
        raise ImportOfficialError(f"--config {path}: no training.M (an integer >= 1) in the file; pass --M")
    tau, gamma = float(training.get("tau", TAU)), float(training.get("gamma", GAMMA))
    derived = prior_range(M, _dims(kwargs), sigma=SIGMA, tau=tau)
    stated = {key: sampling[key] for key in ("z_max", "upper_norm") if key in sampling}
    use_stated = prior == "published" and len(stated) == 2
    chosen = {key: float(value) for key, value in (stated if use_stated else derived).items()}
    return Spec(name=str(path), official_config=config, hyperparameters=dict(M=M, **chosen, gamma=gamma),
                official=dict(sigma=SIGMA, tau=tau, prior_range="published" if use_stated else "derived",
                              derived=derived),
                data_name=None, params=None)


def resolve_config(config: str, *, prior: str = "published", M: int | None = None) -> Spec:
    """`config` as a release name or a JSON path; ImportOfficialError naming what is wrong."""
    if config in RELEASES:
        if M is not None:
            raise ImportOfficialError(f"--M applies to JSON configs only; {config} has M = {RELEASES[config].M}")
        return release_spec(config, prior)
    path = Path(config)
    if path.suffix == ".json" and path.is_file():
        return json_spec(path, prior, M)
    if path.suffix == ".json":
        raise FileNotFoundError(f"--config: no JSON config at {path}")
    raise ImportOfficialError(f"--config: unknown configuration {config!r}; known: {', '.join(RELEASES)}, "
                              "or the path of an official config as .json")


# ---------------------------------------------------------------------------------------------------
# PFGM checkpoints

def _load_lazily(path: Path) -> dict:
    """torch.load with weights_only; memory-mapped when the file allows it (only a few entries are read)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_info(path: Path) -> dict[str, Any]:
    """step, EMA decay and updates of an official checkpoint, after checking it has `model` and `ema`."""
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint: no file at {path}")
    try:
        checkpoint = _load_lazily(path)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise ImportOfficialError(f"--checkpoint {path}: not a readable PyTorch checkpoint "
                                  f"({type(err).__name__}: {err})") from None
    ema = checkpoint.get("ema") if isinstance(checkpoint, dict) else None
    if not isinstance(ema, dict) or "shadow_params" not in ema or "model" not in checkpoint:
        raise ImportOfficialError(f"--checkpoint {path}: not an official PFGM checkpoint (it needs the entries "
                                  "`model` and `ema` with `shadow_params`)")
    return dict(step=int(checkpoint.get("step", 0)), ema_decay=_number(ema.get("decay")),
                ema_num_updates=_number(ema.get("num_updates")))


def _number(value: Any) -> float | int | None:
    if isinstance(value, torch.Tensor):
        value = value.item()
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def load_network(path: Path, spec: Spec) -> nn.Module:
    """The EMA network of the official checkpoint; ImportOfficialError when it does not fit the config."""
    try:
        return from_official(path, spec.official_config, ema=True)
    except ValueError as err:
        raise ImportOfficialError(f"--checkpoint {path} does not fit --config {spec.name}: {err}") from None


def read_pfgm(checkpoint: Path, config: str | None, prior: str, M: int | None
              ) -> tuple[nn.Module, Spec, dict[str, Any]]:
    """A PFGM checkpoint of configuration `config`: its EMA network, Spec and provenance (step, EMA)."""
    if config is None:
        raise ImportOfficialError(f"--config: {checkpoint} is a PFGM checkpoint; name its configuration "
                                  f"({', '.join(RELEASES)}, or an official config as .json)")
    if prior not in ("published", "derived"):
        raise ImportOfficialError(f"--prior-range must be published or derived, got {prior!r}")
    spec = resolve_config(config, prior=prior, M=M)
    info = checkpoint_info(checkpoint)
    return load_network(checkpoint, spec), spec, info


# ---------------------------------------------------------------------------------------------------
# PFGM++ snapshots

def read_pfgmpp_snapshot(path: Path) -> tuple[EDMPrecond, dict[str, Any]]:
    """The `ema` network of a PFGM++ snapshot and what the metadata records of it (ImportOfficialError
    for a file that is no such snapshot, a class other than EDMPrecond, or an EDM (pfgmpp=False) model)."""
    try:
        snapshot = read_official_snapshot(path, key="ema")
        net = precond_from_snapshot(snapshot, source=f"--checkpoint {path}")
    except (pickle.UnpicklingError, ValueError, TypeError, RuntimeError, EOFError) as err:
        raise ImportOfficialError(f"--checkpoint {path}: neither an official PFGM checkpoint (a torch.save zip "
                                  f"with `model` and `ema`) nor a readable PFGM++/EDM snapshot "
                                  f"({type(err).__name__}: {err})") from None
    if not net.pfgmpp:
        raise ImportOfficialError(f"--checkpoint {path}: trained without PFGM++ (pfgmpp=False: EDM's diffusion, "
                                  f"D -> infinity; the recorded D={net.D} is unused), so it is no PFGM++ model")
    info = dict(images=snapshot.step, key=snapshot.key, class_name=snapshot.class_name,
                init_kwargs=snapshot.init_kwargs)
    return net, info


def check_pfgmpp_options(checkpoint: Path, config: str | None, M: int | None) -> None:
    """Refuse, for a PFGM++ snapshot, what only a PFGM checkpoint takes: M, a PFGM configuration."""
    if M is not None:
        raise ImportOfficialError(f"--M applies to PFGM checkpoints; {checkpoint} is a PFGM++ snapshot")
    if config is not None and (config in RELEASES or config.endswith(".json")):
        raise ImportOfficialError(f"--config {config} is a PFGM configuration, but {checkpoint} is a PFGM++ "
                                  f"snapshot (its configuration: {', '.join(PFGMPP_RELEASES)}, or none)")


def pfgmpp_release(name: str, net: EDMPrecond, path: Path) -> PfgmppRelease:
    """The release `name`, checked against the snapshot's D and image shape; ImportOfficialError otherwise."""
    if name not in PFGMPP_RELEASES:
        known = ", ".join(PFGMPP_RELEASES)
        raise ImportOfficialError(f"--config: {path} is a PFGM++ snapshot; its --config is one of {known}, or "
                                  f"none (then no params file is written unless --params), got {name!r}")
    release = PFGMPP_RELEASES[name]
    shape = net.data_shape
    if (net.D, shape) != (release.D, release.shape):
        raise ImportOfficialError(f"--checkpoint {path} does not fit --config {name}: it has D={net.D} and "
                                  f"images {list(shape)}, the release D={release.D} and {list(release.shape)}")
    return release


def check_architecture(net: EDMPrecond, run: RunSpec, *, name: str, release: PfgmppRelease, path: Path) -> None:
    """The snapshot's network is the one `run` (the release's paper configuration) builds: every constructor
    argument but TRAINING_ONLY equal; ImportOfficialError listing those that differ otherwise."""
    manifest = dict(name=release.data, kind="image", shape=list(release.shape))
    with torch.device("meta"):  # only the recorded config is wanted, not weights
        expected = EDMPrecond(**network_kwargs(run, manifest)).config
    differing = sorted(k for k in expected.keys() | net.config.keys()
                       if k not in TRAINING_ONLY and expected.get(k) != net.config.get(k))
    if differing:
        details = ", ".join(f"{k}: {net.config.get(k)!r} vs {expected.get(k)!r}" for k in differing)
        raise ImportOfficialError(f"--checkpoint {path} does not fit --config {name} ({release.params}): "
                                  f"the file's vs the configuration's {details}")


def pfgmpp_spec(checkpoint: Path, config: str | None, net: EDMPrecond, info: dict[str, Any],
                release: PfgmppRelease | None) -> Spec:
    """The Spec of a PFGM++ snapshot: hyperparameters {D}; the release's data and paper configuration."""
    return Spec(name=config or str(checkpoint), official_config=info["init_kwargs"],
                hyperparameters=dict(D=int(net.D)), official=dict(format="pfgmpp-snapshot", **info),
                data_name=release.data if release else None, params=release.params if release else None)


# ---------------------------------------------------------------------------------------------------
# Metadata of the imported model

def data_metadata(spec: Spec, shape: list[int], data: Path | None) -> dict[str, Any]:
    """The checkpoint's `data` entry: from the prepared folder's manifest when given (shape checked)."""
    if data is None:
        return dict(name=spec.data_name, sha256=None, kind="image", shape=shape)
    try:
        manifest = pdata.read_manifest(data)
    except pdata.DataError as err:
        raise ImportOfficialError(f"--data: {err}") from None
    if manifest.get("kind") != "image" or list(manifest.get("shape", [])) != shape:
        raise ImportOfficialError(f"--data {data}: holds {manifest.get('kind')} of shape {manifest.get('shape')}, "
                                  f"but the network generates images of shape {shape}")
    return dict(name=manifest["name"], sha256=manifest["files"]["train.npy"], kind="image", shape=shape)


def model_metadata(objective: str, spec: Spec, checkpoint: Path, info: dict[str, Any],
                   data: dict[str, Any]) -> dict[str, Any]:
    """The imported checkpoint's metadata: objective, hyperparameters, `data` (data_metadata), and
    `official`: the source file (path, sha256), the configuration's name, `info` and the spec's provenance."""
    return dict(objective=objective, hyperparameters=spec.hyperparameters, data=data,
                official=dict(checkpoint=str(checkpoint.resolve()), sha256=sha256_file(checkpoint),
                              config=spec.name, **info, **spec.official))
