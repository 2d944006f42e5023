"""configs/*.yaml: the paper configurations validate, build the released networks and state PFGM.md's values.

Expected values are written out below with the PFGM.md section they come from (../shared/docs/PFGM.md);
values the spec does not state are marked with the released file they come from. Networks are built on
the meta device (shapes only, no weights), so the full-size ones cost nothing.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from flows.params import load_params
from official import EDM_REFERENCE, REFERENCE, read_edm_tsv, read_tsv
from pfgm.networks.edm import EDMPrecond
from pfgm.networks.ddpmpp import RELEASED_CONFIGS, DDPMpp, to_official_state_dict
from pfgm.training import RunSpec, network_kwargs as spec_kwargs

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def network_kwargs(train, manifest: dict) -> dict:
    """The network arguments the train stage builds from a params section and the data's manifest."""
    return spec_kwargs(RunSpec.from_attributes(train), manifest)

# One entry per PFGM DDPM++ configuration. Sources:
#   batch_size / small_batch: section 1 (charges 4096, 512, 32; small batch 128, 128, 32);
#   M: section 2 (291, 291, 356); z_exp, z_min, z_max, upper_norm: section 3 table; reduce: section 1 (LSUN: mean);
#   image side: section 3 table; lr and steps: section 6 for CIFAR-10 (2e-4, 1.3M) -- CelebA and LSUN
#   are not in PFGM.md: Newbeeer/Poisson_flow default_celeba_configs.py (2e-4, 1.3M) and
#   bedroom_ddpmpp.py / default_lsun_configs.py (2e-5, 2.4M).
DDPMPP = {
    "cifar10-ddpmpp.yaml": dict(released="cifar10", tsv="ddpmpp_cifar10_state_dict.tsv", data="cifar10", side=32,
                                batch_size=4096, small_batch=128, M=291, z_exp=5.0, reduce="sum", lr=2e-4,
                                steps=1_300_000, z_max=40.0, upper_norm=3000.0),
    "cifar10-ddpmpp-deep.yaml": dict(released="cifar10_deep", tsv="cifar10_ddpmpp_deep_state_dict.tsv",
                                     data="cifar10", side=32, batch_size=4096, small_batch=128, M=291, z_exp=5.0,
                                     reduce="sum", lr=2e-4, steps=1_300_000, z_max=40.0, upper_norm=3000.0),
    "celeba64-ddpmpp.yaml": dict(released="celeba64", tsv="celeba64_ddpmpp_state_dict.tsv", data="celeba64",
                                 side=64, batch_size=512, small_batch=128, M=291, z_exp=1.0, reduce="sum", lr=2e-4,
                                 steps=1_300_000, z_max=60.0, upper_norm=6000.0),
    "lsun-bedroom256-ddpmpp.yaml": dict(released="bedroom256", tsv="bedroom_ddpmpp_state_dict.tsv",
                                        data="lsun-bedroom256", side=256, batch_size=32, small_batch=32, M=356,
                                        z_exp=0.1, reduce="mean", lr=2e-5, steps=2_400_000, z_max=100.0,
                                        upper_norm=30000.0),
}
# Section 2: the perturbation defaults shared by every PFGM configuration.
PERTURBATION = dict(sigma=0.01, tau=0.03, gamma=5.0, restrict_M=True)
# Section 6: optimiser, EMA and flips of the released DDPM++ runs (also the released CelebA/LSUN files).
OPTIMISER = dict(betas=[0.9, 0.999], eps=1e-8, warmup=5000, grad_clip=1.0, ema_decay=0.9999, flip=True, amp=False)
# Sections 3 and 4: the RK45 sampler of the paper; section 8: PFGM's FID protocol (10,000 samples, TF
# Inception = legacy_tensorflow, training-set statistics, the official uint8 truncation; docs/FID.md).
SAMPLER = dict(method="dopri5", rtol=1e-4, atol=1e-4, steps=None, z_min=1e-3, clip_prior=True)
FID = dict(features="inception", num_samples=10_000, fid_reference="train", fid_mode="legacy_tensorflow",
           quantize="truncate")

# PFGM++ (section 7: D, Heun with 18 steps = NFE 35; the objective's P_mean/P_std are fixed in
# pfgm.pfgmpp). Network and optimisation: the PFGM++ README's commands (cifar10_ncsnpp_D_128/2048:
# --arch=ncsnpp --batch 512; ffhq_ddpm_D_128: --arch=ddpmpp --batch=256 --cres=1,2,2,2 --lr=2e-4
# --dropout=0.05 --augment=0.15) over the defaults of Newbeeer/pfgmpp train.py / training_loop.py:
# 200 Mimg, lr ramp-up 10 Mimg, EMA half-life 0.5 Mimg with ramp-up ratio 0.05, no clipping, no x-flips,
# dropout 0.13 and augmentation 0.12 (CIFAR-10). Sampling: 18 steps (CIFAR-10), 40 (FFHQ 64: NFE 79).
PFGMPP = {"cifar10-pfgmpp-d128.yaml": 128, "cifar10-pfgmpp-d2048.yaml": 2048, "ffhq64-pfgmpp-d128.yaml": 128}
EDM_RECIPE = dict(warmup=0, lr_rampup_kimg=10_000, grad_clip=None, flip=False, betas=[0.9, 0.999], eps=1e-8,
                  ema_halflife_kimg=500, ema_rampup_ratio=0.05)
PFGMPP_DATA = {
    "cifar10": dict(side=32, batch_size=512, lr=1e-3, augment=0.12, heun_steps=18),
    "ffhq64": dict(side=64, batch_size=256, lr=2e-4, augment=0.15, heun_steps=40),
}
# train.py's `--arch` kwargs (the README of ../shared/reference/edm lists them for CIFAR-10).
NCSNPP = dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard",
              channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2],
              num_blocks=4, attn_resolutions=[16], dropout=0.13, augment_dim=9, use_fp16=False)
FFHQ_DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                   decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1], model_channels=128,
                   channel_mult=[1, 2, 2, 2], num_blocks=4, attn_resolutions=[16], dropout=0.05, augment_dim=9,
                   use_fp16=False)
PFGMPP_NETWORK = {"cifar10": NCSNPP, "ffhq64": FFHQ_DDPMPP}
# Parameter counts: the official listings (../shared/reference/edm/*_cifar10_state_dict.tsv), and for FFHQ 64
# what NVlabs/edm's networks.py builds with these kwargs (61,805,571; checked when the config was written).
# `songunet_parameters` below derives every one of them by hand.
NCSNPP_CIFAR10_PARAMETERS, DDPMPP_CIFAR10_PARAMETERS, FFHQ_DDPMPP_PARAMETERS = 56_397_827, 55_733_891, 61_805_571


def config_files() -> list[str]:
    return sorted(p.name for p in CONFIGS.glob("*.yaml"))


def manifest_for(name: str, side: int) -> dict:
    """The fields of a prepared data manifest that the train flow's network check reads."""
    return dict(name=name, kind="image", shape=[3, side, side])


def tsv_parameters(path: Path) -> dict[str, tuple[int, ...]]:
    """Official key -> shape of every trainable parameter listed in a state-dict TSV."""
    if not path.is_file():
        pytest.skip(f"{path} not found (shared/reference/ddpmpp must be a sibling of the repo root)")
    rows, _totals = read_tsv(path)
    return {key.removeprefix("module."): shape for key, shape, _dtype, kind in rows if kind == "param"}


def test_the_expected_configurations_are_there():
    assert set(DDPMPP) | set(PFGMPP) <= set(config_files())


@pytest.mark.parametrize("name", config_files())
def test_every_config_validates_and_says_where_it_comes_from(name):
    params = load_params(CONFIGS / name)
    header = (CONFIGS / name).read_text().split("\ndata:")[0]
    assert all(line.startswith("#") for line in header.splitlines()), "the file starts with its comment block"
    assert re.search(r"section \d", header), "the comment block cites PFGM.md sections"
    assert re.search(r"[Hh]ardware", header), "the comment block states the expected hardware and time"
    assert f"make main PARAMS=configs/{name}" in header, "the comment block gives the one command to run it"
    assert params.train.out != load_params(ROOT / "params.yaml").train.out  # never the default run's folder


@pytest.mark.parametrize("name", sorted(DDPMPP))
def test_ddpmpp_config_builds_the_released_network(name):
    expected = DDPMPP[name]
    params = load_params(CONFIGS / name)
    kwargs = network_kwargs(params.train, manifest_for(expected["data"], expected["side"]))
    assert kwargs == RELEASED_CONFIGS[expected["released"]]
    with torch.device("meta"):
        net = DDPMpp(**kwargs)
    official = {k.removeprefix("module."): tuple(t.shape) for k, t in to_official_state_dict(net, prefix="").items()}
    listed = tsv_parameters(REFERENCE / expected["tsv"])
    assert sum(p.numel() for p in net.parameters()) == sum(torch.Size(s).numel() for s in listed.values())
    assert official == listed  # same keys and shapes, not only the same count


@pytest.mark.parametrize("name", sorted(DDPMPP))
def test_ddpmpp_config_has_the_published_hyperparameters(name):
    expected = DDPMPP[name]
    params = load_params(CONFIGS / name)
    train, evaluate = params.train, params.evaluate
    assert params.data.name == expected["data"] and train.network == "DDPMpp" and train.objective == "pfgm"
    for key in ("batch_size", "small_batch", "M", "z_max", "upper_norm", "reduce", "lr", "steps"):
        assert getattr(train, key) == expected[key], key
    for key, value in {**PERTURBATION, **OPTIMISER}.items():
        assert getattr(train, key) == value, key
    for key, value in {**SAMPLER, **FID, "z_exp": expected["z_exp"]}.items():
        assert getattr(evaluate, key) == value, key


@pytest.mark.parametrize("name", sorted(PFGMPP))
def test_pfgmpp_config_has_its_D_and_edm_settings(name):
    params = load_params(CONFIGS / name)
    train, evaluate = params.train, params.evaluate
    expected = PFGMPP_DATA[params.data.name]
    assert train.objective == "pfgmpp" and train.D == PFGMPP[name] and train.network == "EDMPrecond"
    steps = 200_000_000 // expected["batch_size"]  # --duration 200 Mimg
    for key, value in {**EDM_RECIPE, "steps": steps, "batch_size": expected["batch_size"], "lr": expected["lr"],
                       "augment": expected["augment"]}.items():
        assert getattr(train, key) == value, key
    assert evaluate.steps == expected["heun_steps"] and evaluate.features == "inception"
    assert evaluate.num_samples == 50_000 and evaluate.seeds == [0, 1, 2] and evaluate.fid_reference == "train"
    assert evaluate.champion_metric == "fid_min" and evaluate.quantize == "round"
    side = expected["side"]
    kwargs = network_kwargs(train, manifest_for(params.data.name, side))
    assert kwargs == {**PFGMPP_NETWORK[params.data.name], "data_shape": [3, side, side],
                      "pfgmpp": True, "D": PFGMPP[name], "label_dim": 0}


def songunet_parameters(*, img_resolution: int, img_channels: int, model_channels: int, channel_mult: list[int],
                        num_blocks: int, attn_resolutions: list[int], augment_dim: int, channel_mult_noise: int,
                        encoder_type: str, channel_mult_emb: int = 4, **_) -> int:
    """EDM's SongUNet (standard decoder, no class labels), counted by hand from its definition: a path to
    the parameter count that shares no code with pfgm.networks.songunet.

    UNetBlock(cin, cout): GroupNorm(cin), 3x3 conv, Linear(emb, cout) (no adaptive scale), GroupNorm(cout),
    3x3 conv, a 1x1 skip conv when the width or the resolution changes, and with attention GroupNorm, a
    1x1 qkv conv (3 cout) and a 1x1 projection. Every conv and linear has a bias except map_augment.
    """
    def conv(cin, cout, k):
        return cin * cout * k * k + cout

    emb = model_channels * channel_mult_emb

    def block(cin, cout, attention=False, resample=False):
        n = 2 * cin + conv(cin, cout, 3) + emb * cout + cout + 2 * cout + conv(cout, cout, 3)
        n += conv(cin, cout, 1) if (cin != cout or resample) else 0
        return n + (2 * cout + conv(cout, 3 * cout, 1) + conv(cout, cout, 1) if attention else 0)

    noise = model_channels * channel_mult_noise
    total = augment_dim * noise + noise * emb + emb + emb * emb + emb  # map_augment, map_layer0, map_layer1
    skips, width, aux = [], model_channels, img_channels
    for level, mult in enumerate(channel_mult):  # encoder
        res = img_resolution >> level
        if level == 0:
            total += conv(img_channels, model_channels, 3)
        else:
            total += block(width, width, resample=True)
            if encoder_type == "residual":  # NCSN++: a 3x3 conv of the downsampled image path
                total, aux = total + conv(aux, width, 3), width
        skips.append(width)
        for _ in range(num_blocks):
            total += block(width, model_channels * mult, attention=res in attn_resolutions)
            width = model_channels * mult
            skips.append(width)
    for level in reversed(range(len(channel_mult))):  # decoder
        res = img_resolution >> level
        if level == len(channel_mult) - 1:
            total += block(width, width, attention=True) + block(width, width)
        else:
            total += block(width, width, resample=True)
        for idx in range(num_blocks + 1):
            out = model_channels * channel_mult[level]
            total += block(width + skips.pop(), out, attention=idx == num_blocks and res in attn_resolutions)
            width = out
    return total + 2 * width + conv(width, img_channels, 3)  # aux_norm, aux_conv at full resolution


def test_hand_count_matches_the_official_cifar10_listings():
    ncsnpp = dict(NCSNPP, img_resolution=32, img_channels=3)
    ddpmpp = dict(FFHQ_DDPMPP, channel_mult=[2, 2, 2], img_resolution=32, img_channels=3)
    assert songunet_parameters(**ncsnpp) == NCSNPP_CIFAR10_PARAMETERS
    assert songunet_parameters(**ddpmpp) == DDPMPP_CIFAR10_PARAMETERS
    for name, total in (("ncsnpp", NCSNPP_CIFAR10_PARAMETERS), ("ddpmpp", DDPMPP_CIFAR10_PARAMETERS)):
        path = EDM_REFERENCE / f"{name}_cifar10_state_dict.tsv"
        if path.is_file():
            assert read_edm_tsv(path)[1] == total


@pytest.mark.parametrize("name", sorted(PFGMPP))
def test_pfgmpp_config_builds_the_published_network(name):
    params = load_params(CONFIGS / name)
    side = PFGMPP_DATA[params.data.name]["side"]
    kwargs = network_kwargs(params.train, manifest_for(params.data.name, side))
    with torch.device("meta"):
        net = EDMPrecond(**kwargs)
    count = sum(p.numel() for p in net.parameters())
    assert count == songunet_parameters(img_resolution=side, img_channels=3, **kwargs)
    if params.data.name == "ffhq64":
        assert count == FFHQ_DDPMPP_PARAMETERS
        return
    path = EDM_REFERENCE / "ncsnpp_cifar10_state_dict.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not found (shared/reference/edm must be a sibling of the repo root)")
    rows, total = read_edm_tsv(path)
    ours = [(k, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in net.state_dict().items()]
    assert ours == rows and count == total == NCSNPP_CIFAR10_PARAMETERS  # keys, order, shapes and count


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("params", [None, "configs/cifar10-ddpmpp.yaml"])
def test_make_main_copies_the_chosen_config_before_dvc_repro(params):
    args = ["make", "-n", "main"] + ([f"PARAMS={params}"] if params else [])
    lines = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    repro = next(i for i, line in enumerate(lines) if "dvc repro" in line)
    copies = [i for i, line in enumerate(lines) if line.startswith("cp ")]
    if params is None:
        assert copies == []  # the default `make main` runs params.yaml as it is
    else:
        assert lines[copies[0]] == f"cp {params} params.yaml" and copies[0] < repro
        assert any("-m flows.cli" in line for line in lines[: copies[0]])  # validated before the copy


@pytest.mark.parametrize("name", sorted(DDPMPP))
def test_sweep_samples_like_the_evaluation(name):
    params = load_params(CONFIGS / name)
    if not hasattr(params, "sweep"):
        pytest.skip("params.yaml has no sweep section in this version")
    sweep, evaluate = params.sweep, params.evaluate
    for key in ("z_min", "z_exp", "clip_prior", "features", "inception_path"):
        assert getattr(sweep, key) == getattr(evaluate, key), key
    rk45 = [solver for solver in sweep.solvers if solver.method == "dopri5"]
    assert rk45 and SAMPLER["rtol"] in rk45[0].tolerances  # the paper's setting is one of the points
