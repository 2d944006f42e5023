"""Checkpoints: format, weights_only loading, atomic writes, exact resumption, divergence safety."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from pfgm.networks.ddpmpp import DDPMpp
from pfgm.networks.edm import EDMPrecond
from pfgm.networks.mlp import FieldMLP
from pfgm.training import (DivergenceError, PFGMLoss, PFGMppLoss, TrainConfig, build_network, clear_run_files,
                           create_state, latest_checkpoint, load_checkpoint, restore_state, save_checkpoint, train)
from pfgm.training.augment import EDM_CIFAR10_KWARGS, AugmentPipe
from pfgm.training import checkpoint as checkpoint_module


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """64 tiny 1x4x4 'images' in [-1, 1]: flips and the generator both matter."""
    return torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1


CONFIG = TrainConfig(steps=8, batch_size=32, lr=1e-3, warmup=3, ema_decay=0.8, flip=True, checkpoint_every=4)
LOSS = PFGMLoss(M=40, small_batch=8)


def _mlp():
    return FieldMLP(data_shape=(1, 4, 4), hidden=32, depth=2, embed_dim=8)


def _unet_with_dropout():
    """Dropout draws from the global CPU RNG, which the checkpoint must restore too."""
    return DDPMpp(data_shape=[1, 4, 4], nf=8, ch_mult=[1], num_res_blocks=1, attn_resolutions=[], dropout=0.5)


def _fresh_state(config=CONFIG, make_net=_mlp):
    torch.manual_seed(0)
    return create_state(make_net(), config, torch.Generator().manual_seed(1))


def _tensors(state):
    return ([p.detach() for p in state.net.parameters()] + [p.detach() for p in state.ema.parameters()]
            + [t for s in state.optimizer.state.values() for t in s.values()])


def test_checkpoint_contents_load_with_weights_only(tmp_path, images):
    state = _fresh_state()
    train(state, LOSS, images, TrainConfig(steps=2, batch_size=32, lr=1e-3), progress=False)
    path = save_checkpoint(tmp_path / "c.pt", state, config=CONFIG, metadata={"run": "test"})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "pfgm-checkpoint" and raw["step"] == 2
    assert raw["network"]["class"] == "FieldMLP"
    assert json.loads(raw["network"]["config"]) == state.net.config
    assert json.loads(raw["train_config"])["steps"] == 8 and json.loads(raw["metadata"]) == {"run": "test"}
    assert set(raw["rng"]) >= {"torch_cpu", "generator"}
    payload = load_checkpoint(path)
    net, ema = build_network(payload), build_network(payload, ema=True)
    x, z = images[:3], torch.rand(3)
    assert torch.equal(net(x, z), state.net(x, z)) and torch.equal(ema(x, z), state.ema.module(x, z))
    assert not torch.equal(net(x, z), ema(x, z))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_ddpmpp_round_trips(tmp_path):
    net = DDPMpp(data_shape=[1, 8, 8], nf=8, ch_mult=[1], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    state = create_state(net, TrainConfig(steps=1), torch.Generator())
    payload = load_checkpoint(save_checkpoint(tmp_path / "d.pt", state))
    rebuilt = build_network(payload)
    assert isinstance(rebuilt, DDPMpp) and rebuilt.config == net.config
    x, z = torch.randn(2, 1, 8, 8), torch.rand(2)
    assert torch.equal(rebuilt(x, z), net(x, z))


@pytest.mark.parametrize("legacy_keys", [("channels", "image_size"), ("img_channels", "img_resolution")])
def test_a_checkpoint_from_before_data_shape_still_loads(tmp_path, legacy_keys):
    net = (DDPMpp(data_shape=[1, 8, 8], nf=8, ch_mult=[1], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
           if legacy_keys[0] == "channels" else _edm_with_dropout())
    path = save_checkpoint(tmp_path / "old.pt", create_state(net, TrainConfig(steps=1), torch.Generator()))
    raw = torch.load(path, weights_only=True)
    channels, side, _ = net.config["data_shape"]
    legacy = {legacy_keys[1]: side, legacy_keys[0]: channels,
              **{k: v for k, v in net.config.items() if k != "data_shape"}}
    raw["network"]["config"] = json.dumps(legacy)  # what the format held before every network took data_shape
    torch.save(raw, path)
    payload = load_checkpoint(path)
    assert json.loads(payload["network"]["config"]) == net.config
    rebuilt = build_network(payload)
    assert rebuilt.config == net.config and rebuilt.data_shape == net.data_shape


@pytest.mark.parametrize("make_net", [_mlp, _unet_with_dropout])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, images, make_net):
    whole = _fresh_state(make_net=make_net)
    train(whole, LOSS, images, CONFIG, progress=False)

    first = _fresh_state(make_net=make_net)
    train(first, LOSS, images, replace(CONFIG, steps=4), checkpoint_dir=tmp_path,
          progress=False)
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must restore it
    path = latest_checkpoint(tmp_path)
    assert path.name == "checkpoint_00000004.pt"
    resumed = restore_state(load_checkpoint(path), CONFIG)
    assert resumed.step == 4
    history = train(resumed, LOSS, images, CONFIG, checkpoint_dir=tmp_path, progress=False)
    assert [r["step"] for r in history] == [5, 6, 7, 8]
    for a, b in zip(_tensors(whole), _tensors(resumed), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(whole.generator.get_state(), resumed.generator.get_state())


def _edm_with_dropout():
    """A tiny EDMPrecond conditioning on EDM's 9 augmentation labels, with dropout (global RNG)."""
    return EDMPrecond(data_shape=[1, 4, 4], model_channels=8, channel_mult=[1, 2], num_blocks=1,
                      attn_resolutions=[2], dropout=0.3, augment_dim=9, pfgmpp=True, D=8)


# EDM's recipe: lr ramp-up and EMA half-life in images (a few steps' worth), augmentation at p = 0.5.
EDM_CONFIG = TrainConfig(steps=6, batch_size=16, lr=1e-3, warmup=0, lr_rampup_kimg=0.04, grad_clip=None,
                         ema_halflife_kimg=0.03, ema_rampup_ratio=0.5, checkpoint_every=3)
EDM_LOSS = PFGMppLoss(D=8, augment=AugmentPipe(p=0.5, **EDM_CIFAR10_KWARGS))


def test_edm_recipe_run_with_augmentation_resumes_bit_identically(tmp_path, images):
    whole = _fresh_state(EDM_CONFIG, make_net=_edm_with_dropout)
    history = train(whole, EDM_LOSS, images, EDM_CONFIG, progress=False)
    assert history[0]["lr"] == 0.0 and 0 < history[1]["lr"] < history[-1]["lr"] == 1e-3  # ramp-up in images

    first = _fresh_state(EDM_CONFIG, make_net=_edm_with_dropout)
    train(first, EDM_LOSS, images, replace(EDM_CONFIG, steps=3), checkpoint_dir=tmp_path, progress=False)
    torch.manual_seed(999)  # dropout draws from the global RNG: the checkpoint must restore it
    payload = load_checkpoint(latest_checkpoint(tmp_path))
    assert payload["network"]["class"] == "EDMPrecond"
    resumed = restore_state(payload, EDM_CONFIG)
    assert isinstance(resumed.net, EDMPrecond) and int(resumed.ema.num_updates) == 3
    train(resumed, EDM_LOSS, images, EDM_CONFIG, checkpoint_dir=tmp_path, progress=False)
    for a, b in zip(_tensors(whole), _tensors(resumed), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(whole.generator.get_state(), resumed.generator.get_state())


def test_edmprecond_round_trips(tmp_path):
    torch.manual_seed(0)
    net = _edm_with_dropout().eval()
    state = create_state(net, TrainConfig(steps=1), torch.Generator())
    rebuilt = build_network(load_checkpoint(save_checkpoint(tmp_path / "e.pt", state))).eval()
    assert isinstance(rebuilt, EDMPrecond) and rebuilt.config == net.config and rebuilt.D == 8
    x, sigma, labels = torch.randn(2, 1, 4, 4), torch.tensor([0.3, 3.0]), torch.randn(2, 9)
    assert torch.equal(rebuilt(x, sigma, augment_labels=labels), net(x, sigma, augment_labels=labels))


def test_divergence_writes_no_checkpoint_and_keeps_the_previous_one(tmp_path, images):
    config = replace(CONFIG, checkpoint_every=2)
    written = []

    def loss_fn(net, batch, generator):
        loss = LOSS(net, batch, generator)
        return loss + float("inf") if state.step >= 3 else loss

    state = _fresh_state(config)
    with pytest.raises(DivergenceError, match="step 4"):
        train(state, loss_fn, images, config, checkpoint_dir=tmp_path, progress=False,
              on_checkpoint=lambda p: written.append((p, p.read_bytes())))
    assert [p.name for p, _ in written] == ["checkpoint_00000002.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_00000002.pt"]
    assert written[0][0].read_bytes() == written[0][1]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    state = _fresh_state()
    path = save_checkpoint(tmp_path / "c.pt", state)
    before = path.read_bytes()

    def broken_save(obj, file):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    state.step = 99
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, state)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_rejects_foreign_files_and_networks(tmp_path):
    torch.save({"model": {}}, tmp_path / "official.pth")
    with pytest.raises(ValueError, match="not a pfgm-checkpoint"):
        load_checkpoint(tmp_path / "official.pth")
    state = create_state(torch.nn.Linear(2, 2), TrainConfig(steps=1), torch.Generator())
    with pytest.raises(ValueError, match="Linear"):
        save_checkpoint(tmp_path / "x.pt", state)
    assert latest_checkpoint(tmp_path) is None


def test_clearing_a_run_deletes_its_model_checkpoints_and_temporaries_only(tmp_path):
    ours = ["model.pt", "checkpoint_00000005.pt", "checkpoint_00000010.pt", ".model.pt.k2j4.tmp",
            ".checkpoint_00000015.pt.x81q.tmp"]
    others = ["notes.txt", "model.pt.bak", "samples.png"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(p.name for p in clear_run_files(tmp_path, "model.pt")) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
    assert clear_run_files(tmp_path / "missing", "model.pt") == []
