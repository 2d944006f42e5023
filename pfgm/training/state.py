"""What a training run is made of: its typed settings and its mutable state."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from pfgm.training.ema import EMA, DecaySchedule, HalfLifeSchedule, Schedule


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the `train` section of params.yaml, key for key).

    steps: total optimisation steps of the run (a resumed run continues up to it).
    batch_size: rows drawn per step when the data is a tensor (for PFGM: the large batch, the charges).
    lr, betas, eps: Adam. warmup: steps of linear learning-rate warm-up (0: none).
    lr_rampup_kimg: EDM's ramp-up instead, in thousands of images: lr * min(images / (1000 *
    lr_rampup_kimg), 1), images = step * batch_size trained before the step (so the first step has lr 0,
    as in EDM); 0: none. Exclusive with warmup.
    grad_clip: max global gradient norm, None for no clipping. ema_decay: the EMA's decay;
    ema_warmup: the official warm-up min(ema_decay, (1 + n) / (10 + n)) at update n (pfgm.training.ema).
    ema_halflife_kimg: EDM's EMA instead (replaces ema_decay and ema_warmup): half-life in thousands of
    images, with ema_rampup_ratio (None: no ramp-up) — `pfgm.training.ema.HalfLifeSchedule`.
    Images are counted as batch_size per step: every drawn row is trained (EDM, PFGM++).
    flip: random horizontal flips (image batches (B, C, H, W) only).
    amp: bf16 autocast of the network (the physics stays float32). compile: torch.compile the network.
    checkpoint_every: write a checkpoint every this many steps (None: never).
    The defaults are params.yaml's (the digits run; tests/test_params.py keeps them equal), not the
    paper's CIFAR-10 values (batch 128, lr 2e-4, warmup 5000, ema_decay 0.9999: configs/cifar10-*.yaml).
    """
    steps: int
    batch_size: int = 512
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup: int = 100
    lr_rampup_kimg: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    ema_halflife_kimg: float | None = None
    ema_rampup_ratio: float | None = 0.05
    flip: bool = False
    amp: bool = False
    compile: bool = False
    checkpoint_every: int | None = None

    def __post_init__(self):
        def require(key: str, ok: bool, what: str):
            if not ok:
                raise ValueError(f"train.{key} must be {what}, got {getattr(self, key)!r}")
        require("steps", isinstance(self.steps, int) and self.steps >= 1, "an integer >= 1")
        require("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1, "an integer >= 1")
        require("lr", math.isfinite(self.lr) and self.lr > 0, "a finite number > 0")
        require("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)")
        require("eps", self.eps > 0, "> 0")
        require("warmup", isinstance(self.warmup, int) and self.warmup >= 0, "an integer >= 0")
        require("lr_rampup_kimg", math.isfinite(self.lr_rampup_kimg) and self.lr_rampup_kimg >= 0,
                "a finite number >= 0")
        require("lr_rampup_kimg", not (self.lr_rampup_kimg and self.warmup),
                "0 when train.warmup is set (EDM's ramp-up in images replaces the step warm-up; set one of them to 0)")
        require("grad_clip", self.grad_clip is None or self.grad_clip > 0, "None or > 0")
        require("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)")
        require("ema_halflife_kimg", self.ema_halflife_kimg is None or
                (math.isfinite(self.ema_halflife_kimg) and self.ema_halflife_kimg > 0), "None or a finite number > 0")
        require("ema_rampup_ratio", self.ema_rampup_ratio is None or self.ema_rampup_ratio > 0, "None or > 0")
        require("checkpoint_every", self.checkpoint_every is None or
                (isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 1), "None or an integer >= 1")

    @classmethod
    def from_attributes(cls, source: Any) -> TrainConfig:
        """The config read field by field from any object holding them by name (a params section), betas as a
        tuple. ValueError names the bad key ("train.lr must be ...")."""
        values = {field.name: getattr(source, field.name) for field in fields(cls)}
        return cls(**{**values, "betas": tuple(values["betas"])})

    def to_dict(self) -> dict:
        return {**asdict(self), "betas": list(self.betas)}

    def ema_schedule(self) -> Schedule:
        """EDM's half-life schedule when ema_halflife_kimg is set, else the decay with its warm-up."""
        if self.ema_halflife_kimg is not None:
            return HalfLifeSchedule(self.ema_halflife_kimg, self.batch_size, self.ema_rampup_ratio)
        return DecaySchedule(self.ema_decay, warmup=self.ema_warmup)


@dataclass
class TrainState:
    """Everything a resumed run needs: `net` is the bare network (never a DDP or compiled wrapper)."""
    net: nn.Module
    ema: EMA
    optimizer: torch.optim.Adam
    generator: torch.Generator
    step: int = 0


def create_state(net: nn.Module, config: TrainConfig, generator: torch.Generator) -> TrainState:
    """Adam and an EMA copy of `net` (starting at its current weights), at step 0."""
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, betas=tuple(config.betas), eps=config.eps)
    ema = EMA(net, config.ema_schedule())
    return TrainState(net=net, ema=ema, optimizer=optimizer, generator=generator)
