"""Input validation shared by the physics functions.

Every check raises ``ValueError`` naming the offending argument, so that a bad call fails at the
boundary with a message a user can act on instead of deep inside a matrix product.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def check_tensor(name: str, value: object, *, min_dim: int = 1) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def check_finite(name: str, value: Tensor) -> Tensor:
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return value


def check_points(x: Tensor, z: Tensor, *, finite: bool = True) -> tuple[Tensor, Tensor]:
    """Validate a batch of augmented points: x of shape (B, *S), z of shape (B,) with z > 0.

    With `finite=False` the O(B*N) scan of x is left to the caller (see `explain_non_finite`).
    """
    check_tensor("x", x, min_dim=2)
    if finite:
        check_finite("x", x)
    check_finite("z", check_tensor("z", z))
    if z.dim() != 1 or z.shape[0] != x.shape[0]:
        raise ValueError(f"z must have shape ({x.shape[0]},) to match x of shape {tuple(x.shape)}, "
                         f"got {tuple(z.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is empty: the batch needs at least one point")
    if bool((z <= 0).any()):
        raise ValueError("z must be strictly positive (points live above the data plane z = 0)")
    return x, z


def check_charges(charges: Tensor, data_shape: torch.Size, *, finite: bool = True) -> Tensor:
    """Validate charges of shape (M, *S) against the data shape S of the points."""
    check_tensor("charges", charges, min_dim=2)
    if charges.shape[0] == 0:
        raise ValueError("charges is empty: the field needs at least one charge")
    if charges.shape[1:] != data_shape:
        raise ValueError(f"charges must have shape (M, {', '.join(map(str, data_shape))}) to match x, "
                         f"got {tuple(charges.shape)}")
    return check_finite("charges", charges) if finite else charges


def explain_non_finite(result_name: str, **inputs: Tensor) -> None:
    """Raise a ValueError naming the first non-finite input, or saying the computation overflowed.

    Hot paths check their (small) output instead of every (large) input: a nan or inf in any input
    reaches the output, and only then are the inputs scanned to name the culprit.
    """
    for name, value in inputs.items():
        check_finite(name, value)
    raise ValueError(f"{result_name} overflowed to non-finite values for finite inputs "
                     f"({', '.join(inputs)}): are they on a sensible scale?")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    number = float(value)
    ok = number >= 0 if allow_zero else number > 0
    if not (math.isfinite(number) and ok):
        relation = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {relation}, got {value!r}")
    return number


def check_dims(D: int | float, *, allow_inf: bool = False) -> int | float:
    """D >= 1 an integer; with `allow_inf` also math.inf, the diffusion limit (where only sigma = r / sqrt(D)
    stays finite: the PFGM++ functions that take sigma accept it, those that take r do not)."""
    if allow_inf and D == math.inf and not isinstance(D, bool):
        return D
    if isinstance(D, bool) or not isinstance(D, int) or D < 1:
        limit = ", or math.inf for the diffusion limit" if allow_inf else ""
        raise ValueError(f"D (the number of augmented dimensions) must be an integer >= 1{limit}, got {D!r}")
    return D
