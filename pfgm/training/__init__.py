"""Training: objectives, run construction, the loop, checkpoints and data parallelism (no tracking code here)."""
from pfgm.training.checkpoint import (NETWORKS, build_network, latest_checkpoint, load_checkpoint,
                                      restore_state, save_checkpoint)
from pfgm.training.losses import PFGMLoss, PFGMppLoss
from pfgm.training.loop import DivergenceError, build_forward, loss_network, tensor_batches, train, train_step
from pfgm.training.runs import Run, RunError, RunSpec, build_run, check_data, network_kwargs, run_hyperparameters
from pfgm.training.state import TrainConfig, TrainState, create_state

__all__ = [
    "NETWORKS", "DivergenceError", "PFGMLoss", "PFGMppLoss", "Run", "RunError", "RunSpec", "TrainConfig",
    "TrainState", "build_forward", "build_network", "build_run", "check_data", "create_state",
    "latest_checkpoint", "load_checkpoint", "loss_network", "network_kwargs", "restore_state",
    "run_hyperparameters", "save_checkpoint", "tensor_batches", "train", "train_step",
]
