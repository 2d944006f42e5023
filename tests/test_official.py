"""pfgm.official: the release registry, what a configuration resolves to, and reading official files.

The files are the tiny official-format fixtures of shared/reference (skipped when that folder is absent).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pfgm.networks.ddpmpp import RELEASED_CONFIGS, kwargs_from_official
from pfgm.official import (
    PFGMPP_RELEASES,
    RELEASES,
    ImportOfficialError,
    PfgmppRelease,
    check_architecture,
    check_pfgmpp_options,
    checkpoint_info,
    data_metadata,
    model_metadata,
    official_config,
    pfgmpp_release,
    pfgmpp_spec,
    read_pfgm,
    read_pfgmpp_snapshot,
    release_spec,
    resolve_config,
)
from pfgm.perturb import prior_range
from pfgm.training import RunSpec

TINY_DIMS = 3 * 16 * 16  # tiny_ddpmpp_config.json: 3 channels, image_size 16
# PFGM.md section 2: CIFAR-10 with M = 291 implies z_max 43.4 and upper_norm 3015 ...
CIFAR10_DERIVED = dict(z_max=43.4, upper_norm=3015.0)
# ... and section 3's table: what each released config samples with (M, z_max, upper_norm).
PUBLISHED = {
    "cifar10_ddpmpp": (291, 40.0, 3000.0),
    "cifar10_ddpmpp_deep": (291, 40.0, 3000.0),
    "celeba64_ddpmpp": (291, 60.0, 6000.0),
    "bedroom_ddpmpp": (356, 100.0, 30000.0),
}


def tiny_json(ref: Path, folder: Path, **sections) -> Path:
    """The tiny official config with `sections` merged into its own (e.g. training=dict(M=64)), as JSON."""
    config = json.loads((ref / "tiny_ddpmpp_config.json").read_text())
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path = folder / "tiny.json"
    path.write_text(json.dumps(config))
    return path


# ---------------------------------------------------------------------------------------------------------
# PFGM configurations


def test_released_prior_ranges_are_the_published_ones():
    for name, (M, z_max, upper_norm) in PUBLISHED.items():
        assert release_spec(name, "published").hyperparameters == dict(M=M, z_max=z_max, upper_norm=upper_norm,
                                                                       gamma=5.0)
    derived = release_spec("cifar10_ddpmpp", "derived").hyperparameters
    assert derived["z_max"] == pytest.approx(CIFAR10_DERIVED["z_max"], abs=0.05)
    assert derived["upper_norm"] == pytest.approx(CIFAR10_DERIVED["upper_norm"], abs=0.5)
    assert set(RELEASES) == set(PUBLISHED)


@pytest.mark.parametrize("network", sorted(RELEASED_CONFIGS))
def test_official_config_round_trips_through_kwargs_from_official(network):
    assert kwargs_from_official(official_config(RELEASED_CONFIGS[network])) == RELEASED_CONFIGS[network]


def test_a_release_name_resolves_to_its_network_data_and_paper_configuration():
    spec = resolve_config("celeba64_ddpmpp")
    assert spec.name == "celeba64_ddpmpp" and spec.data_name == "celeba64" and spec.params == "celeba64-ddpmpp.yaml"
    assert spec.hyperparameters == dict(M=291, z_max=60.0, upper_norm=6000.0, gamma=5.0)
    assert kwargs_from_official(spec.official_config) == RELEASED_CONFIGS["celeba64"]
    derived = prior_range(291, 3 * 64 * 64, sigma=0.01, tau=0.03)
    assert spec.official == dict(sigma=0.01, tau=0.03, prior_range="published", derived=derived)
    assert resolve_config("celeba64_ddpmpp", prior="derived").hyperparameters == dict(M=291, **derived, gamma=5.0)


def test_a_json_config_resolves_from_its_own_training_and_sampling_sections(ref, tmp_path):
    path = tiny_json(ref, tmp_path, training=dict(M=64, tau=0.05, gamma=2.0), sampling=dict(z_max=9, upper_norm=90))
    spec = resolve_config(str(path))
    derived = prior_range(64, TINY_DIMS, sigma=0.01, tau=0.05)
    assert spec.name == str(path) and spec.data_name is None and spec.params is None
    assert spec.hyperparameters == dict(M=64, z_max=9.0, upper_norm=90.0, gamma=2.0)  # as the file states
    assert spec.official == dict(sigma=0.01, tau=0.05, prior_range="published", derived=derived)
    assert spec.official_config["model"]["nf"] == 32  # the file itself, for from_official
    assert resolve_config(str(path), prior="derived").hyperparameters == dict(M=64, **derived, gamma=2.0)


def test_a_json_config_without_a_prior_range_derives_it_from_M(ref, tmp_path):
    spec = resolve_config(str(ref / "tiny_ddpmpp_config.json"), M=291)  # the file has no training.M
    derived = prior_range(291, TINY_DIMS, sigma=0.01, tau=0.03)
    assert spec.hyperparameters == dict(M=291, **derived, gamma=5.0) and spec.official["prior_range"] == "derived"


BAD_CONFIGS = {
    "M with a release": (lambda ref, tmp: ("cifar10_ddpmpp", 100), ImportOfficialError, "--M applies to JSON"),
    "unknown name": (lambda ref, tmp: ("cifar100_ddpmpp", None), ImportOfficialError, "cifar10_ddpmpp_deep"),
    "missing json": (lambda ref, tmp: (str(tmp / "none.json"), None), FileNotFoundError, "none.json"),
    "not json": (lambda ref, tmp: (str(_write(tmp / "bad.json", "{")), None), ImportOfficialError, "not a readable"),
    "a list": (lambda ref, tmp: (str(_write(tmp / "list.json", "[]")), None), ImportOfficialError, "top level"),
    "no M": (lambda ref, tmp: (str(ref / "tiny_ddpmpp_config.json"), None), ImportOfficialError, "pass --M"),
    "M of 0": (lambda ref, tmp: (str(tiny_json(ref, tmp, training=dict(M=0))), None), ImportOfficialError, "--M"),
    "not DDPM++": (lambda ref, tmp: (str(tiny_json(ref, tmp, model=dict(name="ncsnv2"))), None),
                   ImportOfficialError, "--config"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_configuration_is_named(ref, tmp_path, case):
    make, error, named = BAD_CONFIGS[case]
    config, M = make(ref, tmp_path)
    with pytest.raises(error, match=re.escape(named)):
        resolve_config(config, M=M)


# ---------------------------------------------------------------------------------------------------------
# PFGM checkpoints


def test_checkpoint_info_reads_step_and_ema(ref):
    info = checkpoint_info(ref / "tiny_ddpmpp_checkpoint.pth")
    assert info["step"] == 0 and info["ema_decay"] == pytest.approx(0.9999)
    assert set(info) == {"step", "ema_decay", "ema_num_updates"}


def test_read_pfgm_gives_the_network_its_spec_and_provenance(ref):
    net, spec, info = read_pfgm(ref / "tiny_ddpmpp_checkpoint.pth", str(ref / "tiny_ddpmpp_config.json"),
                                "derived", 291)
    assert list(net.data_shape) == [3, 16, 16] and spec.hyperparameters["M"] == 291 and info["step"] == 0


@pytest.mark.parametrize("config, prior, named", [(None, "published", "name its configuration"),
                                                  ("cifar10_ddpmpp", "both", "--prior-range")])
def test_read_pfgm_needs_a_configuration_and_a_known_prior_range(ref, config, prior, named):
    with pytest.raises(ImportOfficialError, match=named):
        read_pfgm(ref / "tiny_ddpmpp_checkpoint.pth", config, prior, None)


def test_a_file_without_model_and_ema_is_no_pfgm_checkpoint(tmp_path):
    import torch

    path = tmp_path / "checkpoint_1.pth"
    torch.save(dict(model={}, step=3), path)
    with pytest.raises(ImportOfficialError, match="`model` and `ema` with `shadow_params`"):
        checkpoint_info(path)


# ---------------------------------------------------------------------------------------------------------
# PFGM++ snapshots (the tiny ncsnpp fixture: D = 128, images 3 x 8 x 8)


TINY_RELEASE = PfgmppRelease(128, "tiny", (3, 8, 8), "tiny-pfgmpp.yaml")


def fixture_run(edm_ref: Path, **changed) -> RunSpec:
    """The run our train stage would build the fixture's network from (its recorded kwargs, less those
    the data and the objective fill in), with `changed` network kwargs."""
    recorded = json.loads((edm_ref / "ncsnpp_config.json").read_text())["edmprecond_kwargs"]
    filled = ("img_resolution", "img_channels", "label_dim", "pfgmpp", "D")
    kwargs = {k: v for k, v in recorded.items() if k not in filled} | changed
    return RunSpec(network="EDMPrecond", network_kwargs=kwargs, objective="pfgmpp", D=128, M=None, z_max=None,
                   upper_norm=None, sigma=0.01, tau=0.03, gamma=5.0, restrict_M=True, small_batch=None,
                   reduce="mean", augment=0.12)  # EDM augmentation: augment_dim 9


def test_a_snapshot_reads_as_its_ema_network_and_provenance(edm_ref):
    net, info = read_pfgmpp_snapshot(edm_ref / "ncsnpp_snapshot.pkl")
    assert net.D == 128 and tuple(net.data_shape) == (3, 8, 8)
    assert info["key"] == "ema" and info["images"] == 0 and info["init_kwargs"]["model_channels"] == 16


def test_a_file_of_neither_kind_is_named(tmp_path):
    path = tmp_path / "junk.pkl"
    path.write_bytes(b"not a pickle")
    with pytest.raises(ImportOfficialError, match="neither an official PFGM checkpoint"):
        read_pfgmpp_snapshot(path)


def test_the_snapshot_fits_the_architecture_its_configuration_builds(edm_ref):
    net, _ = read_pfgmpp_snapshot(edm_ref / "ncsnpp_snapshot.pkl")
    where = dict(name="tiny", release=TINY_RELEASE, path=Path("s.pkl"))
    check_architecture(net, fixture_run(edm_ref), **where)
    check_architecture(net, fixture_run(edm_ref, dropout=0.3), **where)  # a training-only difference
    with pytest.raises(ImportOfficialError, match=r"the file's vs the configuration's model_channels: 16 vs 32"):
        check_architecture(net, fixture_run(edm_ref, model_channels=32), **where)


def test_a_release_is_checked_against_the_snapshot(edm_ref):
    net, _ = read_pfgmpp_snapshot(edm_ref / "ncsnpp_snapshot.pkl")
    with pytest.raises(ImportOfficialError, match=re.escape("D=128 and images [3, 8, 8], the release D=128 and "
                                                            "[3, 32, 32]")):
        pfgmpp_release("cifar10_ncsnpp_D_128", net, Path("s.pkl"))
    with pytest.raises(ImportOfficialError, match="ffhq_ddpm_D_128"):
        pfgmpp_release("cifar10_ncsnpp_D_64", net, Path("s.pkl"))
    assert set(PFGMPP_RELEASES) == {"cifar10_ncsnpp_D_128", "cifar10_ncsnpp_D_2048", "ffhq_ddpm_D_128"}


@pytest.mark.parametrize("config, M, named", [(None, 291, "--M applies to PFGM checkpoints"),
                                              ("cifar10_ddpmpp", None, "is a PFGM configuration"),
                                              ("mine.json", None, "is a PFGM configuration")])
def test_pfgm_options_are_refused_for_a_snapshot(config, M, named):
    with pytest.raises(ImportOfficialError, match=named):
        check_pfgmpp_options(Path("s.pkl"), config, M)
    check_pfgmpp_options(Path("s.pkl"), "cifar10_ncsnpp_D_128", None)  # a PFGM++ release is fine


def test_pfgmpp_spec_records_D_and_the_release(edm_ref):
    net, info = read_pfgmpp_snapshot(edm_ref / "ncsnpp_snapshot.pkl")
    bare = pfgmpp_spec(Path("s.pkl"), None, net, info, None)
    assert bare.name == "s.pkl" and bare.hyperparameters == {"D": 128} and bare.params is None
    assert bare.official == dict(format="pfgmpp-snapshot", **info) and bare.official_config == info["init_kwargs"]
    named = pfgmpp_spec(Path("s.pkl"), "tiny", net, info, TINY_RELEASE)
    assert (named.name, named.data_name, named.params) == ("tiny", "tiny", "tiny-pfgmpp.yaml")


# ---------------------------------------------------------------------------------------------------------
# Metadata


def test_metadata_without_data_takes_the_release_data_set(ref, tmp_path):
    spec = release_spec("cifar10_ddpmpp", "published")
    data = data_metadata(spec, [3, 32, 32], None)
    assert data == dict(name="cifar10", sha256=None, kind="image", shape=[3, 32, 32])
    with pytest.raises(ImportOfficialError, match="--data: "):
        data_metadata(spec, [3, 32, 32], tmp_path / "not-prepared")
    checkpoint = ref / "tiny_ddpmpp_checkpoint.pth"
    metadata = model_metadata("pfgm", spec, checkpoint, dict(step=7), data)
    assert metadata["objective"] == "pfgm" and metadata["hyperparameters"] == spec.hyperparameters
    official = metadata["official"]
    assert official["checkpoint"] == str(checkpoint.resolve()) and re.fullmatch(r"[0-9a-f]{64}", official["sha256"])
    assert official["config"] == "cifar10_ddpmpp" and official["step"] == 7 and official["tau"] == 0.03
