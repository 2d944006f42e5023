"""Training: objectives, the loop, checkpoints and data parallelism (no tracking code here)."""
from pfgm.training.checkpoint import (NETWORKS, build_network, latest_checkpoint, load_checkpoint,
                                      restore_state, save_checkpoint)
from pfgm.training.losses import PFGMLoss, PFGMppLoss
from pfgm.training.loop import DivergenceError, build_forward, loss_network, tensor_batches, train, train_step
from pfgm.training.state import TrainConfig, TrainState, create_state

__all__ = [
    "NETWORKS", "DivergenceError", "PFGMLoss", "PFGMppLoss", "TrainConfig", "TrainState", "build_forward",
    "build_network", "create_state", "latest_checkpoint", "load_checkpoint", "loss_network", "restore_state",
    "save_checkpoint", "tensor_batches", "train", "train_step",
]
