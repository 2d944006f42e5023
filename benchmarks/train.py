"""Where a PFGM training step spends its time: perturbation + field target vs the network.

    python benchmarks/train.py [--reps 3] [--cifar-small-batch 8] [--skip-cifar] [--threads N]

For each setting it times, per step: (a) perturbing the small batch and computing the normalised
empirical field with the whole large batch as charges, (b) the network's forward and backward
pass on the loss, (c) the Adam step and the EMA update; and prints the share of (a). Plain text.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pfgm.field import normalized_field
from pfgm.networks.ddpmpp import RELEASED_CONFIGS, DDPMpp
from pfgm.networks.mlp import FieldMLP
from pfgm.perturb import perturb
from pfgm.training import TrainConfig, create_state


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def time_step(net, *, shape, small_batch, charges, M, reps, device, generator) -> dict:
    """Median seconds per step of target, forward+backward and optimizer over `reps` (after one warm-up)."""
    state = create_state(net, TrainConfig(steps=1, lr=1e-4, warmup=0), generator)
    data = torch.rand(charges, *shape, generator=generator).mul(2).sub(1).to(device)
    times = {"target": [], "forward_backward": [], "optimizer_ema": []}
    for rep in range(reps + 1):
        def target():
            x, z = perturb(data[:small_batch], M=M, generator=generator)
            z = z.clamp_min(1e-10)
            return x, z, normalized_field(x, z, data)

        (x, z, field), t_target = _timed(target, device)

        def forward_backward():
            state.optimizer.zero_grad(set_to_none=True)
            loss = 0.5 * (net(x, z) - field).square().sum(dim=1).mean()
            loss.backward()

        _, t_net = _timed(forward_backward, device)

        def update():
            state.optimizer.step()
            state.ema.update_parameters(net)

        _, t_opt = _timed(update, device)
        if rep:  # the first repetition warms caches and allocators
            for key, value in zip(times, (t_target, t_net, t_opt)):
                times[key].append(value)
    return {key: statistics.median(values) for key, values in times.items()}


def report(name: str, net, *, shape, small_batch, charges, M, reps, device) -> None:
    params = sum(p.numel() for p in net.parameters())
    result = time_step(net.to(device), shape=shape, small_batch=small_batch, charges=charges, M=M, reps=reps,
                       device=device, generator=torch.Generator().manual_seed(0))
    total = sum(result.values())
    print(f"{name}: {params / 1e6:.2f}M params, x {tuple(shape)}, small batch {small_batch}, "
          f"charges {charges}, {reps} reps")
    print(f"  perturbation + field target  {result['target'] * 1e3:10.2f} ms")
    print(f"  network forward + backward   {result['forward_backward'] * 1e3:10.2f} ms")
    print(f"  Adam step + EMA update       {result['optimizer_ema'] * 1e3:10.2f} ms")
    print(f"  step total                   {total * 1e3:10.2f} ms   ({small_batch / total:.1f} images/s)")
    print(f"  target share of the step     {100 * result['target'] / total:9.2f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cifar-reps", type=int, default=2)
    parser.add_argument("--cifar-small-batch", type=int, default=8)
    parser.add_argument("--skip-cifar", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads")

    digits = dict(shape=(1, 8, 8), small_batch=128, charges=1024, M=261, reps=args.reps, device=device)
    report("digits / FieldMLP", FieldMLP(data_shape=[1, 8, 8], hidden=256, depth=3), **digits)
    small_unet = DDPMpp(data_shape=[1, 8, 8], nf=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4],
                        dropout=0.0)
    report("digits / small DDPM++", small_unet, **digits)
    if not args.skip_cifar:
        report("CIFAR-10 / DDPM++ (released config)", DDPMpp(**RELEASED_CONFIGS["cifar10"]), shape=(3, 32, 32),
               small_batch=args.cifar_small_batch, charges=4096, M=291, reps=args.cifar_reps, device=device)


if __name__ == "__main__":
    main()
