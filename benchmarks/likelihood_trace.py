"""Cost of the exact trace in the likelihood ODE: N backward passes against one pass over N copies.

    python benchmarks/likelihood_trace.py [--model models/digits/model.pt] [--points 1 5 20 100] [--rounds 3]

Every variant computes tr(d drift / d x) of PFGM's field-line drift at the same points and height, on the
same network, in this process:
  backward passes   pfgm.likelihood.exact_trace_by_backward_passes: one forward pass, then N vector-Jacobian
                    products over the batch, keeping entry i of row i of every point's Jacobian;
  copies            pfgm.likelihood.exact_trace_over_copies: every point repeated N times and copy i pulled
                    back along e_i, one forward and one backward pass over B N rows;
  batched           (not in the library) the N products in one vectorised backward pass (is_grads_batched).
`drift_and_exact_trace` takes copies for batches of at most EXACT_TRACE_COPIES_MAX_POINTS points and backward
passes beyond, where this benchmark found each faster. Prints, for each number of points, each time (best
of `rounds`), the ratios to backward passes' and the largest trace difference. Without a trained model
(`make main`) a freshly initialised default FieldConvNet serves: the cost does not depend on the weights.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from pfgm.likelihood import exact_trace_by_backward_passes, exact_trace_over_copies
from pfgm.networks import FieldConvNet
from pfgm.ode import _FieldLineDrift
from pfgm.sampling import load_trained


def network(path: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The trained model's network and data shape, or a fresh default FieldConvNet for 8x8 digits."""
    if Path(path).is_file():
        model = load_trained(path)
        return model.net, tuple(model.shape)
    net = FieldConvNet(data_shape=[1, 8, 8], channels=32, blocks=4, embedding="log").eval()
    return net, (1, 8, 8)


def trace_batched(drift, x: torch.Tensor) -> torch.Tensor:
    """The N products e_i^T J in one vectorised backward pass over the batch."""
    points, dims = x.shape
    x = x.detach().requires_grad_(True)
    basis = torch.eye(dims, dtype=x.dtype)[:, None, :].expand(dims, points, dims)
    rows = torch.autograd.grad(drift(x), x, grad_outputs=basis, is_grads_batched=True)[0]  # (N, B, N)
    return torch.diagonal(rows, dim1=0, dim2=2).sum(dim=1)


def best_time(function, rounds: int) -> tuple[float, torch.Tensor]:
    """The shortest of `rounds` timed calls, and the last call's result."""
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def compare(net: torch.nn.Module, shape: tuple[int, ...], points: int, rounds: int) -> str:
    """One line: the three variants' times at `points` points, their ratios and their largest disagreement."""
    x = torch.rand(points, math.prod(shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
    t = torch.tensor(math.log(0.1), dtype=torch.float64)
    field = _FieldLineDrift(net, (points, *shape), gamma=5.0, z_exp=None, callback=None)
    drift = lambda flat: field(t, flat)  # noqa: E731 - the drift at one height
    passes_s, (_, passes) = best_time(lambda: exact_trace_by_backward_passes(drift, x), rounds)
    copies_s, (_, copies) = best_time(lambda: exact_trace_over_copies(drift, x), rounds)
    batched_s, batched = best_time(lambda: trace_batched(drift, x), rounds)
    difference = float(torch.stack([copies - passes, batched - passes]).abs().max())
    return (f"{points:4d} points: backward passes {passes_s:.3f} s, copies {copies_s:.3f} s "
            f"({passes_s / copies_s:.2f}x), batched {batched_s:.3f} s ({passes_s / batched_s:.2f}x); "
            f"largest trace difference {difference:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/digits/model.pt")
    parser.add_argument("--points", type=int, nargs="+", default=[1, 5, 20, 100])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    net, shape = network(args.model)
    print(f"{math.prod(shape)} dimensions, {torch.get_num_threads()} threads; ratios: backward passes' time "
          "over the variant's (above 1: the variant is faster)")
    with torch.enable_grad():
        for points in args.points:
            print(compare(net, shape, points, args.rounds), flush=True)


if __name__ == "__main__":
    main()
