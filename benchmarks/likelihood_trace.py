"""Cost of the exact trace in the likelihood ODE: one pass over N copies against N backward passes.

    python benchmarks/likelihood_trace.py [--model models/digits/model.pt] [--points 20] [--rounds 3]

Both compute tr(d drift / d x) of PFGM's field-line drift at the same points and height, on the same
network, in this process: the baseline takes one backward pass per data dimension (N of them), the
library's `drift_and_exact_trace` copies every point N times and pulls copy i back along e_i in one
forward and one backward pass. Prints each time (best of `rounds`), the ratio, and the largest trace
difference. Without a trained model (`make main`) a freshly initialised default FieldConvNet serves:
the cost does not depend on the weights.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from pfgm.likelihood import drift_and_exact_trace
from pfgm.networks import FieldConvNet
from pfgm.ode import _FieldLineDrift
from pfgm.sampling import load_trained


def network(path: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    if Path(path).is_file():
        model = load_trained(path)
        return model.net, tuple(model.shape)
    net = FieldConvNet(data_shape=[1, 8, 8], channels=32, blocks=4, embedding="log").eval()
    return net, (1, 8, 8)


def trace_by_backward_passes(drift, x: torch.Tensor) -> torch.Tensor:
    """The baseline: row i of every point's Jacobian from its own backward pass, keeping entry i."""
    x = x.detach().requires_grad_(True)
    values = drift(x)
    rows = [torch.autograd.grad(values[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(x.shape[1])]
    return torch.stack(rows, dim=1).sum(dim=1)


def best_time(function, rounds: int) -> tuple[float, torch.Tensor]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/digits/model.pt")
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    net, shape = network(args.model)
    x = torch.rand(args.points, math.prod(shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
    field = _FieldLineDrift(net, (args.points, *shape), gamma=5.0, z_exp=None, callback=None)
    t = torch.tensor(math.log(0.1), dtype=torch.float64)
    drift = lambda points: field(t, points)  # noqa: E731 - the drift at one height
    loop_s, loop = best_time(lambda: trace_by_backward_passes(drift, x), args.rounds)
    copies_s, (_, copies) = best_time(lambda: drift_and_exact_trace(drift, x), args.rounds)
    print(f"{args.points} points of {x.shape[1]} dimensions, {torch.get_num_threads()} threads")
    print(f"N backward passes: {loop_s:.3f} s; one pass over N copies: {copies_s:.3f} s; "
          f"ratio {loop_s / copies_s:.1f}x; largest trace difference {float((loop - copies).abs().max()):.2e}")


if __name__ == "__main__":
    main()
