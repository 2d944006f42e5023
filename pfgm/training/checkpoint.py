"""Our checkpoint format: plain tensors and JSON, written atomically, read with weights_only=True.

A checkpoint is one `torch.save` of a dict:
    format        "pfgm-checkpoint"; version 1
    network       {"class": a key of NETWORKS, "config": JSON string of the network's kwargs}
    model, ema    state dicts of the bare network and of its EMA (pfgm.training.ema: "module."-prefixed
                  weights and "num_updates")
    optimizer     Adam's state dict
    step          completed optimisation steps
    rng           {"torch_cpu": torch.get_rng_state(), "generator": the training generator's state,
                   "generator_device": its device, "cuda": per-device CUDA states or None}
    train_config  JSON string of the TrainConfig, or None; metadata: JSON string (caller's extras)
No code is pickled: the network is rebuilt as NETWORKS[class](**config), the only lookup by name.
`load_checkpoint` reads an older network config in today's form (`current_config`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from pfgm.files import save_torch
from pfgm.networks.ddpmpp import DDPMpp
from pfgm.networks.convnet import FieldConvNet
from pfgm.networks.edm import EDMPrecond
from pfgm.networks.mlp import FieldMLP
from pfgm.networks.ncsnv2 import NCSNv2Small
from pfgm.training.state import TrainConfig, TrainState, create_state

FORMAT, VERSION = "pfgm-checkpoint", 1
#: The networks by name (their names and arguments, for validation without torch: pfgm.names).
NETWORKS: dict[str, type[nn.Module]] = {"DDPMpp": DDPMpp, "EDMPrecond": EDMPrecond, "FieldConvNet": FieldConvNet,
                                        "FieldMLP": FieldMLP, "NCSNv2Small": NCSNv2Small}
_NAME = re.compile(r"checkpoint_(\d+)\.pt")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """The file for the checkpoint after `step` steps: directory/checkpoint_<step, 8 digits>.pt."""
    return Path(directory) / f"checkpoint_{step:08d}.pt"


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint with the highest step in `directory`, or None (temporary files never match)."""
    found = [(int(m.group(1)), p) for p in Path(directory).glob("checkpoint_*.pt") if (m := _NAME.fullmatch(p.name))]
    return max(found)[1] if found else None


def clear_run_files(directory: str | Path, model_file: str) -> list[Path]:
    """Delete a run's files in `directory`: its final model `model_file`, its checkpoints and the temporaries
    an interrupted atomic write of either leaves behind. Returns what was deleted; other files stay."""
    patterns = (model_file, "checkpoint_*.pt", f".{model_file}.*.tmp", ".checkpoint_*.tmp")
    stale = [path for pattern in patterns for path in Path(directory).glob(pattern)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def network_name(net: nn.Module) -> str:
    """The key of NETWORKS whose class `net` is exactly (a subclass could not be rebuilt faithfully)."""
    for name, cls in NETWORKS.items():
        if type(net) is cls:
            return name
    raise ValueError(f"cannot checkpoint a {type(net).__name__}: the network must be one of {sorted(NETWORKS)}")


def _rng_state(generator: torch.Generator) -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return dict(torch_cpu=torch.get_rng_state(), generator=generator.get_state(),
                generator_device=str(generator.device), cuda=cuda)


def save_checkpoint(path: str | Path, state: TrainState, *, config: TrainConfig | None = None,
                    metadata: dict | None = None) -> Path:
    """Write `state` to `path` atomically (pfgm.files.save_torch)."""
    payload = dict(
        format=FORMAT, version=VERSION,
        network=dict(**{"class": network_name(state.net)}, config=json.dumps(state.net.config)),
        model=state.net.state_dict(), ema=state.ema.state_dict(), optimizer=state.optimizer.state_dict(),
        step=state.step, rng=_rng_state(state.generator),
        train_config=None if config is None else json.dumps(config.to_dict()),
        metadata=json.dumps(metadata or {}),
    )
    return save_torch(path, payload)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint onto the CPU with `torch.load(weights_only=True)` and check its format."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (official PFGM checkpoints load through "
                         "pfgm.networks.ddpmpp.from_official, official PFGM++/EDM snapshots through "
                         "pfgm.networks.edm.from_official_snapshot)")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint version {payload.get('version')!r}; this code reads {VERSION}")
    network = payload.get("network")
    if isinstance(network, dict) and "config" in network:
        network["config"] = json.dumps(current_config(network["class"], json.loads(network["config"])))
    return payload


#: (channels, side) keys of the square-image networks' configs written before every network took data_shape.
_LEGACY_SHAPE_KEYS = {"DDPMpp": ("channels", "image_size"), "EDMPrecond": ("img_channels", "img_resolution")}


def current_config(name: str, config: dict) -> dict:
    """A network config in the form today's constructor takes. DDPMpp and EDMPrecond checkpoints written
    before every network took `data_shape` record a side and a channel count: they are read as
    data_shape [C, S, S], so models trained or imported then still load."""
    keys = _LEGACY_SHAPE_KEYS.get(name)
    if keys is None or keys[1] not in config:
        return config
    channels_key, side_key = keys
    rest = {key: value for key, value in config.items() if key not in keys}
    side = int(config[side_key])
    return {"data_shape": [int(config.get(channels_key, 3)), side, side], **rest}


def build_network(payload: dict, *, ema: bool = False) -> nn.Module:
    """The network of a loaded checkpoint, with its trained weights (EMA weights if `ema`)."""
    name = payload["network"]["class"]
    if name not in NETWORKS:
        raise ValueError(f"unknown network class {name!r}; known: {sorted(NETWORKS)}")
    net = NETWORKS[name](**json.loads(payload["network"]["config"]))
    weights = payload["model"]
    if ema:
        weights = {k.removeprefix("module."): v for k, v in payload["ema"].items() if k.startswith("module.")}
    net.load_state_dict(weights)
    return net


def restore_state(payload: dict, config: TrainConfig, *, device: torch.device | str = "cpu") -> TrainState:
    """A TrainState that continues the checkpointed run exactly: weights, EMA, Adam, step, RNGs.

    Also restores the global CPU RNG (dropout draws from it) and, if recorded and present, CUDA's.
    """
    rng = payload["rng"]
    generator = torch.Generator(device=rng["generator_device"])
    generator.set_state(rng["generator"])
    state = create_state(build_network(payload).to(device), config, generator)
    state.ema.load_state_dict(payload["ema"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.step = int(payload["step"])
    torch.set_rng_state(rng["torch_cpu"])
    if rng.get("cuda") is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state
