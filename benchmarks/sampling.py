"""Sampling cost on the default model: solver overhead over the network, and the official-style loop.

    python benchmarks/sampling.py [--model models/digits/model.pt] [--batch 500] [--rtol 1e-4] [--rounds 3]

(1) `pfgm.ode.sample` with RK45 (dopri5): wall time against the time spent inside the network during
the same solve (each call timed): the ratio - 1 is the solver's overhead. (2) The official loop: scipy's
solve_ivp RK45 with the state copied to the host as float64 every evaluation and back, on the same
network, prior draws and tolerance. Both in this process; ratios printed. Needs a trained model:
run `make main` (or pass --model).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

from pfgm.sampling import load_trained
from pfgm.ode import sample
from pfgm.prior import sample_prior


class TimedNetwork:
    """The network, timing each of its calls: the solver's overhead is then measured inside the same
    solve (wall time minus time in the network), free of drift between separate measurements."""

    def __init__(self, net):
        self.net, self.seconds = net, 0.0

    def __call__(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.net(x, z)
        self.seconds += time.perf_counter() - start
        return out


def timed(solve, net) -> tuple[object, float, float]:
    """Run solve(network) once: (its result, wall seconds, seconds spent inside the network)."""
    network = TimedNetwork(net)
    began = time.perf_counter()
    with torch.no_grad():
        result = solve(network)
    return result, time.perf_counter() - began, network.seconds


def official_loop(net, x: torch.Tensor, *, z_max: float, z_min: float, rtol: float, atol: float):
    """scipy RK45 in ln z on a float64 host copy of x, converted to float32 tensors per evaluation."""
    shape, nfe = x.shape, 0

    def drift(t: float, state: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        z = float(np.exp(t))
        points = torch.from_numpy(state).reshape(shape).float()
        with torch.no_grad():
            v = net(points, torch.full((shape[0],), z))
        v_x, v_z = v[:, :-1], v[:, -1]
        return (z * v_x / v_z[:, None]).double().numpy().reshape(-1)

    solution = solve_ivp(drift, (np.log(z_max), np.log(z_min)), x.double().numpy().reshape(-1),
                         method="RK45", rtol=rtol, atol=atol)
    return torch.from_numpy(solution.y[:, -1]).reshape(shape).float(), nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/digits/model.pt")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--z-min", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=3, help="repetitions; medians are printed")
    args = parser.parse_args()
    if not Path(args.model).is_file():
        raise SystemExit(f"{args.model} not found: run `make main` first, or pass --model <checkpoint>")
    model = load_trained(args.model)
    z_max, upper = float(model.hyperparameters["z_max"]), float(model.hyperparameters["upper_norm"])
    start = sample_prior(args.batch, model.shape, z_max=z_max, upper_norm=upper,
                         generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {model.network_class} "
          f"{model.shape}, batch {args.batch}, RK45 rtol = atol = {args.rtol}, z {z_max:.3g} -> {args.z_min}")

    ours_overheads, official_overheads, ratios = [], [], []
    for _ in range(args.rounds):
        ours, ours_s, ours_net = timed(lambda net: sample(net, start, z_max=z_max, z_min=args.z_min, rtol=args.rtol,
                                                          atol=args.rtol), model.net)
        (official, official_nfe), official_s, official_net = timed(
            lambda net: official_loop(net, start, z_max=z_max, z_min=args.z_min, rtol=args.rtol, atol=args.rtol),
            model.net)
        ours_overheads.append(ours_s / ours_net - 1)
        official_overheads.append(official_s / official_net - 1)
        ratios.append(official_s / ours_s)
        print(f"round: ours {ours_s:.2f} s (network {ours_net:.2f} s, NFE {ours.nfe}, overhead "
              f"{ours_overheads[-1]:+.1%}) | official {official_s:.2f} s (network {official_net:.2f} s, "
              f"NFE {official_nfe}, overhead {official_overheads[-1]:+.1%}) | ratio {ratios[-1]:.2f}x")
    median = statistics.median
    print(f"median of {args.rounds} rounds: pfgm.ode.sample (torchdiffeq dopri5) solver overhead "
          f"{median(ours_overheads):+.1%}, NFE {ours.nfe}; official loop (scipy RK45, host float64 copies) "
          f"overhead {median(official_overheads):+.1%}, NFE {official_nfe}")
    print(f"wall-time ratio official / ours: {median(ratios):.2f}x; "
          f"max |difference| of the samples: {(official - ours.x).abs().max():.3g}")

if __name__ == "__main__":
    main()
