"""GPU throughput: training steps/s and sampling images/s on CUDA against the CPU, and bf16 against float32.

    python benchmarks/gpu_throughput.py [--train-steps 20] [--sample-steps 10] [--skip-cifar] [--threads N]

(1) The digits' small DDPM++ (1x8x8): PFGM training steps per second (`pfgm.training.train_step`, the
loss's large batch as charges) and Euler sampling images per second (`pfgm.ode.sample`), each on the CPU,
on CUDA in float32 and on CUDA under bf16 autocast (the `train.amp` path); the ratios CUDA / CPU and
bf16 / float32 are printed. (2) The released CIFAR-10 DDPM++ (3x32x32) on CUDA only, float32 against bf16
(the CPU would take minutes a step). All in this process, on the same weights and inputs, so the ratios
are free of drift between machines and runs. Without CUDA it prints one line and exits with status 0.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from pfgm.networks.ddpmpp import RELEASED_CONFIGS, DDPMpp
from pfgm.ode import sample
from pfgm.prior import sample_prior
from pfgm.training import PFGMLoss, TrainConfig, build_forward, create_state, loss_network, tensor_batches, train_step

Z_MAX, Z_MIN = 40.0, 1e-3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(net, device: torch.device, *, amp: bool, shape, batch: int, small_batch: int, M: int,
               steps: int) -> float:
    """Training steps per second over `steps` steps, after two warm-up steps (cuDNN's choices, allocator)."""
    net = copy.deepcopy(net).to(device)
    config = TrainConfig(steps=steps + 2, batch_size=batch, lr=1e-4, warmup=0, amp=amp)
    state = create_state(net, config, torch.Generator().manual_seed(0))
    data = (torch.rand(4 * batch, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(device)
    loss_fn = PFGMLoss(M=M, small_batch=small_batch)
    forward = build_forward(loss_network(loss_fn, net), amp=amp)
    batches = tensor_batches(data, batch, state.generator)
    for _ in range(2):
        train_step(state, forward, loss_fn, next(batches), config)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(state, forward, loss_fn, next(batches), config)  # reads the loss: one sync a step
    _sync(device)
    return steps / (time.perf_counter() - start)


def sample_rate(net, device: torch.device, *, amp: bool, shape, images: int, steps: int) -> float:
    """Images per second of an Euler solve of `steps` steps from z_max to z_min, after a warm-up solve."""
    net = copy.deepcopy(net).to(device).eval()
    model = build_forward(net, amp=amp)
    start_points = sample_prior(images, tuple(shape), z_max=Z_MAX, generator=torch.Generator().manual_seed(2))
    start_points = start_points.to(device)
    sample(model, start_points[:2], z_max=Z_MAX, z_min=Z_MIN, method="euler", steps=2)
    _sync(device)
    start = time.perf_counter()
    sample(model, start_points, z_max=Z_MAX, z_min=Z_MIN, method="euler", steps=steps)
    _sync(device)
    return images / (time.perf_counter() - start)


def report(name: str, net, *, shape, batch: int, small_batch: int, M: int, images: int, args,
           devices: list[tuple[str, torch.device, bool]]) -> None:
    """One line for training and one for sampling: each (device, precision) rate and its ratio to the first."""
    params = sum(p.numel() for p in net.parameters())
    print(f"{name}: {params / 1e6:.2f}M params, x {tuple(shape)}, batch {batch} (small batch {small_batch}), "
          f"{images} images x {args.sample_steps} Euler steps")
    train = {label: train_rate(net, device, amp=amp, shape=shape, batch=batch, small_batch=small_batch, M=M,
                               steps=args.train_steps) for label, device, amp in devices}
    sampling = {label: sample_rate(net, device, amp=amp, shape=shape, images=images, steps=args.sample_steps)
                for label, device, amp in devices}
    for what, rates, unit in (("training", train, "steps/s"), ("sampling", sampling, "images/s")):
        labels = list(rates)
        cells = [f"{labels[0]} {rates[labels[0]]:10.1f} {unit}"]
        for label in labels[1:]:
            baseline = "CUDA fp32" if label == "CUDA bf16" and "CUDA fp32" in rates else labels[0]
            cells.append(f"{label} {rates[label]:10.1f} {unit} ({rates[label] / rates[baseline]:.2f}x {baseline})")
        print(f"  {what:<9} " + " | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--skip-cifar", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the CPU baseline")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device here; nothing measured (run it on a machine with a GPU)")
        sys.exit(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(cuda)}, {torch.get_num_threads()} CPU threads "
          "for the CPU baseline; TF32 as torch's defaults")

    small = DDPMpp(image_size=8, channels=1, nf=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4],
                   dropout=0.0)
    report("digits / small DDPM++", small, shape=(1, 8, 8), batch=1024, small_batch=128, M=261, images=256,
           args=args, devices=[("CPU fp32", torch.device("cpu"), False), ("CUDA fp32", cuda, False),
                               ("CUDA bf16", cuda, True)])
    if not args.skip_cifar:
        report("CIFAR-10 / DDPM++ (released config)", DDPMpp(**RELEASED_CONFIGS["cifar10"]), shape=(3, 32, 32),
               batch=4096, small_batch=128, M=291, images=128, args=args,
               devices=[("CUDA fp32", cuda, False), ("CUDA bf16", cuda, True)])


if __name__ == "__main__":
    main()
