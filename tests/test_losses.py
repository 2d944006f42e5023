"""PFGMLoss and PFGMppLoss against hand computations with the same random draws."""
from __future__ import annotations

import math

import pytest
import torch

from pfgm import pfgmpp
from pfgm.field import normalized_field
from pfgm.networks.edm import EDMPrecond, FieldDenoiser, as_denoiser, edm_coefficients, precondition
from pfgm.networks.mlp import FieldMLP
from pfgm.perturb import perturb
from pfgm.training.augment import EDM_CIFAR10_KWARGS, AugmentPipe
from pfgm.training.loop import loss_network
from pfgm.training.losses import PFGMLoss, PFGMppLoss, shard_rows


pytestmark = pytest.mark.usefixtures("single_thread")


def _batch(rows=16, shape=(1, 2, 2), seed=0):
    return torch.rand(rows, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Recorder:
    """A network that records its inputs and returns a fixed function of them."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x, z):
        self.calls.append((x, z))
        return self.fn(x, z)


def test_pfgm_loss_matches_hand_computation():
    batch = _batch()
    net = FieldMLP(data_shape=(1, 2, 2), hidden=16, depth=1, embed_dim=8)
    loss = PFGMLoss(M=40, small_batch=4)(net, batch, torch.Generator().manual_seed(5))
    x, z = perturb(batch[:4], M=40, generator=torch.Generator().manual_seed(5))
    z = z.clamp_min(1e-10)
    target = normalized_field(x, z, batch)  # every row of the batch is a charge
    expected = 0.5 * (net(x, z) - target).square().sum(dim=1).mean()
    torch.testing.assert_close(loss, expected)


def test_pfgm_loss_trains_only_the_small_batch_with_positive_z():
    batch = _batch()
    net = Recorder(lambda x, z: torch.zeros(x.shape[0], 5))
    PFGMLoss(M=40, small_batch=6)(net, batch, torch.Generator().manual_seed(0))
    (x, z), = net.calls
    assert x.shape == (6, 1, 2, 2) and z.shape == (6,) and bool((z >= 1e-10).all())


def test_pfgm_loss_is_zero_for_the_exact_target_and_mean_is_the_official_reduce_mean():
    batch = _batch()
    exact = PFGMLoss(M=40, small_batch=8)(lambda x, z: normalized_field(x, z, batch), batch,
                                          torch.Generator().manual_seed(1))
    assert float(exact) < 1e-10
    zero_net = lambda x, z: torch.zeros(x.shape[0], 5)  # noqa: E731
    total = PFGMLoss(M=40, small_batch=8, reduce="sum")(zero_net, batch, torch.Generator().manual_seed(1))
    mean = PFGMLoss(M=40, small_batch=8, reduce="mean")(zero_net, batch, torch.Generator().manual_seed(1))
    # score_sde's reduce_op: 0.5 * torch.sum for "sum", but torch.mean (no 1/2) for reduce_mean (LSUN)
    torch.testing.assert_close(mean, 2 * total / 5)


@pytest.mark.parametrize("make_loss", [lambda **kw: PFGMLoss(M=40, small_batch=8, **kw),
                                       lambda **kw: PFGMppLoss(D=3, **kw)])
def test_shards_average_to_the_whole_batch_loss_and_gradient(make_loss):
    batch = _batch(rows=8)
    torch.manual_seed(0)
    net = FieldMLP(data_shape=(1, 2, 2), hidden=16, depth=1, embed_dim=8)

    def loss_and_grad(loss_fn):
        net.zero_grad()
        loss = loss_fn(loss_network(loss_fn, net), batch, torch.Generator().manual_seed(3))
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in net.parameters()])

    whole = loss_and_grad(make_loss())
    shards = [loss_and_grad(make_loss(rank=r, world_size=2)) for r in range(2)]
    torch.testing.assert_close((shards[0][0] + shards[1][0]) / 2, whole[0])
    torch.testing.assert_close((shards[0][1] + shards[1][1]) / 2, whole[1])


def test_shard_rows_validates():
    assert shard_rows(8, 1, 2) == slice(4, 8)
    with pytest.raises(ValueError, match="divide evenly"):
        shard_rows(7, 0, 2)
    with pytest.raises(ValueError, match="rank"):
        shard_rows(8, 2, 2)
    with pytest.raises(ValueError, match="reduce"):
        PFGMLoss(M=3, reduce="max")


def test_pfgmpp_loss_matches_hand_computation():
    batch = _batch()
    net = FieldMLP(data_shape=(1, 2, 2), hidden=16, depth=1, embed_dim=8)
    loss_fn = PFGMppLoss(D=7)
    loss = loss_fn(loss_fn.adapt(net), batch, torch.Generator().manual_seed(9))
    generator = torch.Generator().manual_seed(9)
    sigma = pfgmpp.sample_sigma(16, generator=generator)
    x = pfgmpp.perturb(batch, sigma, D=7, generator=generator)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma)
    raw = net(c_in[:, None, None, None] * x, c_noise)[:, :4].reshape(x.shape)
    denoised = c_skip[:, None, None, None] * x + c_out[:, None, None, None] * raw
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    expected = (weight * (denoised - batch).square().flatten(1).sum(dim=1)).mean()
    torch.testing.assert_close(loss, expected)


def test_edm_weight_is_one_over_c_out_squared_and_denoiser_is_identity_at_zero_noise():
    sigma = torch.logspace(-3, 2, 11)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma)
    torch.testing.assert_close((sigma ** 2 + 0.25) / (sigma * 0.5) ** 2 * c_out ** 2, torch.ones(11))
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    x = torch.randn(3, 2)
    denoised = precondition(lambda x, z: torch.ones(x.shape[0], 3), x, torch.full((3,), 1e-8))
    torch.testing.assert_close(denoised, x, atol=1e-7, rtol=0)


def test_pfgmpp_loss_ignores_the_z_component():
    batch = _batch(rows=4, shape=(3,))
    net = FieldMLP(data_shape=(3,), hidden=8, depth=1, embed_dim=4)
    PFGMppLoss(D=2)(FieldDenoiser(net), batch, torch.Generator().manual_seed(0)).backward()
    assert float(net.output.weight.grad[-1].abs().sum()) == 0.0
    assert float(net.output.bias.grad[-1].abs()) == 0.0
    assert math.isfinite(float(net.output.weight.grad.abs().sum()))


# ---------------------------------------------------------------------------------------------------------
# The denoiser contract: EDMPrecond as it is, field networks through FieldDenoiser; EDM's augmentation

TINY_EDM = dict(data_shape=[3, 8, 8], model_channels=8, channel_mult=[1, 2], num_blocks=1,
                attn_resolutions=[4], dropout=0.0)


def _edm(**changes) -> EDMPrecond:
    torch.manual_seed(0)
    net = EDMPrecond(**{**TINY_EDM, **changes})
    with torch.no_grad():  # SongUNet's zero-initialised output layer would hide the inputs' effect
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return net


def test_as_denoiser_keeps_denoisers_and_wraps_field_networks():
    net = FieldMLP(data_shape=(1, 2, 2), hidden=8, depth=1, embed_dim=4)
    wrapped = as_denoiser(net)
    x, sigma = _batch(rows=3), torch.tensor([0.1, 1.0, 10.0])
    assert isinstance(wrapped, FieldDenoiser) and list(wrapped.parameters()) == list(net.parameters())
    torch.testing.assert_close(wrapped(x, sigma), precondition(net, x, sigma), rtol=0, atol=0)
    assert as_denoiser(wrapped) is wrapped and as_denoiser(edm := _edm()) is edm
    with pytest.raises(ValueError, match="augmentation labels"):
        wrapped(x, sigma, augment_labels=torch.zeros(3, 9))


def test_pfgmpp_loss_with_augmentation_matches_hand_computation():
    batch = _batch(rows=6, shape=(3, 8, 8))
    pipe = AugmentPipe(p=0.5, **EDM_CIFAR10_KWARGS)
    net = _edm(augment_dim=9).eval()
    loss_fn = PFGMppLoss(D=16, augment=pipe)
    loss = loss_fn(loss_fn.adapt(net), batch, torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)  # the same draws, in the loss's order
    y, labels = pipe(batch, generator)
    sigma = pfgmpp.sample_sigma(6, generator=generator)
    x = pfgmpp.perturb(y, sigma, D=16, generator=generator)
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    expected = (weight * (net(x, sigma, augment_labels=labels) - y).square().flatten(1).sum(dim=1)).mean()
    assert bool((labels != 0).any())  # some images were augmented: the check below has teeth
    torch.testing.assert_close(loss, expected)


def test_augmentation_labels_reach_the_networks_map_augment():
    # If the loss dropped the labels, map_augment would take no part in the loss and get no gradient.
    net = _edm(augment_dim=9)
    loss_fn = PFGMppLoss(D=16, augment=AugmentPipe(p=1.0, **EDM_CIFAR10_KWARGS))
    loss_fn(loss_fn.adapt(net), _batch(rows=4, shape=(3, 8, 8)), torch.Generator().manual_seed(0)).backward()
    grad = net.model.map_augment.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert int((grad.abs().sum(dim=0) > 0).sum()) >= 5  # most of the 9 label entries were used


def test_adapt_refuses_a_network_that_cannot_take_the_labels():
    pipe = AugmentPipe(p=0.12, **EDM_CIFAR10_KWARGS)
    for net in (_edm(), _edm(augment_dim=4), FieldMLP(data_shape=(3, 8, 8), hidden=8, depth=1, embed_dim=4)):
        with pytest.raises(ValueError, match="augment_dim=9"):
            PFGMppLoss(D=4, augment=pipe).adapt(net)
    assert PFGMppLoss(D=4, augment=pipe).adapt(edm := _edm(augment_dim=9)) is edm
