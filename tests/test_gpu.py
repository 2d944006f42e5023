"""What only a GPU shows: CUDA against the CPU, bf16 autocast, torch.compile, and NCCL data parallel.

Every test is marked `gpu` and skips without CUDA; `make gpu-check` runs them, then
benchmarks/gpu_throughput.py. CUDA-against-CPU comparisons run with TF32 off (cuDNN convolutions use it
by default, and its 10-bit mantissa would swamp float32 rounding), so what is left is the order of
float32 sums: hence tolerances of 1e-4 to 1e-3 of the largest entry. Weights are perturbed from their
initialisation, near zero in the U-Nets' output layers, so that outputs and gradients are not trivially small.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp

from helpers import (DDP_CONFIG, DDP_OBJECTIVES, SHAPE, ddp_data, ddp_loss, ddp_state, ddp_worker, exact_model,
                     flat_state)
from pfgm import pfgmpp
from pfgm.networks.ddpmpp import DDPMpp
from pfgm.networks.edm import EDMPrecond
from pfgm.networks.mlp import FieldMLP
from pfgm.networks.songunet import SongUNet
from pfgm.ode import sample
from pfgm.prior import sample_prior
from pfgm.training import (PFGMLoss, PFGMppLoss, TrainConfig, build_forward, create_state, loss_network, train,
                           train_step)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def full_float32():
    """TF32 off for matrix products and cuDNN convolutions while the test runs."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def perturbed(net: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """`net` with seeded noise added to every parameter (in place)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p += scale * torch.randn(p.shape, generator=generator).to(p.device)
    return net


def small_ddpmpp() -> DDPMpp:
    torch.manual_seed(0)
    return perturbed(DDPMpp(image_size=8, channels=1, nf=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4],
                            dropout=0.0))


def small_songunet() -> SongUNet:
    torch.manual_seed(0)
    return perturbed(SongUNet(img_resolution=8, in_channels=1, out_channels=1, model_channels=16, channel_mult=[1, 2],
                              num_blocks=1, attn_resolutions=[4], dropout=0.0))


def small_precond() -> EDMPrecond:
    torch.manual_seed(0)
    return perturbed(EDMPrecond(img_resolution=8, img_channels=1, model_channels=16, channel_mult=[1, 2],
                                num_blocks=1, attn_resolutions=[4], dropout=0.0, pfgmpp=True, D=128))


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Elementwise within rel * max|expected| (absolute) and rel (relative): a float32 tolerance that
    does not fail on entries near zero."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual.cpu(), expected.cpu(), rtol=rel, atol=rel * scale)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm())


# --- Sampling -------------------------------------------------------------------------------------------------

SOLVERS = [dict(method="euler", steps=12), dict(method="heun", steps=6), dict(method="dopri5")]


def pfgm_model(kind: str, device: str):
    """A field model on `device`: the exact field of 16 fixed charges, alone or plus a small seeded FieldMLP.

    An untrained network alone sends the samples off to 1e11 (its v_z is no match for its v_x near the
    plane), so it only adds a small term to the x part of the exact field: the flow stays on the scale of
    the data, as a trained model's would, and the network still runs at every evaluation.
    """
    charges = torch.rand(16, *SHAPE, generator=torch.Generator().manual_seed(2)) * 2 - 1
    exact = exact_model(charges.to(device))
    if kind == "exact":
        return exact
    torch.manual_seed(0)
    net = FieldMLP(data_shape=list(SHAPE), hidden=64, depth=2, embed_dim=16).to(device).eval()
    x_part = torch.ones(math.prod(SHAPE) + 1, device=device)
    x_part[-1] = 0
    return lambda x, z: exact(x, z) + 0.01 * net(x, z) * x_part


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s["method"])
@pytest.mark.parametrize("kind", ["exact", "exact_plus_mlp"])
def test_pfgm_sampling_on_cuda_matches_cpu(full_float32, kind, solver):
    start = sample_prior(8, SHAPE, z_max=40.0, generator=torch.Generator().manual_seed(0))
    results = {device: sample(pfgm_model(kind, device), start.to(device), z_max=40.0, z_min=1e-2, **solver)
               for device in ("cpu", "cuda")}
    on_cpu, on_cuda = results["cpu"], results["cuda"]
    assert on_cuda.x.device.type == "cuda" and torch.isfinite(on_cuda.x).all()
    if solver["method"] != "dopri5":  # the adaptive solver's step choice may differ by a step
        assert on_cuda.nfe == on_cpu.nfe
    assert_close_to(on_cuda.x, on_cpu.x, rel=1e-3)


def pfgmpp_denoiser(kind: str, device: str):
    if kind == "exact":
        charges = torch.rand(16, *SHAPE, generator=torch.Generator().manual_seed(2)) * 2 - 1
        return pfgmpp.optimal_denoiser(charges.to(device), D=128)
    return small_precond().to(device).eval()


@pytest.mark.parametrize("kind", ["exact", "edm_precond"])
def test_pfgmpp_heun_on_cuda_matches_cpu(full_float32, kind):
    start = pfgmpp.sample_prior(8, SHAPE, D=128, generator=torch.Generator().manual_seed(0))
    grid = pfgmpp.sigma_grid(8)
    results = {device: pfgmpp.heun(pfgmpp_denoiser(kind, device), start.to(device), grid)
               for device in ("cpu", "cuda")}
    on_cpu, on_cuda = results["cpu"], results["cuda"]
    assert on_cuda.x.device.type == "cuda" and torch.isfinite(on_cuda.x).all()
    assert on_cuda.nfe == on_cpu.nfe == 2 * 8 - 1
    assert_close_to(on_cuda.x, on_cpu.x, rel=1e-3)


# --- Training -------------------------------------------------------------------------------------------------

def one_step(objective: str, device: str) -> dict:
    """One train_step of a small U-Net from a seeded start on `device`: loss, parameters before and after."""
    if objective == "pfgm":
        net, loss_fn = small_ddpmpp(), PFGMLoss(M=64, small_batch=16)
    else:
        net, loss_fn = small_precond(), PFGMppLoss(D=128)
    net = net.to(device)
    # Adam's first step moves a weight by lr g / (|g| + eps): with the default eps (1e-8) a gradient at the
    # level of rounding noise could move it by a whole step either way; eps = 1e-3 keeps that move tiny.
    config = TrainConfig(steps=1, batch_size=32, lr=1e-3, eps=1e-3, warmup=0, ema_decay=0.5)
    state = create_state(net, config, torch.Generator().manual_seed(3))
    before = torch.cat([p.detach().flatten() for p in net.parameters()]).cpu()
    batch = (torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(4)) * 2 - 1).to(device)
    record = train_step(state, build_forward(loss_network(loss_fn, net)), loss_fn, batch, config)
    after = torch.cat([p.detach().flatten() for p in net.parameters()]).cpu()
    grads = torch.cat([p.grad.flatten() for p in net.parameters()]).cpu()
    return dict(record=record, before=before, after=after, grads=grads)


@pytest.mark.parametrize("objective", ["pfgm", "pfgmpp"])
def test_a_training_step_on_cuda_matches_cpu(full_float32, objective):
    on_cpu, on_cuda = one_step(objective, "cpu"), one_step(objective, "cuda")
    assert torch.equal(on_cuda["before"], on_cpu["before"])  # the same start
    assert math.isfinite(on_cuda["record"]["loss"]) and on_cuda["record"]["loss"] > 0
    assert not torch.equal(on_cuda["after"], on_cuda["before"])  # the step moved the weights
    assert on_cuda["record"]["loss"] == pytest.approx(on_cpu["record"]["loss"], rel=1e-4)
    assert_close_to(on_cuda["grads"], on_cpu["grads"], rel=1e-3)
    torch.testing.assert_close(on_cuda["after"] - on_cuda["before"], on_cpu["after"] - on_cpu["before"],
                               rtol=1e-3, atol=1e-6)


# --- Networks on the GPU: bf16 autocast, torch.compile --------------------------------------------------------

def network_inputs(kind: str, device: str = "cuda") -> tuple[torch.nn.Module, tuple]:
    """A small network and its inputs: DDPM++ takes (x, z), SongUNet (x, noise labels, None)."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(8, *SHAPE, generator=generator).to(device)
    if kind == "ddpmpp":
        z = torch.rand(8, generator=generator).mul(40).add(0.1).to(device)
        return small_ddpmpp().to(device).eval(), (x, z)
    noise = torch.randn(8, generator=generator).to(device)
    return small_songunet().to(device).eval(), (x, noise, None)


@pytest.mark.parametrize("kind", ["ddpmpp", "songunet"])
def test_bf16_autocast_forward_is_close_to_float32(full_float32, kind):
    net, inputs = network_inputs(kind)
    with torch.no_grad():
        full = net(*inputs)
        half = build_forward(net, amp=True)(*inputs)  # the training loop's train.amp path
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert not torch.equal(half, full)  # autocast did run in bf16
    assert relative_error(half, full) < 5e-2  # bf16 keeps 8 bits of mantissa


def test_torch_compile_gives_the_eager_output(full_float32):
    net, inputs = network_inputs("ddpmpp")
    compiled = build_forward(net, compile=True)  # the training loop's train.compile path
    with torch.no_grad():
        eager, once, twice = net(*inputs), compiled(*inputs), compiled(*inputs)
    assert torch.equal(once, twice)
    assert_close_to(once, eager, rel=1e-4)


# --- NCCL data parallel ---------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_nccl_two_processes_match_one_gpu(full_float32, tmp_path):
    mp.spawn(ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), "nccl"), nprocs=2, join=True)
    assert not list(tmp_path.glob("checkpoint_*"))  # checkpoint_every is None
    for objective in DDP_OBJECTIVES:
        ranks = [torch.load(tmp_path / f"{objective}-rank{r}.pt", weights_only=True) for r in range(2)]
        assert torch.equal(ranks[0]["params"], ranks[1]["params"])  # the all-reduce kept them in sync
        single = ddp_state("cuda:0")
        history = train(single, ddp_loss(objective, 0, 1), ddp_data(), DDP_CONFIG, progress=False)
        torch.testing.assert_close(ranks[0]["params"], flat_state(single), atol=1e-5, rtol=0)
        mean_loss = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]
        assert mean_loss == pytest.approx([r["loss"] for r in history], rel=1e-4)
