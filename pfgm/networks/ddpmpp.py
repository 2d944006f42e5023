"""DDPM++ (NCSN++ configured as in PFGM) mapping (x, z) to an (N+1)-vector, and official-checkpoint I/O.

The network: z enters only as a conditioning scalar (sinusoidal embedding of raw z, or Gaussian Fourier
features of log z), then Linear-SiLU-Linear, fed to every BigGAN residual block. The U-Net has
`num_res_blocks` blocks per resolution (attention after each at `attn_resolutions`), a middle
res-attn-res stage, and `num_res_blocks + 1` blocks per resolution on the way up, each eating one skip.
The last conv has C + 1 channels; the spatial mean of the last one is the z component of the output.

Official layout and the key-mapping rule
----------------------------------------
The official `NCSNpp` keeps every layer in one flat `all_modules` ModuleList, indexed in the order the
constructor appends them (which is also the order the forward uses them). Here the same layers live in
a tree (`conv_in`, `down.{level}.blocks.{i}`, `mid_attn`, `up.{level}.upsample`, ...), and
`DDPMpp.official_order()` lists our sub-module paths in that official order. Inside each layer the names
are the official ones (`GroupNorm_0`, `Conv_0`, `Dense_0`, `NIN_0.W`, ...). Hence the rule:

    official  [module.]all_modules.{i}.{rest}   <->   ours  {official_order()[i]}.{rest}
    official  [module.]sigmas                   ->    dropped (a noise table the PFGM forward never reads)

The `module.` prefix is what DataParallel adds in the released checkpoints. EMA `shadow_params` are a
positional list in official `parameters()` order; `official_parameter_keys` names each position.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pfgm.networks.layers import (
    AttnBlock,
    GaussianFourierEmbedding,
    ResBlockBigGAN,
    conv3x3,
    group_norm,
    linear,
    sinusoidal_embedding,
)

__all__ = [
    "DDPMpp",
    "RELEASED_CONFIGS",
    "from_official",
    "kwargs_from_official",
    "load_official_state_dict",
    "official_parameter_keys",
    "official_to_ours",
    "ours_to_official",
    "to_official_state_dict",
]

MAX_POSITIONS = 10_000  # of the sinusoidal embedding, as DDPM

def _cifar10_like(**changes: Any) -> dict[str, Any]:
    """The CIFAR-10 DDPM++ kwargs with `changes`, built afresh (no list shared between configurations)."""
    config = dict(
        data_shape=[3, 32, 32], nf=128, ch_mult=[1, 2, 2, 2], num_res_blocks=4, attn_resolutions=[16],
        dropout=0.1, skip_rescale=True, embedding="positional", fourier_scale=16.0, init_scale=0.0,
    )  # fmt: skip
    return {**config, **changes}


# The released PFGM configurations (Newbeeer/Poisson_flow configs/poisson/*_ddpmpp*.py), checked against
# the official state-dict listings in shared/reference/ddpmpp/*.tsv.
RELEASED_CONFIGS: dict[str, dict[str, Any]] = {
    "cifar10": _cifar10_like(),
    "cifar10_deep": _cifar10_like(num_res_blocks=8),
    "celeba64": _cifar10_like(data_shape=[3, 64, 64]),
    "bedroom256": _cifar10_like(data_shape=[3, 256, 256], ch_mult=[1, 1, 2, 2, 4, 4], num_res_blocks=2, dropout=0.0),
}


class _DownLevel(nn.Module):
    """One resolution of the encoder: residual blocks (each optionally followed by attention), then an
    optional downsampling block. Returns every intermediate output, as each one is a skip."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, *, attn: bool, downsample: bool, **block_kw):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlockBigGAN(in_ch if i == 0 else out_ch, out_ch, **block_kw) for i in range(num_blocks)
        )
        self.attns = nn.ModuleList(_attn(out_ch, block_kw) for _ in range(num_blocks) if attn)
        self.downsample = ResBlockBigGAN(out_ch, out_ch, down=True, **block_kw) if downsample else None

    def official_order(self) -> list[str]:
        names = []
        for i in range(len(self.blocks)):
            names += [f"blocks.{i}"] + ([f"attns.{i}"] if self.attns else [])
        return names + (["downsample"] if self.downsample is not None else [])

    def forward(self, h: Tensor, temb: Tensor) -> list[Tensor]:
        skips = []
        for i, block in enumerate(self.blocks):
            h = block(h, temb)
            h = self.attns[i](h) if self.attns else h
            skips.append(h)
        if self.downsample is not None:
            skips.append(self.downsample(h, temb))
        return skips


class _UpLevel(nn.Module):
    """One resolution of the decoder: residual blocks that each concatenate one skip, optional attention
    after the last one, then an optional upsampling block."""

    def __init__(
        self, in_ch: int, out_ch: int, skip_chs: Sequence[int], *, attn: bool, upsample: bool, **block_kw
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlockBigGAN((in_ch if i == 0 else out_ch) + skip_ch, out_ch, **block_kw)
            for i, skip_ch in enumerate(skip_chs)
        )
        self.attn = _attn(out_ch, block_kw) if attn else None
        self.upsample = ResBlockBigGAN(out_ch, out_ch, up=True, **block_kw) if upsample else None

    def official_order(self) -> list[str]:
        names = [f"blocks.{i}" for i in range(len(self.blocks))]
        return names + [name for name in ("attn", "upsample") if getattr(self, name) is not None]

    def forward(self, h: Tensor, skips: list[Tensor], temb: Tensor) -> Tensor:
        """Pops its skips off the end of `skips` (the encoder pushed them in the opposite order)."""
        for block in self.blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), temb)
        if self.attn is not None:
            h = self.attn(h)
        return self.upsample(h, temb) if self.upsample is not None else h


def _attn(channels: int, block_kw: Mapping[str, Any]) -> AttnBlock:
    return AttnBlock(channels, skip_rescale=block_kw["skip_rescale"], init_scale=block_kw["init_scale"])


class DDPMpp(nn.Module):
    """DDPM++ for PFGM: forward(x (B, C, H, W), z (B,)) -> (B, C*H*W + 1).

    data_shape: (C, H, W) with H == W, as every network of pfgm.networks takes the data's shape (the
    official config's data.num_channels and data.image_size; `kwargs_from_official` maps them).
    All constructor arguments are keyword-only and JSON-serialisable; `self.config` holds them, so
    `DDPMpp(**net.config)` rebuilds the architecture. `RELEASED_CONFIGS` holds the published ones.
    """

    def __init__(
        self,
        *,
        data_shape: Sequence[int],
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        skip_rescale: bool = True,
        embedding: str = "positional",
        fourier_scale: float = 16.0,
        init_scale: float = 0.0,
    ):
        super().__init__()
        channels, image_size = _square_image_shape(data_shape)
        _validate(image_size, ch_mult, attn_resolutions, embedding)
        self.config = dict(
            data_shape=[channels, image_size, image_size], nf=nf, ch_mult=list(ch_mult),
            num_res_blocks=num_res_blocks, attn_resolutions=list(attn_resolutions), dropout=dropout,
            skip_rescale=skip_rescale, embedding=embedding, fourier_scale=fourier_scale,
            init_scale=init_scale,
        )  # fmt: skip
        self.data_shape, self.nf, self.embedding = (channels, image_size, image_size), nf, embedding

        # z conditioning: embedding (no trainable parameters) -> Linear -> SiLU -> Linear.
        if embedding == "fourier":
            self.z_embed = GaussianFourierEmbedding(nf, scale=fourier_scale)
        embed_dim = 2 * nf if embedding == "fourier" else nf
        self.z_mlp = nn.Sequential(linear(embed_dim, 4 * nf), nn.SiLU(), linear(4 * nf, 4 * nf))

        block_kw = dict(temb_dim=4 * nf, dropout=dropout, skip_rescale=skip_rescale, init_scale=init_scale)
        widths = [nf * mult for mult in ch_mult]
        attn = [res in attn_resolutions for res in _resolutions(image_size, len(ch_mult))]
        self.conv_in = conv3x3(channels, nf)
        self.down, skip_chs = _encoder(nf, widths, attn, num_res_blocks, block_kw)
        self.mid_res_0 = ResBlockBigGAN(widths[-1], widths[-1], **block_kw)
        self.mid_attn = _attn(widths[-1], block_kw)
        self.mid_res_1 = ResBlockBigGAN(widths[-1], widths[-1], **block_kw)
        self.up = _decoder(widths, attn, skip_chs, num_res_blocks, block_kw)
        self.norm_out = group_norm(widths[0])
        self.conv_out = conv3x3(widths[0], channels + 1, init_scale=init_scale)

    def official_order(self) -> list[str]:
        """Our sub-module paths in the order of the official flat `all_modules` list."""
        names = (["z_embed"] if self.embedding == "fourier" else []) + ["z_mlp.0", "z_mlp.2", "conv_in"]
        names += [f"down.{i}.{name}" for i, level in enumerate(self.down) for name in level.official_order()]
        names += ["mid_res_0", "mid_attn", "mid_res_1"]
        names += [f"up.{i}.{name}" for i, level in enumerate(self.up) for name in level.official_order()]
        return names + ["norm_out", "conv_out"]

    def _embed_z(self, z: Tensor) -> Tensor:
        if self.embedding == "fourier":
            return self.z_embed(torch.log(z))  # NCSN++ embeds log(sigma); PFGM passes z in its place
        return sinusoidal_embedding(z, self.nf, MAX_POSITIONS)  # raw z, as PFGM's positional models

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """x (B, C, H, W), z (B,) > 0 -> (B, C*H*W + 1): x-part flattened in C order, z component last."""
        expected = self.data_shape
        if tuple(x.shape[1:]) != expected or z.shape != x.shape[:1]:
            got = f"{tuple(x.shape)} and {tuple(z.shape)}"
            raise ValueError(f"expected x (B, {', '.join(map(str, expected))}) and z (B,), got {got}")
        temb = self.z_mlp(self._embed_z(z).to(x.dtype))  # embedding made in float32, as the official

        hs = [self.conv_in(x)]
        for level in self.down:
            hs += level(hs[-1], temb)
        h = self.mid_res_1(self.mid_attn(self.mid_res_0(hs[-1], temb)), temb)
        for level in self.up:
            h = level(h, hs, temb)
        h = self.conv_out(F.silu(self.norm_out(h)))

        z_out = h[:, -1].mean(dim=(1, 2))  # one scalar per sample: average over the image
        return torch.cat([h[:, :-1].flatten(1), z_out[:, None]], dim=1)


def _resolutions(image_size: int, num_levels: int) -> list[int]:
    return [image_size // 2**level for level in range(num_levels)]


def _encoder(
    nf: int, widths: list[int], attn: list[bool], num_blocks: int, block_kw: dict
) -> tuple[nn.ModuleList, list[int]]:
    """Encoder levels, and the channel count of every skip they keep (conv_in's output first)."""
    levels, skip_chs, in_ch = nn.ModuleList(), [nf], nf
    for level, out_ch in enumerate(widths):
        last = level == len(widths) - 1
        levels.append(
            _DownLevel(in_ch, out_ch, num_blocks, attn=attn[level], downsample=not last, **block_kw)
        )
        skip_chs += [out_ch] * (num_blocks + (0 if last else 1))
        in_ch = out_ch
    return levels, skip_chs


def _decoder(
    widths: list[int], attn: list[bool], skip_chs: list[int], num_blocks: int, block_kw: dict
) -> nn.ModuleList:
    """Decoder levels, coarsest first (the order they run in); consumes `skip_chs` from the end."""
    levels, in_ch, skip_chs = nn.ModuleList(), widths[-1], list(skip_chs)
    for level in reversed(range(len(widths))):
        level_skips = [skip_chs.pop() for _ in range(num_blocks + 1)]
        levels.append(
            _UpLevel(in_ch, widths[level], level_skips, attn=attn[level], upsample=level != 0, **block_kw)
        )
        in_ch = widths[level]
    return levels


def _square_image_shape(data_shape: Sequence[int]) -> tuple[int, int]:
    """(channels, side) of a data shape (C, H, W) with H == W; ValueError otherwise."""
    shape = [int(s) for s in data_shape]
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"data_shape must be square images (C, H, H), got {shape}")
    return shape[0], shape[1]


def _validate(
    image_size: int, ch_mult: Sequence[int], attn_resolutions: Sequence[int], embedding: str
) -> None:
    if embedding not in ("positional", "fourier"):
        raise ValueError(f"embedding must be 'positional' or 'fourier', got {embedding!r}")
    if image_size % 2 ** (len(ch_mult) - 1):
        raise ValueError(f"image_size {image_size} is not divisible by 2**(len(ch_mult) - 1)")
    resolutions = _resolutions(image_size, len(ch_mult))
    if stray := sorted(set(attn_resolutions) - set(resolutions)):
        raise ValueError(f"attn_resolutions {stray} are not among the resolutions {resolutions}")


# ----------------------------------------------------------------------------------------------------------
# Official key names

_OFFICIAL_KEY = re.compile(r"all_modules\.(\d+)\.(.+)")


def official_to_ours(key: str, net: DDPMpp) -> str | None:
    """Official state-dict key -> ours; None for the dropped `sigmas` buffer. ValueError if unknown."""
    key = key.removeprefix("module.")
    if key == "sigmas":
        return None
    order = net.official_order()
    match = _OFFICIAL_KEY.fullmatch(key)
    if match is None or int(match[1]) >= len(order):
        raise ValueError(f"not an official key of this architecture: {key!r}")
    return f"{order[int(match[1])]}.{match[2]}"


def ours_to_official(key: str, net: DDPMpp) -> str:
    """Our state-dict key -> official (without the `module.` prefix)."""
    for index, path in enumerate(net.official_order()):
        if key.startswith(path + "."):
            return f"all_modules.{index}.{key[len(path) + 1 :]}"
    raise ValueError(f"not a key of this network: {key!r}")


def _official_items(net: DDPMpp, tensors: str) -> list[tuple[str, Tensor]]:
    """(official key, tensor) in official order; `tensors` is 'state' (state dict) or 'params'."""
    items = []
    for index, path in enumerate(net.official_order()):
        module = net.get_submodule(path)
        pairs = module.state_dict().items() if tensors == "state" else module.named_parameters()
        items += [(f"all_modules.{index}.{name}", tensor) for name, tensor in pairs]
    return items


def official_parameter_keys(net: DDPMpp) -> list[str]:
    """Official keys of the trainable parameters in official `parameters()` order (= EMA list order)."""
    return [key for key, _ in _official_items(net, "params")]


def to_official_state_dict(
    net: DDPMpp, *, sigmas: Tensor | None = None, prefix: str = "module."
) -> dict[str, Tensor]:
    """Our weights under official names, in official order (the `model` entry of an official checkpoint).

    `sigmas` (the official float64 noise table, unused by PFGM) is included only when given: the
    official code loads strictly and needs it, but its values depend on the official config.
    """
    state = {f"{prefix}sigmas": sigmas} if sigmas is not None else {}
    state.update({prefix + key: tensor.detach() for key, tensor in _official_items(net, "state")})
    return state


# ----------------------------------------------------------------------------------------------------------
# Loading official checkpoints


def _check_official(net: DDPMpp, state: Mapping[str, Tensor]) -> None:
    """ValueError naming every missing, unexpected or mis-shaped official key (no prefix, no sigmas)."""
    expected = {key: tensor.shape for key, tensor in _official_items(net, "state")}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(shape)}"
        for key, shape in expected.items()
        if key in state and state[key].shape != shape
    ]
    found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": wrong}
    problems = [f"{label}: {items}" for label, items in found.items() if items]
    if problems:
        raise ValueError("official state dict does not fit this DDPMpp; " + "; ".join(problems))


def load_official_state_dict(
    net: DDPMpp, state: Mapping[str, Tensor], shadow_params: Sequence[Tensor] | None = None
) -> DDPMpp:
    """Load an official `model` state dict into `net` (in place); with `shadow_params`, the EMA weights.

    The state dict is checked whole first (see `_check_official`); the EMA list must have one tensor per
    trainable parameter, in official `parameters()` order, each shaped like that parameter.
    """
    state = {key.removeprefix("module."): tensor for key, tensor in state.items()}
    state.pop("sigmas", None)
    _check_official(net, state)
    if shadow_params is not None:
        state = {**state, **_ema_state(net, shadow_params)}
    net.load_state_dict({official_to_ours(key, net): tensor for key, tensor in state.items()})
    return net


def _ema_state(net: DDPMpp, shadow_params: Sequence[Tensor]) -> dict[str, Tensor]:
    keys = official_parameter_keys(net)
    if len(shadow_params) != len(keys):
        count = f"{len(shadow_params)} tensors, the model {len(keys)} parameters"
        raise ValueError(f"ema shadow_params has {count}")
    shapes = dict(_official_items(net, "params"))
    wrong = [
        f"{key}: ema {tuple(p.shape)} vs model {tuple(shapes[key].shape)}"
        for key, p in zip(keys, shadow_params)
        if p.shape != shapes[key].shape
    ]
    if wrong:
        raise ValueError(f"ema shadow_params shape mismatches (by position): {wrong}")
    return dict(zip(keys, shadow_params))


# Official flags that select code paths this network does not implement, with the only accepted value.
_REQUIRED_FLAGS = {
    ("model", "name"): "ncsnpp",
    ("model", "conditional"): True,
    ("model", "fir"): False,
    ("model", "resblock_type"): "biggan",
    ("model", "progressive"): "none",
    ("model", "progressive_input"): "none",
    ("model", "scale_by_sigma"): False,
    ("model", "nonlinearity"): "swish",
    ("data", "centered"): True,
    ("training", "sde"): "poisson",
}


def kwargs_from_official(config: Mapping[str, Any]) -> dict[str, Any]:
    """DDPMpp keyword arguments from an official config shaped like tiny_ddpmpp_config.json.

    Reads the `data` and `model` sections (and `training.sde`). A flag of `_REQUIRED_FLAGS` that is present
    with another value raises ValueError naming it; a missing required size raises ValueError too.
    """
    for (section, name), wanted in _REQUIRED_FLAGS.items():
        value = config.get(section, {}).get(name, wanted)
        if (value.lower() if isinstance(value, str) else value) != wanted:
            raise ValueError(f"unsupported official setting {section}.{name}={value!r} (need {wanted!r})")
    data, model = config.get("data", {}), config.get("model", {})
    try:
        return dict(
            data_shape=[int(data["num_channels"]), int(data["image_size"]), int(data["image_size"])],
            nf=int(model["nf"]),
            ch_mult=[int(m) for m in model["ch_mult"]], num_res_blocks=int(model["num_res_blocks"]),
            attn_resolutions=[int(r) for r in model["attn_resolutions"]], dropout=float(model["dropout"]),
            skip_rescale=bool(model["skip_rescale"]), embedding=str(model["embedding_type"]).lower(),
            fourier_scale=float(model.get("fourier_scale", 16.0)), init_scale=float(model["init_scale"]),
        )  # fmt: skip
    except KeyError as err:
        raise ValueError(f"official config lacks {err.args[0]!r}") from None


def from_official(checkpoint_path: str | Path, config: Mapping[str, Any], *, ema: bool = True) -> DDPMpp:
    """Build the network described by an official config and load an official checkpoint into it.

    `checkpoint_path`: a `checkpoint_<k>.pth` of Newbeeer/Poisson_flow (dict with `model` and `ema`);
    `ema=True` loads the EMA shadow weights (what the official sampler uses), else the raw weights.
    Loaded on CPU and returned in eval mode, since an official checkpoint is normally loaded to sample.
    """
    net = DDPMpp(**kwargs_from_official(config))
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    for entry in ("model", "ema") if ema else ("model",):
        if entry not in checkpoint:
            raise ValueError(f"{checkpoint_path} is not an official checkpoint: it has no {entry!r} entry")
    shadow = checkpoint["ema"]["shadow_params"] if ema else None
    return load_official_state_dict(net, checkpoint["model"], shadow).eval()
