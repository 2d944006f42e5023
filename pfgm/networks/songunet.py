"""EDM's `SongUNet`: the DDPM++ and NCSN++ U-Nets of Song et al. as NVlabs/edm re-implements them.

forward(x (B, C_in, H, W), noise_labels (B,), class_labels (B, label_dim) or None,
        augment_labels (B, augment_dim) or None) -> (B, C_out, H, W)

The noise label (EDM's c_noise = ln(sigma)/4) is embedded (sinusoids of the raw value, or random Fourier
features), optionally plus a linear map of the class and augmentation labels, then Linear-SiLU-Linear-SiLU
gives the vector `emb` that every residual block adds to its activations. The U-Net has, per resolution,
`num_blocks` blocks on the way down and `num_blocks + 1` on the way up, each of the latter eating one skip.

Configurations (EDM's train.py): DDPM++ = positional embedding, standard encoder, resample_filter [1,1];
NCSN++ = Fourier embedding, channel_mult_noise 2, residual encoder (a parallel downsampled image path
added to each new resolution), resample_filter [1,3,3,1]. Both use the standard decoder.

Why the code is shaped as it is
-------------------------------
Official checkpoints must load with `load_state_dict(strict=True)`, so module and parameter names, the
order in which they are registered, and the ModuleDict keys (`8x8_conv`, `8x8_block0`, `4x4_down`,
`4x4_aux_residual`, `8x8_aux_norm`, ...) are EDM's. The forward dispatches on those keys as EDM does. The
layers draw their initial weights from the global RNG in EDM's order (biases included, even when scaled
to zero), so the same `torch.manual_seed` gives the same network as the official code, and their forward
passes use EDM's op order, so outputs agree bitwise on the same torch.
Parameters stay float32; each layer casts them to the input's dtype, which is how EDM runs in fp16.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EMBEDDING_TYPES",
    "DECODER_TYPES",
    "ENCODER_TYPES",
    "Conv2d",
    "FourierEmbedding",
    "GroupNorm",
    "Linear",
    "PositionalEmbedding",
    "SongUNet",
    "UNetBlock",
    "weight_init",
]

INIT_MODES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")
EMBEDDING_TYPES = ("positional", "fourier")
ENCODER_TYPES = ("standard", "skip", "residual")
DECODER_TYPES = ("standard", "skip")

# SongUNet's initialisations: the last conv of each residual branch starts near zero (1e-5, not 0, so
# the layers before it still get a gradient), the attention qkv projection at sqrt(0.2) scale.
INIT = dict(init_mode="xavier_uniform")
INIT_ZERO = dict(init_mode="xavier_uniform", init_weight=1e-5)
INIT_ATTN = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))


# ----------------------------------------------------------------------------------------------------------
# Layers


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> Tensor:
    """A fresh tensor of `shape` drawn from the global RNG (EDM's `weight_init`).

    xavier_uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out));  xavier_normal: N(0, 2 / (fan_in + fan_out));
    kaiming_uniform: U(-a, a), a = sqrt(3 / fan_in);              kaiming_normal: N(0, 1 / fan_in).
    """
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"init_mode must be one of {INIT_MODES}, got {mode!r}")


def _weight_and_bias(weight_shape: Sequence[int], bias: bool, *, init_mode: str, init_weight: float,
                     init_bias: float, fan_in: int, fan_out: int) -> tuple[nn.Parameter, nn.Parameter | None]:
    """Weight, then bias, drawn in that order; the bias is drawn even when init_bias = 0 so that the
    global RNG advances exactly as in EDM."""
    weight = nn.Parameter(weight_init(weight_shape, init_mode, fan_in, fan_out) * init_weight)
    bias_ = nn.Parameter(weight_init([weight_shape[0]], init_mode, fan_in, fan_out) * init_bias) if bias else None
    return weight, bias_


class Linear(nn.Module):
    """Fully connected layer: (..., in_features) -> (..., out_features); `weight` (out, in), `bias` (out,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = "kaiming_normal",
                 init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight, self.bias = _weight_and_bias(
            [out_features, in_features], bias, init_mode=init_mode, init_weight=init_weight,
            init_bias=init_bias, fan_in=in_features, fan_out=out_features)

    def forward(self, x: Tensor) -> Tensor:
        x = x @ self.weight.to(x.dtype).t()
        return x.add_(self.bias.to(x.dtype)) if self.bias is not None else x


def resample_kernel(taps: Sequence[float]) -> Tensor:
    """The separable 2D FIR filter f f^T / (sum f)^2 of 1D taps f, shaped (1, 1, k, k) for grouped convs."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()


class Conv2d(nn.Module):
    """kxk convolution ("same" padding) with optional 2x up- or downsampling by a FIR filter:
    (B, in_channels, H, W) -> (B, out_channels, H', W'), H' = 2H (up), H/2 (down) or H.

    kernel = 0 means resampling only (no weight, no bias; out_channels must equal in_channels).
    Downsampling filters first, then convolves; upsampling is a transposed conv by 4 * filter (so the
    image's mean is kept). `fused_resample` (down only) convolves first at full resolution and then
    filters with stride 2: the NCSN++ residual encoder's order. The filter is the buffer `resample_filter`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False,
                 init_mode: str = "kaiming_normal", init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive")
        if fused_resample and up:
            raise ValueError("Conv2d: fused_resample is implemented for down only (no SongUNet layer fuses up)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        self.weight, self.bias = None, None
        if kernel:
            self.weight, self.bias = _weight_and_bias(
                [out_channels, in_channels, kernel, kernel], bias, init_mode=init_mode, init_weight=init_weight,
                init_bias=init_bias, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.register_buffer("resample_filter", resample_kernel(resample_filter) if up or down else None)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                             padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x.add_(self.bias.to(x.dtype).reshape(1, -1, 1, 1))
        return x


class GroupNorm(nn.Module):
    """Group normalisation with min(num_groups, C // min_channels_per_group) groups: (B, C, H, W) -> same."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4,
                 eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, num_groups=self.num_groups, weight=self.weight.to(x.dtype),
                            bias=self.bias.to(x.dtype), eps=self.eps)


def self_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Single-head dot-product attention over pixels: q, k, v (B, C, P) -> (B, C, P).

    The softmax runs in float32 whatever the input dtype (fp16 logits overflow), as EDM's AttentionOp.
    EDM also hand-writes the backward pass to save memory in fp16; autograd's is the same maths.
    """
    logits = torch.einsum("ncq,nck->nqk", q.to(torch.float32), (k / math.sqrt(k.shape[1])).to(torch.float32))
    weights = logits.softmax(dim=2).to(q.dtype)
    return torch.einsum("nqk,nck->ncq", weights, v)


# ----------------------------------------------------------------------------------------------------------
# Residual block


class UNetBlock(nn.Module):
    """EDM's UNetBlock as DDPM++/NCSN++ configure it: (x (B, in_channels, H, W), emb (B, emb_channels))
    -> (B, out_channels, H', W') with H' = 2H (up), H/2 (down) or H.

        h = conv1(dropout(silu(norm1(conv0(silu(norm0(x))) + affine(emb)))))
        x = (h + skip(x)) * skip_scale            skip: 1x1 conv (resampling too) when the shape changes
        x = (proj(attention(qkv(norm2(x)))) + x) * skip_scale      only when `attention`

    That is EDM's UNetBlock with adaptive_scale=False, resample_proj=True and one attention head, the only
    settings SongUNet uses. Submodule names and their registration order are EDM's.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *, up: bool = False,
                 down: bool = False, attention: bool = False, dropout: float = 0.0,
                 skip_scale: float = math.sqrt(0.5), eps: float = 1e-6, resample_filter: Sequence[float] = (1, 1)):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.attention, self.dropout, self.skip_scale = attention, dropout, skip_scale
        resample = dict(up=up, down=down, resample_filter=resample_filter)
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, **resample, **INIT)
        self.affine = Linear(emb_channels, out_channels, **INIT)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **INIT_ZERO)
        self.skip = None
        if out_channels != in_channels or up or down:
            self.skip = Conv2d(in_channels, out_channels, kernel=1, **resample, **INIT)
        if attention:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **INIT_ATTN)
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **INIT_ZERO)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        shift = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)
        x = F.silu(self.norm1(x.add_(shift)))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(self.skip(orig) if self.skip is not None else orig)
        x = x * self.skip_scale
        if self.attention:
            batch, channels, height, width = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(batch, channels, 3, height * width).unbind(2)
            x = self.proj(self_attention(q, k, v).reshape(*x.shape)).add_(x)
            x = x * self.skip_scale
        return x


# ----------------------------------------------------------------------------------------------------------
# Noise-level embeddings


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids of the raw noise label: (B,) -> (B, num_channels), [sin(x f), cos(x f)].

    f_k = (1 / max_positions)^(k / (num_channels/2 - 1)) with `endpoint` (SongUNet), else
    ^(k / (num_channels/2)). The sine half comes first: EDM computes [cos, sin] and SongUNet swaps the
    halves, which gives these values exactly.
    """

    def __init__(self, num_channels: int, max_positions: int = 10_000, endpoint: bool = True):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(start=0, end=half, dtype=torch.float32, device=x.device)
        freqs = freqs / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = x.ger(freqs.to(x.dtype))
        return torch.cat([x.sin(), x.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise label: (B,) -> (B, num_channels), [sin(2 pi x f), cos(2 pi x f)].

    The frequencies f ~ N(0, scale^2) are the buffer `freqs` (num_channels / 2,), drawn at construction.
    Sine half first, as SongUNet uses them (see PositionalEmbedding).
    """

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        x = x.ger((2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.sin(), x.cos()], dim=1)


# ----------------------------------------------------------------------------------------------------------
# The U-Net


def _check_choices(embedding_type: str, encoder_type: str, decoder_type: str, img_resolution: int,
                   channel_mult: Sequence[int]) -> None:
    for name, value, known in (("embedding_type", embedding_type, EMBEDDING_TYPES),
                               ("encoder_type", encoder_type, ENCODER_TYPES),
                               ("decoder_type", decoder_type, DECODER_TYPES)):
        if value not in known:
            raise ValueError(f"SongUNet: {name} must be one of {known}, got {value!r}")
    if not channel_mult or img_resolution % 2 ** (len(channel_mult) - 1):
        raise ValueError(f"SongUNet: img_resolution ({img_resolution}) must be divisible by 2^(levels - 1) for "
                         f"the {len(channel_mult)} levels of channel_mult {list(channel_mult)}")


def _plain_config(**kwargs: Any) -> dict[str, Any]:
    """kwargs as JSON-ready Python values (lists for sequences; numpy scalars from pickles made plain)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, (bool, str)) or value is None:
            return value
        return int(value) if isinstance(value, numbers.Integral) else float(value)
    return {name: plain(value) for name, value in kwargs.items()}


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ U-Net with EDM's constructor, state_dict and forward (see the module docstring).

    forward(x (B, in_channels, R, R), noise_labels (B,), class_labels (B, label_dim) or None,
    augment_labels (B, augment_dim) or None) -> (B, out_channels, R, R).

    Keyword names and defaults are EDM's; `self.config` holds them all as JSON-ready values, so
    `SongUNet(**net.config)` rebuilds the architecture. `channel_mult[i]` sets the width of resolution
    R / 2^i; `attn_resolutions` lists the resolutions whose blocks end with self-attention.
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, *, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0.0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[float] = (1, 1)):
        super().__init__()
        _check_choices(embedding_type, encoder_type, decoder_type, img_resolution, channel_mult)
        self.config = _plain_config(
            img_resolution=img_resolution, in_channels=in_channels, out_channels=out_channels,
            label_dim=label_dim, augment_dim=augment_dim, model_channels=model_channels,
            channel_mult=channel_mult, channel_mult_emb=channel_mult_emb, num_blocks=num_blocks,
            attn_resolutions=attn_resolutions, dropout=dropout, label_dropout=label_dropout,
            embedding_type=embedding_type, channel_mult_noise=channel_mult_noise, encoder_type=encoder_type,
            decoder_type=decoder_type, resample_filter=resample_filter)
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        self._build_mapping(self.config, model_channels * channel_mult_noise, emb_channels)
        block_kwargs = dict(emb_channels=emb_channels, dropout=dropout, resample_filter=list(resample_filter))
        widths = [model_channels * mult for mult in channel_mult]
        self.enc, skip_widths = _encoder(self.config, widths, block_kwargs)
        self.dec = _decoder(self.config, widths, skip_widths, block_kwargs)

    def _build_mapping(self, config: Mapping[str, Any], noise_channels: int, emb_channels: int) -> None:
        """map_noise, map_label, map_augment, map_layer0, map_layer1, registered (and drawn) in EDM's order."""
        if config["embedding_type"] == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        label_dim, augment_dim = config["label_dim"], config["augment_dim"]
        self.map_label = Linear(label_dim, noise_channels, **INIT) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **INIT) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **INIT)
        self.map_layer1 = Linear(emb_channels, emb_channels, **INIT)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None,
                augment_labels: Tensor | None = None) -> Tensor:
        emb = self._embed(noise_labels, class_labels, augment_labels, batch=x.shape[0])
        x, skips = self._encode(x, emb)
        return self._decode(x, emb, skips)

    def _embed(self, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None,
               batch: int) -> Tensor:
        """The conditioning vector (B, emb_channels), float32 like noise_labels."""
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"SongUNet: label_dim is {self.map_label.in_features}, so class_labels "
                                 "(B, label_dim) are required (zeros for the unconditional case)")
            if self.training and self.label_dropout:
                # Classifier-free guidance training: drop each row's labels with probability label_dropout.
                keep = torch.rand([batch, 1], device=class_labels.device) >= self.label_dropout
                class_labels = class_labels * keep.to(class_labels.dtype)
            emb = emb + self.map_label(class_labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def _encode(self, x: Tensor, emb: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Runs `enc`; returns the bottleneck activation and the skips (one per non-aux entry)."""
        skips, aux = [], x  # aux: the downsampled image path of the skip/residual encoders
        for name, block in self.enc.items():
            if name.endswith("_aux_down"):
                aux = block(aux)
            elif name.endswith("_aux_skip"):
                x = skips[-1] = x + block(aux)
            elif name.endswith("_aux_residual"):
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        return x, skips

    def _decode(self, x: Tensor, emb: Tensor, skips: list[Tensor]) -> Tensor:
        """Runs `dec`, popping skips; returns the output image (the sum over the aux heads)."""
        aux, head = None, None  # aux: the output image so far; head: the current aux_norm/aux_conv branch
        for name, block in self.dec.items():
            if name.endswith("_aux_up"):
                aux = block(aux)
            elif name.endswith("_aux_norm"):
                head = block(x)
            elif name.endswith("_aux_conv"):
                head = block(F.silu(head))
                aux = head if aux is None else head + aux
            else:
                if x.shape[1] != block.in_channels:  # the `_block{i}` entries each eat one skip
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


def _encoder(config: Mapping[str, Any], widths: list[int], block_kwargs: dict) -> tuple[nn.ModuleDict, list[int]]:
    """`enc` with EDM's keys and order, and the channel count of each skip it produces (in order)."""
    enc, res0, kind = nn.ModuleDict(), config["img_resolution"], config["encoder_type"]
    cout = caux = config["in_channels"]
    skip_widths = []
    for level, width in enumerate(widths):
        res = res0 >> level
        if level == 0:
            enc[f"{res}x{res}_conv"] = Conv2d(cout, config["model_channels"], kernel=3, **INIT)
            cout = config["model_channels"]
        else:
            enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
            if kind == "skip":
                enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, kernel=0, down=True,
                                                      resample_filter=block_kwargs["resample_filter"])
                enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **INIT)
            if kind == "residual":
                enc[f"{res}x{res}_aux_residual"] = Conv2d(
                    caux, cout, kernel=3, down=True, resample_filter=block_kwargs["resample_filter"],
                    fused_resample=True, **INIT)
                caux = cout
        skip_widths.append(cout)
        for idx in range(config["num_blocks"]):
            enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                cout, width, attention=res in config["attn_resolutions"], **block_kwargs)
            cout = width
            skip_widths.append(cout)
    return enc, skip_widths


def _decoder(config: Mapping[str, Any], widths: list[int], skip_widths: list[int],
             block_kwargs: dict) -> nn.ModuleDict:
    """`dec` with EDM's keys and order; consumes `skip_widths` from the end, as the forward pops skips."""
    dec, res0, skip_widths = nn.ModuleDict(), config["img_resolution"], list(skip_widths)
    out_channels, is_skip = config["out_channels"], config["decoder_type"] == "skip"
    last, cout = len(widths) - 1, skip_widths[-1]
    for level in reversed(range(len(widths))):
        res = res0 >> level
        if level == last:
            dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
            dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
        else:
            dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
        for idx in range(config["num_blocks"] + 1):
            attn = idx == config["num_blocks"] and res in config["attn_resolutions"]
            dec[f"{res}x{res}_block{idx}"] = UNetBlock(cout + skip_widths.pop(), widths[level], attention=attn,
                                                       **block_kwargs)
            cout = widths[level]
        if is_skip or level == 0:
            if is_skip and level < last:
                dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                    resample_filter=block_kwargs["resample_filter"])
            dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
            dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **INIT_ZERO)
    return dec
