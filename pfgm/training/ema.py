"""Exponential moving average of a network's weights, with the official decay schedule.

The average starts at the network's initial weights. Update n (n = 1, 2, ...) moves it towards the
current weights with decay d_n:  average <- d_n * average + (1 - d_n) * weights.

- PFGM / score_sde (`models/ema.py`): d_n = min(decay, (1 + n) / (10 + n)) — a warm-up, so that a
  short run does not keep its random initial weights in the average. After T updates the weight left
  on the initial parameters is prod_n d_n: with warm-up 10! (T+1)! / (T+10)! while T is within it
  (about 4e-25 at T = 2,500), without it decay^T (8% at T = 2,500, decay 0.999).
- A constant decay (warm-up off) is the plain EMA d_n = decay.

Buffers are copied, not averaged (the networks here hold only constant buffers, such as resampling
filters). The state dict holds the averaged network under "module." and the update count, so a
resumed run continues the schedule exactly.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DecaySchedule:
    """d_n of update n >= 1: min(decay, (1 + n) / (10 + n)) with warm-up, else decay."""
    decay: float
    warmup: bool = True

    def __post_init__(self):
        if not 0 <= self.decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {self.decay!r}")

    def __call__(self, n: int) -> float:
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay


class EMA(nn.Module):
    """An averaged copy `module` of a network, updated with `update(net)` after each optimiser step."""

    def __init__(self, net: nn.Module, schedule: DecaySchedule):
        super().__init__()
        self.module = copy.deepcopy(net).requires_grad_(False)
        self.schedule = schedule
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, net: nn.Module) -> float:
        """Average in the current weights of `net` (same architecture); returns the decay used."""
        decay = self.schedule(int(self.num_updates) + 1)
        averages = list(self.module.parameters())
        torch._foreach_lerp_(averages, [p.detach().to(a.dtype) for a, p in zip(averages, net.parameters())],
                             1.0 - decay)
        for average, current in zip(self.module.buffers(), net.buffers()):
            average.copy_(current)
        self.num_updates += 1
        return decay

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
