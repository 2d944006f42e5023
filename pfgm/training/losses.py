"""Training objectives as small callable classes (the EDM `training/loss.py` pattern).

Each loss is `loss(net, batch, generator) -> scalar`, `batch` (B, *S), all randomness from `generator`.
What `net` is depends on the loss: for PFGMLoss a field network `net(x (B, *S), z (B,)) -> (B, N + 1)`,
for PFGMppLoss a denoiser `net(x (B, *S), sigma (B,), augment_labels=...) -> (B, *S)`. A loss whose
contract differs from the bare network's says how to adapt it with `adapt(net)`, which the training
loop applies (`pfgm.training.loop.loss_network`) before any DDP, compile or autocast wrapper.

Data parallel: with `rank` and `world_size`, every process draws the randomness for the whole
(small) batch from an identically seeded generator, so every process perturbs every row identically,
and then evaluates the network only on its own contiguous share of the rows (`shard_rows`). The
per-process loss is the mean over its share; DDP averages gradients over processes, so with equal
shares the update equals the single-process one on the whole batch. Drawing noise for rows one
does not train is cheap (O(B N)); the field target (O(B M N)) and the network run only on one's own.
"""
from __future__ import annotations


import torch
from torch import Tensor, nn

from pfgm import perturb as pfgm_perturb
from pfgm import pfgmpp
from pfgm.field import normalized_field
from pfgm.networks.edm import SIGMA_DATA, as_denoiser
from pfgm.training.augment import AugmentPipe

Z_FLOOR = 1e-10  # the network and the field are evaluated at max(z, Z_FLOOR)
REDUCTIONS = ("sum", "mean")


def shard_rows(rows: int, rank: int, world_size: int) -> slice:
    """The contiguous share of `rows` trained by process `rank` of `world_size` (equal shares)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if rows % world_size:
        raise ValueError(f"the trained batch ({rows} rows) must divide evenly over {world_size} processes")
    share = rows // world_size
    return slice(rank * share, (rank + 1) * share)


class PFGMLoss:
    """PFGM's objective (PFGM.md sections 1, 2).

    Perturbs the first `small_batch` rows of the batch, computes the normalised empirical field at the
    perturbed points with *every* row of the batch as a charge, and returns the mean over the trained
    rows of 0.5 * sum (reduce="sum") or the plain mean ("mean", no 1/2: the official LSUN setting) of the
    squared errors over all N + 1 components. small_batch=None trains every row.
    """

    def __init__(self, *, M: int, sigma: float = 0.01, tau: float = 0.03, gamma: float = 5.0,
                 restrict_M: bool = True, small_batch: int | None = None, reduce: str = "sum",
                 rank: int = 0, world_size: int = 1):
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if small_batch is not None and small_batch < 1:
            raise ValueError(f"small_batch must be a positive integer or None, got {small_batch!r}")
        shard_rows(world_size, rank, world_size)  # validates rank and world_size
        self.M, self.sigma, self.tau, self.gamma, self.restrict_M = M, sigma, tau, gamma, restrict_M
        self.small_batch, self.reduce, self.rank, self.world_size = small_batch, reduce, rank, world_size

    def trained_rows(self, batch_rows: int) -> int:
        """Rows trained per step by all processes together, out of `batch_rows` drawn."""
        return batch_rows if self.small_batch is None else min(self.small_batch, batch_rows)

    def __call__(self, net, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        small = batch[:self.small_batch]
        x, z = pfgm_perturb.perturb(small, M=self.M, sigma=self.sigma, tau=self.tau,
                                    restrict_M=self.restrict_M, generator=generator)
        rows = shard_rows(small.shape[0], self.rank, self.world_size)
        x, z = x[rows], z[rows].clamp_min(Z_FLOOR)
        with torch.no_grad():
            target = normalized_field(x, z, batch, gamma=self.gamma)
        error = (net(x, z).float() - target).square()
        # score_sde/Poisson_flow reduce_op: 0.5 * sum over components, or torch.mean with no 1/2 (LSUN)
        per_row = 0.5 * error.sum(dim=1) if self.reduce == "sum" else error.mean(dim=1)
        return per_row.mean()


class PFGMppLoss:
    """PFGM++'s objective: EDM's denoising loss with the PFGM++ kernel (PFGM.md section 7).

    y = the batch, or with `augment` EDM's augmentation of it (`pfgm.training.augment.AugmentPipe`:
    images and the labels saying what was done); sigma ~ exp(N(P_mean, P_std^2)); x = y + offset with
    r = sigma sqrt(D); loss = mean over rows of sum over components of
    lambda(sigma) (D(x, sigma, augment_labels) - y)^2, lambda = (sigma^2 + sd^2) / (sigma sd)^2.

    `net` is a denoiser (the `adapt`ed network): an EDMPrecond, or a field network in FieldDenoiser
    (`pfgm.networks.edm`). Random draws, in order: the augmentation, sigma, the offsets.
    """

    def __init__(self, *, D: int, P_mean: float = pfgmpp.P_MEAN, P_std: float = pfgmpp.P_STD,
                 sigma_data: float = SIGMA_DATA, augment: AugmentPipe | None = None, rank: int = 0,
                 world_size: int = 1):
        shard_rows(world_size, rank, world_size)
        self.D, self.P_mean, self.P_std, self.sigma_data = D, P_mean, P_std, sigma_data
        self.augment, self.rank, self.world_size = augment, rank, world_size

    def trained_rows(self, batch_rows: int) -> int:
        return batch_rows

    def adapt(self, net: nn.Module) -> nn.Module:
        """The denoiser of the bare network `net` (`pfgm.networks.edm.as_denoiser`); ValueError when it
        does not condition on exactly the labels `augment` produces (they would be dropped or misread)."""
        denoiser = as_denoiser(net, sigma_data=self.sigma_data)
        if self.augment is not None and denoiser.augment_dim != self.augment.augment_dim:
            raise ValueError(
                f"the augmentation produces {self.augment.augment_dim} labels per image "
                f"({', '.join(self.augment.label_names)}), but the {type(net).__name__} conditions on "
                f"{denoiser.augment_dim} (augment_dim): build an EDMPrecond with augment_dim="
                f"{self.augment.augment_dim}")
        return denoiser

    def __call__(self, net, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, labels = self.augment(batch, generator) if self.augment is not None else (batch, None)
        sigma = pfgmpp.sample_sigma(batch.shape[0], P_mean=self.P_mean, P_std=self.P_std, generator=generator,
                                    device=batch.device, dtype=batch.dtype)
        x = pfgmpp.perturb(batch, sigma, D=self.D, generator=generator)
        rows = shard_rows(batch.shape[0], self.rank, self.world_size)
        y, x, sigma = batch[rows], x[rows], sigma[rows]
        labels = labels[rows] if labels is not None else None
        weight = (sigma.square() + self.sigma_data ** 2) / (sigma * self.sigma_data).square()
        denoised = net(x, sigma, augment_labels=labels)
        per_row = weight * (denoised.float() - y).square().flatten(1).sum(dim=1)
        return per_row.mean()
