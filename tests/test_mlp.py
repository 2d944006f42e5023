"""FieldMLP: the (x, z) -> (B, N+1) contract, config round trip, embeddings."""
from __future__ import annotations

import json

import pytest
import torch

from pfgm.networks.mlp import FieldMLP


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8), (3, 2, 5)])
@pytest.mark.parametrize("embedding", ["positional", "log"])
def test_output_shape_for_any_data_shape(shape, embedding):
    net = FieldMLP(data_shape=shape, hidden=16, depth=2, embed_dim=8, embedding=embedding)
    x, z = torch.randn(5, *shape), torch.rand(5) + 1e-3
    out = net(x, z)
    n = torch.Size(shape).numel()
    assert out.shape == (5, n + 1)
    assert torch.isfinite(out).all()


def test_config_is_json_and_rebuilds_the_same_network():
    torch.manual_seed(0)
    net = FieldMLP(data_shape=(1, 8, 8), hidden=32, depth=3, embed_dim=16)
    config = json.loads(json.dumps(net.config))
    twin = FieldMLP(**config)
    twin.load_state_dict(net.state_dict())
    x, z = torch.randn(4, 1, 8, 8), torch.rand(4)
    assert torch.equal(net(x, z), twin(x, z))


def test_output_depends_on_z():
    torch.manual_seed(0)
    net = FieldMLP(data_shape=(2,), hidden=16, depth=1, embed_dim=8, embedding="log")
    x = torch.randn(1, 2).expand(2, 2)
    out = net(x, torch.tensor([1e-3, 1.0]))
    assert not torch.allclose(out[0], out[1])


def test_positional_embedding_accepts_negative_conditioning():
    # Under EDM preconditioning the network is called with c_noise = ln(sigma)/4 < 0 for sigma < 1.
    net = FieldMLP(data_shape=(3,), hidden=8, depth=1, embed_dim=8)
    assert torch.isfinite(net(torch.randn(2, 3), torch.tensor([-1.5, 0.3]))).all()


def test_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="embedding"):
        FieldMLP(data_shape=(2,), embedding="fourier")
    with pytest.raises(ValueError, match="embed_dim"):
        FieldMLP(data_shape=(2,), embed_dim=7)
    net = FieldMLP(data_shape=(2,), hidden=8, depth=1, embed_dim=4)
    with pytest.raises(ValueError, match="expected x"):
        net(torch.randn(3, 4), torch.rand(3))


def test_bf16_autocast_runs_on_cpu():
    net = FieldMLP(data_shape=(2,), hidden=16, depth=2, embed_dim=8)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = net(torch.randn(4, 2), torch.rand(4))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
