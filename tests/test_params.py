"""flows.params: params.yaml loads into typed sections; bad keys and values name their key path."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.params import DataParams, Params, ParamsError, load_params, load_section

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, content) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def test_repository_params_load():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params) and isinstance(params.data, DataParams)
    assert load_section(REPO / "params.yaml", "data") == params.data


def test_params_keys_match_dvc_yaml():
    """Every `data` key is listed in dvc.yaml's prepare stage, and nothing else is."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["prepare"]
    assert sorted(stage["params"]) == sorted(f"data.{k}" for k in DataParams.model_fields)


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
