"""pfgm.training.preview: the fixed sample of the EMA network drawn during training, leaving training alone."""
from __future__ import annotations

import pytest
import torch

from pfgm.networks.mlp import FieldMLP
from pfgm.perturb import hyperparameters
from pfgm.training import TrainConfig, create_state
from pfgm.training.preview import SAMPLE_IMAGES, SAMPLE_POINTS, make_sampler

pytestmark = pytest.mark.usefixtures("single_thread")

POINTS = dict(name="moons", kind="points", shape=[2])


def _state():
    torch.manual_seed(0)
    net = FieldMLP(data_shape=[2], hidden=16, depth=1, embed_dim=8)
    return create_state(net, TrainConfig(steps=1), torch.Generator().manual_seed(1))


def _hp(objective: str) -> dict:
    hp = hyperparameters(torch.randn(64, 2, generator=torch.Generator().manual_seed(0)))
    return {**hp, "gamma": 5.0} if objective == "pfgm" else {**hp, "D": 4}


@pytest.mark.parametrize("objective", ["pfgm", "pfgmpp"])
def test_the_preview_is_the_same_sample_each_time_and_leaves_training_alone(objective):
    state = _state()
    modes = []
    state.ema.module.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    state.ema.module.train()
    draw = make_sampler(state, _hp(objective), objective, POINTS, seed=3)
    rng, training_generator = torch.get_rng_state(), state.generator.get_state()
    first = draw()
    assert first.shape == (SAMPLE_POINTS, 2) and bool(torch.isfinite(first).all())
    assert torch.equal(draw(), first)
    assert modes and not any(modes)  # sampled in eval mode, then put back in training mode
    assert state.ema.module.training
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(state.generator.get_state(), training_generator)
    assert not torch.equal(make_sampler(state, _hp(objective), objective, POINTS, seed=4)(), first)


def test_images_get_a_small_grid():
    state = _state()
    image_like = dict(name="folder", kind="image", shape=[2])  # the count follows the kind, not the shape
    assert make_sampler(state, _hp("pfgm"), "pfgm", image_like, seed=0)().shape == (SAMPLE_IMAGES, 2)
