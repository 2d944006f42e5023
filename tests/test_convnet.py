"""FieldConvNet: the (x, z) -> (B, N+1) contract, config round trip, locality, bad input."""
from __future__ import annotations

import json

import pytest
import torch

from pfgm.networks.convnet import FieldConvNet
from pfgm.training.checkpoint import NETWORKS

pytestmark = pytest.mark.usefixtures("single_thread")


def _small(**kw) -> FieldConvNet:
    return FieldConvNet(**{"data_shape": (1, 8, 8), "channels": 8, "blocks": 2, "embed_dim": 8, "groups": 4, **kw})


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 4, 6)])
def test_output_is_flattened_image_then_z_component(shape):
    torch.manual_seed(0)
    net = FieldConvNet(data_shape=shape, channels=8, blocks=2, embed_dim=8, groups=4)
    x, z = torch.randn(5, *shape), torch.rand(5) + 1e-3
    out = net(x, z)
    assert out.shape == (5, torch.Size(shape).numel() + 1)
    assert torch.isfinite(out).all()


def test_config_is_json_and_rebuilds_the_same_network():
    torch.manual_seed(0)
    net = _small()
    twin = NETWORKS["FieldConvNet"](**json.loads(json.dumps(net.config)))
    twin.load_state_dict(net.state_dict())
    x, z = torch.randn(4, 1, 8, 8), torch.rand(4)
    assert torch.equal(net(x, z), twin(x, z))


def test_rows_are_independent_and_z_matters():
    # Each sample's output depends on its own x and z only (GroupNorm, not BatchNorm), and z changes it.
    torch.manual_seed(0)
    net = _small()
    x = torch.randn(3, 1, 8, 8)
    z = torch.tensor([1e-3, 0.5, 20.0])
    together = net(x, z)
    alone = torch.cat([net(x[i:i + 1], z[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    same_x = net(x[:1].expand(2, -1, -1, -1), torch.tensor([1e-3, 20.0]))
    assert not torch.allclose(same_x[0], same_x[1])


def test_image_part_follows_a_translation_of_an_interior_pattern():
    # Convolutions are translation-equivariant away from the border: a pattern in the middle of a large
    # zero image, shifted by one pixel, gives the same output shifted by one pixel (blocks=1: receptive
    # field 7x7, which stays clear of the border). Fails for a network that mixes all pixels (an MLP).
    torch.manual_seed(0)
    net = FieldConvNet(data_shape=(1, 24, 24), channels=8, blocks=1, embed_dim=8, groups=1)
    x = torch.zeros(1, 1, 24, 24)
    x[0, 0, 9:13, 9:13] = torch.randn(4, 4)
    shifted = torch.roll(x, shifts=1, dims=3)
    z = torch.tensor([0.3])
    out = net(x, z)[:, :-1].reshape(1, 1, 24, 24)
    out_shifted = net(shifted, z)[:, :-1].reshape(1, 1, 24, 24)
    # GroupNorm(1 group) normalises over the whole image, which a one-pixel roll of a zero-padded
    # pattern leaves unchanged; compare the interior only.
    torch.testing.assert_close(torch.roll(out, 1, dims=3)[..., 4:20, 4:20], out_shifted[..., 4:20, 4:20],
                               rtol=1e-4, atol=1e-5)


def test_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        FieldConvNet(data_shape=(64,))
    with pytest.raises(ValueError, match="embedding"):
        FieldConvNet(data_shape=(1, 8, 8), embedding="fourier")
    with pytest.raises(ValueError, match="groups"):
        FieldConvNet(data_shape=(1, 8, 8), channels=12, groups=8)
    with pytest.raises(ValueError, match="expected x"):
        _small()(torch.randn(2, 1, 8, 7), torch.rand(2))
