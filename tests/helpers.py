"""Helpers several test files share: tiny checkpoints, exact fields, a fake Inception, a feature counter,
and the data-parallel worker.

Test files import them as `from helpers import ...` (tests/ is on sys.path, as for official.py); fixtures
built on them (the prepared digits, a trained checkpoint) are in conftest.py. No test file imports another.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pfgm.field import normalized_field
from pfgm.networks.mlp import FieldMLP
from pfgm.perturb import hyperparameters
from pfgm.training import PFGMLoss, PFGMppLoss, TrainConfig, create_state, save_checkpoint, train
from pfgm.training.distributed import init_process_group, train_ddp

SHAPE = (1, 8, 8)  # the digits' shape, and make_checkpoint's default


def make_checkpoint(path: Path, *, data: torch.Tensor | None = None, steps: int = 0, objective: str = "pfgm",
                    seed: int = 0, nan: bool = False, run_id: str | None = None,
                    shape: tuple[int, ...] = SHAPE) -> Path:
    """A tiny FieldMLP checkpoint as the train stage writes it (trained `steps` steps on `data`)."""
    generator = torch.Generator().manual_seed(seed)
    if data is None:
        data = torch.rand(256, *shape, generator=generator) * 2 - 1
    hp = hyperparameters(data)
    if objective == "pfgmpp":
        hp = dict(hp, D=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FieldMLP(data_shape=list(shape), hidden=32, depth=2, embed_dim=16,
                       embedding="log" if objective == "pfgm" else "positional")
    config = TrainConfig(steps=max(steps, 1), batch_size=128, lr=2e-3, warmup=0, ema_decay=0.5)
    state = create_state(net, config, generator)
    if steps:
        loss = PFGMLoss(M=hp["M"], small_batch=32) if objective == "pfgm" else PFGMppLoss(D=hp["D"])
        train(state, loss, data, config, progress=False)
    if nan:
        with torch.no_grad():
            for p in state.ema.module.parameters():
                p.fill_(float("nan"))
    metadata = dict(hyperparameters=hp, objective=objective, data=dict(name="digits", sha256="0" * 64),
                    mlflow_run_id=run_id)
    return save_checkpoint(path, state, config=config, metadata=metadata)


def count_extractions(monkeypatch) -> list[int]:
    """Record the row count of every digits-CNN feature extraction (samples and reference splits alike)."""
    from pfgm import metrics as pmetrics

    sizes: list[int] = []
    real = pmetrics.digits_extractor

    def counting(*args, **kwargs):
        extractor = real(*args, **kwargs)

        def extract(images):
            sizes.append(len(images))
            return extractor.extract(images)

        return dataclasses.replace(extractor, extract=extract)

    monkeypatch.setattr(pmetrics, "digits_extractor", counting)
    return sizes


def exact_model(charges, gamma=5.0):
    """The normalised empirical field of `charges` used as a perfect network."""
    return lambda x, z: normalized_field(x, z, charges, gamma=gamma)


class FakeInception(nn.Module):
    """The TorchScript interface clean-fid's InceptionV3W uses: `layers` and forward(img, ...)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2048))
        self.head = nn.Linear(2048, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        features = self.layers((img - 128.0) / 128.0)
        if return_features:
            return features
        return torch.softmax(self.head(features), dim=1)


def save_fake_inception(path) -> None:
    """A FakeInception with seed-0 weights, saved as TorchScript at `path`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.jit.save(torch.jit.script(FakeInception()), str(path))


# --- Data parallel: one training run per process, both objectives (test_distributed: gloo, test_gpu: nccl) ---

DDP_CONFIG = TrainConfig(steps=4, batch_size=32, lr=1e-3, warmup=2, ema_decay=0.5)
DDP_SMALL_BATCH = 8
DDP_OBJECTIVES = ("pfgm", "pfgmpp")


def ddp_data() -> torch.Tensor:
    """(128, 1, 2, 2) points in [-1, 1], the same in every process."""
    return torch.rand(128, 1, 2, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1


def ddp_loss(objective: str, rank: int, world_size: int):
    if objective == "pfgm":
        return PFGMLoss(M=40, small_batch=DDP_SMALL_BATCH, rank=rank, world_size=world_size)
    return PFGMppLoss(D=8, rank=rank, world_size=world_size)


def ddp_state(device: torch.device | str = "cpu"):
    """A seeded tiny FieldMLP on `device` with its optimizer and EMA; the generator seed is the same everywhere."""
    torch.manual_seed(0)
    net = FieldMLP(data_shape=(1, 2, 2), hidden=32, depth=2, embed_dim=8).to(device)
    return create_state(net, DDP_CONFIG, torch.Generator().manual_seed(7))


def flat_state(state) -> torch.Tensor:
    """The network's and the EMA's parameters as one CPU vector."""
    return torch.cat([p.detach().flatten() for p in state.net.parameters()]
                     + [p.detach().flatten() for p in state.ema.module.parameters()]).cpu()


def ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str, backend: str) -> None:
    """mp.spawn target: train both objectives under DDP; save {params, losses} to out_dir/<objective>-rank<r>.pt.

    Rank 1 starts from other weights on purpose: DDP must broadcast rank 0's. With nccl, rank r uses cuda:r.
    """
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 on the GPU too, to compare with one process
    info = init_process_group(rank, world_size, local_rank=rank, init_method=f"file://{init_file}", backend=backend)
    try:
        for objective in DDP_OBJECTIVES:  # one process group for both runs: spawning is the slow part
            state = ddp_state(info.device)
            if rank == 1:
                with torch.no_grad():
                    for p in state.net.parameters():
                        p.add_(1.0)
                state.ema.module.load_state_dict(state.net.state_dict())
            history = train_ddp(state, ddp_loss(objective, rank, world_size), ddp_data(), DDP_CONFIG, info,
                                checkpoint_dir=out_dir, progress=False)
            torch.save(dict(params=flat_state(state), losses=[r["loss"] for r in history]),
                       f"{out_dir}/{objective}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()
