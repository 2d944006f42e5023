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


def test_a_staged_folder_replaces_files_only_on_success(tmp_path):
    out = tmp_path / "reports" / "run"
    managed = ("table.md", "table.csv", "old.png")
    out.mkdir(parents=True)
    (out / "old.png").write_text("stale")
    (out / "notes.txt").write_text("not ours")
    with files.staged_folder(out, managed) as staging:
        for name in ("table.md", "table.csv"):
            (staging / name).write_text(name)
        assert not (out / "table.md").exists()  # nothing published inside the block
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "table.csv", "table.md"]  # stale old.png gone
    assert (out / "table.md").read_text() == "table.md"
    with pytest.raises(RuntimeError):
        with files.staged_folder(out, managed) as staging:
            (staging / "table.md").write_text("new")
            raise RuntimeError("logging failed")
    assert (out / "table.md").read_text() == "table.md" and (out / "table.csv").exists()  # untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]  # no staging folder left

