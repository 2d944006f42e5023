"""Data parallel: two gloo processes on the CPU stay in sync and match one process on the same batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pfgm.networks.mlp import FieldMLP
from pfgm.training import (PFGMLoss, PFGMppLoss, TrainConfig, create_state, latest_checkpoint, load_checkpoint,
                           train)
from pfgm.training.distributed import init_from_env, init_process_group, train_ddp

CONFIG = TrainConfig(steps=4, batch_size=32, lr=1e-3, warmup=2, ema_decay=0.5)
SMALL_BATCH = 8


def _data() -> torch.Tensor:
    return torch.rand(128, 1, 2, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _loss(objective: str, rank: int, world_size: int):
    if objective == "pfgm":
        return PFGMLoss(M=40, small_batch=SMALL_BATCH, rank=rank, world_size=world_size)
    return PFGMppLoss(D=8, rank=rank, world_size=world_size)


def _state():
    torch.manual_seed(0)
    net = FieldMLP(data_shape=(1, 2, 2), hidden=32, depth=2, embed_dim=8)
    return create_state(net, CONFIG, torch.Generator().manual_seed(7))  # same seed on every process


def _flat(state) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in state.net.parameters()]
                     + [p.detach().flatten() for p in state.ema.module.parameters()])


OBJECTIVES = ("pfgm", "pfgmpp")


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    info = init_process_group(rank, world_size, init_method=f"file://{init_file}", backend="gloo")
    try:
        for objective in OBJECTIVES:  # one process group for both runs: spawning is the slow part
            state = _state()
            if rank == 1:  # a different start on one process: DDP must broadcast rank 0's weights
                with torch.no_grad():
                    for p in state.net.parameters():
                        p.add_(1.0)
                state.ema.module.load_state_dict(state.net.state_dict())
            history = train_ddp(state, _loss(objective, rank, world_size), _data(), CONFIG, info,
                                checkpoint_dir=out_dir, progress=False)
            torch.save(dict(params=_flat(state), losses=[r["loss"] for r in history]),
                       f"{out_dir}/{objective}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Both objectives trained by two spawned gloo processes: {objective: [rank 0, rank 1] results}."""
    out = tmp_path_factory.mktemp("ddp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mp.spawn(_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    finally:
        torch.set_num_threads(threads)
    assert not list(out.glob("checkpoint_*"))  # checkpoint_every is None
    return {o: [torch.load(out / f"{o}-rank{r}.pt", weights_only=True) for r in range(2)] for o in OBJECTIVES}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_processes_match_one(objective, ddp_results):
    ranks = ddp_results[objective]
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])  # the processes stay in sync

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _state()
        history = train(single, _loss(objective, 0, 1), _data(), CONFIG, progress=False)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(ranks[0]["params"], _flat(single), atol=1e-6, rtol=0)
    # Each process reports the loss of its own half; their mean is the whole batch's loss.
    mean_loss = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]
    assert mean_loss == pytest.approx([r["loss"] for r in history], rel=1e-5)


def test_init_from_env_requires_torchrun_variables(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_from_env()


@pytest.mark.slow
def test_torchrun_entry_point_trains_and_resumes(tmp_path):
    torch.save(_data(), tmp_path / "data.pt")
    checkpoints = tmp_path / "ckpt"

    def run(steps: int) -> None:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "pfgm.training.distributed", "--data", str(tmp_path / "data.pt"),
                   "--network-config", json.dumps({"data_shape": [1, 2, 2], "hidden": 16, "depth": 1}),
                   "--steps", str(steps), "--batch-size", "32", "--small-batch", "8", "--warmup", "0",
                   "--checkpoint-dir", str(checkpoints), "--checkpoint-every", "2"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    run(4)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_00000002.pt", "checkpoint_00000004.pt"]
    first = {p.name: p.stat().st_ino for p in checkpoints.iterdir()}
    run(6)  # picks up checkpoint 4 and continues: the earlier files are not rewritten
    assert {p.name: p.stat().st_ino for p in checkpoints.iterdir() if p.name in first} == first
    assert len(list(checkpoints.iterdir())) == 3
    payload = load_checkpoint(latest_checkpoint(checkpoints))
    assert payload["step"] == 6 and payload["network"]["class"] == "FieldMLP"
