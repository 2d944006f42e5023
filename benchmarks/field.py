"""Field targets at CIFAR-10 shapes: our matrix-product field vs the official broadcast formulation.

Both run in this process on the same inputs (128 trained points, M charges, N = 3072) and the ratio
of their median times is printed, so machine noise cancels. Peak memory is measured in a fresh child
process per variant (peak RSS above the inputs). Where the official (B, M, N+1)
tensors would not fit comfortably, it is timed over row chunks (same arithmetic, less memory) and
its full-size peak is reported from the tensor sizes.

    python benchmarks/field.py [--charges 1024 4096] [--repeats 3]
"""
from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time

import torch

from pfgm.field import normalized_field

SMALL_BATCH, DIMS = 128, 3 * 32 * 32
FULL_SIZE_LIMIT_BYTES = 4 * 2 ** 30  # official variant runs unchunked when one (B, M, N+1) tensor is below this


def official_target(x: torch.Tensor, z: torch.Tensor, charges: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """The official losses.py computation: broadcast differences, distance powers, weighted sum."""
    points = torch.cat([x.reshape(len(x), -1), z[:, None]], dim=1)
    data = torch.cat([charges.reshape(len(charges), -1), torch.zeros(len(charges), 1)], dim=1)
    distance = torch.sum((points.unsqueeze(1) - data) ** 2, dim=-1).sqrt()
    distance = torch.min(distance, dim=1, keepdim=True)[0] / (distance + 1e-7)
    distance = (distance ** (DIMS + 1))[:, :, None]
    coeff = distance / (torch.sum(distance, dim=1, keepdim=True) + 1e-7)
    direction = torch.sum(coeff * -(points.unsqueeze(1) - data), dim=1)
    norm = direction.norm(p=2, dim=1)
    return direction / (norm[:, None] + gamma) * math.sqrt(DIMS)


def official_chunk_rows(charges: int) -> int:
    tensor_bytes = SMALL_BATCH * charges * (DIMS + 1) * 4
    return SMALL_BATCH if tensor_bytes <= FULL_SIZE_LIMIT_BYTES else 16


def official_chunked(x, z, charges):
    rows = official_chunk_rows(len(charges))
    return torch.cat([official_target(x[i:i + rows], z[i:i + rows], charges) for i in range(0, len(x), rows)])


def ours(x, z, charges):
    return normalized_field(x, z, charges)


VARIANTS = {"ours": ours, "official": official_chunked}


def make_inputs(charges: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    data = torch.rand(charges, 3, 32, 32, generator=generator) * 2 - 1
    scale = 1.03 ** (torch.rand(SMALL_BATCH, generator=generator) * 291)
    x = data[:SMALL_BATCH] + 0.01 * scale[:, None, None, None] * torch.randn(SMALL_BATCH, 3, 32, 32, generator=generator)
    z = 0.01 * scale * torch.randn(SMALL_BATCH, generator=generator).abs()
    return x, z, data


def median_time(fn, args, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_mib(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def child_peak(variant: str, charges: int) -> None:
    """Runs one variant once and prints its peak resident memory above the inputs, in MiB.

    VmHWM (peak RSS) starts afresh at exec, unlike ru_maxrss, which keeps the parent's peak.
    """
    args = make_inputs(charges)
    before = _status_mib("VmRSS")
    VARIANTS[variant](*args)
    print(max(_status_mib("VmHWM") - before, 0.0))


def measure_peak(variant: str, charges: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", variant, str(charges)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_peak(args.child[0], int(args.child[1]))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"small batch {SMALL_BATCH}, N = {DIMS}")
    for charges in args.charges:
        inputs = make_inputs(charges)
        agreement = torch.nn.functional.cosine_similarity(ours(*inputs).double(), official_chunked(*inputs).double())
        ours_s = median_time(ours, inputs, args.repeats)
        official_s = median_time(official_chunked, inputs, args.repeats)
        rows = official_chunk_rows(charges)
        full_bytes = SMALL_BATCH * charges * (DIMS + 1) * 4
        print(f"M = {charges:5d}: ours {ours_s * 1e3:8.1f} ms | official {official_s * 1e3:8.1f} ms "
              f"({'unchunked' if rows == SMALL_BATCH else f'in chunks of {rows} rows'}) | "
              f"speed-up {official_s / ours_s:5.1f}x | min cos(ours, official) {agreement.min():.7f}")
        print(f"          peak memory: ours {measure_peak('ours', charges):8.1f} MiB | official "
              f"{measure_peak('official', charges):8.1f} MiB measured"
              + ("" if rows == SMALL_BATCH else f", {full_bytes / 2 ** 30:.1f} GiB per (B, M, N+1) tensor unchunked"))


if __name__ == "__main__":
    main()
