"""EDM preconditioning (Karras et al. 2022, table 1), for PFGM++.

    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise),
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4,   sd = sigma_data = 0.5.

PFGM++ trains and samples a *denoiser*: `denoiser(x (B, *S), sigma (B,), augment_labels=None) -> (B, *S)`
(the contract of `pfgm.training.PFGMppLoss` and `pfgm.pfgmpp.heun`). Two kinds of network provide it:

- `EDMPrecond`, the official module (NVlabs/edm, and Newbeeer/pfgmpp's fork used for the published PFGM++
  results) around EDM's `SongUNet`: same state_dict (`model.` + SongUNet's), forward and attributes, so
  official weights load strictly and give the official outputs. Its constructor takes the data's shape
  as every network here does, `data_shape` (C, R, R), in place of EDM's img_channels and img_resolution;
  `kwargs_from_official` maps the constructor kwargs an official snapshot records. PFGM++ never enters
  the network: D only changes the loss's perturbation and the sampler's prior. It is a denoiser as it is.
- Our PFGM field networks (FieldMLP, FieldConvNet, DDPMpp), which return (B, N + 1) (the data part, then
  a z component), through `precondition(net, x, sigma)` or the module `FieldDenoiser(net)` around it.
  The first N components, reshaped to the data shape S, are EDM's raw output F; the last one is unused
  (it receives no gradient). So one backbone and one checkpoint format serve both objectives. The
  network is called with c_noise in place of z, which is negative for sigma < 1: use an embedding of
  the raw scalar (DDPM++ "positional", FieldMLP "positional"). Field networks take no augmentation
  labels.

`as_denoiser(net)` gives either one the denoiser contract.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import Tensor, nn

from pfgm.networks.official_snapshot import OfficialSnapshot, read_official_snapshot
from pfgm.networks.songunet import SongUNet, _plain_config

__all__ = [
    "EDMPrecond", "FieldDenoiser", "MODEL_TYPES", "SIGMA_DATA", "as_denoiser", "edm_coefficients",
    "from_official_snapshot", "kwargs_from_official", "precond_from_snapshot", "precond_kwargs", "precondition",
]

Network = Callable[[Tensor, Tensor], Tensor]

SIGMA_DATA = 0.5

#: The backbones EDMPrecond can wrap, by EDM's `model_type` name (a literal table: no lookup in globals());
#: their names and arguments, for validation without torch: pfgm.names.BACKBONE_ARGUMENTS.
MODEL_TYPES: dict[str, type[nn.Module]] = {"SongUNet": SongUNet}

# The arguments EDMPrecond fills in itself from its own (image shape, labels).
_SHARED_WITH_MODEL = ("img_resolution", "in_channels", "out_channels", "label_dim")


def edm_coefficients(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) for sigma of any shape, each of sigma's shape.

    Written in EDM's op order (1 / sqrt, not rsqrt) so that EDMPrecond matches the official one bitwise.
    """
    total = sigma ** 2 + sigma_data ** 2
    return sigma_data ** 2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), sigma.log() / 4


def precondition(net: Network, x: Tensor, sigma: Tensor, *, sigma_data: float = SIGMA_DATA) -> Tensor:
    """The denoiser D(x, sigma) of a field network: x (B, *S), sigma (B,) or a scalar -> (B, *S) in x's dtype."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
    c_skip, c_out, c_in, c_noise = (c.reshape(-1, *([1] * (x.dim() - 1)))
                                    for c in edm_coefficients(sigma, sigma_data))
    raw = net(c_in * x, c_noise.flatten())[:, :-1].reshape(x.shape).to(x.dtype)
    return c_skip * x + c_out * raw


class FieldDenoiser(nn.Module):
    """A field network as a denoiser: forward(x (B, *S), sigma (B,) or scalar, class_labels=None,
    augment_labels=None) = precondition(field, x, sigma) (B, *S).

    A view for the loss and the samplers: it holds no weights of its own (its parameters are the field
    network's, under `field.`), so checkpoints keep storing the bare field network.
    """

    augment_dim = 0  # a field network conditions on no augmentation labels

    def __init__(self, field: nn.Module, *, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.field, self.sigma_data = field, sigma_data

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None,
                augment_labels: Tensor | None = None) -> Tensor:
        if class_labels is not None or augment_labels is not None:
            raise ValueError(f"{type(self.field).__name__} is a field network: it takes no class or augmentation "
                             "labels (train an EDMPrecond with label_dim / augment_dim for those)")
        return precondition(self.field, x, sigma, sigma_data=self.sigma_data)


class EDMPrecond(nn.Module):
    """EDM's preconditioned denoiser: forward(x (B, C, R, R), sigma (B,) or scalar, class_labels
    (B, label_dim) or None, augment_labels (B, augment_dim) or None) -> D_x (B, C, R, R), float32.

    data_shape: (C, R, R), square images. `self.model` is `MODEL_TYPES[model_type](img_resolution=R,
    in_channels=C, out_channels=C, label_dim=label_dim, **model_kwargs)`. With `use_fp16` the backbone runs in
    float16 on CUDA inputs (float32 elsewhere, and always with `force_fp32`). `pfgmpp` and `D` are the
    Newbeeer/pfgmpp constructor arguments, kept as attributes only (official snapshots record them).
    `self.config` holds every constructor argument (backbone defaults filled in) as JSON-ready values,
    so `EDMPrecond(**net.config)` rebuilds the architecture.
    """

    def __init__(self, data_shape: Sequence[int], label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = float("inf"), sigma_data: float = SIGMA_DATA,
                 model_type: str = "SongUNet", *, pfgmpp: bool = False, D: int = 128, **model_kwargs: Any):
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise ValueError(f"EDMPrecond: unknown model_type {model_type!r}; known: {sorted(MODEL_TYPES)}")
        _check_model_kwargs(MODEL_TYPES[model_type], model_kwargs)
        img_channels, img_resolution = _square_image_shape(data_shape)
        # EDM's attribute names: the official samplers (and Newbeeer/pfgmpp's generate.py) read them.
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_min, self.sigma_max, self.sigma_data = use_fp16, sigma_min, sigma_max, sigma_data
        self.pfgmpp, self.D = pfgmpp, D
        self.N = img_channels * img_resolution * img_resolution  # data dimension, as the fork records it
        self.data_shape = (img_channels, img_resolution, img_resolution)
        self.model = MODEL_TYPES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                             out_channels=img_channels, label_dim=label_dim, **model_kwargs)
        inner = {k: v for k, v in self.model.config.items() if k not in _SHARED_WITH_MODEL}
        self.config = _plain_config(
            data_shape=list(self.data_shape), label_dim=label_dim, use_fp16=use_fp16,
            sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data, model_type=model_type,
            pfgmpp=pfgmpp, D=D, **inner)

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None,
                augment_labels: Tensor | None = None, *, force_fp32: bool = False) -> Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        class_labels = self._labels(class_labels, x.device)
        dtype = torch.float16 if self.use_fp16 and not force_fp32 and x.device.type == "cuda" else torch.float32
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels,
                         augment_labels=augment_labels)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def _labels(self, class_labels: Tensor | None, device: torch.device) -> Tensor | None:
        """(B, label_dim) float32 labels; zeros (1, label_dim), broadcast over the batch, when none are given."""
        if self.label_dim == 0:
            return None
        if class_labels is None:
            return torch.zeros([1, self.label_dim], device=device)
        return class_labels.to(torch.float32).reshape(-1, self.label_dim)

    @property
    def augment_dim(self) -> int:
        """Length of the augmentation labels the backbone conditions on (0: none)."""
        return int(self.model.config.get("augment_dim", 0))

    def round_sigma(self, sigma: Tensor | float) -> Tensor:
        """EDM's samplers call this to snap sigma to what the network supports: any value, here."""
        return torch.as_tensor(sigma)


def _square_image_shape(data_shape: Sequence[int]) -> tuple[int, int]:
    """(channels, side) of a data shape (C, R, R); ValueError otherwise."""
    shape = [int(s) for s in data_shape]
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"EDMPrecond: data_shape must be square images (C, R, R), got {shape}")
    return shape[0], shape[1]


def kwargs_from_official(init_kwargs: dict[str, Any]) -> dict[str, Any]:
    """EDMPrecond keyword arguments from the constructor kwargs an official snapshot records: EDM's
    img_channels and img_resolution become data_shape [C, R, R]; everything else is passed on as it is."""
    missing = sorted({"img_channels", "img_resolution"} - set(init_kwargs))
    if missing:
        raise ValueError(f"official EDMPrecond kwargs lack {missing}")
    side = init_kwargs["img_resolution"]
    rest = {key: value for key, value in init_kwargs.items() if key not in ("img_channels", "img_resolution")}
    return {"data_shape": [init_kwargs["img_channels"], side, side], **rest}


def _backbone_kwargs(model_class: type[nn.Module]) -> list[str]:
    """The keyword arguments of a backbone that EDMPrecond passes on (those it sets itself excluded)."""
    return [name for name in inspect.signature(model_class).parameters if name not in _SHARED_WITH_MODEL]


def precond_kwargs(model_type: str = "SongUNet") -> list[str]:
    """Every keyword argument EDMPrecond takes with backbone `model_type`: its own, then the backbone's."""
    own = [name for name, p in inspect.signature(EDMPrecond).parameters.items() if p.kind != p.VAR_KEYWORD]
    return own + _backbone_kwargs(MODEL_TYPES[model_type])


def as_denoiser(net: nn.Module, *, sigma_data: float = SIGMA_DATA) -> nn.Module:
    """`net` (a bare network) with the denoiser contract: an EDMPrecond or FieldDenoiser as it is, any
    other network (a field network) wrapped in FieldDenoiser."""
    return net if isinstance(net, (EDMPrecond, FieldDenoiser)) else FieldDenoiser(net, sigma_data=sigma_data)


def _check_model_kwargs(model_class: type[nn.Module], model_kwargs: dict[str, Any]) -> None:
    """Refuse backbone kwargs the backbone does not take, or that EDMPrecond sets itself."""
    known = _backbone_kwargs(model_class)
    unknown = sorted(set(model_kwargs) - set(known))
    if unknown:
        raise TypeError(f"EDMPrecond: unknown keyword argument(s) {unknown} for model_type "
                        f"{model_class.__name__!r} (EDMPrecond sets {list(_SHARED_WITH_MODEL)} itself; "
                        f"the backbone takes: {known})")


def from_official_snapshot(path: str | Path, *, key: str = "ema") -> EDMPrecond:
    """Network `key` ("ema" or "net") of an official PFGM++/EDM snapshot (training-state-*.pkl or .pt,
    network-snapshot-*.pkl) as our EDMPrecond, in eval mode without gradients, as the official `ema` is.

    Built from the constructor kwargs the file records, weights loaded strictly; the file's embedded
    source is never run (see `pfgm.networks.official_snapshot`).
    """
    return precond_from_snapshot(read_official_snapshot(path, key=key), source=str(path))


def precond_from_snapshot(snapshot: OfficialSnapshot, *, source: str = "snapshot") -> EDMPrecond:
    """The EDMPrecond of an already read snapshot (`read_official_snapshot`), weights loaded strictly,
    in eval mode without gradients. ValueError naming `source` when it holds another class."""
    if snapshot.class_name != "EDMPrecond":
        raise ValueError(f"{source}: {snapshot.key!r} holds a {snapshot.class_name}, not an EDMPrecond")
    net = EDMPrecond(**kwargs_from_official(snapshot.init_kwargs))
    net.load_state_dict(snapshot.state_dict, strict=True)
    return net.eval().requires_grad_(False)
