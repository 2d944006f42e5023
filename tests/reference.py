"""Float64 broadcast implementations of the physics, written the official way, for comparisons.

They build the (B, M, N) tensor the fast code avoids, so they are only for small inputs.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def broadcast_field(x: Tensor, z: Tensor, charges: Tensor, *, D: int = 1) -> Tensor:
    """E = sum_j w_j ((y_j, 0) - (x, z)), w_j ∝ d_j^-(N+D), in float64 via a (B, M, N+1) tensor."""
    points = torch.cat([x.reshape(x.shape[0], -1), z[:, None]], dim=1).double()
    sources = torch.cat([charges.reshape(charges.shape[0], -1),
                         charges.new_zeros(charges.shape[0], 1)], dim=1).double()
    diff = sources[None, :, :] - points[:, None, :]          # (B, M, N+1)
    sq_dist = diff.square().sum(dim=2)
    exponent = 0.5 * (points.shape[1] - 1 + D)
    weights = torch.softmax(-exponent * torch.log(sq_dist), dim=1)
    return (weights[:, :, None] * diff).sum(dim=1)


def broadcast_normalized_field(x, z, charges, *, gamma=5.0, D=1):
    field = broadcast_field(x, z, charges, D=D)
    dims = field.shape[1] - 1
    return math.sqrt(dims) * field / (field.norm(dim=1, keepdim=True) + gamma)
