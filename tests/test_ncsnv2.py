"""NCSNv2Small: the field-network contract, config round trip, its one conditioning route, InstanceNorm++."""
from __future__ import annotations

import json

import pytest
import torch

from pfgm.networks.ncsnv2 import InstanceNormPlus, NCSNv2Small

pytestmark = pytest.mark.usefixtures("single_thread")


def _small(**kw) -> NCSNv2Small:
    return NCSNv2Small(**{"data_shape": (1, 8, 8), "channels": 4, "dilations": [2], **kw})


@pytest.mark.parametrize("shape, dilations", [((1, 8, 8), [2]), ((3, 4, 6), []), ((1, 8, 8), [2, 4])])
def test_output_is_flattened_image_then_z_component(shape, dilations):
    torch.manual_seed(0)
    net = NCSNv2Small(data_shape=shape, channels=4, dilations=dilations)
    out = net(torch.randn(5, *shape), torch.rand(5) + 1e-3)
    assert out.shape == (5, torch.Size(shape).numel() + 1) and torch.isfinite(out).all()


def test_config_is_json_and_rebuilds_the_same_network():
    from pfgm.networks import ncsnv2

    torch.manual_seed(0)
    net = _small(embedding="raw")
    twin = ncsnv2.NCSNv2Small(**json.loads(json.dumps(net.config)))
    twin.load_state_dict(net.state_dict())
    x, z = torch.randn(4, 1, 8, 8), torch.randn(4)  # raw: any real scalar, e.g. EDM's ln(sigma) / 4
    assert torch.equal(net(x, z), twin(x, z))


def test_rows_are_independent_and_z_matters():
    torch.manual_seed(0)
    net = _small()
    x, z = torch.randn(3, 1, 8, 8), torch.tensor([1e-3, 0.5, 20.0])
    together = net(x, z)
    alone = torch.cat([net(x[i:i + 1], z[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    same_x = net(x[:1].expand(2, -1, -1, -1), torch.tensor([1e-3, 20.0]))
    assert not torch.allclose(same_x[0], same_x[1])


def test_z_reaches_the_network_only_through_the_first_convolution():
    # The weak conditioning: cut the input channel that holds z and the output no longer depends on z.
    torch.manual_seed(0)
    net = _small()
    with torch.no_grad():
        net.conv_in.weight[:, -1] = 0
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    out = net(x, torch.tensor([1e-3, 30.0]))
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)


def test_instance_norm_plus_keeps_what_instance_norm_erases():
    # Two images of constant channels differing only in their channel means: plain instance norm maps
    # both to zero; InstanceNorm++ (alpha != 0) keeps their means, standardised across channels.
    norm = InstanceNormPlus(3)
    x = torch.tensor([1.0, 2.0, 4.0])[None, :, None, None].expand(1, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(norm(x), torch.zeros_like(x))
        norm.alpha.fill_(1.0)
        expected = (torch.tensor([1.0, 2.0, 4.0]) - 7 / 3) / torch.tensor([1.0, 2.0, 4.0]).var(unbiased=False).add(
            1e-5).sqrt()
        torch.testing.assert_close(norm(x)[0, :, 0, 0], expected)


def test_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="even H and W"):
        NCSNv2Small(data_shape=(1, 7, 8))
    with pytest.raises(ValueError, match="embedding"):
        NCSNv2Small(data_shape=(1, 8, 8), embedding="positional")
    with pytest.raises(ValueError, match="channels >= 2"):
        NCSNv2Small(data_shape=(1, 8, 8), channels=1)
    with pytest.raises(ValueError, match="expected x"):
        _small()(torch.randn(2, 1, 8, 6), torch.rand(2))
