"""Sampling cost on the default model: solver overhead over the network, and the official-style loop.

    python benchmarks/sampling.py [--model models/digits/model.pt] [--batch 500] [--rtol 1e-4]

(1) `pfgm.ode.sample` with RK45 (dopri5) wall time against NFE x the network's own forward time at
the same batch size: the ratio - 1 is the solver's overhead. (2) The official loop: scipy's
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

from flows.pyfunc_model import load_trained
from pfgm.ode import sample
from pfgm.prior import sample_prior


def forward_seconds(net, x: torch.Tensor, z_max: float, reps: int) -> float:
    z = torch.full((x.shape[0],), z_max)
    with torch.no_grad():
        net(x, z)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            net(x, z)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    args = parser.parse_args()
    if not Path(args.model).is_file():
        raise SystemExit(f"{args.model} not found: run `make main` first, or pass --model <checkpoint>")
    model = load_trained(args.model)
    z_max, upper = float(model.hyperparameters["z_max"]), float(model.hyperparameters["upper_norm"])
    start = sample_prior(args.batch, model.shape, z_max=z_max, upper_norm=upper,
                         generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {model.network_class} "
          f"{model.shape}, batch {args.batch}, RK45 rtol = atol = {args.rtol}, z {z_max:.3g} -> {args.z_min}")

    forward = forward_seconds(model.net, start, z_max, reps=20)
    began = time.perf_counter()
    ours = sample(model.net, start, z_max=z_max, z_min=args.z_min, rtol=args.rtol, atol=args.rtol)
    ours_s = time.perf_counter() - began
    began = time.perf_counter()
    official, official_nfe = official_loop(model.net, start, z_max=z_max, z_min=args.z_min,
                                           rtol=args.rtol, atol=args.rtol)
    official_s = time.perf_counter() - began

    print(f"network forward: {forward * 1e3:.2f} ms per call")
    print(f"pfgm.ode.sample (torchdiffeq dopri5): {ours_s:.2f} s, NFE {ours.nfe}, "
          f"NFE x forward {ours.nfe * forward:.2f} s -> solver overhead {ours_s / (ours.nfe * forward) - 1:+.1%}")
    print(f"official loop (scipy RK45, host float64 copies): {official_s:.2f} s, NFE {official_nfe}, "
          f"overhead {official_s / (official_nfe * forward) - 1:+.1%}")
    print(f"wall-time ratio official / ours: {official_s / ours_s:.2f}x; "
          f"max |difference| of the samples: {(official - ours.x).abs().max():.3g}")


if __name__ == "__main__":
    main()
