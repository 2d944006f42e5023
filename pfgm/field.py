"""The empirical Poisson field of a batch of charges (PFGM.md section 1, PFGM++ section 7).

For a point (x, z) above the data plane and charges y_j on it,

    E(x, z) = sum_j w_j ((y_j, 0) - (x, z)),   w_j ∝ d_j^-(N+D),   sum_j w_j = 1,

with d_j the distance in the augmented space. Hence E_x = sum_j w_j y_j - x and E_z = -z exactly.

The official code builds a (B, M, N) tensor of differences. Here squared distances and the weighted
sum are matrix products and the weights are a log-domain softmax, so memory is O(B*M + (B+M)*N).
Two details keep float32 close to a float64 reference even when a point sits within 1e-3 of a
charge in N = 3072 dimensions, where the expansion ||x||^2 + ||y||^2 - 2 x.y loses every digit:
the distances to each point's few nearest charges are recomputed directly, and the weighted sum is
taken relative to the nearest one (the "anchor"), so the large, nearly cancelling terms never meet.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from pfgm._checks import check_charges, check_dims, check_points, check_positive, explain_non_finite

# Rows of queries per chunk are chosen so the (rows, M) temporaries stay near this many elements.
_CHUNK_ELEMENTS = 1 << 24
# Distances to this many nearest charges per point are recomputed exactly.
_REFINED_CHARGES = 4


def empirical_field(x: Tensor, z: Tensor, charges: Tensor, *, D: int = 1) -> Tensor:
    """Field of unit charges at points (x, z), normalised so the weights sum to one.

    Args:
        x: (B, *S) data-space part of the points.
        z: (B,) augmented coordinate, z > 0 (for D > 1 it is r, the norm of the D extra coordinates).
        charges: (M, *S) data points on the plane z = 0.
        D: number of augmented dimensions; the distance exponent is N + D.

    Returns:
        (B, N + 1): the data part flattened in C order, then the z component (= -z).
    """
    check_points(x, z, finite=False)
    check_charges(charges, x.shape[1:], finite=False)
    check_dims(D)
    batch = x.shape[0]
    points = x.reshape(batch, -1)
    flat_charges = charges.reshape(charges.shape[0], -1).to(points.dtype)
    exponent = 0.5 * (points.shape[1] + D)
    charge_sq_norms = torch.einsum("mn,mn->m", flat_charges, flat_charges)

    rows = max(1, _CHUNK_ELEMENTS // flat_charges.shape[0])
    field_x = torch.cat([
        _field_x_chunk(points[i:i + rows], z[i:i + rows], flat_charges, charge_sq_norms, exponent)
        for i in range(0, batch, rows)
    ])
    if not bool(torch.isfinite(field_x).all()):
        explain_non_finite("the field", x=x, charges=charges)
    return torch.cat([field_x, -z[:, None].to(field_x.dtype)], dim=1)


def _field_x_chunk(points: Tensor, z: Tensor, charges: Tensor, charge_sq_norms: Tensor,
                   exponent: float) -> Tensor:
    """Data part of the field, sum_j w_j y_j - x, for a chunk of (b, N) points."""
    z_sq = z.to(points.dtype).square()
    sq_dist = points.square().sum(dim=1, keepdim=True) + charge_sq_norms - 2.0 * points @ charges.T
    sq_dist = torch.maximum(sq_dist + z_sq[:, None], z_sq[:, None])  # d^2 >= z^2 exactly

    # Recompute the few nearest distances directly: there the expansion's rounding error is
    # largest relative to d^2, and these charges carry the weight.
    nearest = sq_dist.topk(min(_REFINED_CHARGES, charges.shape[0]), dim=1, largest=False).indices
    offsets = charges[nearest] - points[:, None, :]  # (b, k, N), k small and fixed
    exact_sq_dist = offsets.square().sum(dim=2) + z_sq[:, None]
    sq_dist = sq_dist.scatter(1, nearest, exact_sq_dist)

    closest = exact_sq_dist.argmin(dim=1, keepdim=True)
    anchor = nearest.gather(1, closest).squeeze(1)
    anchor_offset = offsets.gather(1, closest[:, :, None].expand(-1, -1, offsets.shape[2])).squeeze(1)

    # log(d_j^2 / d_min^2) is accurate near 1, unlike log(d_j^2) - log(d_min^2) at large N.
    min_sq_dist = sq_dist.min(dim=1, keepdim=True).values
    weights = torch.softmax(-exponent * torch.log(sq_dist / min_sq_dist), dim=1)

    others = weights.scatter(1, anchor[:, None], 0.0)
    # sum_j w_j y_j - x = sum_{j != k} w_j (y_j - y_k) + (y_k - x), using sum_j w_j = 1.
    return others @ charges - others.sum(dim=1, keepdim=True) * charges[anchor] + anchor_offset


def normalized_field(x: Tensor, z: Tensor, charges: Tensor, *, gamma: float = 5.0, D: int = 1) -> Tensor:
    """The training target sqrt(N) * E / (||E|| + gamma), shape (B, N + 1).

    The factor is sqrt(N), not sqrt(N + 1), as in the official code; gamma > 0 keeps the target
    bounded near the charges, gamma = 0 gives the unit direction scaled by sqrt(N).
    """
    check_positive("gamma", gamma, allow_zero=True)
    field = empirical_field(x, z, charges, D=D)
    data_dims = field.shape[1] - 1
    norm = torch.linalg.vector_norm(field, dim=1, keepdim=True)
    return math.sqrt(data_dims) * field / (norm + gamma)
