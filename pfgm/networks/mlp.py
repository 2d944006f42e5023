"""A small MLP field network for toy data and flattened 8x8 digits.

Same contract as DDPM++: forward(x (B, *S), z (B,)) -> (B, N + 1), the data part flattened in C order,
then the z component. z enters only through an embedding (never as an input feature), added to every
hidden layer, so the network can change its output sharply near the data plane.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

EMBEDDINGS = ("positional", "log")


def sinusoidal(values: Tensor, dim: int, max_positions: float) -> Tensor:
    """[sin(v f_k), cos(v f_k)], f_k geometric from 1 down to 1/max_positions: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=values.device, dtype=torch.float32)
                      * (-math.log(max_positions) / max(half - 1, 1)))
    args = values.float()[:, None] * freqs
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class FieldMLP(nn.Module):
    """SiLU MLP mapping (x (B, *S), z (B,)) to (B, N + 1), N = prod(S).

    Args (keyword-only, JSON-serialisable, kept in `self.config` so `FieldMLP(**net.config)` rebuilds it):
        data_shape: S, e.g. [2] for 2D toys or [1, 8, 8] for digits.
        hidden: width of the hidden layers; depth: number of hidden layers (>= 1).
        embed_dim: size of the sinusoidal embedding of the conditioning scalar (even).
        embedding: "positional" embeds the raw scalar (any real value: PFGM's z, or EDM's
            c_noise = ln(sigma)/4 under `pfgm.networks.edm`); "log" embeds ln z, which resolves
            heights near the data plane better but needs z > 0 (PFGM only).
        max_positions: the slowest frequency of the embedding is 1 / max_positions.
    """

    def __init__(self, *, data_shape: Sequence[int], hidden: int = 256, depth: int = 3, embed_dim: int = 64,
                 embedding: str = "positional", max_positions: float = 10_000.0):
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        if depth < 1 or hidden < 1 or embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"need depth >= 1, hidden >= 1 and an even embed_dim >= 2; got depth={depth}, "
                             f"hidden={hidden}, embed_dim={embed_dim}")
        self.config = dict(data_shape=[int(s) for s in data_shape], hidden=hidden, depth=depth,
                           embed_dim=embed_dim, embedding=embedding, max_positions=float(max_positions))
        self.data_shape = tuple(self.config["data_shape"])
        dims = math.prod(self.data_shape)
        self.embed = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.input = nn.Linear(dims, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.z_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.output = nn.Linear(hidden, dims + 1)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """x (B, *S), z (B,) -> (B, N + 1)."""
        if tuple(x.shape[1:]) != self.data_shape or z.shape != x.shape[:1]:
            raise ValueError(f"expected x (B, {self.data_shape}) and z (B,), got {tuple(x.shape)} and "
                             f"{tuple(z.shape)}")
        scalar = torch.log(z) if self.config["embedding"] == "log" else z
        temb = self.embed(sinusoidal(scalar, self.config["embed_dim"], self.config["max_positions"]).to(x.dtype))
        h = self.input(x.flatten(1)) + temb
        for layer, proj in zip(self.layers, self.z_proj):
            h = layer(F.silu(h)) + proj(F.silu(temb))
        return self.output(F.silu(h))
