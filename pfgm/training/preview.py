"""Preview samples of a network during training: a fixed, cheap sample of its EMA weights.

The sampler is pfgm.sampling's, with its preview settings (pfgm.sampling.preview_settings), so a
preview shows what the evaluation stage would draw, only coarser. Drawing one must not disturb
training: the draws come from their own seeded generator, under a forked global RNG, with the EMA
network in eval mode (dropout would otherwise draw from the global RNG that checkpoints restore).

Not imported by pfgm.training's __init__: pfgm.sampling itself imports pfgm.training.checkpoint.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from pfgm.sampling import TrainedModel, preview_settings, sampler_for
from pfgm.training.state import TrainState

#: Samples per preview: a grid of images, or a scatter of points.
SAMPLE_IMAGES, SAMPLE_POINTS = 16, 512


def ema_samples(net: nn.Module, hp: dict, objective: str, shape: tuple[int, ...], n: int,
                generator: torch.Generator) -> Tensor:
    """n samples (n, *S) of `net`, cheaply (pfgm.sampling.preview_settings: PFGM Euler 20 steps from
    z_max to 1e-3, prior clipped to upper_norm; PFGM++ Heun, 10 steps). Draws only from `generator`."""
    model = TrainedModel(net=net, shape=shape, objective=objective, hyperparameters=hp)
    sampler = sampler_for(model, preview_settings(objective))
    return sampler.solve(sampler.prior(n, generator)).samples


def make_sampler(state: TrainState, hp: dict, objective: str, manifest: dict, seed: int) -> Callable[[], Tensor]:
    """A function drawing the same set of samples (n, *S) of state's EMA network at each call, n SAMPLE_IMAGES
    for images and SAMPLE_POINTS for points (manifest: kind, shape); training's random streams are left
    untouched."""
    shape = tuple(manifest["shape"])
    n = SAMPLE_IMAGES if manifest["kind"] == "image" else SAMPLE_POINTS

    def draw() -> Tensor:
        net = state.ema.module
        device = next(net.parameters()).device
        was_training = net.training
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            net.eval()  # no dropout: it would draw from the global RNG the checkpoint restores
            try:
                generator = torch.Generator(device=device).manual_seed(seed)
                return ema_samples(net, hp, objective, shape, n, generator)
            finally:
                net.train(was_training)

    return draw
