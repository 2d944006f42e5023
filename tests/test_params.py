"""flows.params: params.yaml loads into typed sections; bad keys and values name their key path."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from flows.params import (DataParams, EvaluateParams, Params, ParamsError, ReportParams, SweepParams, TrainParams,
                          load_params, load_section)
from pfgm.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, content) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def test_repository_params_load():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params) and isinstance(params.data, DataParams)
    assert load_section(REPO / "params.yaml", "data") == params.data


def test_each_stage_tracks_its_own_section_whole():
    """dvc.yaml names each stage's section, not its keys one by one: a new key is tracked as it is added."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        own = "data" if name == "prepare" else name
        assert own in stage["params"], name


def test_defaults_and_types(tmp_path):
    data = load_section(_write(tmp_path, {"data": {"name": "moons", "n_points": 100}}), "data")
    assert data.name == "moons" and data.n_points == 100
    assert data == DataParams(name="moons", n_points=100)  # everything else at its default
    assert data.seed == 0 and data.max_images is None


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"seed": -1}, "data.seed"),
        ({"seed": "3"}, "data.seed"),
        ({"seed": 1.5}, "data.seed"),
        ({"name": "mnist"}, "data.name"),
        ({"test_fraction": 1.0}, "data.test_fraction"),
        ({"channels": 2}, "data.channels"),
        ({"max_images": 1}, "data.max_images"),
        ({"out": "."}, "data.out"),
        ({"sed": 1}, "data.sed"),
    ],
)
def test_bad_value_names_the_key(tmp_path, section, key):
    path = _write(tmp_path, {"data": section})
    for load in (lambda: load_params(path), lambda: load_section(path, "data")):
        with pytest.raises(ValueError, match=rf"{key}:"):
            load()


def test_unknown_section(tmp_path):
    path = _write(tmp_path, {"data": {}, "trian": {"steps": 1}})
    with pytest.raises(ParamsError, match="trian"):
        load_params(path)
    # A stage reads only its own section.
    assert load_section(path, "data") == DataParams()
    with pytest.raises(ParamsError, match="unknown section"):
        load_section(path, "trian")


def test_not_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(path)
    path.write_text("data: 3\n")
    with pytest.raises(ParamsError, match="data:"):
        load_section(path, "data")


def test_the_code_defaults_are_params_yaml():
    """An omitted key takes the value params.yaml gives it: one set of defaults, held together here."""
    params = load_params(REPO / "params.yaml")
    for name in Params.model_fields:
        section = getattr(params, name)
        assert section == type(section)(), f"{name}: the code's defaults differ from params.yaml's"


def test_the_library_defaults_are_the_train_sections():
    """pfgm.training.TrainConfig's defaults equal the train section's (checkpoint_every: None means never)."""
    train = TrainParams()
    for field in dataclasses.fields(TrainConfig):
        if field.default is not dataclasses.MISSING and field.name != "checkpoint_every":
            expected = tuple(train.betas) if field.name == "betas" else getattr(train, field.name)
            assert field.default == expected, field.name


def test_the_sampler_keys_are_declared_once():
    sampler = {"method", "rtol", "atol", "steps", "z_min", "z_exp", "clip_prior"}
    for model in (EvaluateParams, ReportParams):
        assert sampler <= set(model.model_fields) and not sampler & set(model.__annotations__), model
    assert {"z_min", "z_exp", "clip_prior"} <= set(SweepParams.model_fields)
    assert not sampler & set(SweepParams.__annotations__)


@pytest.mark.parametrize(("content", "message"), [
    ("", "the file is empty"),
    ("data: {}\n", "train, evaluate, sweep, report: missing"),
])
def test_a_missing_section_is_refused_not_defaulted(tmp_path, content, message):
    path = tmp_path / "params.yaml"
    path.write_text(content)
    with pytest.raises(ParamsError, match=message):
        load_params(path)
    with pytest.raises(ParamsError, match="missing section" if content else "empty"):
        load_section(path, "train")
