"""A small NCSNv2-style RefineNet: the weak backbone of the backbone-robustness experiment.

NCSNv2 (Song & Ermon 2020, the "weaker network" of the PFGM paper's robustness claim) is a RefineNet:
a ResNet encoder of pre-activation residual blocks (InstanceNorm++, ELU) that halves the resolution
once and then widens its receptive field with dilated convolutions instead of further pooling, and a
decoder of RefineBlocks (residual conv units, multi-resolution fusion, chained residual pooling) that
fuses the encoder's levels from coarse to fine. What makes it weak next to DDPM++/NCSN++ is less its
size than its conditioning: NCSNv2 has no noise-level input at all; it divides its output by sigma.

`NCSNv2Small` keeps that layout and those blocks at a size for 8x8 digits, and is a stand-in, not
NCSNv2: (1) one encoder level per entry of `dilations` after the downsampled one (NCSNv2 at 32 px has
dilations (2, 4)); (2) a field network must know its height z (PFGM's norms spread over z, which is the
point of the experiment), and an output scale cannot give it that, so the conditioning scalar enters
the weakest way that still can: as one constant extra input channel seen by the first convolution
only -- no embedding, no per-block modulation (FieldConvNet and DDPM++ feed an embedding of z to
every block); (3) the z component is read from the pooled last features, as FieldConvNet does.

Contract of every field network: forward(x (B, C, H, W), z (B,)) -> (B, C*H*W + 1), the image part
flattened in C order, then the z component. Under PFGM++/EDM (`pfgm.networks.edm.precondition`) the
scalar is c_noise = ln(sigma)/4, which may be negative: use embedding "raw" there.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

#: How the conditioning scalar fills the extra input channel: ln z (PFGM only, z > 0) or the raw value.
SCALAR_INPUTS = ("log", "raw")


class InstanceNormPlus(nn.Module):
    """NCSNv2's InstanceNorm++: instance normalisation, plus the per-channel means (standardised
    across channels) added back with a learned weight, since plain instance norm erases the colour
    shifts that tell images apart. Then a per-channel affine map. (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        if channels < 2:
            raise ValueError(f"InstanceNorm++ standardises means across channels: needs >= 2, got {channels}")
        self.norm = nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        means = x.mean(dim=(2, 3))
        spread = means.var(dim=1, keepdim=True, unbiased=False)
        standardised = (means - means.mean(dim=1, keepdim=True)) / torch.sqrt(spread + 1e-5)
        h = self.norm(x) + (self.alpha * standardised)[:, :, None, None]
        return self.gamma[:, None, None] * h + self.beta[:, None, None]


def _conv(c_in: int, c_out: int, *, kernel: int = 3, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation)


class ResidualBlock(nn.Module):
    """Pre-activation residual block: norm, ELU, conv, norm, ELU, conv, plus a shortcut.

    `down` halves the resolution (conv then 2x2 mean pool on both paths); `dilation` > 1 widens the
    kernels instead (NCSNv2's deeper levels). The shortcut is a convolution when the shape changes.
    """

    def __init__(self, c_in: int, c_out: int, *, down: bool = False, dilation: int = 1):
        super().__init__()
        self.down = down
        self.norm_in = InstanceNormPlus(c_in)
        self.conv_in = _conv(c_in, c_in if down else c_out, dilation=dilation)
        self.norm_out = InstanceNormPlus(c_in if down else c_out)
        self.conv_out = _conv(c_in if down else c_out, c_out, dilation=dilation)
        self.shortcut = _conv(c_in, c_out, kernel=1) if (down or c_in != c_out) else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(F.elu(self.norm_in(x)))
        h = self.conv_out(F.elu(self.norm_out(h)))
        skip = self.shortcut(x)
        if self.down:
            h, skip = F.avg_pool2d(h, 2), F.avg_pool2d(skip, 2)
        return skip + h


class ResidualConvUnit(nn.Module):
    """RefineNet's RCU: x + conv(ELU(conv(ELU(x)))), no normalisation (as in NCSNv2's RefineBlock)."""

    def __init__(self, channels: int):
        super().__init__()
        self.first, self.second = _conv(channels, channels), _conv(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.second(F.elu(self.first(F.elu(x))))


class ChainedResidualPooling(nn.Module):
    """RefineNet's CRP: a chain of (5x5 stride-1 pooling, conv) whose every output is added to the
    input, so that the block gathers context from ever larger windows at full resolution."""

    def __init__(self, channels: int, stages: int = 2):
        super().__init__()
        self.convs = nn.ModuleList(_conv(channels, channels) for _ in range(stages))

    def forward(self, x: Tensor) -> Tensor:
        x = F.elu(x)
        path = x
        for conv in self.convs:
            path = conv(F.avg_pool2d(path, 5, stride=1, padding=2, count_include_pad=False))
            x = x + path
        return x


class RefineBlock(nn.Module):
    """Fuses encoder features (finest first) into `features` channels at the finest input's size:
    two RCUs per input, multi-resolution fusion (a conv each, bilinear upsampling, sum), CRP, then
    one output RCU (three for the last block, as NCSNv2's `end`)."""

    def __init__(self, inputs: Sequence[int], features: int, *, end: bool = False):
        super().__init__()
        self.adapt = nn.ModuleList(nn.Sequential(ResidualConvUnit(c), ResidualConvUnit(c)) for c in inputs)
        self.fuse = nn.ModuleList(_conv(c, features) for c in inputs)
        self.pool = ChainedResidualPooling(features)
        self.out = nn.Sequential(*(ResidualConvUnit(features) for _ in range(3 if end else 1)))

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        size = xs[0].shape[2:]
        h = sum(F.interpolate(fuse(adapt(x)), size=size, mode="bilinear", align_corners=False)
                if x.shape[2:] != size else fuse(adapt(x))
                for adapt, fuse, x in zip(self.adapt, self.fuse, xs))
        return self.out(self.pool(h))


class NCSNv2Small(nn.Module):
    """NCSNv2-style RefineNet mapping (x (B, C, H, W), z (B,)) to (B, C*H*W + 1); see the module docstring.

    Args (keyword-only, JSON-serialisable, kept in `self.config` so `NCSNv2Small(**net.config)` rebuilds it):
        data_shape: (C, H, W) with even H and W, e.g. [1, 8, 8] for digits.
        channels: width of the full-resolution level (NCSNv2's nf); the others are twice as wide.
        dilations: one encoder level at half resolution per entry, with that dilation (1: plain).
        embedding: how z fills the extra input channel: "log" (ln z, PFGM only) or "raw" (the scalar
            as it is; PFGM++/EDM's c_noise).
    Encoder: full resolution (2 blocks, `channels`), half resolution (2 blocks, 2 `channels`, the first
    pooling), then per dilation 2 blocks at half resolution. Decoder: a RefineBlock per level.
    """

    def __init__(self, *, data_shape: Sequence[int], channels: int = 16, dilations: Sequence[int] = (2,),
                 embedding: str = "log"):
        super().__init__()
        if len(data_shape) != 3 or data_shape[1] % 2 or data_shape[2] % 2:
            raise ValueError(f"data_shape must be (C, H, W) with even H and W, got {list(data_shape)}")
        if embedding not in SCALAR_INPUTS:
            raise ValueError(f"embedding must be one of {SCALAR_INPUTS}, got {embedding!r}")
        if channels < 2 or any(d < 1 for d in dilations):
            raise ValueError(f"need channels >= 2 and dilations >= 1, got channels={channels}, "
                             f"dilations={list(dilations)}")
        self.config = dict(data_shape=[int(s) for s in data_shape], channels=int(channels),
                           dilations=[int(d) for d in dilations], embedding=embedding)
        self.data_shape = tuple(self.config["data_shape"])
        nf, wide = channels, 2 * channels
        self.conv_in = _conv(self.data_shape[0] + 1, nf)  # + 1: the constant channel holding z
        self.levels = nn.ModuleList([
            nn.Sequential(ResidualBlock(nf, nf), ResidualBlock(nf, nf)),
            nn.Sequential(ResidualBlock(nf, wide, down=True), ResidualBlock(wide, wide)),
            *(nn.Sequential(ResidualBlock(wide, wide, dilation=d), ResidualBlock(wide, wide, dilation=d))
              for d in self.config["dilations"]),
        ])
        widths = [nf, wide, *(wide for _ in self.config["dilations"])]
        # Coarsest first: the first RefineBlock takes the deepest level alone, each next one adds the
        # level above it; the last works at full resolution and outputs nf channels.
        self.refine = nn.ModuleList()
        for i in range(len(widths) - 1, -1, -1):
            inputs = [widths[i]] if i == len(widths) - 1 else [widths[i], widths[i + 1]]
            self.refine.append(RefineBlock(inputs, widths[i], end=i == 0))
        self.norm_out = InstanceNormPlus(nf)
        self.conv_out = _conv(nf, self.data_shape[0])
        self.z_out = nn.Linear(nf, 1)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """x (B, C, H, W), z (B,) -> (B, C*H*W + 1)."""
        if tuple(x.shape[1:]) != self.data_shape or z.shape != x.shape[:1]:
            raise ValueError(f"expected x (B, {', '.join(map(str, self.data_shape))}) and z (B,), got "
                             f"{tuple(x.shape)} and {tuple(z.shape)}")
        scalar = torch.log(z) if self.config["embedding"] == "log" else z
        plane = scalar.to(x.dtype)[:, None, None, None].expand(-1, 1, *x.shape[2:])
        h = self.conv_in(torch.cat([x, plane], dim=1))
        features = []
        for level in self.levels:
            h = level(h)
            features.append(h)
        h = self.refine[0]([features[-1]])
        for block, skip in zip(self.refine[1:], reversed(features[:-1])):
            h = block([skip, h])
        h = F.elu(self.norm_out(h))
        v_z = self.z_out(h.mean(dim=(2, 3)))
        return torch.cat([self.conv_out(h).flatten(1), v_z], dim=1)
