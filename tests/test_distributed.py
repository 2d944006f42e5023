"""Data parallel: two gloo processes on the CPU stay in sync and match one process on the same batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from helpers import DDP_CONFIG, DDP_OBJECTIVES, ddp_data, ddp_loss, ddp_state, ddp_worker, flat_state
from pfgm.training import latest_checkpoint, load_checkpoint, train
from pfgm.training.distributed import init_from_env


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Both objectives trained by two spawned gloo processes: {objective: [rank 0, rank 1] results}."""
    out = tmp_path_factory.mktemp("ddp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mp.spawn(ddp_worker, args=(2, str(out / "init"), str(out), "gloo"), nprocs=2, join=True)
    finally:
        torch.set_num_threads(threads)
    assert not list(out.glob("checkpoint_*"))  # checkpoint_every is None
    return {o: [torch.load(out / f"{o}-rank{r}.pt", weights_only=True) for r in range(2)] for o in DDP_OBJECTIVES}


@pytest.mark.parametrize("objective", DDP_OBJECTIVES)
def test_two_processes_match_one(objective, ddp_results):
    ranks = ddp_results[objective]
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])  # the processes stay in sync

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = ddp_state()
        history = train(single, ddp_loss(objective, 0, 1), ddp_data(), DDP_CONFIG, progress=False)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(ranks[0]["params"], flat_state(single), atol=1e-6, rtol=0)
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
    torch.save(ddp_data(), tmp_path / "data.pt")
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
