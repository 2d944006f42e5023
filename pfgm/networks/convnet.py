"""A small residual conv net for small images (the default for 8x8 digits).

Same contract as DDPM++ and FieldMLP: forward(x (B, C, H, W), z (B,)) -> (B, C*H*W + 1), the image
part flattened in C order, then the z component. Every block works at full resolution: at 8x8 a
stack of 3x3 convolutions already sees the whole image after a few blocks, so the U-Net's down- and
up-sampling (DDPM++) buys nothing but cost. z enters through a sinusoidal embedding of ln z that
scales and shifts the normalised activations of every block (FiLM), and the z component is read from
the pooled features, as DDPM++ averages its extra output channel over the image.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pfgm.networks.mlp import EMBEDDINGS, sinusoidal


class FiLMResBlock(nn.Module):
    """x + conv(silu(FiLM(norm(conv(silu(norm(x))))))) with the FiLM scale and shift taken from temb."""

    def __init__(self, channels: int, temb_dim: int, groups: int):
        super().__init__()
        self.norm_in = nn.GroupNorm(groups, channels)
        self.conv_in = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(temb_dim, 2 * channels)
        self.norm_out = nn.GroupNorm(groups, channels)
        self.conv_out = nn.Conv2d(channels, channels, 3, padding=1)
        # A residual block starts as the identity, so a deep stack trains from the first step.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))
        scale, shift = self.film(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm_out(h) * (1 + scale) + shift
        return x + self.conv_out(F.silu(h))


class FieldConvNet(nn.Module):
    """Residual conv net mapping (x (B, C, H, W), z (B,)) to (B, C*H*W + 1).

    Args (keyword-only, JSON-serialisable, kept in `self.config` so `FieldConvNet(**net.config)`
    rebuilds it):
        data_shape: (C, H, W), e.g. [1, 8, 8] for digits.
        channels: width of every block; blocks: number of residual blocks (>= 1).
        embed_dim: size of the sinusoidal embedding of the conditioning scalar (even).
        embedding: "log" embeds ln z (PFGM only, z > 0); "positional" the raw scalar (any real
            value, e.g. EDM's c_noise under `pfgm.networks.edm`).
        groups: GroupNorm groups (must divide channels).
    """

    def __init__(self, *, data_shape: Sequence[int], channels: int = 64, blocks: int = 4, embed_dim: int = 64,
                 embedding: str = "log", groups: int = 8, max_positions: float = 10_000.0):
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"data_shape must be (C, H, W), got {list(data_shape)}")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        if blocks < 1 or channels < 1 or channels % groups or embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"need blocks >= 1, channels divisible by groups and an even embed_dim >= 2; got "
                             f"blocks={blocks}, channels={channels}, groups={groups}, embed_dim={embed_dim}")
        self.config = dict(data_shape=[int(s) for s in data_shape], channels=channels, blocks=blocks,
                           embed_dim=embed_dim, embedding=embedding, groups=groups,
                           max_positions=float(max_positions))
        self.data_shape = tuple(self.config["data_shape"])
        temb_dim = 4 * embed_dim
        self.embed = nn.Sequential(nn.Linear(embed_dim, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(self.data_shape[0], channels, 3, padding=1)
        self.blocks = nn.ModuleList(FiLMResBlock(channels, temb_dim, groups) for _ in range(blocks))
        self.norm_out = nn.GroupNorm(groups, channels)
        self.conv_out = nn.Conv2d(channels, self.data_shape[0], 3, padding=1)
        self.z_out = nn.Linear(channels + temb_dim, 1)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """x (B, C, H, W), z (B,) -> (B, C*H*W + 1)."""
        if tuple(x.shape[1:]) != self.data_shape or z.shape != x.shape[:1]:
            raise ValueError(f"expected x (B, {', '.join(map(str, self.data_shape))}) and z (B,), got "
                             f"{tuple(x.shape)} and {tuple(z.shape)}")
        scalar = torch.log(z) if self.config["embedding"] == "log" else z
        temb = self.embed(sinusoidal(scalar, self.config["embed_dim"], self.config["max_positions"]).to(x.dtype))
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, temb)
        h = F.silu(self.norm_out(h))
        v_z = self.z_out(torch.cat([h.mean(dim=(2, 3)), F.silu(temb)], dim=1))
        return torch.cat([self.conv_out(h).flatten(1), v_z], dim=1)
