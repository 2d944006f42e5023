"""pfgm.files: whole files or nothing, and no temporaries left behind."""
import json

import pytest
import torch

from pfgm import files


def test_writers_replace_whole_files(tmp_path):
    text = files.write_text(tmp_path / "a" / "b.txt", "first")
    files.write_text(text, "second")
    assert text.read_text() == "second"
    data = files.write_json(tmp_path / "c.json", {"b": 1, "a": [1.5]})
    assert data.read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
    assert json.loads(data.read_text()) == {"a": [1.5], "b": 1}
    saved = files.save_torch(tmp_path / "d.pt", {"x": torch.arange(3)})
    assert torch.equal(torch.load(saved, weights_only=True)["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["b.txt", "c.json", "d.pt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = files.write_text(tmp_path / "keep.txt", "old")
    with pytest.raises(RuntimeError, match="midway"):
        with files.atomic_write(path, "w") as file:
            file.write("half of the new")
            raise RuntimeError("midway")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_only_whole_file_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with files.atomic_write(tmp_path / "x", "a"):
            pass
