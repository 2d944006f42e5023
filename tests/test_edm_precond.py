"""EDMPrecond around SongUNet: the preconditioning identity, config round trip, kwargs, labels, fp16."""
from __future__ import annotations

import json

import pytest
import torch

from pfgm.networks.edm import EDMPrecond, edm_coefficients, kwargs_from_official
from pfgm.networks.songunet import SongUNet

TINY = dict(data_shape=[3, 8, 8], model_channels=8, channel_mult=[1, 2], num_blocks=1,
            attn_resolutions=[4], dropout=0.0)

pytestmark = pytest.mark.usefixtures("single_thread")


def perturbed(net: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p += 0.05 * torch.randn(p.shape, generator=generator)
    return net


@pytest.fixture(scope="module")
def net() -> EDMPrecond:
    torch.manual_seed(0)
    return perturbed(EDMPrecond(**TINY, augment_dim=9, pfgmpp=True, D=128)).eval()


def test_denoiser_is_c_skip_x_plus_c_out_times_the_raw_network(net):
    sigma = torch.tensor([0.002, 0.5, 3.0, 80.0])
    x, augment = torch.randn(4, 3, 8, 8) * 2, torch.randn(4, 9)
    sd2 = 0.25  # sigma_data^2: the coefficients written out from EDM's table 1
    c_skip, c_out = sd2 / (sigma ** 2 + sd2), sigma * 0.5 / (sigma ** 2 + sd2).sqrt()
    c_in, c_noise = 1 / (sigma ** 2 + sd2).sqrt(), sigma.log() / 4
    with torch.no_grad():
        raw = net.model(c_in.reshape(-1, 1, 1, 1) * x, c_noise, class_labels=None, augment_labels=augment)
        denoised = net(x, sigma, augment_labels=augment)
    expected = c_skip.reshape(-1, 1, 1, 1) * x + c_out.reshape(-1, 1, 1, 1) * raw
    torch.testing.assert_close(denoised, expected, atol=1e-6, rtol=1e-6)
    assert float(raw.abs().mean()) > 0.1  # the raw output is not negligible, so the identity is a real check
    torch.testing.assert_close(torch.stack(edm_coefficients(sigma)), torch.stack([c_skip, c_out, c_in, c_noise]))


def test_scalar_sigma_and_vanishing_noise(net):
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        # A scalar broadcasts (as in EDM, the embedding then has one row: equal up to float rounding).
        torch.testing.assert_close(net(x, 1.5), net(x, torch.full((2,), 1.5)), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(net(x, torch.full((2,), 1e-6)), x, atol=1e-5, rtol=0)  # D -> x as sigma -> 0
        assert net(x.double(), 1.5).dtype == torch.float32  # EDM: the denoiser computes in float32


def test_config_rebuilds_an_identical_network():
    torch.manual_seed(3)
    original = EDMPrecond(**TINY, label_dim=2, sigma_data=0.6, augment_dim=9, embedding_type="fourier",
                          channel_mult_noise=2, encoder_type="residual", resample_filter=(1, 3, 3, 1),
                          pfgmpp=True, D=2048)
    config = json.loads(json.dumps(original.config))  # our checkpoint stores it as a JSON string
    assert config == original.config and config["sigma_max"] == float("inf") and config["D"] == 2048
    assert set(SongUNet(img_resolution=8, in_channels=1, out_channels=1).config) - set(config) == {
        "img_resolution", "in_channels", "out_channels"}  # every backbone argument is recorded (EDMPrecond
    # sets these three from data_shape)
    torch.manual_seed(3)
    rebuilt = EDMPrecond(**config)
    assert rebuilt.config == original.config
    a, b = original.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (rebuilt.D, rebuilt.pfgmpp, rebuilt.N, rebuilt.sigma_data) == (2048, True, 3 * 8 * 8, 0.6)


def test_official_kwargs_map_to_data_shape_and_edms_attributes_stay():
    official = dict(img_resolution=8, img_channels=3, label_dim=0, model_channels=8, channel_mult=[1, 2])
    kwargs = kwargs_from_official(official)
    assert kwargs == dict(data_shape=[3, 8, 8], label_dim=0, model_channels=8, channel_mult=[1, 2])
    net = EDMPrecond(**kwargs, num_blocks=1, attn_resolutions=[4])
    assert (net.img_channels, net.img_resolution, net.data_shape) == (3, 8, (3, 8, 8))
    with pytest.raises(ValueError, match="img_channels"):
        kwargs_from_official(dict(img_resolution=8))
    with pytest.raises(ValueError, match="square images"):
        EDMPrecond(data_shape=[3, 8, 4])


def test_pfgmpp_and_D_do_not_change_the_network():
    torch.manual_seed(0)
    plain = EDMPrecond(**TINY)
    torch.manual_seed(0)
    pfgmpp = EDMPrecond(**TINY, pfgmpp=True, D=2048)
    assert all(torch.equal(u, v) for u, v in zip(plain.state_dict().values(), pfgmpp.state_dict().values()))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x, 0.7), pfgmpp.eval()(x, 0.7))


def test_bad_model_type_and_unknown_kwargs_are_refused_by_name():
    with pytest.raises(ValueError, match=r"model_type 'DhariwalUNet'; known: \['SongUNet'\]"):
        EDMPrecond(**TINY, model_type="DhariwalUNet")
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['nf'\].*channel_mult_noise"):
        EDMPrecond(**TINY, nf=16)
    with pytest.raises(TypeError, match=r"\['in_channels'\].*sets"):
        EDMPrecond(**TINY, in_channels=3)


def test_missing_class_labels_mean_zeros_and_given_ones_condition():
    torch.manual_seed(0)
    net = perturbed(EDMPrecond(**TINY, label_dim=4)).eval()
    x, sigma = torch.randn(3, 3, 8, 8), torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        assert torch.equal(net(x, sigma), net(x, sigma, torch.zeros(3, 4)))
        assert float((net(x, sigma, torch.eye(4)[:3]) - net(x, sigma)).abs().max()) > 1e-3


def test_use_fp16_keeps_float32_on_cpu():
    torch.manual_seed(0)
    net = perturbed(EDMPrecond(**TINY, use_fp16=True)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x, 0.5), net(x, 0.5, force_fp32=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 runs on CUDA only")
def test_use_fp16_runs_the_backbone_in_half_precision_on_cuda():
    torch.manual_seed(0)
    net = perturbed(EDMPrecond(**TINY, use_fp16=True)).eval().cuda()
    x = torch.randn(2, 3, 8, 8, device="cuda")
    with torch.no_grad():
        half, full = net(x, 0.5), net(x, 0.5, force_fp32=True)
    assert half.dtype == torch.float32 and not torch.equal(half, full)
    torch.testing.assert_close(half, full, atol=5e-3, rtol=5e-3)
