"""EDM's augmentation pipeline: frequencies, label encoding, exact pixel moves, official numbers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pfgm.training.augment import (EDM_CIFAR10_KWARGS, AugmentPipe, resample, rotate2d, scale2d,
                                   translate2d)

ALL_ON = dict(xflip=1, yflip=1, rotate_int=1, translate_int=1, scale=1, rotate_frac=1, aniso=1,
              translate_frac=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
CIFAR_LABELS = ("xflip", "yflip", "scale", "rotate_frac_cos", "rotate_frac_sin", "aniso_cos", "aniso_sin",
                "translate_frac_x", "translate_frac_y")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def columns(pipe: AugmentPipe, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The label matrix (B, augment_dim) as named (B,) columns."""
    assert labels.shape[1] == pipe.augment_dim
    return {name: labels[:, i] for i, name in enumerate(pipe.label_names)}


def assert_fraction(hits: torch.Tensor, expected: float) -> None:
    """The fraction of True in `hits` is within 5 binomial standard deviations of `expected`."""
    n = hits.numel()
    bound = 5 * math.sqrt(expected * (1 - expected) / n)
    measured = hits.double().mean().item()
    assert abs(measured - expected) <= bound, (measured, expected, bound)


# --- layout -------------------------------------------------------------------------------------

def test_cifar10_setting_gives_edm_nine_labels_in_order():
    pipe = AugmentPipe(p=0.12, **EDM_CIFAR10_KWARGS)
    assert pipe.augment_dim == 9
    assert pipe.label_names == CIFAR_LABELS
    images, labels = pipe(torch.randn(5, 3, 8, 8), seeded())
    assert labels.shape == (5, 9) and images.shape == (5, 3, 8, 8)


def test_defaults_and_keywords_are_edms():
    pipe = AugmentPipe()
    assert pipe.p == 1 and pipe.augment_dim == 0
    assert (pipe.translate_int_max, pipe.scale_std, pipe.rotate_frac_max) == (0.125, 0.2, 1)
    assert pipe.aniso_std == 0.2
    assert (pipe.aniso_rotate_prob, pipe.translate_frac_std) == (0.5, 0.125)
    assert (pipe.brightness_std, pipe.contrast_std, pipe.hue_max, pipe.saturation_std) == (0.2, 0.5, 1, 1)
    assert AugmentPipe(p=1, **ALL_ON).augment_dim == 19
    images = torch.randn(3, 3, 8, 8)
    out, labels = pipe(images, seeded())
    assert torch.equal(out, images) and labels.shape == (3, 0)


# --- agreement with the official implementation -------------------------------------------------
# Numbers printed by NVlabs/edm training/augment.py (commit 0a2ff34) on the CPU after
# torch.manual_seed(3), on x = torch.randn(4, 3, 8, 8, generator=Generator().manual_seed(7)):
# labels (rounded to 1e-6), per-image sums and sums weighted by arange(192) / 192, and y[:, 1, 4, 2].
# A generator seeded 3 must reproduce them: same draws, same order, same arithmetic.
OFFICIAL = {
    "cifar": (dict(p=0.5, **EDM_CIFAR10_KWARGS), dict(
        labels=[[0.0, 1.0, -1.435179, -1.723547, -0.690275, -0.019139, 0.494819, -1.451023, 0.453501],
                [0.0, 1.0, 0.977432, -1.750959, -0.660349, 0.0, 0.0, 0.0, 0.0],
                [1.0, 0.0, 0.52205, -0.931695, -0.997664, 0.0, 0.0, 0.0, 0.0],
                [1.0, 1.0, 0.0, -1.339754, 0.940514, -1.059107, -0.0, 0.0, 0.0]],
        sums=[-5.12008, 16.7318, 22.50798, -25.31323],
        wsums=[-2.34656, 12.13531, 3.61785, -22.72297],
        pix=[-0.360046, -0.134645, -0.122584, -0.100064])),
    "all": (dict(p=0.6, **ALL_ON), dict(
        labels=[[0.0, 1.0, 0.0, 0.0, -1.0, -1.0, 0.0, -0.094779, -0.424942, -0.0, -0.0, -2.192527, -1.054711,
                 -0.109654, 0.0, 0.0, 0.0, 0.0, 0.401913],
                [0.0, 1.0, 1.0, 1.0, -1.0, -1.0, -0.164317, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.352967, 0.0, 1.0,
                 -0.018559, 0.191763, -0.614845],
                [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.677962, 0.0, 0.0, 0.0, 0.0, -0.939497, -0.52705, -0.444702,
                 -0.495685, 0.0, -1.963947, 0.266095, 0.0],
                [0.0, 1.0, 0.0, 0.0, 0.0, 1.0, -1.059107, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.950879, 0.0, 1.0,
                 -0.000583, 0.034128, 0.49485]],
        sums=[13.17201, -7.69752, 10.7846, 37.98101],
        wsums=[10.57762, -1.81326, 9.34309, 8.82649],
        pix=[0.151801, -1.182569, 0.208088, 2.706154])),
}


@pytest.mark.parametrize("case", sorted(OFFICIAL))
def test_reproduces_official_edm_numbers(case):
    kwargs, expected = OFFICIAL[case]
    x = torch.randn(4, 3, 8, 8, generator=seeded(7))
    y, labels = AugmentPipe(**kwargs)(x, seeded(3))
    weights = torch.arange(192, dtype=torch.float32) / 192
    torch.testing.assert_close(labels, torch.tensor(expected["labels"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.flatten(1).sum(1), torch.tensor(expected["sums"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.flatten(1) @ weights, torch.tensor(expected["wsums"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(y[:, 1, 4, 2], torch.tensor(expected["pix"]), atol=1e-5, rtol=0)


# --- statistics -----------------------------------------------------------------------------------

def test_blit_frequencies():
    p = 0.12
    pipe = AugmentPipe(p=p, xflip=1e8, yflip=1, rotate_int=1, translate_int=1, translate_int_max=0.25)
    _, labels = pipe(torch.zeros(20000, 1, 4, 4), seeded(1))
    c = columns(pipe, labels)
    # xflip * p >= 1: every image takes part, and the coin flips half of them, whatever p is.
    assert_fraction(c["xflip"] == 1, 0.5)
    assert_fraction(c["yflip"] == 1, p / 2)  # chosen with probability p, then a fair coin
    quarter_turns = c["rotate_int_x"] + 2 * c["rotate_int_y"]  # codes 1, 3, 2 for k = 1, 2, 3
    for code in (1, 2, 3):
        assert_fraction(quarter_turns == code, p / 4)  # k uniform in 0..3 once chosen
    # Shifts round(u * 4 * 0.25) with u uniform in [-1, 1]: zero on both axes with probability 1/4.
    moved = (c["translate_int_x"] != 0) | (c["translate_int_y"] != 0)
    assert_fraction(moved, p * 3 / 4)


def test_plain_xflip_multiplier_scales_with_p():
    for p, multiplier in ((0.12, 1.0), (0.4, 2.0), (0.0, 1e8)):
        pipe = AugmentPipe(p=p, xflip=multiplier)
        _, labels = pipe(torch.zeros(20000, 1, 2, 2), seeded(2))
        assert_fraction(labels[:, 0] == 1, min(1.0, p * multiplier) / 2)


def test_geometric_frequencies_cifar10_setting():
    p = 0.12
    pipe = AugmentPipe(p=p, **EDM_CIFAR10_KWARGS)
    _, labels = pipe(torch.zeros(4000, 1, 2, 2), seeded(3))
    c = columns(pipe, labels)
    assert_fraction(c["xflip"] == 1, 0.5)
    assert_fraction(c["yflip"] == 1, p / 2)
    for name in ("scale", "rotate_frac_sin", "aniso_cos", "translate_frac_x"):
        assert_fraction(c[name] != 0, p)
    assert_fraction(c["aniso_sin"] != 0, p * 0.5)  # aniso_rotate_prob of the scaled frames are rotated
    # The parameters, where applied: scale and translation N(0, 1), angles uniform on the circle.
    applied = c["scale"] != 0
    assert abs(c["scale"][applied].std().item() - 1) < 0.15
    angle = torch.atan2(c["rotate_frac_sin"], c["rotate_frac_cos"] + 1)[c["rotate_frac_sin"] != 0]
    assert angle.abs().max() <= math.pi and angle.abs().mean().sub(math.pi / 2).abs() < 0.25


def test_colour_frequencies():
    p = 0.3
    pipe = AugmentPipe(p=p, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    _, labels = pipe(torch.zeros(20000, 3, 2, 2), seeded(4))
    c = columns(pipe, labels)
    for name in ("brightness", "contrast", "hue_sin", "saturation"):
        assert_fraction(c[name] != 0, p)
    assert_fraction(c["lumaflip"] == 1, p / 2)


# --- exact pixel moves ------------------------------------------------------------------------------

def test_xflip_and_yflip_are_torch_flips_where_labelled():
    x = torch.randn(64, 3, 5, 7)
    for kwargs, dim in ((dict(xflip=1), 3), (dict(yflip=1), 2)):
        y, labels = AugmentPipe(p=1, **kwargs)(x, seeded(5))
        flipped = labels[:, 0] == 1
        assert 0 < flipped.sum() < 64 and set(labels[:, 0].tolist()) <= {0.0, 1.0}
        assert torch.equal(y[flipped], x[flipped].flip(dim))
        assert torch.equal(y[~flipped], x[~flipped])


def test_quarter_turns_are_rot90_counterclockwise_as_labelled():
    x = torch.randn(64, 2, 6, 6)
    y, labels = AugmentPipe(p=1, rotate_int=1)(x, seeded(6))
    # Labels (x-flip bit, y-flip bit) = (0, 0), (1, 0), (1, 1), (0, 1) for k = 0, 1, 2, 3.
    k_of = {(0, 0): 0, (1, 0): 1, (1, 1): 2, (0, 1): 3}
    ks = [k_of[(int(a), int(b))] for a, b in labels.tolist()]
    assert set(ks) == {0, 1, 2, 3}
    for i, k in enumerate(ks):
        assert torch.equal(y[i], torch.rot90(x[i], k, dims=(1, 2)))
    # k = 1 turns the first row into the first column, read upwards (counterclockwise on screen).
    i = ks.index(1)
    assert torch.equal(y[i, :, :, 0], x[i, :, 0, :].flip(-1))


def test_integer_translation_reflects_and_label_is_relative_shift():
    size, largest = 16, 0.25
    x = torch.randn(64, 3, size, size)
    y, labels = AugmentPipe(p=1, translate_int=1, translate_int_max=largest)(x, seeded(7))
    shifts = labels * (size * largest)  # pixels
    assert torch.equal(shifts, shifts.round()) and shifts.abs().max() == size * largest
    pad = int(size * largest)
    padded = F.pad(x, [pad] * 4, mode="reflect")  # reflection without repeating the edge
    for i, (tx, ty) in enumerate(shifts.round().long().tolist()):
        # EDM moves the content right by tx and up by ty: output[y, x] = input[y + ty, x - tx].
        expected = padded[i, :, pad + ty: pad + ty + size, pad - tx: pad - tx + size]
        assert torch.equal(y[i], expected)


def test_resample_integer_shift_and_identity_are_exact_up_to_rounding():
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    # Output-to-input map p -> p - (2, -1) and p - (-3, 1): content moves by (+2, -1) and (-3, +1).
    inverse = translate2d(torch.tensor([-2.0, 3.0]), torch.tensor([1.0, -1.0]))
    y = resample(x, inverse)
    assert (y[0, :, 4:12, 4:12] - x[0, :, 5:13, 2:10]).abs().max() < 1e-5
    assert (y[1, :, 4:12, 4:12] - x[1, :, 3:11, 7:15]).abs().max() < 1e-5
    identity = scale2d(torch.ones(2), torch.ones(2))
    assert (resample(x, identity) - x).abs().max() < 1e-5


# --- labels encode the continuous transforms: check them against the pixels --------------------------

SIZE = 24


def smooth(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A smooth, asymmetric test picture of centred pixel coordinates u (width) and v (height)."""
    return (torch.cos(2 * math.pi * (0.4 * u + 0.15 * v) / SIZE + 0.4)
            + 0.8 * torch.sin(2 * math.pi * (0.1 * u - 0.35 * v) / SIZE + 1.1))


def centred_grid() -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.arange(SIZE, dtype=torch.float64) - (SIZE - 1) / 2
    v, u = torch.meshgrid(c, c, indexing="ij")
    return u, v


def picture(batch: int) -> torch.Tensor:
    u, v = centred_grid()
    return smooth(u, v).expand(batch, 1, SIZE, SIZE).clone()


def mismatch(image: torch.Tensor, inverse: torch.Tensor) -> float:
    """Largest |image - smooth(inverse p)| over output pixels whose source lies well inside the input."""
    u, v = centred_grid()
    su = inverse[0, 0] * u + inverse[0, 1] * v + inverse[0, 2]
    sv = inverse[1, 0] * u + inverse[1, 1] * v + inverse[1, 2]
    inside = (su.abs() < SIZE / 2 - 3) & (sv.abs() < SIZE / 2 - 3)
    assert inside.sum() >= 16
    return (image[0] - smooth(su, sv))[inside].abs().max().item()


TOLERANCE = 0.03  # resampling error on this picture; a wrong transform is off by O(1)


def test_scale_label_is_log2_scale_in_stds():
    pipe = AugmentPipe(p=1, scale=1, scale_std=0.2)
    y, labels = pipe(picture(12), seeded(8))
    for image, w in zip(y, labels[:, 0].double()):
        s = 2 ** (0.2 * w)  # the picture is magnified by s: output p shows input p / s
        assert mismatch(image, scale2d(1 / s, 1 / s)) < TOLERANCE


def test_rotation_label_is_cos_minus_one_and_sin():
    pipe = AugmentPipe(p=1, rotate_frac=1)
    y, labels = pipe(picture(12), seeded(9))
    labels = labels.double()
    assert torch.allclose((labels[:, 0] + 1) ** 2 + labels[:, 1] ** 2, torch.ones(12, dtype=torch.float64))
    for image, (cos_minus_one, sin) in zip(y, labels):
        angle = torch.atan2(sin, cos_minus_one + 1)
        # output p shows input R(angle) p, R rotating from the width axis towards the height axis.
        assert mismatch(image, rotate2d(angle.view(1))[0]) < TOLERANCE


def test_translation_label_is_shift_in_stds():
    pipe = AugmentPipe(p=1, translate_frac=1, translate_frac_std=0.1)
    y, labels = pipe(picture(12), seeded(10))
    for image, (wx, wy) in zip(y, labels.double()):
        tx, ty = wx * 0.1 * SIZE, wy * 0.1 * SIZE  # content moves right by tx and down by ty
        assert mismatch(image, translate2d(-tx.view(1), -ty.view(1))[0]) < TOLERANCE


def test_anisotropic_label_is_w_times_direction():
    # Unrotated frame: label (w, 0) stretches the width by 2**(w std) and squeezes the height.
    y, labels = AugmentPipe(p=1, aniso=1, aniso_rotate_prob=0)(picture(8), seeded(11))
    assert torch.equal(labels[:, 1], torch.zeros(8))
    for image, w in zip(y, labels[:, 0].double()):
        s = 2 ** (0.2 * w)
        assert mismatch(image, scale2d((1 / s).view(1), s.view(1))[0]) < TOLERANCE
    # Rotated frames: the label w (cos r, sin r) fixes the transform up to (w, r) ~ (-w, r + pi).
    y, labels = AugmentPipe(p=1, aniso=1, aniso_rotate_prob=1)(picture(8), seeded(12))
    for image, (a, b) in zip(y, labels.double()):
        r, w = torch.atan2(b, a).view(1), torch.hypot(a, b).view(1)
        candidates = []
        for sign in (1, -1):
            s = 2 ** (0.2 * sign * w)
            candidates.append(rotate2d(-r) @ scale2d(1 / s, s) @ rotate2d(r))
        assert min(mismatch(image, g[0]) for g in candidates) < TOLERANCE


def test_cifar10_labels_determine_the_composed_transform():
    pipe = AugmentPipe(p=0.6, **EDM_CIFAR10_KWARGS, aniso_rotate_prob=0)
    y, labels = pipe(picture(16), seeded(13))
    for image, row in zip(y, labels.double()):
        xflip, yflip, w_scale, cos_minus_one, sin, w_aniso, _, wx, wy = row.view(9, 1)
        s, a = 2 ** (0.2 * w_scale), 2 ** (0.2 * w_aniso)
        inverse = (scale2d(1 / s, 1 / s) @ rotate2d(torch.atan2(sin, cos_minus_one + 1))
                   @ scale2d(1 / a, a) @ translate2d(-wx * 0.125 * SIZE, -wy * 0.125 * SIZE))[0]
        flips = torch.diag(torch.stack([1 - 2 * xflip[0], 1 - 2 * yflip[0], torch.ones((), dtype=row.dtype)]))
        assert mismatch(image, flips @ inverse) < TOLERANCE  # flips act first, on the source picture


# --- labels are zero exactly where nothing was done ---------------------------------------------------

def test_zero_labels_mean_unchanged_images():
    x = torch.randn(200, 3, 8, 8)
    y, labels = AugmentPipe(p=0.12, **EDM_CIFAR10_KWARGS)(x, seeded(14))
    untouched = (labels == 0).all(dim=1)
    touched_geometry = (labels[:, 2:] != 0).any(dim=1)
    assert 50 < untouched.sum() < 150
    # Rows without any label: only the (orthogonal) resampling chain ran; it returns the image.
    assert (y[untouched] - x[untouched]).abs().max() < 1e-4
    assert (y[touched_geometry] - x[touched_geometry]).abs().amax(dim=(1, 2, 3)).min() > 1e-3


@pytest.mark.parametrize("kwargs", [dict(EDM_CIFAR10_KWARGS), ALL_ON])
def test_probability_zero_is_identity(kwargs):
    x = torch.rand(32, 3, 8, 8) * 2 - 1
    y, labels = AugmentPipe(p=0, **kwargs)(x, seeded(15))
    assert torch.equal(labels, torch.zeros(32, labels.shape[1])) and labels.shape[1] in (9, 19)
    # As EDM, the resampling still runs for the enabled geometric transforms: identity up to rounding.
    assert (y - x).abs().max() < 1e-4


def test_probability_zero_without_resampling_is_exact():
    kwargs = dict(xflip=1, yflip=1, rotate_int=1, translate_int=1, brightness=1, contrast=1, lumaflip=1,
                  hue=1, saturation=1)
    x = torch.randn(32, 3, 8, 8)
    y, labels = AugmentPipe(p=0, **kwargs)(x, seeded(16))
    assert not labels.any()
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)  # the colour matrix is the identity in float32


# --- colour -------------------------------------------------------------------------------------------

def assert_colour_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """The colour matrix is float32 (EDM's draws and constants): float64 images match to float32 precision."""
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)


def colour_pipe(transform: str, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(16, 3, 4, 4, dtype=torch.float64)
    y, labels = AugmentPipe(p=1, **{transform: 1}, **kwargs)(x, seeded(17))
    return x, y, labels


def test_brightness_and_contrast_labels():
    x, y, labels = colour_pipe("brightness", brightness_std=0.2)
    assert_colour_close(y, x + 0.2 * labels.view(16, 1, 1, 1))
    x, y, labels = colour_pipe("contrast", contrast_std=0.5)
    assert_colour_close(y, x * 2 ** (0.5 * labels.view(16, 1, 1, 1)))


def test_lumaflip_mirrors_grey_component():
    x, y, labels = colour_pipe("lumaflip")
    grey = x.mean(dim=1, keepdim=True)
    flipped = labels.view(16) == 1
    assert 0 < flipped.sum() < 16
    assert_colour_close(y[flipped], (x - 2 * grey)[flipped])
    assert_colour_close(y[~flipped], x[~flipped])
    grey_images = torch.randn(16, 1, 4, 4)
    y, labels = AugmentPipe(p=1, lumaflip=1)(grey_images, seeded(17))
    assert_colour_close(y, grey_images * (1 - 2 * labels.view(16, 1, 1, 1)))  # grey: negation


def test_hue_rotates_about_grey_axis_and_saturation_scales_chroma():
    x, y, labels = colour_pipe("hue")
    angle = torch.atan2(labels[:, 1], labels[:, 0] + 1).view(16, 1, 1, 1)
    grey = x.mean(dim=1, keepdim=True)
    chroma = x - grey
    axis = torch.ones(3, dtype=torch.float64) / math.sqrt(3)
    cross = torch.linalg.cross(axis.view(1, 3, 1, 1).expand_as(chroma), chroma, dim=1)
    assert_colour_close(y, grey + angle.cos() * chroma + angle.sin() * cross)
    x, y, labels = colour_pipe("saturation", saturation_std=1.0)
    grey = x.mean(dim=1, keepdim=True)
    assert_colour_close(y, grey + (x - grey) * 2 ** labels.view(16, 1, 1, 1))


# --- randomness, device, dtype, errors ----------------------------------------------------------------

def test_generator_determinism_and_global_stream():
    pipe = AugmentPipe(p=0.5, **ALL_ON)
    x = torch.randn(8, 3, 8, 8)
    first, second = pipe(x, seeded(18)), pipe(x, seeded(18))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[1], pipe(x, seeded(19))[1])
    # Without a generator the draws come from the global one, in the same order (as EDM).
    torch.manual_seed(18)
    assert all(torch.equal(a, b) for a, b in zip(first, pipe(x)))


def test_dtype_follows_input():
    pipe = AugmentPipe(p=0.5, **ALL_ON)
    for dtype, label_dtype in ((torch.float32, torch.float32), (torch.float64, torch.float64)):
        y, labels = pipe(torch.randn(4, 3, 8, 8, dtype=dtype), seeded(20))
        assert y.dtype == dtype and labels.dtype == label_dtype
    y32, l32 = pipe(torch.randn(4, 3, 8, 8, generator=seeded(21)), seeded(20))
    y64, l64 = pipe(torch.randn(4, 3, 8, 8, generator=seeded(21)).double(), seeded(20))
    assert torch.equal(l32.double(), l64) and (y32.double() - y64).abs().max() < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_follows_input():
    pipe = AugmentPipe(p=0.5, **ALL_ON)
    x = torch.randn(4, 3, 8, 8)
    y_cpu, l_cpu = pipe(x, seeded(22))
    y, labels = pipe(x.cuda(), seeded(22))  # CPU generator, CUDA images: same draws, moved
    assert y.device.type == labels.device.type == "cuda"
    torch.testing.assert_close(labels.cpu(), l_cpu)
    torch.testing.assert_close(y.cpu(), y_cpu, atol=1e-4, rtol=0)
    y, labels = pipe(x.cuda(), torch.Generator(device="cuda").manual_seed(0))
    assert y.device.type == labels.device.type == "cuda"


def test_bad_input_is_refused_with_the_key():
    with pytest.raises(ValueError, match="AugmentPipe.scale_std"):
        AugmentPipe(scale_std=-1)
    with pytest.raises(ValueError, match="AugmentPipe.p"):
        AugmentPipe(p=float("nan"))
    with pytest.raises(ValueError, match="square"):
        AugmentPipe(rotate_int=1)(torch.zeros(2, 3, 4, 6))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        AugmentPipe(hue=1)(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        AugmentPipe(xflip=1)(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="floating-point"):
        AugmentPipe(xflip=1)(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
