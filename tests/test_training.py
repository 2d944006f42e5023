"""The training loop: warm-up, flips, batches, clipping, EMA, AMP, callbacks, divergence."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from pfgm.data.store import random_hflip
from pfgm.networks.mlp import FieldMLP
from pfgm.training import (DivergenceError, PFGMLoss, PFGMppLoss, TrainConfig, create_state,
                           tensor_batches, train, train_step)
from pfgm.training.ema import EMA, DecaySchedule, HalfLifeSchedule
from pfgm.training.loop import build_forward, learning_rate


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def toy_data() -> torch.Tensor:
    """Two tight 2D clusters: a shrunken real data set."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-0.5, 0.5], [0.5, -0.5]])
    return centres[torch.arange(256) % 2] + 0.05 * torch.randn(256, 2, generator=generator)


def _state(config, *, shape=(2,), seed=0):
    torch.manual_seed(seed)
    net = FieldMLP(data_shape=shape, hidden=32, depth=2, embed_dim=8)
    return create_state(net, config, torch.Generator().manual_seed(seed + 1))


def test_learning_rate_warms_up_linearly():
    config = TrainConfig(steps=10, lr=1e-3, warmup=4)
    assert [learning_rate(s, config) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert learning_rate(0, TrainConfig(steps=1, lr=1e-3, warmup=0)) == 1e-3


def test_edm_lr_rampup_counts_images_and_starts_at_zero():
    # EDM: lr * min(cur_nimg / (1000 lr_rampup_kimg), 1), cur_nimg = images trained before the step.
    config = TrainConfig(steps=10, batch_size=4, lr=1e-3, warmup=0, lr_rampup_kimg=0.012)  # 12 images = 3 steps
    assert [learning_rate(s, config) for s in range(5)] == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3])
    cifar = TrainConfig(steps=1, batch_size=512, lr=1e-3, warmup=0, lr_rampup_kimg=10_000)
    assert learning_rate(19_531, cifar) < 1e-3 == learning_rate(19_532, cifar)  # 10 Mimg = 19,531.25 steps
    with pytest.raises(ValueError, match="train.lr_rampup_kimg"):
        TrainConfig(steps=1, warmup=5, lr_rampup_kimg=1.0)


def test_edm_ema_copies_first_then_ramps_up_to_its_half_life():
    # EDM: beta = 0.5 ** (B / max(min(halflife, ratio * cur_nimg), 1e-8)), cur_nimg = (n - 1) B at update n.
    schedule = HalfLifeSchedule(halflife_kimg=0.01, batch_size=4, rampup_ratio=0.5)  # half-life 10 images
    betas = [schedule(n) for n in range(1, 9)]
    ramp = [0.5 ** (4 / h) for h in (2, 4, 6, 8)]  # half-life = 0.5 * images seen: 2, 4, 6, 8 < 10
    assert betas == pytest.approx([0.0, *ramp, 0.5 ** 0.4, 0.5 ** 0.4, 0.5 ** 0.4], rel=1e-12)
    # without the ramp-up: the half-life from the first update on; at it, half of the weight is old
    plain = HalfLifeSchedule(halflife_kimg=0.01, batch_size=4, rampup_ratio=None)
    assert plain(1) == pytest.approx(0.5 ** 0.4) and plain(1) ** (10 / 4) == pytest.approx(0.5)
    # the published setting ends at 0.5 ** (512 / 500,000) per step, reached after 10 Mimg = 19,532 updates
    cifar = TrainConfig(steps=1, batch_size=512, ema_halflife_kimg=500).ema_schedule()
    assert cifar(19_533) == pytest.approx(0.5 ** (512 / 500_000)) and cifar(19_532) < cifar(19_533)
    assert isinstance(TrainConfig(steps=1).ema_schedule(), DecaySchedule)


def test_edm_ema_first_update_is_an_exact_copy():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, HalfLifeSchedule(halflife_kimg=500, batch_size=512))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.7).add_(0.1)
    assert ema.update(net) == 0.0
    for average, weights in zip(ema.module.parameters(), net.parameters()):
        assert torch.equal(average, weights)
    assert 0.0 < ema.update(net) < 1.0


def test_config_names_the_bad_key():
    with pytest.raises(ValueError, match="train.steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="train.grad_clip"):
        TrainConfig(steps=1, grad_clip=-1.0)


def test_a_config_is_read_by_name_from_any_section():
    config = TrainConfig(steps=7, batch_size=16, lr=2e-3, betas=(0.8, 0.9), grad_clip=None, flip=True)
    section = SimpleNamespace(**config.to_dict(), out="models/x", network="FieldMLP")  # betas as a list
    assert TrainConfig.from_attributes(section) == config
    with pytest.raises(ValueError, match=r"train\.lr must be a finite number > 0, got -1\.0"):
        TrainConfig.from_attributes(SimpleNamespace(**{**config.to_dict(), "lr": -1.0}))


def test_random_flip_flips_about_half_left_right(generator):
    images = torch.arange(64 * 6, dtype=torch.float32).reshape(64, 1, 2, 3)
    flipped = random_hflip(images, generator)
    is_flipped = (flipped == images.flip(-1)).flatten(1).all(dim=1)
    is_same = (flipped == images).flatten(1).all(dim=1)
    assert bool((is_flipped ^ is_same).all()) and 16 < int(is_flipped.sum()) < 48
    with pytest.raises(ValueError, match="image"):
        random_hflip(torch.zeros(4, 2), generator)


def test_tensor_batches_draw_distinct_rows_reproducibly():
    data = torch.arange(20.0)[:, None]
    first = next(tensor_batches(data, 8, torch.Generator().manual_seed(3)))
    again = next(tensor_batches(data, 8, torch.Generator().manual_seed(3)))
    assert torch.equal(first, again) and first.unique().numel() == 8
    with pytest.raises(ValueError, match="exceeds"):
        next(tensor_batches(data, 21))


def test_train_returns_history_and_calls_back(toy_data):
    config = TrainConfig(steps=5, batch_size=64, lr=1e-3, warmup=2)
    records = []
    history = train(_state(config), PFGMLoss(M=30, small_batch=16), toy_data, config, progress=False,
                    on_step=records.append)
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5] and records == history
    assert set(history[0]) == {"step", "loss", "grad_norm", "lr", "images_per_s"}
    assert history[0]["lr"] == pytest.approx(5e-4) and history[-1]["lr"] == pytest.approx(1e-3)


def test_training_reduces_the_pfgm_loss(toy_data):
    config = TrainConfig(steps=150, batch_size=128, lr=3e-3, warmup=10, ema_decay=0.9)
    history = train(_state(config), PFGMLoss(M=60, small_batch=64), toy_data, config, progress=False)
    first = sum(r["loss"] for r in history[:20]) / 20
    last = sum(r["loss"] for r in history[-20:]) / 20
    assert last < 0.5 * first


def test_ema_is_the_exponential_average_of_the_weights(toy_data):
    config = TrainConfig(steps=4, batch_size=32, lr=1e-2, warmup=0, ema_decay=0.6, ema_warmup=False)
    state = _state(config)
    expected = [p.detach().clone() for p in state.net.parameters()]  # the average starts at the initial weights
    snapshots = []
    train(state, PFGMLoss(M=30, small_batch=8), toy_data, config, progress=False,
          on_step=lambda r: snapshots.append([p.detach().clone() for p in state.net.parameters()]))
    for weights in snapshots:
        expected = [0.6 * e + 0.4 * w for e, w in zip(expected, weights)]
    for e, p in zip(expected, state.ema.module.parameters()):
        torch.testing.assert_close(p, e)


def _weight_on_initial(schedule: DecaySchedule, updates: int) -> float:
    """Run the EMA of a one-parameter network whose weight is 1 at step 0 and 0 afterwards."""
    net = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
    torch.nn.init.ones_(net.weight)
    ema = EMA(net, schedule)
    torch.nn.init.zeros_(net.weight)
    for _ in range(updates):
        ema.update(net)
    return float(ema.module.weight)


def test_ema_warmup_leaves_almost_nothing_on_the_initial_weights():
    # score_sde's ExponentialMovingAverage: decay_n = min(decay, (1 + n) / (10 + n)) at update n = 1, 2, ...
    # Within the warm-up the product telescopes to 10! (T+1)! / (T+10)!.
    for updates in (1, 5, 40):
        closed_form = math.factorial(10) * math.factorial(updates + 1) / math.factorial(updates + 10)
        assert _weight_on_initial(DecaySchedule(0.999), updates) == pytest.approx(closed_form, rel=1e-9)
    assert _weight_on_initial(DecaySchedule(0.999), 2500) < 1e-20
    # without the warm-up the default run keeps decay^T = 8% of its random initial weights
    assert _weight_on_initial(DecaySchedule(0.999, warmup=False), 2500) == pytest.approx(0.999 ** 2500, rel=1e-9)
    # past the warm-up the decay is capped: updates 1..3 with decay 0.3 use min(0.3, 2/11, 3/12, 4/13)
    assert _weight_on_initial(DecaySchedule(0.3), 3) == pytest.approx((2 / 11) * 0.25 * 0.3, rel=1e-12)


def test_ema_schedule_counts_updates_across_a_state_dict_round_trip():
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, DecaySchedule(0.99))
    for _ in range(3):
        ema.update(net)
    copy = EMA(torch.nn.Linear(2, 1), DecaySchedule(0.99))
    copy.load_state_dict(ema.state_dict())
    assert int(copy.num_updates) == 3 and copy.update(net) == pytest.approx(5 / 14)


def test_gradients_are_clipped_and_the_norm_reported_before_clipping(toy_data):
    config = TrainConfig(steps=1, batch_size=32, lr=1e-3, warmup=0, grad_clip=1e-4)
    state = _state(config)
    record = train_step(state, state.net, PFGMLoss(M=30, small_batch=8), toy_data[:32], config)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in state.net.parameters()]))
    assert record["grad_norm"] > 1e-4 and float(after) == pytest.approx(1e-4, rel=1e-3)


def test_bf16_autocast_training_runs_on_cpu(toy_data):
    config = TrainConfig(steps=3, batch_size=32, lr=1e-3, warmup=0, amp=True)
    state = _state(config)
    history = train(state, PFGMppLoss(D=4), toy_data, config, progress=False)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    assert build_forward(state.net, amp=True)(toy_data[:4], torch.rand(4)).dtype == torch.float32


def test_image_flips_and_batch_iterators(generator):
    images = torch.rand(6, 16, 1, 4, 4, generator=generator) * 2 - 1
    config = TrainConfig(steps=3, lr=1e-3, warmup=0, flip=True)
    state = _state(config, shape=(1, 4, 4))
    history = train(state, PFGMLoss(M=30, small_batch=4), iter(images), config, progress=False)
    assert len(history) == 3 and history[0]["images_per_s"] > 0


def test_non_finite_loss_raises_divergence_error_naming_the_step(toy_data):
    config = TrainConfig(steps=6, batch_size=16, lr=1e-3, warmup=0)
    pfgm_loss = PFGMLoss(M=30)

    def loss_fn(net, batch, generator):
        loss = pfgm_loss(net, batch, generator)
        return loss * float("nan") if state.step == 3 else loss

    state = _state(config)
    with pytest.raises(DivergenceError, match="step 4") as error:
        train(state, loss_fn, toy_data, config, progress=False)
    assert isinstance(error.value, RuntimeError) and error.value.step == 4 and state.step == 3
