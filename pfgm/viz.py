"""Pictures: image grids, sample figures, the NFE-FID plot, norm-z curves, field lines of 2D toys (still, GIF).

Figures are built with matplotlib's object API (`matplotlib.figure.Figure`) and written by the Agg
renderer, so nothing here touches pyplot's global state or needs a display. Every function takes
tensors or arrays, writes one file and returns its path; none knows of MLflow or params.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.animation import PillowWriter
from matplotlib.figure import Figure
from PIL import Image

if TYPE_CHECKING:
    from pfgm.diagnostics import NormCurve

PathLike = str | os.PathLike
#: Cap on the field lines drawn in the still picture: more only blurs it.
MAX_LINES = 150


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (any leading shape, then C, H, W) -> uint8 array of the same shape.

    Non-finite values (a diverged sample) are shown as mid-grey rather than failing the picture.
    """
    x = torch.nan_to_num(images.detach().float().cpu(), nan=0.0, posinf=1.0, neginf=-1.0)
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).numpy()


def tile(rows: np.ndarray, padding: int = 1, fill: int = 255) -> np.ndarray:
    """uint8 images (R, T, C, H, W) -> one picture (R (H + p) + p, T (W + p) + p, C), p = padding."""
    n_rows, n_cols, channels, height, width = rows.shape
    out = np.full((n_rows * (height + padding) + padding, n_cols * (width + padding) + padding, channels),
                  fill, dtype=np.uint8)
    for r in range(n_rows):
        for c in range(n_cols):
            top, left = padding + r * (height + padding), padding + c * (width + padding)
            out[top:top + height, left:left + width] = rows[r, c].transpose(1, 2, 0)
    return out


def _save(fig: Figure, path: PathLike, dpi: int = 100, bbox_inches: str | None = "tight") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches=bbox_inches)
    return path


def _show(ax, picture: np.ndarray) -> None:
    if picture.shape[-1] == 1:
        ax.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(picture, interpolation="nearest")


def image_grid(images: torch.Tensor, *, columns: int = 8, padding: int = 1, fill: int = 255,
               scale: int = 1) -> np.ndarray:
    """Images (n, C, H, W) in [-1, 1] -> one uint8 picture (H', W', C), `columns` per row.

    The last row is padded with blank cells of `fill`; `scale` repeats each pixel (nearest-neighbour
    enlargement) before tiling, so the padding stays `padding` pixels wide.
    """
    pixels = to_uint8(images).repeat(scale, axis=-2).repeat(scale, axis=-1)
    n_rows = math.ceil(len(pixels) / columns)
    blank = np.full((n_rows * columns - len(pixels), *pixels.shape[1:]), fill, dtype=np.uint8)
    return tile(np.concatenate([pixels, blank]).reshape(n_rows, columns, *pixels.shape[1:]), padding, fill)


def save_image_grid(images: torch.Tensor, path: PathLike, *, columns: int = 8, title: str | None = None) -> Path:
    """A grid of images (n, C, H, W) in [-1, 1], `columns` per row (the last row padded blank)."""
    picture = image_grid(images, columns=columns)
    n_rows = math.ceil(len(images) / columns)
    fig = Figure(figsize=(columns * 0.6 + 0.4, n_rows * 0.6 + 0.6))
    ax = fig.add_subplot()
    _show(ax, picture)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _scatter(ax, points: torch.Tensor) -> None:
    """2D points (n, D) as dots: the first two coordinates (one, twice, for D = 1); non-finite rows dropped."""
    points = points.detach().float().cpu().reshape(len(points), -1)
    points = points[torch.isfinite(points).all(dim=1)].numpy()
    ax.scatter(points[:, 0], points[:, 1 if points.shape[1] > 1 else 0], s=2)
    ax.set_aspect("equal", adjustable="datalim")


def samples_figure(samples: torch.Tensor, kind: str, *, max_images: int = 64, columns: int = 8) -> Figure:
    """A figure of samples: the first `max_images` images (n, C, H, W) in [-1, 1] as a grid on black, or a
    scatter plot of points (n, D) when `kind` is "points". Nothing needs closing afterwards."""
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    if kind == "points":
        _scatter(ax, samples)
        return fig
    _show(ax, image_grid(samples[:max_images], columns=columns, fill=0))
    ax.axis("off")
    return fig


def save_samples(samples: torch.Tensor, kind: str, path: PathLike) -> Path:
    """A PNG of samples: images (n, C, H, W) in [-1, 1] pixel for pixel in a square-ish grid (enlarged to
    at least 32 pixels a side: 8x8 digits would be specks), or points (n, D) as a scatter plot."""
    if kind == "points":
        return _save(samples_figure(samples, kind), path, bbox_inches=None)
    picture = image_grid(samples, columns=math.ceil(math.sqrt(len(samples))), fill=0,
                         scale=max(1, 32 // samples.shape[-1]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(path)
    return path


def save_image_rows(rows: torch.Tensor, path: PathLike, *, column_labels: Sequence[str] | None = None,
                    title: str | None = None) -> Path:
    """Rows of images (R, T, C, H, W) in [-1, 1] as one picture, each column under a label."""
    pixels = to_uint8(rows)
    picture = tile(pixels)
    n_rows, n_cols, _, height, width = pixels.shape
    fig = Figure(figsize=(n_cols * 0.75 + 0.4, n_rows * 0.75 + 0.8))
    ax = fig.add_subplot()
    _show(ax, picture)
    ax.set_yticks([])
    if column_labels is not None:
        if len(column_labels) != n_cols:
            raise ValueError(f"{n_cols} columns but {len(column_labels)} column labels")
        ax.set_xticks([1 + c * (width + 1) + (width - 1) / 2 for c in range(n_cols)])
        ax.set_xticklabels(column_labels, fontsize=7, rotation=45 if n_cols > 8 else 0)
    else:
        ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def save_interpolation(first: torch.Tensor, second: torch.Tensor, decoded: torch.Tensor, weights: torch.Tensor,
                       path: PathLike, *, skipped: int = 0) -> Path:
    """Interpolation rows [image A, decoded path..., image B]: first, second (B, C, H, W) the encoded
    images, decoded (B, T, C, H, W) their latents' path at `weights` (T,) (pfgm.latent.Interpolation);
    the title counts the `skipped` images whose forward flow diverged."""
    rows = torch.cat([first[:, None], decoded, second[:, None]], dim=1)
    labels = ["A"] + [f"{w:.2f}" for w in weights.tolist()] + ["B"]
    note = (f" ({skipped} test image{'s' if skipped > 1 else ''} skipped: forward flow diverged)"
            if skipped else "")
    return save_image_rows(rows, path, column_labels=labels,
                           title=f"test images A, B; their latents interpolated (slerp) and decoded{note}")


def save_temperature(decoded: torch.Tensor, temperatures: Sequence[float], path: PathLike) -> Path:
    """Latents decoded at each temperature: decoded (B, T, C, H, W), one column per temperature (T,)."""
    return save_image_rows(decoded, path, column_labels=[f"T={t:g}" for t in temperatures],
                           title="the same latents scaled by T and decoded")


def _plot_families(ax, curves: Mapping[str, Sequence[tuple[float, float, str]]],
                   families: Sequence[str]) -> dict[str, str]:
    """One line per family (points sorted by NFE, each labelled); returns each family's colour."""
    colours = {}
    for family in families:
        points = sorted(curves.get(family, []))
        line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=family)
        colours[family] = line.get_color()
        for x, y, label in points:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
    return colours


def _plot_diverged(ax, diverged: Mapping[str, Sequence[tuple[float, str]]], colours: Mapping[str, str]) -> None:
    """Crosses on the top edge, in each family's colour, for settings whose samples diverged."""
    for family, points in diverged.items():
        for x, label in points:
            # x in data units, y on the axes' top edge: a diverged setting has no FID to plot.
            ax.plot([x], [1.0], marker="x", color=colours[family], transform=ax.get_xaxis_transform(),
                    clip_on=False, linestyle="none")
            ax.annotate(f"{label}: diverged", (x, 1.0), xycoords=ax.get_xaxis_transform(), textcoords="offset points",
                        xytext=(3, -9), fontsize=6, color=colours[family])


def save_nfe_vs_fid(curves: Mapping[str, Sequence[tuple[float, float, str]]], path: PathLike, *,
                    diverged: Mapping[str, Sequence[tuple[float, str]]] | None = None,
                    marks: Mapping[str, tuple[float, float]] | None = None, floor: float | None = None,
                    title: str | None = None) -> Path:
    """FID against NFE (log scale), one line per solver family, as in the paper's robustness figure.

    Args:
        curves: family (e.g. "Euler", "RK45") -> points (nfe, fid, label); a label such as
            "20 steps" or "tol=1e-4" is written beside its point.
        diverged: family -> settings (nfe, label) whose samples diverged (no FID), drawn as crosses
            on the top edge in the family's colour, so that a failing solver shows as failing.
        marks: single named points drawn as stars (e.g. the evaluate run).
        floor: FID of the data against itself, drawn as a dashed line (what a perfect model reaches).
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    diverged = diverged or {}
    colours = _plot_families(ax, curves, list(dict.fromkeys([*curves, *diverged])))
    if diverged:
        # Head room above the highest FID for the crosses and their labels.
        highest = max([p[1] for points in curves.values() for p in points] + [floor or 0.0, 1.0])
        ax.set_ylim(0.0, highest * 1.2)
    _plot_diverged(ax, diverged, colours)
    for name, (x, y) in (marks or {}).items():
        ax.plot([x], [y], marker="*", markersize=12, linestyle="none", label=name)
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle="--", linewidth=1, label="data floor (train vs test)")
    ax.set_xscale("log")
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel("FID")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


#: Axis labels of the height variables of pfgm.diagnostics.NormCurve.
HEIGHT_LABELS = {"z": "z (PFGM's augmented coordinate)", "sigma": "σ (noise level, r = σ √D)"}


def save_norm_curves(panels: Mapping[str, Mapping[str, NormCurve]], path: PathLike, *, columns: int = 3,
                     title: str | None = None) -> Path:
    """The paper's norm-z / norm-σ figure: per panel (a model), each curve's mean ||x|| against the
    height on log-log axes, shaded ±1 standard deviation.

    Args:
        panels: panel title -> curve label (e.g. "sampling", "training (perturbed)") -> NormCurve
            (pfgm.diagnostics). Each panel's x axis is named by its curves' variable (z or σ).
        columns: panels per row.
    The shade's lower edge is clipped above zero (a log axis has no room for mean - std <= 0).
    """
    if not panels:
        raise ValueError("no panels to draw")
    rows = math.ceil(len(panels) / columns)
    cols = min(columns, len(panels))
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows + (0.4 if title else 0)))
    for index, (name, curves) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, index + 1)
        variables = set()
        for label, curve in curves.items():
            height, mean, std = (np.asarray(t.double()) for t in (curve.height, curve.mean, curve.std))
            kept = (height > 0) & (mean > 0)
            height, mean, std = height[kept], mean[kept], std[kept]
            line, = ax.plot(height, mean, marker=".", markersize=3, linewidth=1.2, label=label)
            floor = mean.min() * 1e-2 if mean.size else 1e-12
            ax.fill_between(height, np.maximum(mean - std, floor), mean + std, color=line.get_color(), alpha=0.25,
                            linewidth=0)
            variables.add(curve.variable)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(" / ".join(HEIGHT_LABELS[v] for v in sorted(variables)), fontsize=8)
        ax.set_ylabel("||x|| (data part)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def save_points(x: torch.Tensor, path: PathLike, *, data: torch.Tensor | None = None,
                title: str | None = None) -> Path:
    """2D samples (n, 2) as a scatter plot, over the data (m, 2) in grey when given."""
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    if data is not None:
        ax.scatter(data[:, 0], data[:, 1], s=1, color="0.8", label="data")
    finite = x[torch.isfinite(x).all(dim=1)]
    ax.scatter(finite[:, 0], finite[:, 1], s=2, label="samples")
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper right")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _start_colours(start: np.ndarray) -> np.ndarray:
    """Colour each particle by the azimuth of its starting point on the hemisphere."""
    from matplotlib import colormaps

    azimuth = (np.arctan2(start[:, 1], start[:, 0]) + np.pi) / (2 * np.pi)
    return colormaps["twilight"](azimuth)


def _data_box(data: np.ndarray) -> tuple[np.ndarray, float]:
    centre = (data.max(axis=0) + data.min(axis=0)) / 2
    return centre, float(np.abs(data - centre).max()) * 1.15


def _as_arrays(x, z, data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, z, data = (np.asarray(torch.as_tensor(a).detach().double().cpu()) for a in (x, z, data))
    if x.ndim != 3 or x.shape[2] != 2 or z.shape != (x.shape[0],):
        raise ValueError(f"need states (T, B, 2) and heights (T,), got {x.shape} and {z.shape}")
    return x, z, data


def save_trajectories(x, z, data, path: PathLike, *, title: str | None = None) -> Path:
    """Field lines of 2D points: states x (T, B, 2) at heights z (T,), over the data (M, 2).

    Left, the augmented space (x1, x2, z) with the data on the plane z = 0; right, the same lines
    seen from above, zoomed on the data. Colours follow each line's starting azimuth.
    """
    x, z, data = _as_arrays(x, z, data)
    x = x[:, :MAX_LINES]
    colours = _start_colours(x[0])
    fig = Figure(figsize=(10, 4.6))
    fig.subplots_adjust(wspace=0.3)  # room for the 3D panel's z label
    space = fig.add_subplot(1, 2, 1, projection="3d")
    top = fig.add_subplot(1, 2, 2)
    space.scatter(data[:, 0], data[:, 1], 0, s=1, color="0.6")
    for line in range(x.shape[1]):
        space.plot(x[:, line, 0], x[:, line, 1], z, color=colours[line], linewidth=0.6)
        top.plot(x[:, line, 0], x[:, line, 1], color=colours[line], linewidth=0.6)
    space.set_xlabel("x1")
    space.set_ylabel("x2")
    space.set_zlabel("z")
    space.set_title("field lines from the plane z = z_max to the data", fontsize=8)
    top.scatter(data[:, 0], data[:, 1], s=1, color="0.6", zorder=0)
    top.scatter(x[-1, :, 0], x[-1, :, 1], s=4, color="black", zorder=3)
    centre, half = _data_box(data)
    top.set_xlim(centre[0] - half, centre[0] + half)
    top.set_ylim(centre[1] - half, centre[1] + half)
    top.set_aspect("equal")
    top.set_title("seen from above (zoomed on the data); dots: ends", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _frame_half_width(points: np.ndarray, centre: np.ndarray, data_half: float) -> float:
    """Zoom that follows the particles in: 95% of them in view, never tighter than the data."""
    spread = np.abs(points[np.isfinite(points).all(axis=1)] - centre).max(axis=1)
    return max(data_half, float(np.quantile(spread, 0.95)) * 1.05 if spread.size else data_half)


def _flow_figure(x: np.ndarray, z: np.ndarray, data: np.ndarray, centre: np.ndarray) -> tuple[Figure, Any, Any]:
    """The animation's figure without particles: left the augmented space around the prior's reach,
    right the view from above, both over the data in grey. Returns (figure, space axes, top axes)."""
    fig = Figure(figsize=(8, 4))
    fig.subplots_adjust(wspace=0.3)
    space = fig.add_subplot(1, 2, 1, projection="3d")
    top = fig.add_subplot(1, 2, 2)
    space.scatter(data[:, 0], data[:, 1], 0, s=1, color="0.7")
    reach = float(np.abs(x[0] - centre).max())
    space.set_xlim(centre[0] - reach, centre[0] + reach)
    space.set_ylim(centre[1] - reach, centre[1] + reach)
    space.set_zlim(0, float(z[0]))
    space.set_xlabel("x1")
    space.set_ylabel("x2")
    space.set_zlabel("z")
    top.scatter(data[:, 0], data[:, 1], s=1, color="0.7", zorder=0)
    top.set_aspect("equal")
    return fig, space, top


def _grab_frames(writer: PillowWriter, fig: Figure, space, top, x: np.ndarray, z: np.ndarray, *,
                 centre: np.ndarray, data_half: float, title: str | None) -> None:
    """One frame per height: the particles at x[frame] in both panels, the top view zoomed on them."""
    colours = _start_colours(x[0])
    particles_3d = space.scatter(x[0, :, 0], x[0, :, 1], np.full(x.shape[1], z[0]), s=3, c=colours,
                                 depthshade=False)
    particles_top = top.scatter(x[0, :, 0], x[0, :, 1], s=3, c=colours, zorder=2)
    heading = fig.suptitle("", fontsize=9)
    for frame in range(len(z)):
        particles_3d.remove()  # a fresh 3D scatter per frame: the public way to move its points
        particles_3d = space.scatter(x[frame, :, 0], x[frame, :, 1], np.full(x.shape[1], z[frame]), s=3,
                                     c=colours, depthshade=False)
        particles_top.set_offsets(x[frame])
        half = _frame_half_width(x[frame], centre, data_half)
        top.set_xlim(centre[0] - half, centre[0] + half)
        top.set_ylim(centre[1] - half, centre[1] + half)
        heading.set_text(f"{title + ': ' if title else ''}z = {z[frame]:.3g} (frame {frame + 1}/{len(z)})")
        writer.grab_frame()


def save_flow_animation(x, z, data, path: PathLike, *, fps: int = 10, dpi: int = 72,
                        title: str | None = None) -> Path:
    """A GIF of particles x (T, B, 2) following the field from z[0] = z_max down to the data (M, 2).

    One frame per recorded height. Left, the augmented space (x1, x2, z); right, the view from above,
    zooming in from the prior's spread to the data as the particles land.
    """
    x, z, data = _as_arrays(x, z, data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    centre, data_half = _data_box(data)
    fig, space, top = _flow_figure(x, z, data, centre)
    writer = PillowWriter(fps=fps)
    with writer.saving(fig, str(path), dpi=dpi):
        _grab_frames(writer, fig, space, top, x, z, centre=centre, data_half=data_half, title=title)
    return path
