"""pfgm.training.runs: a run's network, hyperparameters and loss from a plain spec, every bad key named."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pfgm.networks.edm import EDMPrecond
from pfgm.networks.mlp import FieldMLP
from pfgm.perturb import prior_range
from pfgm.training import PFGMLoss, PFGMppLoss, RunError, RunSpec, TrainConfig, build_run, check_data, network_kwargs
from pfgm.training import fingerprint, new_state, run_hyperparameters, setup_run

POINTS = dict(name="moons", kind="points", shape=[2], counts=dict(train=100, test=20))
IMAGES = dict(name="folder", kind="image", shape=[1, 8, 8], counts=dict(train=40, test=8))
EDM_KWARGS = dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.1,
                  augment_dim=9)


def _spec(**changes) -> RunSpec:
    base = dict(network="FieldMLP", network_kwargs=dict(hidden=16, depth=1, embed_dim=8), objective="pfgm", D=1,
                M=None, z_max=None, upper_norm=None, sigma=0.01, tau=0.03, gamma=5.0, restrict_M=True,
                small_batch=32, reduce="sum", augment=0.0)
    return RunSpec(**{**base, **changes})


def _edm_spec(**changes) -> RunSpec:
    return _spec(**{**dict(network="EDMPrecond", network_kwargs=EDM_KWARGS, objective="pfgmpp", D=16,
                           augment=0.12), **changes})


def test_a_spec_is_read_by_name_from_any_section():
    spec = _spec()
    section = type("Section", (), {**dataclasses.asdict(spec), "steps": 10, "out": "elsewhere"})
    assert RunSpec.from_attributes(section) == spec


def test_build_run_is_seeded_and_follows_the_objective():
    charges = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    first, second = (build_run(_spec(), charges, POINTS, seed=3) for _ in range(2))
    assert isinstance(first.net, FieldMLP) and isinstance(first.loss_fn, PFGMLoss)
    assert all(torch.equal(a, b) for a, b in zip(first.net.state_dict().values(), second.net.state_dict().values()))
    assert first.hyperparameters["gamma"] == 5.0 and "D" not in first.hyperparameters
    pfgmpp = build_run(_spec(objective="pfgmpp", D=4, network_kwargs=dict(hidden=16, depth=1, embedding="positional")),
                       charges, POINTS, seed=3)
    assert isinstance(pfgmpp.loss_fn, PFGMppLoss) and pfgmpp.hyperparameters["D"] == 4


def test_prior_range_comes_from_M_unless_the_spec_sets_it():
    charges = torch.randn(64, 3, 4, 4)
    assert run_hyperparameters(charges, _spec(M=291)) == dict(M=291, gamma=5.0, **prior_range(291, 48))
    released = run_hyperparameters(charges, _spec(M=291, z_max=40.0, upper_norm=3000.0))
    assert released == dict(M=291, gamma=5.0, z_max=40.0, upper_norm=3000.0)


def test_network_kwargs_fill_in_the_data_shape_and_name_bad_keys():
    assert network_kwargs(_spec(), POINTS) == dict(hidden=16, depth=1, embed_dim=8, data_shape=[2])
    for network in ("FieldConvNet", "NCSNv2Small", "DDPMpp"):  # as EDMPrecond below
        assert network_kwargs(_spec(network=network, network_kwargs={}), IMAGES) == dict(data_shape=[1, 8, 8])
    wide = dict(IMAGES, shape=[1, 8, 6])
    with pytest.raises(RunError, match="network: DDPMpp needs square images"):
        network_kwargs(_spec(network="DDPMpp", network_kwargs={}), wide)
    cases = {
        r"network_kwargs\.data_shape: filled in from the data": _spec(network_kwargs=dict(data_shape=[3])),
        r"network_kwargs\.widht: not an argument of FieldMLP": _spec(network_kwargs=dict(widht=3)),
        r"network_kwargs\.embedding: 'log' embeds a logarithm": _spec(objective="pfgmpp",
                                                                       network_kwargs=dict(embedding="log")),
        r"network: DDPMpp needs square images": _spec(network="DDPMpp", network_kwargs={}),
        r"network: FieldConvNet needs images": _spec(network="FieldConvNet", network_kwargs={}),
    }
    for message, spec in cases.items():
        with pytest.raises(RunError, match=message):
            network_kwargs(spec, POINTS)


def test_network_kwargs_fill_in_edmprecond_and_check_the_augmentation():
    kwargs = network_kwargs(_edm_spec(), IMAGES)
    assert kwargs == {**EDM_KWARGS, "data_shape": [1, 8, 8], "pfgmpp": True, "D": 16,
                      "label_dim": 0}
    with torch.device("meta"):
        assert EDMPrecond(**kwargs).D == 16
    cases = {
        r"network: EDMPrecond is a denoiser": _edm_spec(objective="pfgm"),
        r"network_kwargs\.data_shape: filled in from the data": _edm_spec(
            network_kwargs={**EDM_KWARGS, "data_shape": [3, 8, 8]}),
        r"network_kwargs\.img_channels: not an argument of EDMPrecond": _edm_spec(
            network_kwargs={**EDM_KWARGS, "img_channels": 3}),
        r"network_kwargs\.D: filled in from D": _edm_spec(network_kwargs={**EDM_KWARGS, "D": 128}),
        r"network_kwargs\.nf: not an argument of EDMPrecond \(known: .*channel_mult": _edm_spec(
            network_kwargs={**EDM_KWARGS, "nf": 8}),
        r"network_kwargs\.model_type: unknown backbone": _edm_spec(network_kwargs={**EDM_KWARGS, "model_type": "X"}),
        r"network_kwargs\.augment_dim: must be 9, got 0: augment 0\.12 produces 9 labels": _edm_spec(
            network_kwargs={**EDM_KWARGS, "augment_dim": 0}),
        r"network_kwargs\.augment_dim: must be 0, got 9: augment is 0": _edm_spec(augment=0.0),
        r"augment: EDM's augmentation trains the pfgmpp objective with network EDMPrecond": _edm_spec(
            network="FieldConvNet", network_kwargs=dict(channels=8, blocks=1)),
    }
    for message, spec in cases.items():
        with pytest.raises(RunError, match=message) as caught:
            network_kwargs(spec, IMAGES)
        assert str(caught.value) == f"{caught.value.key}: {caught.value.message}"


def test_settings_checked_against_the_data():
    check_data(100, False, POINTS)
    with pytest.raises(RunError, match="batch_size: 101 exceeds the 100 training rows of moons"):
        check_data(101, False, POINTS)
    with pytest.raises(RunError, match="flip: flips need image data"):
        check_data(10, True, POINTS)
    with pytest.raises(RunError, match=r"network_kwargs: FieldMLP: "):
        build_run(_spec(network_kwargs=dict(depth=0)), torch.randn(8, 2), POINTS, seed=0)


# The train section as flows.train hands it over (TrainParams.model_dump(mode="json")), and the fingerprint
# the flow gave it before the fingerprint moved here: checkpoints already on disk must keep resuming.
SECTION = {"D": 1, "M": None, "amp": False, "augment": 0.0, "batch_size": 512, "betas": [0.9, 0.999],
           "checkpoint_every": 500, "compile": False, "device": "auto", "ema_decay": 0.999, "ema_halflife_kimg": None,
           "ema_rampup_ratio": 0.05, "ema_warmup": True, "eps": 1e-08, "flip": False, "gamma": 5.0, "grad_clip": 1.0,
           "lr": 0.001, "lr_rampup_kimg": 0.0, "network": "FieldMLP",
           "network_kwargs": {"depth": 2, "embed_dim": 8, "hidden": 32}, "objective": "pfgm", "out": "a",
           "reduce": "sum", "restrict_M": True, "sample_every": 1000, "seed": 0, "sigma": 0.01, "small_batch": 128,
           "steps": 20, "tau": 0.03, "upper_norm": None, "warmup": 100, "z_max": None}
SECTION_FINGERPRINT = "7aa1c5d8184f4392b97e3c8d22c4fece80824e28bf98db9d44db41a272255938"


def _changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, 0.5]
    if isinstance(value, dict):
        return {**value, "extra": 1}
    return 1  # None: a setting given where the data would decide


def test_the_fingerprint_follows_every_setting_and_the_data_but_not_the_folder():
    assert fingerprint(SECTION, "abc") == SECTION_FINGERPRINT
    assert fingerprint({**SECTION, "out": "elsewhere"}, "abc") == SECTION_FINGERPRINT
    assert fingerprint(dict(reversed(SECTION.items())), "abc") == SECTION_FINGERPRINT
    assert fingerprint(SECTION, "abd") != SECTION_FINGERPRINT
    for key in SECTION.keys() - {"out"}:
        assert fingerprint({**SECTION, key: _changed(SECTION[key])}, "abc") != SECTION_FINGERPRINT, key


def _manifest(**changes) -> dict:
    return {**POINTS, "files": {"train.npy": "sha-of-train"}, **changes}


def test_setup_run_checks_the_data_and_records_what_later_stages_read():
    charges = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=3, batch_size=32)
    built = setup_run(_spec(), config, charges, _manifest(), seed=3, device=torch.device("cpu"), fingerprint="f")
    assert built.config is config and built.device == torch.device("cpu") and isinstance(built.loss_fn, PFGMLoss)
    assert built.hyperparameters == run_hyperparameters(charges, _spec())
    assert built.metadata == dict(hyperparameters=built.hyperparameters, objective="pfgm", fingerprint="f",
                                  data=dict(name="moons", sha256="sha-of-train", kind="points", shape=[2]))
    reference = build_run(_spec(), charges, POINTS, seed=3).net.state_dict()
    assert all(torch.equal(reference[k], v) for k, v in built.net.state_dict().items())  # seeded like build_run
    for settings, message in ((dict(batch_size=101), "batch_size: 101 exceeds"),
                              (dict(batch_size=32, flip=True), "flip: flips")):
        with pytest.raises(RunError, match=message):
            setup_run(_spec(), TrainConfig(steps=3, **settings), charges, _manifest(), seed=3,
                      device=torch.device("cpu"), fingerprint="f")


def test_a_new_state_starts_at_step_zero_from_the_seed():
    charges = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=3, batch_size=32, lr=2e-3)
    built = setup_run(_spec(), config, charges, _manifest(), seed=3, device=torch.device("cpu"), fingerprint="f")
    state = new_state(built, seed=7)
    assert state.step == 0 and state.net is built.net and state.optimizer.param_groups[0]["lr"] == 2e-3
    assert torch.equal(state.generator.get_state(), torch.Generator().manual_seed(7).get_state())
    ema = dict(state.ema.module.named_parameters())
    assert all(torch.equal(ema[name], p) for name, p in state.net.named_parameters())
