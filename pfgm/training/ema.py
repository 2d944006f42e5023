"""Exponential moving average of a network's weights, with the official decay schedules.

The average starts at the network's initial weights. Update n (n = 1, 2, ...) moves it towards the
current weights with decay d_n:  average <- d_n * average + (1 - d_n) * weights.

- PFGM / score_sde (`models/ema.py`), `DecaySchedule`: d_n = min(decay, (1 + n) / (10 + n)) — a
  warm-up, so that a short run does not keep its random initial weights in the average. After T
  updates the weight left on the initial parameters is prod_n d_n: with warm-up 10! (T+1)! / (T+10)!
  while T is within it (about 4e-25 at T = 2,500), without it decay^T (8% at T = 2,500, decay 0.999).
  A constant decay (warm-up off) is the plain EMA d_n = decay.
- EDM / PFGM++ (`training/training_loop.py`), `HalfLifeSchedule`: the decay is set by a half-life in
  training images, d_n = 0.5 ** (B / h_n), with B images per step and h_n = min(halflife, ratio *
  images seen before update n) — a ramp-up: early on the average forgets in proportion to how far
  training has gone. Update 1 sees no images yet, so h_1 = 0 and d_1 = 0: it copies the weights.

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


@dataclass(frozen=True)
class HalfLifeSchedule:
    """d_n of update n >= 1: 0.5 ** (batch_size / max(h_n, 1e-8)), h_n = halflife_kimg * 1000, or with a
    ramp-up ratio min(that, ratio * (n - 1) * batch_size), the images trained before update n.

    With a constant batch this is EDM's per-step beta; at the end of the ramp-up the average holds
    half of its weight on the last halflife images. The 1e-8 floor (EDM's) makes update 1 a copy.
    """
    halflife_kimg: float
    batch_size: int
    rampup_ratio: float | None = 0.05

    def __post_init__(self):
        if not self.halflife_kimg > 0:
            raise ValueError(f"EMA half-life must be > 0 kimg, got {self.halflife_kimg!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"EMA batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.rampup_ratio is not None and not self.rampup_ratio > 0:
            raise ValueError(f"EMA ramp-up ratio must be None or > 0, got {self.rampup_ratio!r}")

    def __call__(self, n: int) -> float:
        halflife = self.halflife_kimg * 1000
        if self.rampup_ratio is not None:
            halflife = min(halflife, (n - 1) * self.batch_size * self.rampup_ratio)
        return 0.5 ** (self.batch_size / max(halflife, 1e-8))


Schedule = DecaySchedule | HalfLifeSchedule


class EMA(nn.Module):
    """An averaged copy `module` of a network, updated with `update(net)` after each optimiser step."""

    def __init__(self, net: nn.Module, schedule: Schedule):
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
