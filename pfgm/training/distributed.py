"""Data-parallel training with DistributedDataParallel (gloo on CPU, nccl on GPU).

Launch with torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT:

    torchrun --nproc_per_node 2 -m pfgm.training.distributed --data train.pt --network FieldMLP \
        --network-config '{"data_shape": [1, 8, 8]}' --objective pfgm --steps 1000 --checkpoint-dir ckpt

or call `init_from_env()` and `train_ddp(...)` from your own entry point.

Why every process sees the same batch. PFGM's target at a trained point is the field of *all* the
charges (the large batch), so every process needs the whole large batch, not a shard of it. Every
process therefore uses the same seed for its training generator: it draws the same large batch, the
same flips and the same perturbations for the whole small batch, and then computes targets and runs
the network only for its own contiguous share of the small batch (`losses.shard_rows`; the
expensive part). The loss on a process is the mean over its share; DDP averages the gradients, so the
update is the single-process update on the whole small batch (equal to it up to float rounding), and
the processes stay identical. The cost is that data loading and the cheap O(B N) noise are
duplicated on every process.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pfgm.perturb import hyperparameters
from pfgm.training.checkpoint import NETWORKS, latest_checkpoint, load_checkpoint, restore_state
from pfgm.training.losses import PFGMLoss, PFGMppLoss
from pfgm.training.loop import build_forward, loss_network, train
from pfgm.training.state import TrainConfig, TrainState, create_state


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device


def init_process_group(rank: int, world_size: int, *, local_rank: int = 0, init_method: str = "env://",
                       backend: str | None = None) -> DistInfo:
    """Join the process group (nccl if CUDA is available, else gloo) and pick this process's device."""
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, device=device)


def init_from_env(backend: str | None = None) -> DistInfo:
    """`init_process_group` from the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"not launched by torchrun: {', '.join(missing)} not set")
    return init_process_group(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                              local_rank=int(os.environ.get("LOCAL_RANK", 0)), backend=backend)


def train_ddp(state: TrainState, loss_fn, data, config: TrainConfig, info: DistInfo, *,
              checkpoint_dir: str | Path | None = None, progress: bool = True, **callbacks) -> list[dict]:
    """`train` with the network wrapped in DDP; only rank 0 writes checkpoints and shows progress.

    `state.generator` must be seeded identically on every process, and `loss_fn` built with this
    process's rank and world size (see the module docstring). DDP broadcasts rank 0's weights at
    construction and the EMA (which starts at the initial weights) is broadcast here, so all processes
    start from the same network and the same average.
    """
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    forward = build_forward(DistributedDataParallel(loss_network(loss_fn, state.net), device_ids=device_ids),
                            amp=config.amp, compile=config.compile)
    for tensor in state.ema.state_dict().values():
        dist.broadcast(tensor, src=0)
    writer = info.rank == 0
    return train(state, loss_fn, data, config, forward=forward, checkpoint_dir=checkpoint_dir if writer else None,
                 progress=progress and writer, **callbacks)


def _arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="torch.save'd float tensor (N_data, *S) in [-1, 1]")
    parser.add_argument("--network", choices=sorted(NETWORKS), default="FieldMLP")
    parser.add_argument("--network-config", default="{}", help="JSON kwargs of the network")
    parser.add_argument("--objective", choices=("pfgm", "pfgmpp"), default="pfgm")
    parser.add_argument("--D", type=int, default=128, help="PFGM++ augmented dimensions")
    parser.add_argument("--small-batch", type=int, default=None, help="PFGM trained rows per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--steps", type=int, required=True)
    for field, kind in (("batch_size", int), ("lr", float), ("warmup", int), ("lr_rampup_kimg", float),
                        ("grad_clip", float), ("ema_decay", float), ("ema_halflife_kimg", float),
                        ("checkpoint_every", int)):
        parser.add_argument("--" + field.replace("_", "-"), type=kind, default=None)
    for flag in ("flip", "amp", "compile"):  # None when absent: TrainConfig's default stands
        parser.add_argument("--" + flag, action="store_true", default=None)
    parser.add_argument("--no-ema-warmup", dest="ema_warmup", action="store_false", default=None,
                        help="a constant EMA decay instead of the official warm-up")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    """torchrun entry point: seeds and devices are chosen here, once."""
    args = _arguments(argv)
    info = init_from_env()
    try:
        settings = {k: v for k, v in vars(args).items()
                    if k in TrainConfig.__dataclass_fields__ and v is not None}
        config = TrainConfig(**settings)
        data = torch.load(args.data, map_location="cpu", weights_only=True).float()
        if args.objective == "pfgm":
            loss_fn = PFGMLoss(M=hyperparameters(data)["M"], small_batch=args.small_batch,
                               rank=info.rank, world_size=info.world_size)
        else:
            loss_fn = PFGMppLoss(D=args.D, rank=info.rank, world_size=info.world_size)
        generator = torch.Generator().manual_seed(args.seed)  # the same seed on every process, on purpose
        resume = latest_checkpoint(args.checkpoint_dir) if args.checkpoint_dir else None
        if resume is not None:
            state = restore_state(load_checkpoint(resume), config, device=info.device)
        else:
            torch.manual_seed(args.seed)
            net = NETWORKS[args.network](**json.loads(args.network_config)).to(info.device)
            state = create_state(net, config, generator)
        train_ddp(state, loss_fn, data, config, info, checkpoint_dir=args.checkpoint_dir)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
