"""Building blocks of DDPM++ (the NCSN++ family): embeddings, initialisation, residual and attention blocks.

Sub-module and parameter names inside the blocks (`GroupNorm_0`, `Conv_0`, `Dense_0`, `NIN_0.W`, ...) are
the official score_sde / PFGM names, and each block registers its parameters in the official order, so a
block's state dict and `parameters()` order equal the official block's. That is what lets
`pfgm.networks.ddpmpp` map official checkpoints by a one-line rule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttnBlock",
    "GaussianFourierEmbedding",
    "NIN",
    "ResBlockBigGAN",
    "conv1x1",
    "conv3x3",
    "default_init_",
    "group_norm",
    "linear",
    "sinusoidal_embedding",
]

_SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------------------------------------
# Initialisation


@torch.no_grad()
def default_init_(weight: Tensor, scale: float = 1.0) -> Tensor:
    """DDPM's default_init, in place: variance_scaling(scale, 'fan_avg', 'uniform').

    Fans follow the official convention (out axis 0, in axis 1, the rest is the receptive field):
    U(-a, a) with a = sqrt(3 * scale / ((fan_in + fan_out) / 2)). scale 0 means 1e-10, because DDPM
    zero-initialises the last layer of each residual branch "almost" (an exact zero would also zero its
    gradient with respect to the preceding weights at step 0).
    """
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(weight.shape[2:])
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2))
    return weight.uniform_(-bound, bound)  # in place, so it also works on the meta device


def conv3x3(in_ch: int, out_ch: int, init_scale: float = 1.0) -> nn.Conv2d:
    """3x3 same-padding conv with DDPM init (bias zero)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
    default_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def conv1x1(in_ch: int, out_ch: int, init_scale: float = 1.0) -> nn.Conv2d:
    """1x1 conv with DDPM init (bias zero)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)
    default_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def linear(in_features: int, out_features: int) -> nn.Linear:
    """Linear layer with DDPM init (bias zero)."""
    layer = nn.Linear(in_features, out_features)
    default_init_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm as hard-coded in NCSN++: min(C // 4, 32) groups, eps 1e-6."""
    return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Embeddings of the conditioning scalar z


def sinusoidal_embedding(z: Tensor, dim: int, max_positions: float = 10_000.0) -> Tensor:
    """Transformer/DDPM positional embedding of the raw scalar: (B,) -> (B, dim).

    Frequencies f_k = exp(-k ln(max_positions) / (dim/2 - 1)), k < dim/2; output [sin(z f), cos(z f)]
    (sin half first), zero-padded by one column when dim is odd.
    """
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=z.device)
    freqs = torch.exp(steps * (-math.log(max_positions) / (half - 1)))
    args = z.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of a scalar (NCSN++ `GaussianFourierProjection`): (B,) -> (B, 2 * size).

    The frequencies `W` ~ N(0, scale^2) are fixed. They are a buffer here (the official code uses a
    Parameter with requires_grad=False); the state-dict key `W` is the same, and the official EMA skips
    non-trainable parameters, so EMA lists line up too.
    """

    def __init__(self, size: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("W", torch.randn(size) * scale)

    def forward(self, s: Tensor) -> Tensor:
        proj = s[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


# ----------------------------------------------------------------------------------------------------------
# Blocks


class NIN(nn.Module):
    """Per-pixel linear map ("network in network"): (B, C_in, H, W) -> (B, C_out, H, W).

    Stored as `W` (C_in, C_out) and `b` (C_out,), the official layout, not as a 1x1 conv.
    """

    def __init__(self, in_ch: int, out_ch: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(default_init_(torch.empty(in_ch, out_ch), init_scale))
        self.b = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.W) + self.b[None, :, None, None]


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels with a residual connection: (B, C, H, W) -> same.

    NIN_0..2 make q, k, v (init scale 0.1, as DDPM); NIN_3 projects out with `init_scale` (0 -> ~1e-10, so
    the block starts as the identity, up to the skip rescale).
    """

    def __init__(self, channels: int, skip_rescale: bool = True, init_scale: float = 0.0):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        h = self.GroupNorm_0(x)
        # (B, C, H, W) -> (B, HW, C) token layout; default scale 1/sqrt(C) is DDPM's.
        q, k, v = (nin(h).flatten(2).transpose(1, 2) for nin in (self.NIN_0, self.NIN_1, self.NIN_2))
        h = F.scaled_dot_product_attention(q, k, v)
        h = self.NIN_3(h.transpose(1, 2).reshape(b, c, hgt, wid))
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class ResBlockBigGAN(nn.Module):
    """BigGAN-style residual block of NCSN++ without FIR: (B, C_in, H, W), (B, T) -> (B, C_out, H', W').

    Branch: GroupNorm, SiLU, [resample], Conv_0, + Dense_0(SiLU(temb)) per channel, GroupNorm, SiLU,
    dropout, Conv_1. Skip: [resample], then a 1x1 Conv_2 when channels change or the block resamples.
    Resampling is nearest-neighbour x2 (`up`) or 2x2 average pooling (`down`).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        temb_dim: int | None = None,
        *,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.1,
        skip_rescale: bool = True,
        init_scale: float = 0.0,
    ):
        super().__init__()
        out_ch = out_ch or in_ch
        # Registration order = official parameters() order (matters for positional EMA lists).
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        self.Dense_0 = linear(temb_dim, out_ch) if temb_dim is not None else None
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.Conv_2 = conv1x1(in_ch, out_ch) if (in_ch != out_ch or up or down) else None
        self.up, self.down, self.skip_rescale = up, down, skip_rescale

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self._resample(F.silu(self.GroupNorm_0(x)))
        h = self.Conv_0(h)
        if self.Dense_0 is not None and temb is not None:
            h = h + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(F.silu(self.GroupNorm_1(h))))
        x = self._resample(x)
        if self.Conv_2 is not None:
            x = self.Conv_2(x)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h
