"""EDM's data augmentation and its conditioning labels (Karras et al. 2022, NVlabs/edm training/augment.py).

PFGM++ trains its CIFAR-10 networks with EDM's recipe: each training image is randomly flipped, rotated,
scaled and shifted with a small probability p (0.12), and the network is told what was done through
`augment_labels`, a vector it adds (through a linear layer) to its noise embedding. At sampling time
the labels are zero, so the network generates un-augmented images while having learned from
augmented ones without leaking the augmentations into its samples.

`AugmentPipe(**kwargs)(images, generator) -> (images, labels)`: images (B, C, H, W) in, the same
shape out; labels (B, augment_dim). Each enabled transform appends its entries to the labels, in
EDM's order (`LABEL_LAYOUT`), so a network trained here conditions exactly like an official
checkpoint. Every entry is zero when its transform is not applied; the encodings are chosen so
that zero means "identity" (e.g. cos(angle) - 1 rather than cos(angle)).

Three stages, as EDM:
1. Pixel blitting (exact, no resampling): x/y flips, rotations by multiples of 90 degrees, integer
   translation with reflection at the borders.
2. General geometric transforms (isotropic / anisotropic scaling, any rotation, fractional
   translation): one 3x3 homogeneous matrix per image, mapping *output* pixel coordinates (centred on
   the image) to *input* coordinates. The image is reflect-padded, upsampled 2x with the sym6
   wavelet's low-pass filter, resampled bilinearly with `grid_sample`, then filtered and decimated
   back, which aliases far less than bilinear sampling at the original resolution.
3. Colour transforms (brightness, contrast, luma flip, hue, saturation): one 4x4 affine matrix per
   image acting on RGB.

Randomness: every number is drawn from `generator` (on its device; results move to the images'
device), in the order and shapes EDM draws them from the global generator, so on the CPU a
generator seeded s reproduces EDM run after `torch.manual_seed(s)`: float32 images and labels then
equal EDM's bit for bit (checked against the official code for all transforms).

Numerical behaviour, EDM's and kept: whenever a general geometric transform is enabled, the whole
batch goes through the resampling chain, also the images drawn as identity (and all of them at
p = 0); the chain is the identity only up to rounding (about 1e-5 on images in [-1, 1]). The sym6
filter is not symmetric, so a transform that turns the image around does not undo the filter's
phase exactly: rotated by 180 degrees, a single bright pixel keeps 93% of its value and gains side
lobes of up to 9%, while smooth content is reproduced to within a few 1e-3 of its range. Matrices
are float32 as in EDM; float64 images (which EDM's `grid_sample` call refuses) are resampled and
recoloured with those float32 matrices cast to float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from pfgm._random import draw

# Settings of NVlabs/edm `train.py` (and Newbeeer/pfgmpp's copy of it) for CIFAR-10 with --augment=p:
# AugmentPipe(p=p, **EDM_CIFAR10_KWARGS) and the network built with augment_dim=9. xflip=1e8 makes
# the x-flip decision independent of p: every image is x-flipped with probability 1/2.
EDM_CIFAR10_KWARGS = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)

# Label entries each transform appends, in EDM's order (`AugmentPipe.__call__` of training/augment.py).
LABEL_LAYOUT = (
    ("xflip", ("xflip",)),                                    # 1 if flipped along width, else 0
    ("yflip", ("yflip",)),                                    # 1 if flipped along height, else 0
    ("rotate_int", ("rotate_int_x", "rotate_int_y")),         # the x-flip and y-flip bits of k*90 degrees
    ("translate_int", ("translate_int_x", "translate_int_y")),  # shift / (size * translate_int_max)
    ("scale", ("scale",)),                                    # w, the scale is 2**(w * scale_std)
    ("rotate_frac", ("rotate_frac_cos", "rotate_frac_sin")),  # cos(angle) - 1, sin(angle)
    ("aniso", ("aniso_cos", "aniso_sin")),                    # w cos(r), w sin(r)
    ("translate_frac", ("translate_frac_x", "translate_frac_y")),  # shift / (size * translate_frac_std)
    ("brightness", ("brightness",)),                          # w, the offset is w * brightness_std
    ("contrast", ("contrast",)),                              # w, the gain is 2**(w * contrast_std)
    ("lumaflip", ("lumaflip",)),                              # 1 if the luma was mirrored, else 0
    ("hue", ("hue_cos", "hue_sin")),                          # cos(angle) - 1, sin(angle)
    ("saturation", ("saturation",)),                          # w, the gain is 2**(w * saturation_std)
)

# Low-pass decomposition filter of the Symlet-6 wavelet (the values EDM uses, from PyWavelets).
# Orthogonal: its even shifts are orthonormal, so upsampling then downsampling with it is the
# identity (up to rounding), and the pair loses nothing when the resampling in between is exact.
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)
_SYM6_PAD = len(SYM6) // 4  # output border kept around the image through the resampling chain


# ----------------------------------------------------------------------------------------------
# Homogeneous matrices, batched: each entry is a float or a (B,) tensor; the result is (B, k, k), or
# (k, k) when every entry is a float (then `like` gives dtype and device).

def _matrix(rows: list[list], like: Tensor | None = None) -> Tensor:
    """Stack a k x k nested list of floats and equally shaped tensors into (*shape, k, k).

    dtype and device are the tensors' (float32 for EDM's draws), or float32 on `like`'s device.
    """
    tensors = [e for row in rows for e in row if isinstance(e, Tensor)]
    ref = tensors[0] if tensors else like.new_zeros((), dtype=torch.float32)
    entries = [torch.as_tensor(e, dtype=ref.dtype, device=ref.device).expand(ref.shape)
               for row in rows for e in row]
    return torch.stack(entries, dim=-1).reshape(*ref.shape, len(rows), len(rows[0]))


def translate2d(tx, ty, like: Tensor | None = None) -> Tensor:
    """Translation by (tx, ty) pixels: (B, 3, 3) for (B,) tensors, (3, 3) for floats."""
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], like)


def scale2d(sx, sy, like: Tensor | None = None) -> Tensor:
    """Scaling by sx along the width and sy along the height: (B, 3, 3) or (3, 3)."""
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], like)


def rotate2d(theta: Tensor) -> Tensor:
    """(B, 3, 3) rotation by theta (B,) radians, from the x (width) axis towards the y (height) axis."""
    return _matrix([[theta.cos(), (-theta).sin(), 0], [theta.sin(), theta.cos(), 0], [0, 0, 1]])


def translate3d(t: Tensor) -> Tensor:
    """(B, 4, 4) colour offset: adds t (B,) to each of R, G, B."""
    return _matrix([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]])


def scale3d(s: Tensor) -> Tensor:
    """(B, 4, 4) colour gain: multiplies R, G, B by s (B,)."""
    return _matrix([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]])


def rotate3d(axis: Tensor, theta: Tensor) -> Tensor:
    """(B, 4, 4) rotation of RGB by theta (B,) radians about the unit `axis` (4,) (Rodrigues' formula)."""
    vx, vy, vz = axis[0], axis[1], axis[2]
    s, c = theta.sin(), theta.cos()
    cc = 1 - c
    return _matrix([[vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
                    [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
                    [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
                    [0, 0, 0, 1]])


def _product(first: Tensor | None, second: Tensor | None) -> Tensor | None:
    """first @ second, where None stands for the identity (nothing composed yet)."""
    if first is None or second is None:
        return second if first is None else first
    return first @ second


# ----------------------------------------------------------------------------------------------
# Random draws.

class _Draws:
    """Draws from one generator (None: the global one), returned on `device`; float32, int64 for integers."""

    def __init__(self, generator: torch.Generator | None, device: torch.device):
        self.generator, self.device = generator, device

    def uniform(self, *shape: int) -> Tensor:
        """U[0, 1) of `shape`."""
        return draw(torch.rand, shape, generator=self.generator, device=self.device, dtype=torch.float32)

    def symmetric(self, *shape: int) -> Tensor:
        """U[-1, 1) of `shape`."""
        return self.uniform(*shape) * 2 - 1

    def normal(self, *shape: int) -> Tensor:
        """N(0, 1) of `shape`."""
        return draw(torch.randn, shape, generator=self.generator, device=self.device, dtype=torch.float32)

    def integers(self, high: int, *shape: int) -> Tensor:
        """Uniform integers in [0, high) of `shape`."""
        return draw(torch.randint, high, shape, generator=self.generator, device=self.device)

    def chosen(self, probability: float, *shape: int) -> Tensor:
        """Boolean mask of `shape`, each entry True with probability min(1, probability)."""
        return self.uniform(*shape) < probability


def _where(mask: Tensor, value: Tensor) -> Tensor:
    """`value` where `mask`, zero (the identity's parameter) elsewhere."""
    return torch.where(mask, value, torch.zeros_like(value))


# ----------------------------------------------------------------------------------------------
# The pipeline.

@dataclass
class AugmentPipe:
    """EDM's augmentation pipeline, with EDM's keyword names and defaults (every transform off).

    A transform is applied to an image with probability min(1, p * its multiplier). Flips, 90-degree
    rotations and luma flips then pick their outcome uniformly, *the identity included*: at
    probability q an image is x-flipped with probability q / 2, and rotated by a nonzero multiple
    of 90 degrees with probability 3q / 4. Standard deviations of scales and gains are in log2
    units; angle ranges in half-turns (1: any angle in [-pi, pi)); translations relative to the size.
    EDM's CIFAR-10 setting is `AugmentPipe(p=0.12, **EDM_CIFAR10_KWARGS)`.
    """

    p: float = 1.0                     # overall multiplier of every probability below
    # Pixel blitting.
    xflip: float = 0.0
    yflip: float = 0.0
    rotate_int: float = 0.0
    translate_int: float = 0.0
    translate_int_max: float = 0.125   # largest integer shift, as a fraction of the image size
    # General geometric transforms.
    scale: float = 0.0
    rotate_frac: float = 0.0
    aniso: float = 0.0
    translate_frac: float = 0.0
    scale_std: float = 0.2
    rotate_frac_max: float = 1.0
    aniso_std: float = 0.2
    aniso_rotate_prob: float = 0.5     # chance that anisotropic scaling acts in a randomly rotated frame
    translate_frac_std: float = 0.125
    # Colour transforms.
    brightness: float = 0.0
    contrast: float = 0.0
    lumaflip: float = 0.0
    hue: float = 0.0
    saturation: float = 0.0
    brightness_std: float = 0.2
    contrast_std: float = 0.5
    hue_max: float = 1.0
    saturation_std: float = 1.0

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"AugmentPipe.{field.name}: must be a finite number >= 0, got {value!r}")
            setattr(self, field.name, float(value))

    @property
    def label_names(self) -> tuple[str, ...]:
        """Names of the label entries this pipeline produces, in order (see `LABEL_LAYOUT`)."""
        enabled = [names for transform, names in LABEL_LAYOUT if getattr(self, transform) > 0]
        return tuple(name for names in enabled for name in names)

    @property
    def augment_dim(self) -> int:
        """Length of the label vector: the network's `augment_dim` (9 for `EDM_CIFAR10_KWARGS`)."""
        return len(self.label_names)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Augment a batch.

        Args:
            images: (B, C, H, W), floating point, any range (EDM feeds [-1, 1]). C must be 1 or 3 when
                a colour transform is enabled, H == W when `rotate_int` is.
            generator: the source of every random number (None: the global generator of the images'
                device, as EDM).

        Returns:
            images (B, C, H, W), same dtype and device; labels (B, augment_dim) on the same device,
            float32 (float64 for float64 images), zero in every entry of a transform not applied.
        """
        self._check(images)
        draws = _Draws(generator, images.device)
        labels: list[Tensor] = []
        images = self._blit(images, draws, labels)
        inverse = self._geometry(images.shape, draws, labels)
        if inverse is not None:
            images = resample(images, inverse)
        colour = self._colour(images.shape[0], draws, labels)
        if colour is not None:
            images = recolour(images, colour)
        label_dtype = torch.promote_types(images.dtype, torch.float32)
        columns = [entry.to(label_dtype).reshape(images.shape[0], -1) for entry in labels]
        columns.append(images.new_zeros(images.shape[0], 0, dtype=label_dtype))  # so that none enabled works
        return images, torch.cat(columns, dim=1)

    def _check(self, images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
            got = (f"shape {tuple(images.shape)}, {images.dtype}" if isinstance(images, Tensor)
                   else type(images).__name__)
            raise ValueError(f"AugmentPipe: images must be a floating-point (B, C, H, W) tensor, got {got}")
        _, channels, height, width = images.shape
        if min(height, width) < 2:
            raise ValueError(f"AugmentPipe: images must be at least 2x2 pixels, got {height}x{width}")
        if self.rotate_int > 0 and height != width:
            raise ValueError(f"AugmentPipe.rotate_int: 90-degree rotations need square images, "
                             f"got {height}x{width}")
        if channels not in (1, 3) and any(getattr(self, t) > 0 for t in _COLOUR_TRANSFORMS):
            raise ValueError(f"AugmentPipe: colour transforms need 1 or 3 channels, got {channels}; "
                             f"set {', '.join(_COLOUR_TRANSFORMS)} to 0")

    # --- stage 1: pixel blitting ------------------------------------------------------------------

    def _blit(self, images: Tensor, draws: _Draws, labels: list[Tensor]) -> Tensor:
        """Flips, 90-degree rotations and integer shifts: exact pixel moves, no interpolation."""
        n = images.shape[0]
        for multiplier, dim in ((self.xflip, 3), (self.yflip, 2)):
            if multiplier > 0:
                flip = draws.integers(2, n, 1, 1, 1)
                flip = _where(draws.chosen(multiplier * self.p, n, 1, 1, 1), flip)
                images = torch.where(flip == 1, images.flip(dim), images)
                labels.append(flip)
        if self.rotate_int > 0:
            images = self._rotate_quarter_turns(images, draws, labels)
        if self.translate_int > 0:
            images = self._translate_integer(images, draws, labels)
        return images

    def _rotate_quarter_turns(self, images: Tensor, draws: _Draws, labels: list[Tensor]) -> Tensor:
        """Rotate by k quarter turns, k uniform in 0..3: torch.rot90(images, k, dims=(2, 3)).

        Built from an x-flip, a y-flip and a transpose: k = 1 flips x, k = 2 both, k = 3 y, and odd k
        also transpose. The labels are the two flip bits, which identify k (00, 10, 11, 01 for k = 0..3).
        """
        n = images.shape[0]
        k = draws.integers(4, n, 1, 1, 1)
        k = _where(draws.chosen(self.rotate_int * self.p, n, 1, 1, 1), k)
        flip_x, flip_y = (k == 1) | (k == 2), (k == 2) | (k == 3)
        images = torch.where(flip_x, images.flip(3), images)
        images = torch.where(flip_y, images.flip(2), images)
        images = torch.where(flip_x ^ flip_y, images.transpose(2, 3), images)
        labels += [flip_x, flip_y]
        return images

    def _translate_integer(self, images: Tensor, draws: _Draws, labels: list[Tensor]) -> Tensor:
        """Shift by whole pixels, at most translate_int_max of the size, reflecting at the borders.

        The label is the shift relative to its largest value, in [-1, 1]: the same encoding for any
        image size. Direction (EDM's): content moves right by tx and *up* by ty (see `reflect_shift`).
        """
        n, _, height, width = images.shape
        shift = draws.symmetric(2, n, 1, 1, 1)
        shift = _where(draws.chosen(self.translate_int * self.p, 1, n, 1, 1, 1), shift)
        tx = shift[0].mul(width * self.translate_int_max).round().to(torch.int64)
        ty = shift[1].mul(height * self.translate_int_max).round().to(torch.int64)
        labels += [tx.div(width * self.translate_int_max), ty.div(height * self.translate_int_max)]
        return reflect_shift(images, tx.view(n), ty.view(n))

    # --- stage 2: general geometric transforms ---------------------------------------------------

    def _geometry(self, shape: torch.Size, draws: _Draws, labels: list[Tensor]) -> Tensor | None:
        """(B, 3, 3) map from output to input pixel coordinates, both centred; None if all disabled.

        Each step is the inverse of its forward transform, composed on the right: the content is
        scaled first and translated last (so the shift, in output pixels, is not scaled).
        """
        n, _, height, width = shape
        inverse = None
        if self.scale > 0:
            w = draws.normal(n)
            w = _where(draws.chosen(self.scale * self.p, n), w)
            s = w.mul(self.scale_std).exp2()
            inverse = _product(inverse, scale2d(1 / s, 1 / s))
            labels.append(w)  # log2 of the scale in units of scale_std: N(0, 1) when applied
        if self.rotate_frac > 0:
            angle = draws.symmetric(n) * (math.pi * self.rotate_frac_max)
            angle = _where(draws.chosen(self.rotate_frac * self.p, n), angle)
            inverse = _product(inverse, rotate2d(angle))
            # (cos - 1, sin): zero at the identity, and continuous across +-pi where the angle jumps.
            labels += [angle.cos() - 1, angle.sin()]
        if self.aniso > 0:
            for step in self._anisotropic(n, draws, labels):
                inverse = _product(inverse, step)
        if self.translate_frac > 0:
            shift = draws.normal(2, n)
            shift = _where(draws.chosen(self.translate_frac * self.p, 1, n), shift)
            tx = shift[0].mul(width * self.translate_frac_std)
            ty = shift[1].mul(height * self.translate_frac_std)
            inverse = _product(inverse, translate2d(-tx, -ty))
            labels += [shift[0], shift[1]]  # the shift in units of translate_frac_std of the size
        return inverse

    def _anisotropic(self, n: int, draws: _Draws, labels: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Inverse of scaling by 2**(w aniso_std) along direction r and by its inverse across it.

        Returned as three (B, 3, 3) factors (rotate the frame, scale, rotate back), multiplied in turn.

        The label w (cos r, sin r) is zero at the identity. It does not tell (w, r) from (-w, r + pi),
        two different transforms (the axis is the same, the stretch swaps): EDM's encoding, kept as is.
        """
        w = draws.normal(n)
        r = draws.symmetric(n) * math.pi
        w = _where(draws.chosen(self.aniso * self.p, n), w)
        r = _where(draws.chosen(self.aniso_rotate_prob, n), r)
        s = w.mul(self.aniso_std).exp2()
        labels += [w * r.cos(), w * r.sin()]
        return rotate2d(-r), scale2d(1 / s, 1 / (1 / s)), rotate2d(r)

    # --- stage 3: colour ----------------------------------------------------------------------------

    def _colour(self, n: int, draws: _Draws, labels: list[Tensor]) -> Tensor | None:
        """(B, 4, 4) affine map of (R, G, B, 1), later transforms applied after earlier ones; None if off."""
        luma = (torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64) / math.sqrt(3)).to(torch.float32)
        luma = luma.to(draws.device)
        luma_plane = luma.outer(luma)  # projection onto the grey axis R = G = B
        eye = torch.eye(4, device=draws.device)
        matrix = None
        if self.brightness > 0:
            w = draws.normal(n)
            w = _where(draws.chosen(self.brightness * self.p, n), w)
            matrix = _product(translate3d(w * self.brightness_std), matrix)
            labels.append(w)
        if self.contrast > 0:
            w = draws.normal(n)
            w = _where(draws.chosen(self.contrast * self.p, n), w)
            matrix = _product(scale3d(w.mul(self.contrast_std).exp2()), matrix)
            labels.append(w)
        if self.lumaflip > 0:
            w = draws.integers(2, n, 1, 1)
            w = _where(draws.chosen(self.lumaflip * self.p, n, 1, 1), w)
            matrix = _product(eye - 2 * luma_plane * w, matrix)  # mirror the grey component: luma -> -luma
            labels.append(w)
        if self.hue > 0:
            angle = draws.symmetric(n) * (math.pi * self.hue_max)
            angle = _where(draws.chosen(self.hue * self.p, n), angle)
            matrix = _product(rotate3d(luma, angle), matrix)  # rotate the chroma about the grey axis
            labels += [angle.cos() - 1, angle.sin()]
        if self.saturation > 0:
            w = draws.normal(n, 1, 1)
            w = _where(draws.chosen(self.saturation * self.p, n, 1, 1), w)
            matrix = _product(luma_plane + (eye - luma_plane) * w.mul(self.saturation_std).exp2(), matrix)
            labels.append(w)
        return matrix


_COLOUR_TRANSFORMS = ("brightness", "contrast", "lumaflip", "hue", "saturation")


# ----------------------------------------------------------------------------------------------
# Executing the transforms.

def reflect_shift(images: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Shift each image by whole pixels with reflection ("reflect" padding, edge not repeated).

    Args:
        images: (B, C, H, W); tx, ty: (B,) int64 shifts.

    Returns (B, C, H, W) with output[y, x] = input[y + ty, x - tx] (EDM's directions), indices
    reflected about the first and last pixel: -1 -> 1, H -> H - 2.
    """
    n, channels, height, width = images.shape
    x = torch.arange(width, device=images.device) - tx.view(n, 1)
    y = torch.arange(height, device=images.device) + ty.view(n, 1)
    # Reflection is periodic with period 2 (size - 1): fold into one period, then mirror the back half.
    x = (width - 1) - ((width - 1) - x % (2 * width - 2)).abs()
    y = (height - 1) - ((height - 1) - y % (2 * height - 2)).abs()
    images = images.gather(3, x.view(n, 1, 1, width).expand(n, channels, height, width))
    return images.gather(2, y.view(n, 1, height, 1).expand(n, channels, height, width))


def resample(images: Tensor, inverse: Tensor) -> Tensor:
    """Apply a general geometric transform per image, as EDM does.

    Args:
        images: (B, C, H, W).
        inverse: (B, 3, 3) homogeneous map from output to input pixel coordinates, both measured from
            the image centre ((W - 1) / 2, (H - 1) / 2), x along the width, y along the height.

    Returns (B, C, H, W). The image is reflect-padded so that every sampled point lands inside,
    upsampled 2x with the sym6 low-pass filter, sampled bilinearly (zeros outside), low-pass
    filtered and decimated back. The filter pair is orthogonal, so the identity map returns the
    image up to rounding; a non-trivial map samples a 2x oversampled, band-limited image, which
    aliases and blurs far less than bilinear sampling at the original resolution.
    """
    n, channels, height, width = images.shape
    left, right, top, bottom = _margins(inverse, height, width)
    images = F.pad(images, [left, right, top, bottom], mode="reflect")
    # Coordinates measured from the padded image's centre, which the asymmetric padding moved.
    inverse = translate2d((left - right) / 2, (top - bottom) / 2, like=inverse) @ inverse

    taps = torch.tensor(SYM6, dtype=images.dtype, device=images.device)
    images = _upsample2x(_upsample2x(images, taps, axis=3), taps, axis=2)
    # Map between the 2x grids: scale the centred coordinates by 2, and account for the half-pixel
    # offset between a sample's centre on the fine grid and on the coarse one.
    inverse = scale2d(2, 2, like=inverse) @ inverse @ scale2d(1 / 2, 1 / 2, like=inverse)
    inverse = translate2d(-0.5, -0.5, like=inverse) @ inverse @ translate2d(0.5, 0.5, like=inverse)

    # Sample a 2x grid of the image plus a _SYM6_PAD border, in grid_sample's [-1, 1] units
    # (with align_corners=False a centred pixel coordinate u maps to 2 u / size).
    size = [n, channels, (height + 2 * _SYM6_PAD) * 2, (width + 2 * _SYM6_PAD) * 2]
    inverse = (scale2d(2 / images.shape[3], 2 / images.shape[2], like=inverse) @ inverse
               @ scale2d(1 / (2 / size[3]), 1 / (2 / size[2]), like=inverse))
    grid = F.affine_grid(inverse[:, :2, :].to(images.dtype), size, align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    images = _downsample2x(images, taps, axis=3)[:, :, :, _SYM6_PAD:-_SYM6_PAD]
    return _downsample2x(images, taps, axis=2)[:, :, _SYM6_PAD:-_SYM6_PAD, :]


def _margins(inverse: Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """Reflect padding (left, right, top, bottom) for `resample`, shared by the batch.

    Enough for every image's output corners, mapped into the input, plus twice the filter border,
    and at most size - 1, the most that "reflect" padding allows.
    """
    cx, cy = (width - 1) / 2, (height - 1) / 2
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], device=inverse.device)
    sources = (inverse @ corners.T)[:, :2, :]                              # (B, xy, corner)
    reach = torch.cat([-sources, sources], dim=1).amax(dim=(0, 2))         # furthest -x, -y, +x, +y
    reach = reach + torch.tensor([2 * _SYM6_PAD - cx, 2 * _SYM6_PAD - cy] * 2, device=inverse.device)
    limit = torch.tensor([width - 1, height - 1] * 2, dtype=reach.dtype, device=inverse.device)
    left, top, right, bottom = reach.clamp(min=0).minimum(limit).ceil().to(torch.int64).tolist()
    return left, right, top, bottom


def _filter(images: Tensor, taps: Tensor, axis: int, stride: int, padding: int) -> Tensor:
    """Depthwise 1-D correlation with `taps` along `axis` (2: height, 3: width)."""
    channels = images.shape[1]
    along_width = axis == 3
    kernel = taps.view(1, 1, 1, -1) if along_width else taps.view(1, 1, -1, 1)
    return F.conv2d(images, kernel.repeat(channels, 1, 1, 1), groups=channels,
                    stride=(1, stride) if along_width else (stride, 1),
                    padding=(0, padding) if along_width else (padding, 0))


def _upsample2x(images: Tensor, taps: Tensor, axis: int) -> Tensor:
    """Double the size along `axis`: insert zeros between samples, then convolve with `taps`.

    The sym6 filter sums to sqrt(2), as does the one of `_downsample2x`: together they keep the mean.
    """
    interleaved = torch.stack([images, torch.zeros_like(images)], dim=axis + 1).flatten(axis, axis + 1)
    interleaved = interleaved.narrow(axis, 0, interleaved.shape[axis] - 1)
    return _filter(interleaved, taps.flip(0), axis, stride=1, padding=(len(taps) + 1) // 2)


def _downsample2x(images: Tensor, taps: Tensor, axis: int) -> Tensor:
    """Halve the size along `axis`: low-pass with `taps`, keep every second sample."""
    return _filter(images, taps, axis, stride=2, padding=(len(taps) - 1) // 2)


def recolour(images: Tensor, matrix: Tensor) -> Tensor:
    """Apply a (B, 4, 4) affine colour map to (B, C, H, W) images, C = 3 (RGB) or 1 (grey).

    A grey image is treated as R = G = B and its result is the mean of the three output channels.
    """
    n, channels, height, width = images.shape
    matrix = matrix.to(images.dtype)
    flat = images.reshape(n, channels, height * width)
    if channels == 3:
        flat = matrix[:, :3, :3] @ flat + matrix[:, :3, 3:]
    elif channels == 1:
        row = matrix[:, :3, :].mean(dim=1, keepdim=True)                   # (B, 1, 4)
        flat = flat * row[:, :, :3].sum(dim=2, keepdim=True) + row[:, :, 3:]
    else:
        raise ValueError(f"recolour: images must have 1 or 3 channels, got {channels}")
    return flat.reshape(n, channels, height, width)
