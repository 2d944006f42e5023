"""Random draws from a caller's generator, wherever the result must live.

A torch.Generator produces numbers only on its own device, so every draw happens there and the
result moves to the target device afterwards; without a generator, it is drawn on the target itself.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def draw(sampler: Callable[..., Tensor], *args, generator: torch.Generator | None = None,
         device: torch.device | str | None = None, **kwargs) -> Tensor:
    """`sampler(*args, **kwargs)` (torch.rand, torch.randn, torch.randint, ...) from `generator`, on `device`."""
    source = generator.device if generator is not None else device
    sample = sampler(*args, generator=generator, device=source, **kwargs)
    return sample.to(device) if device is not None else sample
