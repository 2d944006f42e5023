"""pfgm.viz: each picture is written, non-empty and of the right kind; the GIF has one frame per height."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pfgm import viz


def _png(path) -> Image.Image:
    image = Image.open(path)
    assert image.format == "PNG" and image.size[0] > 50 and image.size[1] > 50
    return image


def test_to_uint8_and_tile():
    images = torch.tensor([-1.0, 0.0, 1.0, float("nan")]).reshape(4, 1, 1, 1)
    assert viz.to_uint8(images).ravel().tolist() == [0, 128, 255, 128]
    rows = np.arange(2 * 3 * 1 * 2 * 2, dtype=np.uint8).reshape(2, 3, 1, 2, 2)
    picture = viz.tile(rows, padding=1)
    assert picture.shape == (2 * 3 + 1, 3 * 3 + 1, 1)
    assert picture[1:3, 4:6, 0].tolist() == rows[0, 1, 0].tolist()  # row 0, column 1
    assert picture[0].tolist() == [[255]] * 10  # padding


def test_image_grid_pads_the_last_row_and_enlarges_pixels():
    images = torch.tensor([-1.0, 1.0, 1.0]).reshape(3, 1, 1, 1)
    picture = viz.image_grid(images, columns=2, fill=0, scale=2)
    assert picture.shape == (2 * 3 + 1, 2 * 3 + 1, 1)
    assert picture[1:3, 1:3, 0].tolist() == [[0, 0], [0, 0]] and picture[1:3, 4:6, 0].tolist() == [[255, 255]] * 2
    assert picture[4:6, 4:6, 0].tolist() == [[0, 0], [0, 0]]  # the blank cell
    assert picture[0].max() == 0  # padding


def test_samples_as_png_and_figure(tmp_path):
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    points = torch.randn(64, 2)
    for kind, samples in (("image", images), ("points", points)):
        _png(viz.save_samples(samples, kind, tmp_path / f"{kind}.png"))
        assert viz.samples_figure(samples, kind).axes
    assert Image.open(tmp_path / "image.png").size == (4 * 33 + 1, 4 * 33 + 1)  # 8x8 enlarged to 32x32


def test_image_grid_and_rows(tmp_path, generator):
    grey = torch.rand(10, 1, 8, 8, generator=generator) * 2 - 1
    colour = torch.rand(2, 5, 3, 8, 8, generator=generator) * 2 - 1
    _png(viz.save_image_grid(grey, tmp_path / "grid.png", columns=4, title="samples"))
    _png(viz.save_image_rows(colour, tmp_path / "rows.png", column_labels=[str(k) for k in range(5)]))
    with pytest.raises(ValueError, match="column labels"):
        viz.save_image_rows(colour, tmp_path / "bad.png", column_labels=["a"])


def test_interpolation_and_temperature_rows(tmp_path, generator, monkeypatch):
    first, second = torch.rand(2, 1, 4, 4, generator=generator), torch.rand(2, 1, 4, 4, generator=generator)
    decoded, weights = torch.rand(2, 3, 1, 4, 4, generator=generator), torch.tensor([0.0, 0.5, 1.0])
    _png(viz.save_interpolation(first, second, decoded, weights, tmp_path / "interpolation.png", skipped=2))
    _png(viz.save_temperature(decoded, [0.5, 1.0, 2.0], tmp_path / "temperature.png"))
    drawn = []
    monkeypatch.setattr(viz, "save_image_rows", lambda rows, path, **kwargs: drawn.append((rows, kwargs)))
    viz.save_interpolation(first, second, decoded, weights, tmp_path / "i.png", skipped=1)
    viz.save_interpolation(first, second, decoded, weights, tmp_path / "i.png")
    viz.save_temperature(decoded, [0.5, 1.0, 2.0], tmp_path / "t.png")
    (rows, kwargs), (_, plain), (hot, temperature) = drawn
    assert rows.shape == (2, 5, 1, 4, 4) and torch.equal(rows[:, 0], first) and torch.equal(rows[:, -1], second)
    assert torch.equal(rows[:, 1:-1], decoded) and kwargs["column_labels"] == ["A", "0.00", "0.50", "1.00", "B"]
    assert kwargs["title"] == ("test images A, B; their latents interpolated (slerp) and decoded "
                               "(1 test image skipped: forward flow diverged)")
    assert plain["title"] == "test images A, B; their latents interpolated (slerp) and decoded"
    assert torch.equal(hot, decoded) and temperature["column_labels"] == ["T=0.5", "T=1", "T=2"]


def test_nfe_vs_fid(tmp_path):
    curves = {"euler": [(20, 30.0, "20 steps"), (10, 60.0, "10 steps")], "dopri5": [(104, 12.0, "tol=1e-4")]}
    path = viz.save_nfe_vs_fid(curves, tmp_path / "sub" / "nfe_vs_fid.png", marks={"evaluate": (104, 12.5)},
                               floor=3.0, diverged={"euler": [(5, "5 steps")], "heun": [(10, "5 steps")]})
    _png(path)


def test_points_trajectories_and_animation(tmp_path, generator):
    frames, particles = 7, 30
    data = torch.randn(200, 2, generator=generator)
    z = torch.logspace(1, -3, frames, dtype=torch.float64)
    start = torch.randn(particles, 2, generator=generator) * 10
    x = torch.stack([data[:particles] + (start - data[:particles]) * (h / z[0]) for h in z])  # straight lines
    _png(viz.save_points(x[-1], tmp_path / "points.png", data=data))
    _png(viz.save_trajectories(x, z, data, tmp_path / "trajectories.png", title="test"))
    gif = viz.save_flow_animation(x, z, data, tmp_path / "flow.gif", fps=5)
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == frames
    with pytest.raises(ValueError, match="states"):
        viz.save_trajectories(x[..., :1], z, data, tmp_path / "bad.png")


def test_norm_curves(tmp_path):
    from pfgm.diagnostics import binned_curve

    heights = torch.logspace(-3, 1, 200, dtype=torch.float64)
    tied = binned_curve(heights, heights * 8.0 + 0.5, variable="sigma", bins=20)
    wide = binned_curve(heights, heights * torch.linspace(1, 50, 200, dtype=torch.float64), variable="z", bins=20)
    panels = {"PFGM": {"sampling": wide, "training (perturbed)": wide},
              "EDM": {"sampling": tied, "training (perturbed)": tied}}
    _png(viz.save_norm_curves(panels, tmp_path / "norm_z.png", title="norm against height"))
    with pytest.raises(ValueError, match="no panels"):
        viz.save_norm_curves({}, tmp_path / "empty.png")
