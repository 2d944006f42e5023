"""Import an official PFGM or PFGM++ checkpoint into our checkpoint format, to evaluate it without training.

    python -m flows.import_official --checkpoint checkpoint_26.pth --config cifar10_ddpmpp \\
        --out models/cifar10-official [--data data/prepared/cifar10] [--force]
    python -m flows.import_official --checkpoint training-state-200000.pt --config cifar10_ncsnpp_D_128 \\
        --out models/cifar10-pfgmpp-d128-official [--data data/prepared/cifar10] [--force]

What the file is, is read from its content, not its name. A PFGM++ (or EDM) training state --
Newbeeer/pfgmpp's `training-state-*.pt` / `.pkl`, or EDM's `network-snapshot-*.pkl` -- pickles its
networks through `torch_utils.persistence`; it is read without running the code it carries
(pfgm.networks.official_snapshot), its `ema` network rebuilt as our EDMPrecond from the constructor
kwargs it records, and written as <out>/model.pt with objective pfgmpp and hyperparameters {D} (the
recorded D; a snapshot trained with pfgmpp=False is EDM, D -> infinity, and is refused). Its --config is
optional and names a released PFGM++ model (PFGMPP_RELEASES: the PFGM++ README's checkpoint folders),
whose paper configuration is checked against the file (D, image shape, architecture) and written as
<out>/params.yaml; --M and --prior-range do not apply. Its metadata `official` holds the source file
(path, sha256), `images` (the training images it had seen) and the recorded constructor kwargs.
Everything else is a PFGM checkpoint, as follows.

--config names a released configuration (cifar10_ddpmpp, cifar10_ddpmpp_deep, celeba64_ddpmpp,
bedroom_ddpmpp) or is the path of an official config as JSON (shaped like
shared/reference/ddpmpp/tiny_ddpmpp_config.json). The EMA weights (what the official sampler uses) are
loaded with pfgm.networks.ddpmpp.from_official and written to <out>/model.pt in the format the train
stage writes (pfgm.training.save_checkpoint, atomically), so that flows.pyfunc_model.load_trained, the
evaluate flow and the sweep read it like a trained model. Its metadata:
    objective        "pfgm"
    hyperparameters  M, z_max, upper_norm, gamma (what the sampler needs)
    data             name, sha256 (of the --data folder's train.npy, else null), kind, shape
    official         the source file (path, sha256, step, EMA decay and updates), the config, sigma,
                     tau, where z_max/upper_norm came from and the values M implies (section 2)

z_max and upper_norm: a released configuration samples with the values of PFGM.md section 3
(CIFAR-10: 40 and 3000), which differ from those M implies through the section 2 formula
(pfgm.perturb.prior_range; CIFAR-10: 43.4 and 3015). `--prior-range derived` takes the latter. A JSON
config gives them in sampling.z_max / sampling.upper_norm, or they are derived from its training.M
(or --M) and the data dimension.

With a paper configuration (the release's configs/*.yaml, or --params), <out>/params.yaml is written
too: that configuration with train.out = <out> (and data.out = --data, when given), evaluate.out inside
<out>, and the registered model name suffixed with -official. Evaluating the import is then
    python -m flows.evaluate --params <out>/params.yaml
Every input is checked before anything is written; a bad one raises an error naming it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from torch import nn

from flows.cli import command_line
from flows.params import Params, ParamsError
from flows.common import MODEL_FILE
from pfgm import data as pdata
from pfgm.data.store import sha256_file
from pfgm.files import write_text
from pfgm.networks.ddpmpp import RELEASED_CONFIGS, from_official, kwargs_from_official
from pfgm.networks.edm import EDMPrecond, precond_from_snapshot
from pfgm.networks.official_snapshot import read_official_snapshot
from pfgm.perturb import prior_range
from pfgm.training import RunSpec, TrainConfig, create_state, network_kwargs, save_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PARAMS_FILE = "params.yaml"
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
    params: str


#: Named as the PFGM++ README's checkpoint folders (pfgmpp/<name>/), with the README's training options.
PFGMPP_RELEASES = {
    "cifar10_ncsnpp_D_128": PfgmppRelease(128, "cifar10", (3, 32, 32), "cifar10-pfgmpp-d128.yaml"),
    "cifar10_ncsnpp_D_2048": PfgmppRelease(2048, "cifar10", (3, 32, 32), "cifar10-pfgmpp-d2048.yaml"),
    "ffhq_ddpm_D_128": PfgmppRelease(128, "ffhq64", (3, 64, 64), "ffhq64-pfgmpp-d128.yaml"),
}
#: Constructor arguments that change training only, not the network a snapshot holds.
TRAINING_ONLY = ("use_fp16", "dropout", "label_dropout")
#: The first pickled object of a pre-1.6 (non-zip) torch.save stream: protocol 2, then this long integer.
_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


@dataclass(frozen=True)
class Spec:
    """What --config resolved to: the official config for from_official, hyperparameters, provenance."""
    name: str
    official_config: dict[str, Any]
    hyperparameters: dict[str, float]
    official: dict[str, Any]  # sigma, tau, where the prior range came from, the derived range
    data_name: str | None
    params_file: Path | None


# ---------------------------------------------------------------------------------------------------
# Resolving --config

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
                data_name=release.data, params_file=CONFIGS / release.params)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ImportOfficialError(f"--config {path}: not a readable JSON file ({err})") from None
    if not isinstance(config, dict):
        raise ImportOfficialError(f"--config {path}: the top level must be an object of config sections")
    return config


def json_spec(path: Path, prior: str, M: int | None) -> Spec:
    """The Spec of an official config saved as JSON. M: training.M, or --M when the file has none."""
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
                data_name=None, params_file=None)


def resolve_config(config: str, *, prior: str = "published", M: int | None = None) -> Spec:
    """--config as a release name or a JSON path; ImportOfficialError naming what is wrong."""
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
# Reading the official checkpoint

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


# ---------------------------------------------------------------------------------------------------
# PFGM++ snapshots

def is_pfgmpp_snapshot(path: Path) -> bool:
    """Whether `path` is to be read as an official PFGM++/EDM snapshot, from its content.

    A torch.save zip is one when its pickle names `torch_utils.persistence` (the official networks are
    pickled through it; a PFGM checkpoint holds plain tensors). A file that is no zip is one unless it
    starts like a pre-1.6 torch.save stream (an old PFGM checkpoint): `.pkl` snapshots are plain pickles.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            return any(b"torch_utils.persistence" in archive.read(n) for n in pickles)
    with path.open("rb") as file:
        return not file.read(len(_LEGACY_TORCH_HEAD)).startswith(_LEGACY_TORCH_HEAD)


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


def check_pfgmpp_release(name: str, net: EDMPrecond, path: Path) -> PfgmppRelease:
    """The release `name`, checked against the snapshot: D, image shape, and the architecture its paper
    configuration builds (every constructor argument but TRAINING_ONLY); ImportOfficialError otherwise."""
    if name not in PFGMPP_RELEASES:
        known = ", ".join(PFGMPP_RELEASES)
        raise ImportOfficialError(f"--config: {path} is a PFGM++ snapshot; its --config is one of {known}, or "
                                  f"none (then no params file is written unless --params), got {name!r}")
    release = PFGMPP_RELEASES[name]
    shape = net.data_shape
    if (net.D, shape) != (release.D, release.shape):
        raise ImportOfficialError(f"--checkpoint {path} does not fit --config {name}: it has D={net.D} and "
                                  f"images {list(shape)}, the release D={release.D} and {list(release.shape)}")
    train = Params.model_validate(yaml.safe_load((CONFIGS / release.params).read_text())).train
    manifest = dict(name=release.data, kind="image", shape=list(release.shape))
    with torch.device("meta"):
        expected = EDMPrecond(**network_kwargs(RunSpec.from_attributes(train), manifest)).config
    differing = sorted(k for k in expected.keys() | net.config.keys()
                       if k not in TRAINING_ONLY and expected.get(k) != net.config.get(k))
    if differing:
        details = ", ".join(f"{k}: {net.config.get(k)!r} vs {expected.get(k)!r}" for k in differing)
        raise ImportOfficialError(f"--checkpoint {path} does not fit --config {name} ({release.params}): "
                                  f"the file's vs the configuration's {details}")
    return release


def pfgmpp_spec(checkpoint: Path, config: str | None, net: EDMPrecond, info: dict[str, Any]) -> Spec:
    """The Spec of a PFGM++ snapshot: hyperparameters {D}; the release's data and paper configuration."""
    release = check_pfgmpp_release(config, net, checkpoint) if config is not None else None
    return Spec(name=config or str(checkpoint), official_config=info["init_kwargs"],
                hyperparameters=dict(D=int(net.D)), official=dict(format="pfgmpp-snapshot", **info),
                data_name=release.data if release else None,
                params_file=CONFIGS / release.params if release else None)


# ---------------------------------------------------------------------------------------------------
# What is written

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


def _redirect(raw: dict[str, Any], section: str, key: str, folder: Path) -> None:
    """Point section.key (an output file) into `folder`, keeping its file name, if the file sets it."""
    if isinstance(raw.get(section), dict) and raw[section].get(key):
        raw[section][key] = str(folder / Path(raw[section][key]).name)


def params_text(spec: Spec, source: Path, out: Path, data: Path | None) -> str:
    """The paper configuration `source` aimed at the imported model, validated, as YAML text."""
    try:
        raw = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ImportOfficialError(f"--params {source}: not a readable YAML file ({err})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), dict):
        raise ImportOfficialError(f"--params {source}: needs a `train` section")
    raw["train"]["out"] = str(out)
    if data is not None:
        raw.setdefault("data", {})["out"] = str(data)
    for section, key in (("evaluate", "out"), ("sweep", "out"), ("sweep", "table")):
        _redirect(raw, section, key, out)  # keep the pipeline's own metrics files untouched
    if isinstance(raw.get("evaluate"), dict) and raw["evaluate"].get("model_name"):
        raw["evaluate"]["model_name"] += "-official"  # its own registry entry, its own champion
    try:
        Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(f"--params {source}: {err}") from None
    header = (f"# Written by `python -m flows.import_official` from {source}: train.out is the imported\n"
              f"# official checkpoint ({spec.name}). Evaluate it: python -m flows.evaluate --params "
              f"{out / PARAMS_FILE}\n")
    return header + yaml.safe_dump(raw, sort_keys=False)


def write_model(net: nn.Module, path: Path, metadata: dict[str, Any], step: int) -> Path:
    """Our checkpoint of `net`: model and EMA both hold the official EMA weights; Adam is fresh (the
    file is for sampling; the raw weights and optimiser state of the official run are not carried)."""
    state = create_state(net, TrainConfig(steps=max(step, 1)), torch.Generator())
    state.step = step
    return save_checkpoint(path, state, metadata=metadata)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ImportOfficialError(f"--out {out}: exists and is not a folder")
    taken = [name for name in (MODEL_FILE, PARAMS_FILE) if (out / name).exists()]
    if taken and not force:
        raise ImportOfficialError(f"--out {out}: already holds {', '.join(taken)}; pass --force to replace")


def _read_pfgm(checkpoint: Path, config: str | None, prior: str, M: int | None
               ) -> tuple[nn.Module, Spec, dict[str, Any], list[int], int]:
    """A PFGM checkpoint: its EMA network, Spec, provenance, image shape and step."""
    if config is None:
        raise ImportOfficialError(f"--config: {checkpoint} is a PFGM checkpoint; name its configuration "
                                  f"({', '.join(RELEASES)}, or an official config as .json)")
    if prior not in ("published", "derived"):
        raise ImportOfficialError(f"--prior-range must be published or derived, got {prior!r}")
    spec = resolve_config(config, prior=prior, M=M)
    info = checkpoint_info(checkpoint)
    net = load_network(checkpoint, spec)
    return net, spec, info, list(net.data_shape), info["step"]


def _read_pfgmpp(checkpoint: Path, config: str | None, M: int | None
                 ) -> tuple[nn.Module, Spec, dict[str, Any], list[int], int]:
    """A PFGM++ snapshot: its EMA network, Spec, provenance, image shape and step (0: the file counts
    images, not our optimisation steps; they are in the provenance as `images`)."""
    net, info = read_pfgmpp_snapshot(checkpoint)  # first: a file that is neither kind is named as such
    if M is not None:
        raise ImportOfficialError(f"--M applies to PFGM checkpoints; {checkpoint} is a PFGM++ snapshot")
    if config is not None and (config in RELEASES or config.endswith(".json")):
        raise ImportOfficialError(f"--config {config} is a PFGM configuration, but {checkpoint} is a PFGM++ "
                                  f"snapshot (its configuration: {', '.join(PFGMPP_RELEASES)}, or none)")
    spec = pfgmpp_spec(checkpoint, config, net, info)
    return net, spec, {}, list(net.data_shape), 0


def import_official(checkpoint: str | os.PathLike, config: str | None, out: str | os.PathLike, *,
                    data: str | os.PathLike | None = None, params: str | os.PathLike | None = None,
                    prior: str = "published", M: int | None = None, force: bool = False) -> dict[str, Any]:
    """Convert `checkpoint` (an official PFGM checkpoint of configuration `config`, or a PFGM++ snapshot,
    `config` then optional) into <out>/model.pt (and <out>/params.yaml when a paper configuration is
    known). Returns the paths written, the objective and the hyperparameters.

    Everything is checked before the first write; both files are written atomically.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    data = None if data is None else Path(data)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint: no file at {checkpoint}")
    objective = "pfgmpp" if is_pfgmpp_snapshot(checkpoint) else "pfgm"
    if objective == "pfgm":
        net, spec, info, shape, step = _read_pfgm(checkpoint, config, prior, M)
    else:
        net, spec, info, shape, step = _read_pfgmpp(checkpoint, config, M)
    _check_out(out, force)
    source = Path(params) if params is not None else spec.params_file
    if params is None and source is not None and not source.is_file():
        source = None  # an installed package without configs/: no params file, the model is enough
    text = params_text(spec, source, out, data) if source is not None else None
    metadata = dict(objective=objective, hyperparameters=spec.hyperparameters,
                    data=data_metadata(spec, shape, data),
                    official=dict(checkpoint=str(checkpoint.resolve()), sha256=sha256_file(checkpoint),
                                  config=spec.name, **info, **spec.official))
    model = write_model(net, out / MODEL_FILE, metadata, step)
    written = write_text(out / PARAMS_FILE, text) if text is not None else None
    return dict(model=str(model), params=None if written is None else str(written), objective=objective,
                hyperparameters=spec.hyperparameters, data=metadata["data"], step=step)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: convert, print a JSON summary and the command that evaluates the import."""
    parser = argparse.ArgumentParser(prog="python -m flows.import_official", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="official PFGM checkpoint_<k>.pth, or PFGM++ training-state-*.pt / .pkl")
    parser.add_argument("--config", default=None,
                        help=f"PFGM: {' | '.join(RELEASES)} | path of an official config as .json; "
                             f"PFGM++ (optional): {' | '.join(PFGMPP_RELEASES)}")
    parser.add_argument("--out", required=True,
                        help="folder for model.pt (and params.yaml), e.g. models/cifar10-official")
    parser.add_argument("--data", default=None,
                        help="prepared data folder the model belongs to (recorded, shape checked)")
    parser.add_argument("--params", default=None, help="paper configuration to aim at the import "
                                                       "(default: the release's configs/*.yaml)")
    parser.add_argument("--prior-range", default="published", choices=("published", "derived"),
                        help="z_max/upper_norm: as published (PFGM.md section 3) or derived from M (section 2)")
    parser.add_argument("--M", type=int, default=None, help="PFGM: M for a JSON config without training.M")
    parser.add_argument("--force", action="store_true", help="replace an existing model.pt / params.yaml in --out")
    args = parser.parse_args(argv)
    try:
        result = import_official(args.checkpoint, args.config, args.out, data=args.data, params=args.params,
                                 prior=args.prior_range, M=args.M, force=args.force)
    except (ImportOfficialError, ParamsError, FileNotFoundError) as err:  # our messages name the input
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(json.dumps(result, sort_keys=True))
    if result["params"]:
        print(f"evaluate it: python -m flows.evaluate --params {result['params']}")
    return result


if __name__ == "__main__":
    command_line(main)
