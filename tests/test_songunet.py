"""EDM's SongUNet (NCSN++ / DDPM++): official fixtures, full-size layouts, kwargs, variants, layers."""
from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from official import read_edm_tsv
from pfgm.networks.edm import EDMPrecond, kwargs_from_official
from pfgm.networks.songunet import Conv2d, PositionalEmbedding, SongUNet, weight_init

CONFIGS = ("ncsnpp", "ddpmpp")
# Published full-size CIFAR-10 counts (shared/reference/edm/README.md).
FULL_SIZE = {"ncsnpp": (56_397_827, 432), "ddpmpp": (55_733_891, 425)}
# NVlabs/edm training/networks.py SongUNet.__init__: every keyword and its default.
OFFICIAL_DEFAULTS = dict(
    label_dim=0, augment_dim=0, model_channels=128, channel_mult=[1, 2, 2, 2], channel_mult_emb=4,
    num_blocks=4, attn_resolutions=[16], dropout=0.10, label_dropout=0, embedding_type="positional",
    channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=[1, 1],
)  # fmt: skip
TINY = dict(img_resolution=8, in_channels=2, out_channels=2, model_channels=8, channel_mult=[1, 2, 2],
            num_blocks=1, attn_resolutions=[4], dropout=0.0)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def configs(edm_ref: Path) -> dict[str, dict]:
    return {name: json.loads((edm_ref / f"{name}_config.json").read_text()) for name in CONFIGS}


def fixture_network(edm_ref: Path, config: dict, name: str) -> EDMPrecond:
    net = EDMPrecond(**kwargs_from_official(config["edmprecond_kwargs"])).eval()
    net.load_state_dict(torch.load(edm_ref / f"{name}_state_dict.pth", weights_only=True), strict=True)
    return net


def perturbed(net: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Adds 0.05 N(0, 1) to every parameter, as the fixture does, so that no branch starts near zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p += 0.05 * torch.randn(p.shape, generator=generator)
    return net


# ---------------------------------------------------------------------------------------------------------
# Official fixtures


@pytest.mark.parametrize("name", CONFIGS)
def test_fixture_reproduces_official_raw_output_bitwise(edm_ref, configs, name):
    net, io = fixture_network(edm_ref, configs[name], name), torch.load(edm_ref / f"{name}_io.pt", weights_only=True)
    with torch.no_grad():
        F_x = net.model(io["c_in"].reshape(-1, 1, 1, 1) * io["x"], io["c_noise"].flatten(), class_labels=None,
                        augment_labels=io["augment_labels"])
    assert torch.equal(F_x, io["F_x"]), f"max |diff| {float((F_x - io['F_x']).abs().max())}"


@pytest.mark.parametrize("name", CONFIGS)
def test_fixture_reproduces_official_denoiser(edm_ref, configs, name):
    net, io = fixture_network(edm_ref, configs[name], name), torch.load(edm_ref / f"{name}_io.pt", weights_only=True)
    with torch.no_grad():
        D_x = net(io["x"], io["sigma"], augment_labels=io["augment_labels"])
        D_x_noaug = net(io["x"], io["sigma"])
    # Not bitwise on every CPU: the fixture machine's float32 sqrt(9.25) (sigma = 3) is one ulp below the
    # correctly rounded value this machine's torch gives, for the official code as for ours.
    torch.testing.assert_close(D_x, io["D_x"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(D_x_noaug, io["D_x_noaug"], atol=1e-5, rtol=1e-5)
    # Augmentation conditioning acts on row 1 only (the only nonzero augment labels).
    assert torch.equal(D_x[[0, 2, 3]], D_x_noaug[[0, 2, 3]])
    assert float((D_x[1] - D_x_noaug[1]).abs().max()) > 1e-3


@pytest.mark.parametrize("name", CONFIGS)
def test_same_seed_gives_the_official_initialisation(edm_ref, configs, name):
    """The fixture is official init (seed 0) + 0.05 N(0, 1) (generator seed 1): undo the noise, compare."""
    torch.manual_seed(0)
    fresh = EDMPrecond(**kwargs_from_official(configs[name]["edmprecond_kwargs"])).state_dict()
    official = torch.load(edm_ref / f"{name}_state_dict.pth", weights_only=True)
    generator = torch.Generator().manual_seed(1)
    for key, value in official.items():
        if key.endswith(("resample_filter", "freqs")):  # buffers: left as constructed
            assert torch.equal(fresh[key], value), key
        else:
            noise = 0.05 * torch.randn(value.shape, generator=generator)
            torch.testing.assert_close(fresh[key], value - noise, atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize("name", CONFIGS)
def test_full_size_cifar10_layout_matches_the_official_listing(edm_ref, configs, name):
    with torch.device("meta"):
        net = EDMPrecond(**kwargs_from_official(configs[name]["cifar10_full_size"]["edmprecond_kwargs"]))
    rows, total = read_edm_tsv(edm_ref / f"{name}_cifar10_state_dict.tsv")
    ours = [(k, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in net.state_dict().items()]
    assert ours == rows
    n_params = sum(p.numel() for p in net.parameters())
    assert (n_params, len(ours)) == (total, FULL_SIZE[name][1]) and total == FULL_SIZE[name][0]


# ---------------------------------------------------------------------------------------------------------
# Constructor


def test_every_official_kwarg_is_accepted_with_edm_defaults():
    defaults = {name: p.default for name, p in inspect.signature(SongUNet).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()} == OFFICIAL_DEFAULTS
    explicit = dict(label_dim=3, augment_dim=9, model_channels=8, channel_mult=[1, 2], channel_mult_emb=2,
                    num_blocks=1, attn_resolutions=[4], dropout=0.1, label_dropout=0.2, embedding_type="fourier",
                    channel_mult_noise=2, encoder_type="residual", decoder_type="skip", resample_filter=[1, 3, 3, 1])
    net = SongUNet(img_resolution=8, in_channels=3, out_channels=4, **explicit)
    assert net.config == dict(img_resolution=8, in_channels=3, out_channels=4, **explicit)
    out = net.eval()(torch.randn(2, 3, 8, 8), torch.randn(2), torch.eye(3)[:2], augment_labels=torch.randn(2, 9))
    assert out.shape == (2, 4, 8, 8)
    rebuilt = SongUNet(**json.loads(json.dumps(net.config)))
    layout = [(k, v.shape) for k, v in net.state_dict().items()]
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == layout


def test_unknown_or_invalid_kwargs_are_refused_by_name():
    with pytest.raises(TypeError, match="num_res_blocks"):
        SongUNet(**TINY, num_res_blocks=2)
    for key, value in (("embedding_type", "sinusoidal"), ("encoder_type", "fancy"), ("decoder_type", "residual")):
        with pytest.raises(ValueError, match=rf"{key} must be one of .*'{value}'"):
            SongUNet(**{**TINY, key: value})
    with pytest.raises(ValueError, match="img_resolution"):
        SongUNet(**{**TINY, "img_resolution": 6})


# ---------------------------------------------------------------------------------------------------------
# Variants: every configuration runs, and every module of it matters


VARIANTS = [("standard", "standard"), ("residual", "standard"), ("skip", "standard"), ("standard", "skip"),
            ("skip", "skip"), ("residual", "skip")]


@pytest.mark.parametrize(("encoder_type", "decoder_type"), VARIANTS)
def test_variant_runs_and_every_parameter_gets_a_gradient(encoder_type, decoder_type):
    torch.manual_seed(0)
    net = perturbed(SongUNet(**TINY, encoder_type=encoder_type, decoder_type=decoder_type, augment_dim=3,
                             embedding_type="fourier", channel_mult_noise=2, resample_filter=[1, 3, 3, 1]))
    out = net(torch.randn(2, 2, 8, 8), torch.randn(2), None, augment_labels=torch.randn(2, 3))
    assert out.shape == (2, 2, 8, 8)
    out.square().sum().backward()
    silent = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().gt(0).any()]
    assert not silent, f"parameters without gradient: {silent}"


def test_skip_variants_have_edm_aux_layers():
    enc = SongUNet(**TINY, encoder_type="skip").enc
    assert [k for k in enc if "aux" in k] == ["4x4_aux_down", "4x4_aux_skip", "2x2_aux_down", "2x2_aux_skip"]
    dec = SongUNet(**TINY, decoder_type="skip").dec
    assert [k for k in dec if "aux" in k] == ["2x2_aux_norm", "2x2_aux_conv", "4x4_aux_up", "4x4_aux_norm",
                                              "4x4_aux_conv", "8x8_aux_up", "8x8_aux_norm", "8x8_aux_conv"]


def test_class_labels_condition_the_output_and_label_dropout_drops_them():
    torch.manual_seed(0)
    net = perturbed(SongUNet(**TINY, label_dim=3, label_dropout=1.0))
    x, noise = torch.randn(3, 2, 8, 8), torch.randn(3)
    labels, zeros = torch.eye(3), torch.zeros(3, 3)
    with torch.no_grad():
        net.eval()
        assert float((net(x, noise, labels) - net(x, noise, labels.roll(1, dims=0))).abs().max()) > 1e-3
        net.train()  # label_dropout = 1 drops every row: as if unconditional
        assert torch.equal(net(x, noise, labels), net(x, noise, zeros))
    with pytest.raises(ValueError, match="class_labels"):
        net(x, noise, None)


def test_one_hot_labels_enter_scaled_to_unit_mean_square():
    """EDM feeds map_label the labels times sqrt(label_dim): a one-hot row then has mean square 1."""
    net, seen = SongUNet(**TINY, label_dim=5).eval(), []
    net.map_label.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    labels = torch.eye(5)[[1, 4]]
    net(torch.randn(2, 2, 8, 8), torch.randn(2), labels)
    torch.testing.assert_close(seen[0], labels * math.sqrt(5))
    torch.testing.assert_close(seen[0].square().mean(dim=1), torch.ones(2))


def test_augment_labels_condition_the_output_and_none_means_zero():
    torch.manual_seed(0)
    net = perturbed(SongUNet(**TINY, augment_dim=4)).eval()
    x, noise, augment = torch.randn(2, 2, 8, 8), torch.randn(2), torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(net(x, noise, None), net(x, noise, None, augment_labels=torch.zeros(2, 4)))
        assert float((net(x, noise, None, augment) - net(x, noise, None)).abs().max()) > 1e-3


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    net = perturbed(SongUNet(**{**TINY, "dropout": 0.5}))
    x, noise = torch.randn(2, 2, 8, 8), torch.randn(2)
    with torch.no_grad():
        assert not torch.equal(net.train()(x, noise, None), net(x, noise, None))
        assert torch.equal(net.eval()(x, noise, None), net(x, noise, None))


# ---------------------------------------------------------------------------------------------------------
# Layers against analytic facts


def test_resampling_convs_are_box_filters_for_the_ddpmpp_filter():
    x = torch.randn(2, 3, 8, 8)
    down, up = (Conv2d(3, 3, kernel=0, down=True), Conv2d(3, 3, kernel=0, up=True))
    torch.testing.assert_close(down(x), F.avg_pool2d(x, 2))
    assert torch.equal(up(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    assert dict(down.named_parameters()) == {} and list(dict(down.named_buffers())) == ["resample_filter"]


def test_ncsnpp_filter_keeps_constant_images_constant_inside():
    constant = torch.full((1, 2, 8, 8), 3.0)
    up = Conv2d(2, 2, kernel=0, up=True, resample_filter=[1, 3, 3, 1])(constant)
    down = Conv2d(2, 2, kernel=0, down=True, resample_filter=[1, 3, 3, 1])(constant)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], torch.full((1, 2, 14, 14), 3.0))  # edges see zero padding
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full((1, 2, 2, 2), 3.0))


def test_fused_downsampling_is_conv_then_filter():
    torch.manual_seed(0)
    fused = Conv2d(2, 4, kernel=3, down=True, resample_filter=[1, 1], fused_resample=True, init_bias=1.0)
    x = torch.randn(1, 2, 8, 8)
    # [1,1] filter, padding 1 + 0: a full-resolution 3x3 conv, then 2x2 averaging.
    expected = F.avg_pool2d(F.conv2d(x, fused.weight, padding=1), 2) + fused.bias.reshape(1, -1, 1, 1)
    torch.testing.assert_close(fused(x), expected)
    with pytest.raises(ValueError, match="fused_resample"):
        Conv2d(2, 2, kernel=3, up=True, fused_resample=True)


def test_positional_embedding_frequencies_span_one_to_one_over_max_positions():
    emb = PositionalEmbedding(8, endpoint=True)
    x = torch.tensor([0.0, 1.0])
    out = emb(x)
    assert out.shape == (2, 8)
    torch.testing.assert_close(out[0], torch.tensor([0.0] * 4 + [1.0] * 4))  # [sin, cos] at x = 0
    freqs = torch.tensor([1.0, 10_000 ** (-1 / 3), 10_000 ** (-2 / 3), 1e-4])
    torch.testing.assert_close(out[1], torch.cat([freqs.sin(), freqs.cos()]))


@pytest.mark.parametrize(("mode", "bound", "std"), [
    ("xavier_uniform", math.sqrt(6 / 300), math.sqrt(6 / 300) / math.sqrt(3)),
    ("xavier_normal", None, math.sqrt(2 / 300)),
    ("kaiming_uniform", math.sqrt(3 / 100), 0.1),
    ("kaiming_normal", None, 0.1),
])  # fmt: skip
def test_weight_init_scales(mode, bound, std):
    torch.manual_seed(0)
    w = weight_init([200, 500], mode, fan_in=100, fan_out=200)
    assert abs(float(w.std()) / std - 1) < 0.01
    if bound is not None:
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound


def test_weight_init_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="init_mode must be one of"):
        weight_init([2, 2], "orthogonal", 2, 2)
