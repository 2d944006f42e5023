"""EDM preconditioning (Karras et al. 2022, table 1) around a PFGM field network, for PFGM++.

    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise),
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4,   sd = sigma_data = 0.5.

Our networks return (B, N + 1) (PFGM's field: data part, then z component). For PFGM++ the first N
components, reshaped to the data shape S, are EDM's raw output F; the last component is unused (it
receives no gradient). So one backbone and one checkpoint format serve both objectives, and the
network never sees D. The network is called with c_noise in place of z, which is negative for
sigma < 1: use an embedding of the raw scalar (DDPM++ "positional", FieldMLP "positional").
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

Network = Callable[[Tensor, Tensor], Tensor]

SIGMA_DATA = 0.5


def edm_coefficients(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) for sigma of shape (B,), each of shape (B,)."""
    total = sigma.square() + sigma_data ** 2
    return sigma_data ** 2 / total, sigma * sigma_data / total.sqrt(), total.rsqrt(), sigma.log() / 4


def precondition(net: Network, x: Tensor, sigma: Tensor, *, sigma_data: float = SIGMA_DATA) -> Tensor:
    """The denoiser D(x, sigma) of x (B, *S) and sigma (B,) or a scalar: returns (B, *S) in x's dtype."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
    c_skip, c_out, c_in, c_noise = (c.reshape(-1, *([1] * (x.dim() - 1)))
                                    for c in edm_coefficients(sigma, sigma_data))
    raw = net(c_in * x, c_noise.flatten())[:, :-1].reshape(x.shape).to(x.dtype)
    return c_skip * x + c_out * raw


class EDMPrecond(nn.Module):
    """A denoiser module `D(x (B, *S), sigma (B,)) -> (B, *S)` wrapping a field network `net`.

    The state dict is the network's under the prefix "net."; checkpoints store `net` itself.
    """

    def __init__(self, net: nn.Module, *, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.net, self.sigma_data = net, float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        return precondition(self.net, x, sigma, sigma_data=self.sigma_data)
