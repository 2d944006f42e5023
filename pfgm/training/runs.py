"""Run construction: the network, the hyperparameters and the loss of a training run from a plain spec.

A `RunSpec` holds what a run is built from; its field names are the keys of params.yaml's `train`
section, so a caller copies them across by name (`RunSpec.from_attributes`). The data enter through
the prepared folder's manifest ({name, kind, shape, ...}) and, for the hyperparameters, the charges
themselves. Everything is checked before it is built: a bad setting raises `RunError` naming the
spec's key (e.g. "network_kwargs.hidden"), so a pipeline can prefix its section and report it.

`build_run` is the whole story: hyperparameters from the data, the network (seeded once, here), and
the loss of the objective — PFGM's `PFGMLoss` or PFGM++'s `PFGMppLoss`. `setup_run` adds what a
tracked, resumable run needs around it: the data checks, the optimisation config, the device and the
checkpoint metadata, whose `fingerprint` (of the settings and the data) decides whether a checkpoint
found on disk belongs to this run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
from typing import Any

import torch
from torch import Tensor, nn

from pfgm.networks.edm import precond_kwargs
from pfgm.perturb import hyperparameters as data_hyperparameters, prior_range
from pfgm.training.augment import EDM_CIFAR10_KWARGS, AugmentPipe
from pfgm.training.checkpoint import NETWORKS
from pfgm.training.losses import PFGMLoss, PFGMppLoss
from pfgm.training.state import TrainConfig, TrainState, create_state

# Embeddings of ln(scalar): PFGM++ conditions on c_noise = ln(sigma)/4, which is often <= 0.
LOG_EMBEDDING = {"FieldMLP": "log", "FieldConvNet": "log", "NCSNv2Small": "log", "DDPMpp": "fourier"}
#: Denoisers: networks that only train PFGM++ (the field networks serve both objectives).
DENOISERS = ("EDMPrecond",)
#: Networks of square images only (U-Nets whose levels halve one side).
SQUARE_IMAGES = ("DDPMpp", "EDMPrecond")


class RunError(ValueError):
    """A setting of the spec that cannot build a run; `key` names it ("network_kwargs.hidden")."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a training run is built from (the keys of the train section of the same names).

    network: a name of pfgm.training.NETWORKS; network_kwargs: its arguments less those the data fill in.
    objective: "pfgm" | "pfgmpp"; D: PFGM++'s augmented dimensions. M, z_max, upper_norm: None to take
    them from the data. sigma, tau, gamma, restrict_M, small_batch, reduce: PFGMLoss's settings.
    augment: EDM's augmentation probability (0: off).
    """
    network: str
    network_kwargs: dict[str, Any]
    objective: str
    D: int
    M: int | None
    z_max: float | None
    upper_norm: float | None
    sigma: float
    tau: float
    gamma: float
    restrict_M: bool
    small_batch: int | None
    reduce: str
    augment: float

    @classmethod
    def from_attributes(cls, source: Any) -> RunSpec:
        """The spec read field by field from any object holding them by name (a params section)."""
        return cls(**{field.name: getattr(source, field.name) for field in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class Run:
    """A built run: its network (freshly initialised), loss and hyperparameters."""
    net: nn.Module
    loss_fn: PFGMLoss | PFGMppLoss
    hyperparameters: dict[str, float]


def shape_kwargs(network: str, manifest: dict) -> dict[str, Any]:
    """The network argument that comes from the data, as every network takes it: data_shape (C, H, W) of
    images, or (D,) of points (FieldMLP only); square images for DDPMpp and EDMPrecond."""
    shape = [int(s) for s in manifest["shape"]]
    square = manifest["kind"] == "image" and len(shape) == 3 and shape[1] == shape[2]
    if network in SQUARE_IMAGES and not square:
        raise RunError("network", f"{network} needs square images; {manifest['name']} holds "
                                  f"{manifest['kind']} of shape {shape}")
    if network != "FieldMLP" and manifest["kind"] != "image":
        raise RunError("network", f"{network} needs images; {manifest['name']} holds "
                                  f"{manifest['kind']} of shape {shape} (use FieldMLP)")
    return {"data_shape": shape}


def filled_in(spec: RunSpec, manifest: dict) -> dict[str, tuple[Any, str]]:
    """Arguments set from the data and the spec, not network_kwargs: {name: (value, where it comes from)}."""
    data = f"from the data ({manifest['name']})"
    filled = {key: (value, data) for key, value in shape_kwargs(spec.network, manifest).items()}
    if spec.network == "EDMPrecond":
        # Recorded by EDMPrecond as Newbeeer/pfgmpp's does (its generate.py checks net.D); the loss uses D.
        filled["pfgmpp"] = (True, "from objective")
        filled["D"] = (spec.D, "from D")
        filled["label_dim"] = (0, "0: the pipeline trains unconditionally")
    return filled


def accepted_kwargs(network: str, kwargs: dict[str, Any]) -> set[str]:
    """Keyword names the network class takes (EDMPrecond: its own and its backbone's)."""
    if network == "EDMPrecond":
        model_type = kwargs.get("model_type", "SongUNet")
        try:
            return set(precond_kwargs(model_type))
        except KeyError:
            raise RunError("network_kwargs.model_type", f"unknown backbone {model_type!r}") from None
    return set(inspect.signature(NETWORKS[network]).parameters)


def network_kwargs(spec: RunSpec, manifest: dict) -> dict[str, Any]:
    """spec.network_kwargs plus what the data and spec fill in (the data's shape; for EDMPrecond also
    pfgmpp, D and label_dim), each key checked against the network's signature."""
    if spec.network in DENOISERS and spec.objective != "pfgmpp":
        raise RunError("network", f"{spec.network} is a denoiser: it trains objective pfgmpp only "
                                  "(pfgm needs a field network: FieldMLP, FieldConvNet, DDPMpp)")
    filled = filled_in(spec, manifest)
    accepted = accepted_kwargs(spec.network, spec.network_kwargs) - set(filled)
    for key in spec.network_kwargs:
        if key in filled:
            raise RunError(f"network_kwargs.{key}", f"filled in {filled[key][1]}; remove it")
        if key not in accepted:
            raise RunError(f"network_kwargs.{key}",
                           f"not an argument of {spec.network} (known: {', '.join(sorted(accepted))})")
    kwargs = {**spec.network_kwargs, **{key: value for key, (value, _) in filled.items()}}
    embedding = kwargs.get("embedding")
    if spec.objective == "pfgmpp" and embedding is not None and embedding == LOG_EMBEDDING.get(spec.network):
        raise RunError("network_kwargs.embedding", f"{embedding!r} embeds a logarithm, but pfgmpp "
                                                   "conditions the network on ln(sigma)/4, which can be <= 0; "
                                                   "use 'positional'")
    check_augment(spec)
    return kwargs


def augment_pipe(spec: RunSpec) -> AugmentPipe | None:
    """EDM's augmentation with probability spec.augment and EDM's CIFAR-10 transforms, or None at 0."""
    return AugmentPipe(p=spec.augment, **EDM_CIFAR10_KWARGS) if spec.augment > 0 else None


def check_augment(spec: RunSpec) -> None:
    """augment needs objective pfgmpp and an EDMPrecond conditioning on exactly its labels; an
    EDMPrecond with augment_dim > 0 needs augmentation (EDM sets one with the other)."""
    pipe = augment_pipe(spec)
    if pipe is not None and (spec.objective != "pfgmpp" or spec.network != "EDMPrecond"):
        raise RunError("augment", "EDM's augmentation trains the pfgmpp objective with network EDMPrecond "
                                  f"(got objective {spec.objective}, network {spec.network}); set 0")
    if spec.network != "EDMPrecond":
        return
    wanted = pipe.augment_dim if pipe is not None else 0
    got = spec.network_kwargs.get("augment_dim", 0)
    if got != wanted:
        why = (f"augment {spec.augment} produces {wanted} labels per image ({', '.join(pipe.label_names)})"
               if pipe is not None else "augment is 0: there are no augmentation labels to condition on")
        raise RunError("network_kwargs.augment_dim", f"must be {wanted}, got {got}: {why}")


def build_network(spec: RunSpec, manifest: dict) -> nn.Module:
    """The network named by spec.network, built from network_kwargs(spec, manifest)."""
    kwargs = network_kwargs(spec, manifest)
    try:
        return NETWORKS[spec.network](**kwargs)
    except (TypeError, ValueError) as err:
        raise RunError("network_kwargs", f"{spec.network}: {err}") from None


def run_hyperparameters(charges: Tensor, spec: RunSpec) -> dict[str, float]:
    """M, z_max, upper_norm of the data (charges (B, *S)); gamma (pfgm) or D (pfgmpp).

    M from spec.M when given, else from the data; z_max and upper_norm from the spec when given (the
    released configs sample with rounded values), else implied by M.
    """
    try:
        hp = data_hyperparameters(charges, sigma=spec.sigma, tau=spec.tau)
    except ValueError as err:
        raise RunError("sigma", str(err)) from None
    if spec.M is not None:
        dims = math.prod(charges.shape[1:])
        hp = dict(M=spec.M, **prior_range(spec.M, dims, sigma=spec.sigma, tau=spec.tau))
    for key in ("z_max", "upper_norm"):
        if getattr(spec, key) is not None:
            hp[key] = getattr(spec, key)
    if spec.objective == "pfgmpp":
        hp["D"] = spec.D
    else:
        hp["gamma"] = spec.gamma  # the field's normalisation: a sampler's exact v_z (z_exp) needs it
    return hp


def build_loss(spec: RunSpec, hp: dict) -> PFGMLoss | PFGMppLoss:
    """PFGMLoss (objective pfgm) or PFGMppLoss (pfgmpp) with the spec's settings."""
    if spec.objective == "pfgmpp":
        return PFGMppLoss(D=spec.D, augment=augment_pipe(spec))
    return PFGMLoss(M=hp["M"], sigma=spec.sigma, tau=spec.tau, gamma=spec.gamma,
                    restrict_M=spec.restrict_M, small_batch=spec.small_batch, reduce=spec.reduce)


def check_data(batch_size: int, flip: bool, manifest: dict) -> None:
    """Settings that only fail against the data: a batch larger than the split, flips of points."""
    rows = manifest["counts"]["train"]
    if batch_size > rows:
        raise RunError("batch_size", f"{batch_size} exceeds the {rows} training rows of {manifest['name']}")
    if flip and manifest["kind"] != "image":
        raise RunError("flip", f"flips need image data; {manifest['name']} holds {manifest['kind']}")


def build_run(spec: RunSpec, charges: Tensor, manifest: dict, *, seed: int) -> Run:
    """Hyperparameters from the charges (B, *S) in [-1, 1], the network (initialised from `seed`, which
    also seeds torch's global generator for dropout later) and the loss. RunError names a bad key."""
    hp = run_hyperparameters(charges, spec)
    torch.manual_seed(seed)
    return Run(net=build_network(spec, manifest), loss_fn=build_loss(spec, hp), hyperparameters=hp)


def fingerprint(section: dict[str, Any], data_sha256: str) -> str:
    """sha256 of the run's settings (a JSON-ready dict of the train section; its `out` is left out: where,
    not what) and of the training data's sha256. Equal fingerprints: a checkpoint of the same run."""
    settings = {key: value for key, value in section.items() if key != "out"}
    text = json.dumps({"train": settings, "data_sha256": data_sha256}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def checkpoint_metadata(hp: dict[str, float], objective: str, manifest: dict, fingerprint: str) -> dict[str, Any]:
    """What a run's checkpoints record for later stages: hyperparameters, objective, the data (name, sha256
    of train.npy from the manifest, kind, shape) and the run's fingerprint."""
    data = dict(name=manifest["name"], sha256=manifest["files"]["train.npy"], kind=manifest["kind"],
                shape=list(manifest["shape"]))
    return dict(hyperparameters=hp, objective=objective, data=data, fingerprint=fingerprint)


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a tracked run is built from, checked before anything is tracked or written."""
    net: nn.Module
    config: TrainConfig
    loss_fn: PFGMLoss | PFGMppLoss
    hyperparameters: dict
    device: torch.device
    metadata: dict  # the checkpoint metadata (checkpoint_metadata); the caller adds its own keys


def setup_run(spec: RunSpec, config: TrainConfig, charges: Tensor, manifest: dict, *, seed: int,
              device: torch.device, fingerprint: str) -> Setup:
    """Check the settings against the data and build the run (build_run: the network seeded from `seed`).

    charges: (B, *S) training data in [-1, 1]. The network stays on the CPU until a state is made
    (new_state). RunError names a bad key.
    """
    check_data(config.batch_size, config.flip, manifest)
    run = build_run(spec, charges, manifest, seed=seed)
    metadata = checkpoint_metadata(run.hyperparameters, spec.objective, manifest, fingerprint)
    return Setup(net=run.net, config=config, loss_fn=run.loss_fn, hyperparameters=run.hyperparameters,
                 device=device, metadata=metadata)


def new_state(built: Setup, seed: int) -> TrainState:
    """A fresh state of built.net, moved to built.device, its training generator seeded with `seed`."""
    generator = torch.Generator(device=built.device).manual_seed(seed)
    return create_state(built.net.to(built.device), built.config, generator)
