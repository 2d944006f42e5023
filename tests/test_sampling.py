"""pfgm.sampling: one sampler contract over PFGM and PFGM++ on tiny untrained field networks.

"The same as before" means the same as the library's solvers called directly, as the flows called
them before pfgm.sampling existed (prior, then pfgm.ode.sample or EDM's Heun).
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch

from pfgm import ode, pfgmpp
from pfgm.networks.edm import as_denoiser
from pfgm.networks.mlp import FieldMLP
from pfgm.perturb import hyperparameters
from pfgm.prior import sample_prior
from pfgm.sampling import (PFGMppSampler, PFGMSampler, SampleResult, SamplerSettings, SolveDiverged, TrainedModel,
                           generate, load_trained, preview_settings, sampler_for)
from pfgm.training import TrainConfig, create_state, save_checkpoint

SHAPE = (2,)
BATCH = 6


def tiny_model(objective: str, *, nan: bool = False) -> TrainedModel:
    """A seeded FieldMLP of 2D points with the hyperparameters training would give it."""
    data = torch.rand(128, *SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    hp = hyperparameters(data)
    if objective == "pfgmpp":
        hp = dict(hp, D=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = FieldMLP(data_shape=list(SHAPE), hidden=16, depth=2, embed_dim=8,
                       embedding="log" if objective == "pfgm" else "positional").eval()
    if nan:
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(math.nan)
    return TrainedModel(net=net, shape=SHAPE, objective=objective, hyperparameters=hp)


@pytest.fixture(scope="module")
def pfgm_model() -> TrainedModel:
    return tiny_model("pfgm")


@pytest.fixture(scope="module")
def pfgmpp_model() -> TrainedModel:
    return tiny_model("pfgmpp")


def draw(sampler, seed: int = 1) -> torch.Tensor:
    return sampler.prior(BATCH, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("settings", [SamplerSettings(method="euler", steps=5),
                                      SamplerSettings(method="dpmpp_2m", steps=4, schedule="power", rho=5.0),
                                      SamplerSettings(method="dopri5", rtol=1e-3, atol=1e-3, clip_prior=False)])
def test_pfgm_samples_as_the_solver_called_directly(pfgm_model, settings):
    hp, s = pfgm_model.hyperparameters, settings
    upper_norm = float(hp["upper_norm"]) if s.clip_prior else None
    start = sample_prior(BATCH, SHAPE, z_max=float(hp["z_max"]), upper_norm=upper_norm,
                         generator=torch.Generator().manual_seed(1))
    before = ode.sample(pfgm_model.net, start, z_max=float(hp["z_max"]), z_min=s.z_min, method=s.method, rtol=s.rtol,
                        atol=s.atol, steps=s.steps, schedule=s.schedule, rho=s.rho, z_exp=s.z_exp)
    sampler = sampler_for(pfgm_model, settings)
    x = draw(sampler)
    out = sampler.solve(x)
    assert isinstance(sampler, PFGMSampler) and sampler.method == s.method
    assert torch.equal(x, start) and torch.equal(out.samples, before.x) and out.nfe == before.nfe


def test_pfgmpp_samples_as_edm_heun_called_directly(pfgmpp_model):
    start = pfgmpp.sample_prior(BATCH, SHAPE, D=4, generator=torch.Generator().manual_seed(1))
    before = pfgmpp.heun(as_denoiser(pfgmpp_model.net), start, pfgmpp.sigma_grid(3))
    sampler = sampler_for(pfgmpp_model, SamplerSettings(method="dopri5", steps=3))  # method does not apply
    x = draw(sampler)
    out = sampler.solve(x)
    assert isinstance(sampler, PFGMppSampler) and sampler.method == "edm_heun"
    assert torch.equal(x, start) and torch.equal(out.samples, before.x) and out.nfe == before.nfe == 5
    assert sampler_for(pfgmpp_model, SamplerSettings()).steps == 18  # EDM's default


def test_one_signature_for_both_objectives(pfgm_model, pfgmpp_model):
    samplers = [sampler_for(model, SamplerSettings(method="euler", steps=3)) for model in (pfgm_model, pfgmpp_model)]
    for name in ("prior", "solve"):
        first, second = (inspect.signature(getattr(type(s), name)) for s in samplers)
        assert first == second
    for sampler in samplers:
        out = sampler.solve(draw(sampler))
        assert isinstance(out, SampleResult) and out.samples.shape == (BATCH, *SHAPE) and out.path is None


class CountingNet(torch.nn.Module):
    """The network, counting its forward calls: the NFE seen from outside the solver."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)


@pytest.mark.parametrize("objective, settings, nfe", [
    ("pfgm", SamplerSettings(method="euler", steps=5), 5), ("pfgm", SamplerSettings(method="heun", steps=4), 7),
    ("pfgm", SamplerSettings(method="dopri5", rtol=1e-3, atol=1e-3), None), ("pfgmpp", SamplerSettings(steps=4), 7)])
def test_nfe_is_the_network_calls(objective, settings, nfe):
    model = tiny_model(objective)
    counting = CountingNet(model.net)
    sampler = sampler_for(TrainedModel(net=counting, shape=SHAPE, objective=objective,
                                       hyperparameters=model.hyperparameters), settings)
    out = sampler.solve(draw(sampler))
    assert out.nfe == counting.calls and (nfe is None or out.nfe == nfe)


@pytest.mark.parametrize("objective, settings, length", [
    ("pfgm", SamplerSettings(method="euler", steps=4), 5), ("pfgm", SamplerSettings(method="dopri5"), 2),
    ("pfgmpp", SamplerSettings(steps=3), 4)])
def test_path_holds_every_grid_state(pfgm_model, pfgmpp_model, objective, settings, length):
    sampler = sampler_for(pfgm_model if objective == "pfgm" else pfgmpp_model, settings)
    x = draw(sampler)
    plain, out = sampler.solve(x), sampler.solve(x, path=True)
    assert out.path.shape == (length, BATCH, *SHAPE)
    assert torch.equal(out.path[0], x) and torch.equal(out.path[-1], out.samples)
    assert torch.equal(out.samples, plain.samples) and out.nfe == plain.nfe  # asking for the path changes nothing


def test_callbacks_report_x_and_a_decreasing_height(pfgm_model, pfgmpp_model):
    for model, first in ((pfgm_model, float(pfgm_model.hyperparameters["z_max"])), (pfgmpp_model, pfgmpp.SIGMA_MAX)):
        sampler = sampler_for(model, SamplerSettings(method="euler", steps=3))
        seen = []
        sampler.solve(draw(sampler), callback=lambda info: seen.append((info["x"].shape, info["height"])))
        heights = [height for _, height in seen]
        assert {shape for shape, _ in seen} == {(BATCH, *SHAPE)}
        assert heights[0] == pytest.approx(first) and heights == sorted(heights, reverse=True)


def test_a_solver_that_gives_up_raises_solve_diverged():
    broken = tiny_model("pfgm", nan=True)
    sampler = sampler_for(broken, SamplerSettings(method="dopri5"))
    with pytest.raises(SolveDiverged, match="dopri5 gave up: underflow in dt"):
        sampler.solve(draw(sampler))
    # A fixed-step solve cannot give up: its non-finite samples are the caller's to count.
    out = sampler_for(broken, SamplerSettings(method="euler", steps=3)).solve(draw(sampler))
    assert out.nfe == 3 and not bool(torch.isfinite(out.samples).any())


def test_generate_batches_the_solves(pfgm_model, pfgmpp_model):
    for model, nfe in ((pfgm_model, 20), (pfgmpp_model, 19)):
        out = generate(model, 5, preview_settings(model.objective), batch_size=2,
                       generator=torch.Generator().manual_seed(0))
        assert out.x.shape == (5, *SHAPE) and out.nfe == [nfe] * 3 and out.seconds > 0


def test_load_trained_reads_what_training_writes(tmp_path, pfgmpp_model):
    generator = torch.Generator().manual_seed(0)
    state = create_state(pfgmpp_model.net, TrainConfig(steps=1, batch_size=8, lr=1e-3, warmup=0), generator)
    path = save_checkpoint(tmp_path / "model.pt", state, config=TrainConfig(steps=1, batch_size=8),
                           metadata=dict(objective="pfgmpp", hyperparameters=pfgmpp_model.hyperparameters))
    model = load_trained(path)
    assert model.objective == "pfgmpp" and model.shape == SHAPE and model.hyperparameters["D"] == 4
    assert not model.net.training and model.network_class == "FieldMLP"
    broken = save_checkpoint(tmp_path / "broken.pt", state, config=TrainConfig(steps=1, batch_size=8),
                             metadata=dict(objective="pfgmpp", hyperparameters={}))
    with pytest.raises(ValueError, match="missing \\['D'\\]"):
        load_trained(broken)


def test_one_norm_recorder_for_both_objectives(pfgm_model, pfgmpp_model):
    """pfgm.diagnostics.sampling_curve through a sampler draws the curves the per-objective functions drew."""
    from pfgm import diagnostics

    settings = SamplerSettings(method="euler", steps=4)
    pfgm_sampler, pfgmpp_sampler = sampler_for(pfgm_model, settings), sampler_for(pfgmpp_model, settings)
    z_max = float(pfgm_model.hyperparameters["z_max"])
    start = draw(pfgm_sampler)
    before, _ = diagnostics.sampling_curve_pfgm(pfgm_model.net, start, z_max=z_max, z_min=settings.z_min,
                                                method="euler", steps=4)
    after, _ = diagnostics.sampling_curve(pfgm_sampler, start)
    start = draw(pfgmpp_sampler)
    before_pp, _ = diagnostics.sampling_curve_pfgmpp(as_denoiser(pfgmpp_model.net), start, pfgmpp.sigma_grid(4))
    after_pp, _ = diagnostics.sampling_curve(pfgmpp_sampler, start)
    for old, new in ((before, after), (before_pp, after_pp)):
        assert old.variable == new.variable
        assert all(torch.equal(getattr(old, key), getattr(new, key)) for key in ("height", "mean", "std", "count"))


@pytest.mark.parametrize("method, steps", [("heun", 3), ("dopri5", None)])
def test_a_likelihood_flow_that_leaves_the_finite_numbers_raises_solve_diverged(method, steps):
    """Fixed-step (NaN state) and adaptive (gave up) alike: one typed error, no message to match."""
    from pfgm.likelihood import log_likelihood

    broken = tiny_model("pfgm", nan=True)
    x = torch.zeros(3, *SHAPE)
    with pytest.raises(SolveDiverged):
        log_likelihood(broken.net, x, z_min=1e-3, z_max=float(broken.hyperparameters["z_max"]), method=method,
                       steps=steps)
