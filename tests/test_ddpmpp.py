"""DDPM++: official-checkpoint compatibility (tiny fixture + full-size key listings), layout, init."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from official import read_tsv
from pfgm.networks.ddpmpp import (
    RELEASED_CONFIGS,
    DDPMpp,
    from_official,
    kwargs_from_official,
    official_parameter_keys,
    official_to_ours,
    ours_to_official,
    to_official_state_dict,
)

TSVS = {
    "cifar10": "ddpmpp_cifar10_state_dict.tsv",
    "cifar10_deep": "cifar10_ddpmpp_deep_state_dict.tsv",
    "celeba64": "celeba64_ddpmpp_state_dict.tsv",
    "bedroom256": "bedroom_ddpmpp_state_dict.tsv",
}
TINY = dict(data_shape=[3, 8, 8], nf=16, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.0)


@pytest.fixture(scope="module")
def tiny_config(ref: Path) -> dict:
    return json.loads((ref / "tiny_ddpmpp_config.json").read_text())


@pytest.fixture(scope="module")
def tiny_io(ref: Path) -> dict:
    return torch.load(ref / "tiny_ddpmpp_io.pt", weights_only=True)


def official_listing(net: DDPMpp) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in to_official_state_dict(net).items()]


# ---------------------------------------------------------------------------------------------------------
# Official compatibility


@pytest.mark.parametrize("ema", [False, True])
def test_tiny_checkpoint_reproduces_official_outputs(ref, tiny_config, tiny_io, ema):
    net = from_official(ref / "tiny_ddpmpp_checkpoint.pth", tiny_config, ema=ema)
    with torch.no_grad():
        out = net(tiny_io["x"], tiny_io["z"])
    torch.testing.assert_close(out, tiny_io["out_ema" if ema else "out_raw"], atol=1e-5, rtol=1e-5)


def test_ema_and_raw_weights_differ(ref, tiny_config, tiny_io):
    raw, ema = (from_official(ref / "tiny_ddpmpp_checkpoint.pth", tiny_config, ema=e) for e in (False, True))
    with torch.no_grad():
        assert (raw(tiny_io["x"], tiny_io["z"]) - ema(tiny_io["x"], tiny_io["z"])).abs().max() > 0.1


def test_tiny_listing_matches(ref, tiny_config):
    with torch.device("meta"):
        net = DDPMpp(**kwargs_from_official(tiny_config))
    rows, totals = read_tsv(ref / "tiny_ddpmpp_state_dict.tsv")
    assert official_listing(net) == [(k, s, d) for k, s, d, kind in rows if k != "module.sigmas"]
    assert sum(p.numel() for p in net.parameters()) == totals["total_params"]


@pytest.mark.parametrize("name", sorted(TSVS))
def test_released_config_matches_official_listing(ref, name):
    """Key names, order, shapes, dtypes, parameter order and count equal the official model's."""
    with torch.device("meta"):
        net = DDPMpp(**RELEASED_CONFIGS[name])
    rows, totals = read_tsv(ref / TSVS[name])
    assert official_listing(net) == [(k, s, d) for k, s, d, kind in rows if k != "module.sigmas"]
    assert official_parameter_keys(net) == [k.removeprefix("module.") for k, _, _, kind in rows if kind == "param"]
    assert sum(p.numel() for p in net.parameters()) == totals["total_params"]


def test_cifar10_parameter_count():
    with torch.device("meta"):
        net = DDPMpp(**RELEASED_CONFIGS["cifar10"])
    assert sum(p.numel() for p in net.parameters()) == 61_805_572


@pytest.mark.parametrize("tsv", ["tiny_ddpmpp_state_dict.tsv", *TSVS.values()])
def test_key_round_trip_official_ours_official(ref, tiny_config, tsv):
    config = kwargs_from_official(tiny_config) if tsv.startswith("tiny") else RELEASED_CONFIGS[_name_of(tsv)]
    with torch.device("meta"):
        net = DDPMpp(**config)
    ours = net.state_dict()
    for key, shape, _, _ in read_tsv(ref / tsv)[0]:
        mapped = official_to_ours(key, net)
        if key == "module.sigmas":
            assert mapped is None
            continue
        assert tuple(ours[mapped].shape) == shape
        assert ours_to_official(mapped, net) == key.removeprefix("module.")


def _name_of(tsv: str) -> str:
    return next(name for name, file in TSVS.items() if file == tsv)


def test_export_reproduces_official_model_state(ref, tiny_config):
    checkpoint = torch.load(ref / "tiny_ddpmpp_checkpoint.pth", weights_only=True)
    net = from_official(ref / "tiny_ddpmpp_checkpoint.pth", tiny_config, ema=False)
    exported = to_official_state_dict(net, sigmas=checkpoint["model"]["module.sigmas"])
    assert list(exported) == list(checkpoint["model"])
    for key, tensor in checkpoint["model"].items():
        assert torch.equal(exported[key], tensor), key


def _write_corrupted(ref: Path, tmp_path: Path, corrupt) -> Path:
    checkpoint = torch.load(ref / "tiny_ddpmpp_checkpoint.pth", weights_only=True)
    corrupt(checkpoint)
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    return tmp_path / "checkpoint.pth"


def test_missing_key_is_named(ref, tiny_config, tmp_path):
    path = _write_corrupted(ref, tmp_path, lambda ck: ck["model"].pop("module.all_modules.5.Conv_2.weight"))
    with pytest.raises(ValueError, match=r"missing keys.*all_modules\.5\.Conv_2\.weight"):
        from_official(path, tiny_config)


def test_wrong_shape_is_named(ref, tiny_config, tmp_path):
    def corrupt(ck):
        ck["model"]["module.all_modules.6.NIN_1.W"] = torch.zeros(64, 32)

    with pytest.raises(ValueError, match=r"shape mismatches.*all_modules\.6\.NIN_1\.W"):
        from_official(_write_corrupted(ref, tmp_path, corrupt), tiny_config, ema=False)


def test_unexpected_key_and_short_ema_list_are_reported(ref, tiny_config, tmp_path):
    def extra(ck):
        ck["model"]["module.all_modules.99.weight"] = torch.zeros(1)

    with pytest.raises(ValueError, match=r"unexpected keys.*all_modules\.99\.weight"):
        from_official(_write_corrupted(ref, tmp_path, extra), tiny_config)
    with pytest.raises(ValueError, match="shadow_params has 153 tensors"):
        from_official(_write_corrupted(ref, tmp_path, lambda ck: ck["ema"]["shadow_params"].pop()), tiny_config)


def test_unsupported_official_flag_is_named(tiny_config):
    config = {**tiny_config, "model": {**tiny_config["model"], "progressive": "output_skip"}}
    with pytest.raises(ValueError, match="model.progressive"):
        kwargs_from_official(config)


# ---------------------------------------------------------------------------------------------------------
# The network itself


def test_output_layout_and_z_component():
    torch.manual_seed(0)
    net = DDPMpp(**TINY, init_scale=1.0).eval()
    raw = {}
    net.conv_out.register_forward_hook(lambda module, inputs, output: raw.setdefault("h", output))
    x, z = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 7.0])
    with torch.no_grad():
        out = net(x, z)
    assert out.shape == (2, 3 * 8 * 8 + 1)
    torch.testing.assert_close(out[:, :-1], raw["h"][:, :3].reshape(2, -1))
    torch.testing.assert_close(out[:, -1], raw["h"][:, 3].mean(dim=(1, 2)))


def test_fourier_embedding_runs_and_depends_on_z():
    torch.manual_seed(0)
    net = DDPMpp(**TINY, embedding="fourier", init_scale=1.0).eval()
    x = torch.randn(1, 3, 8, 8).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = net(x, torch.tensor([0.01, 40.0]))
    assert out.shape == (2, 193) and torch.isfinite(out).all()
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert net.official_order()[0] == "z_embed"
    assert ours_to_official("z_embed.W", net) == "all_modules.0.W"
    assert "all_modules.0.W" not in official_parameter_keys(net)  # fixed frequencies, not in the EMA list


def test_config_is_json_and_rebuilds():
    net = DDPMpp(**TINY)
    config = json.loads(json.dumps(net.config))
    assert config == net.config
    rebuilt = DDPMpp(**config)
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [(k, v.shape) for k, v in net.state_dict().items()]


def test_initialisation_follows_ddpm():
    torch.manual_seed(0)
    net = DDPMpp(**TINY)  # init_scale 0, as the released configs
    tiny = [net.conv_out.weight, net.mid_res_0.Conv_1.weight, net.mid_attn.NIN_3.W, net.down[0].blocks[0].Conv_1.weight]
    assert all(w.abs().max() < 2e-5 for w in tiny)  # variance scale 1e-10: |w| <= sqrt(3e-10 / fan_avg)
    conv = net.down[1].blocks[0].Conv_0.weight  # (32, 16, 3, 3): fan_avg = 9 * (16 + 32) / 2
    bound = math.sqrt(3 / (9 * (16 + 32) / 2))
    assert bound * 0.9 < conv.abs().max() <= bound
    biases = [p for name, p in net.named_parameters() if name.endswith((".bias", ".b")) and "GroupNorm" not in name]
    assert all(torch.count_nonzero(b) == 0 for b in biases)


def test_rejects_bad_input_shape():
    with pytest.raises(ValueError, match="expected x"):
        DDPMpp(**TINY)(torch.randn(2, 3, 16, 16), torch.ones(2))
