"""The training loop: one optimisation step, batches, and the loop that strings them together.

The library knows nothing of experiment tracking: `train` returns its history and calls `on_step` and
`on_checkpoint`, to which a pipeline can attach MLflow. Seeds and devices are chosen by the caller; all
randomness of a run (batches, flips, perturbations) comes from `state.generator`, so a run resumed
from a checkpoint continues exactly.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pfgm._random import draw
from pfgm.data.store import random_hflip
from pfgm.training.checkpoint import checkpoint_path, save_checkpoint
from pfgm.training.state import TrainConfig, TrainState

Loss = Callable[..., Tensor]  # loss(net, batch, generator) -> scalar


class DivergenceError(RuntimeError):
    """The loss or the gradient norm became non-finite; nothing was written for that step."""

    def __init__(self, step: int, loss: float, grad_norm: float):
        super().__init__(f"training diverged at step {step}: loss = {loss}, gradient norm = {grad_norm} "
                         "(no checkpoint written for this step)")
        self.step, self.loss, self.grad_norm = step, loss, grad_norm


def learning_rate(step: int, config: TrainConfig) -> float:
    """Learning rate of the step after `step` completed ones.

    warmup (steps, PFGM/score_sde): linear to lr over `warmup` steps, lr (step + 1) / warmup.
    lr_rampup_kimg (images, EDM/PFGM++): lr * images / (1000 lr_rampup_kimg), images = step * batch_size
    trained before this step, so EDM's first step has lr 0 (Adam's moments still start from it).
    """
    if config.lr_rampup_kimg:
        return config.lr * min(step * config.batch_size / (config.lr_rampup_kimg * 1000), 1.0)
    return config.lr * min((step + 1) / config.warmup, 1.0) if config.warmup else config.lr


def tensor_batches(data: Tensor, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Tensor]:
    """Endless batches of `batch_size` distinct rows of `data` (N_data, *S), drawn afresh each step.

    Each batch is a fresh random subset rather than a slice of an epoch's permutation, so the position
    in the data is the generator's state and nothing else (what makes resuming exact).
    """
    if batch_size > data.shape[0]:
        raise ValueError(f"batch_size {batch_size} exceeds the {data.shape[0]} rows of the data")
    while True:
        yield data[draw(torch.randperm, data.shape[0], generator=generator, device=data.device)[:batch_size]]


class _BF16Autocast:
    """Runs a network under bf16 autocast and hands float32 back to the (float32) physics."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            out = self.net(x, *args, **kwargs)
        return out.float()


def loss_network(loss_fn: Loss, net: nn.Module) -> nn.Module:
    """`net` (bare) as the loss calls it: a loss adapts a network to its contract through `adapt(net)`
    when it has one (PFGMppLoss: a field network as a denoiser); the module shares net's parameters."""
    adapt = getattr(loss_fn, "adapt", None)
    return adapt(net) if adapt is not None else net


def build_forward(net, *, amp: bool = False, compile: bool = False):
    """The callable the loss evaluates: `net` (as `loss_network` gives it, bare or DDP-wrapped),
    optionally compiled and autocast."""
    model = torch.compile(net) if compile else net
    return _BF16Autocast(model) if amp else model


def train_step(state: TrainState, forward, loss_fn: Loss, batch: Tensor, config: TrainConfig) -> dict:
    """One Adam step on `batch`: warm-up lr, backward, clip, update, EMA. Returns step, loss, grad_norm, lr.

    Checks run after the backward pass, so that under DDP every process reaches the gradient
    all-reduce before any of them raises (a NaN anywhere makes every process's gradient NaN).
    """
    lr = learning_rate(state.step, config)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(forward, batch, state.generator)
    loss.backward()
    max_norm = config.grad_clip if config.grad_clip is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(state.net.parameters(), max_norm)
    loss_value, norm_value = float(loss.detach()), float(grad_norm)
    if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
        raise DivergenceError(state.step + 1, loss_value, norm_value)
    state.optimizer.step()
    state.ema.update(state.net)
    state.step += 1
    return dict(step=state.step, loss=loss_value, grad_norm=norm_value, lr=lr)


def _prepare(batch: Tensor, config: TrainConfig, state: TrainState, device: torch.device) -> Tensor:
    batch = batch.to(device, non_blocking=True)
    return random_hflip(batch, state.generator) if config.flip else batch


def _batches(data: Tensor | Iterable[Tensor], config: TrainConfig, generator: torch.Generator) -> Iterator[Tensor]:
    return tensor_batches(data, config.batch_size, generator) if isinstance(data, Tensor) else iter(data)


def _trained_rows(loss_fn: Loss, batch: Tensor) -> int:
    """Rows the loss trains on (all processes together); a loss may say so through `trained_rows`."""
    count = getattr(loss_fn, "trained_rows", None)
    return count(batch.shape[0]) if count is not None else batch.shape[0]


def train(state: TrainState, loss_fn: Loss, data: Tensor | Iterable[Tensor], config: TrainConfig, *,
          forward=None, checkpoint_dir: str | Path | None = None, metadata: dict | None = None,
          progress: bool = True, on_step: Callable[[dict], None] | None = None,
          on_checkpoint: Callable[[Path], None] | None = None) -> list[dict]:
    """Train from `state.step` up to `config.steps`; returns the history, one dict per step.

    Args:
        loss_fn: `loss_fn(forward, batch, generator) -> scalar` (a `pfgm.training.losses` class).
        data: a tensor (N_data, *S), drawn from with `tensor_batches`, or an iterable of batches
            (the caller then owns its position when resuming).
        forward: what the loss calls; default `build_forward(loss_network(loss_fn, state.net), amp=...,
            compile=...)` (pass a DDP-wrapped one for data parallel, see `pfgm.training.distributed`).
        checkpoint_dir: where checkpoints go every `config.checkpoint_every` steps (None: nowhere).
        on_step: called with each record {step, loss, grad_norm, lr, images_per_s};
        on_checkpoint: called with each checkpoint's path.
    Raises:
        DivergenceError: on a non-finite loss or gradient norm; no checkpoint is written for it.
    """
    if forward is None:
        forward = build_forward(loss_network(loss_fn, state.net), amp=config.amp, compile=config.compile)
    device = next(state.net.parameters()).device
    batches, history = _batches(data, config, state.generator), []
    with tqdm(total=config.steps, initial=state.step, disable=not progress, desc="train", unit="step") as bar:
        while state.step < config.steps:
            start = time.perf_counter()
            batch = _prepare(next(batches), config, state, device)
            record = train_step(state, forward, loss_fn, batch, config)
            record["images_per_s"] = _trained_rows(loss_fn, batch) / (time.perf_counter() - start)
            history.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4g}", img_s=f"{record['images_per_s']:.1f}")
            if on_step is not None:
                on_step(record)
            if checkpoint_dir is not None and config.checkpoint_every and state.step % config.checkpoint_every == 0:
                path = save_checkpoint(checkpoint_path(checkpoint_dir, state.step), state, config=config,
                                       metadata=metadata)
                if on_checkpoint is not None:
                    on_checkpoint(path)
    return history
