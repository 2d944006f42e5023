"""Training: objectives, run construction, the loop, checkpoints and data parallelism (no tracking code here)."""
from pfgm.training.checkpoint import (NETWORKS, build_network, clear_run_files, latest_checkpoint, load_checkpoint,
                                      restore_state, save_checkpoint)
from pfgm.training.losses import PFGMLoss, PFGMppLoss
from pfgm.training.loop import DivergenceError, build_forward, loss_network, tensor_batches, train, train_step
from pfgm.training.runs import (Run, RunError, RunSpec, Setup, build_run, check_data, checkpoint_metadata, fingerprint,
                                network_kwargs, new_state, run_hyperparameters, setup_run)
from pfgm.training.state import TrainConfig, TrainState, create_state

__all__ = [
    "NETWORKS", "DivergenceError", "PFGMLoss", "PFGMppLoss", "Run", "RunError", "RunSpec", "Setup", "TrainConfig",
    "TrainState", "build_forward", "build_network", "build_run", "check_data", "checkpoint_metadata",
    "clear_run_files", "create_state", "fingerprint", "latest_checkpoint", "load_checkpoint", "loss_network",
    "network_kwargs", "new_state", "restore_state", "run_hyperparameters", "save_checkpoint", "setup_run",
    "tensor_batches", "train", "train_step",
]
