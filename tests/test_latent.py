"""Latent interpolation, temperature and recorded field lines, checked on exact fields."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import exact_model
from pfgm import latent
from pfgm.field import normalized_field
from pfgm.latent import (decode_with_temperature, flow_heights, interpolate, interpolate_latents, record_trajectories,
                         scale_latents, slerp)
from pfgm.ode import ODEResult, SolveDiverged, encode, ln_z_grid, sample
from pfgm.prior import sample_prior
from pfgm.sampling import SamplerSettings, TrainedModel

# Many tiny solver steps: a second torch thread only adds overhead.
pytestmark = pytest.mark.usefixtures("single_thread")


def _angle(first, second):
    u = first / first.norm(dim=-1, keepdim=True)
    v = second / second.norm(dim=-1, keepdim=True)
    return torch.acos((u * v).sum(-1).clamp(-1, 1))


def test_slerp_moves_along_the_great_circle_at_constant_speed(generator):
    first = torch.randn(3, 5, generator=generator, dtype=torch.float64) * 4
    second = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    weights = torch.linspace(0, 1, 7, dtype=torch.float64)
    path = slerp(first, second, weights)
    assert path.shape == (3, 7, 5)
    torch.testing.assert_close(path[:, 0], first)
    torch.testing.assert_close(path[:, -1], second)
    total = _angle(first, second)
    for k, w in enumerate(weights):
        # angle to the start grows linearly; the rest of the way is the complement
        torch.testing.assert_close(_angle(first, path[:, k]), w * total)
        torch.testing.assert_close(_angle(path[:, k], second), (1 - w) * total)
    # every point lies in the plane spanned by the two ends
    basis, _ = torch.linalg.qr(torch.stack([first, second], dim=2))
    projected = torch.einsum("bnk,bmk,btm->btn", basis, basis, path)
    torch.testing.assert_close(projected, path)


def test_slerp_keeps_norms_between_the_end_norms(generator):
    first = torch.randn(4, 2, 3, generator=generator) * 10
    second = -first + torch.randn(4, 2, 3, generator=generator)  # far apart: a straight line would shrink
    norms = slerp(first, second, torch.linspace(0, 1, 11)).flatten(2).norm(dim=2)
    low = torch.minimum(first.flatten(1).norm(dim=1), second.flatten(1).norm(dim=1))[:, None]
    high = torch.maximum(first.flatten(1).norm(dim=1), second.flatten(1).norm(dim=1))[:, None]
    assert bool((norms >= low * (1 - 1e-5)).all() and (norms <= high * (1 + 1e-5)).all())
    straight_midpoint = (0.5 * (first + second)).flatten(1).norm(dim=1)
    assert bool((straight_midpoint < 0.5 * low[:, 0]).all())  # the case slerp is for


def test_slerp_of_parallel_latents_and_bad_input():
    first = torch.tensor([[1.0, 2.0]])
    path = slerp(first, 3 * first, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(path[0], torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]]))
    with pytest.raises(ValueError, match="opposite"):
        slerp(first, -first, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="norm zero"):
        slerp(torch.zeros(1, 2), first, torch.tensor([0.5]))


@pytest.mark.parametrize("shape", [(2,), (1, 2, 2)])
def test_interpolation_ends_decode_back_to_the_two_inputs(shape, generator):
    charges = torch.randn(6, *shape, generator=generator, dtype=torch.float64)
    noise = 0.05 * torch.randn(4, *shape, generator=generator, dtype=torch.float64)
    first, second = charges[:2] + noise[:2], charges[2:4] + noise[2:]
    model = exact_model(charges)
    result = interpolate(model, first, second, num_points=5, z_min=0.05, z_max=30.0, rtol=1e-7, atol=1e-7)
    assert result.x.shape == (2, 5, *shape) and result.latents.shape == (2, 5, *shape)
    torch.testing.assert_close(result.x[:, 0], first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.x[:, -1], second, rtol=1e-5, atol=1e-5)
    # the ends of the latent path are the encoded inputs themselves
    latent = encode(model, first, z_min=0.05, z_max=30.0, rtol=1e-7, atol=1e-7).x
    torch.testing.assert_close(result.latents[:, 0], latent, rtol=1e-5, atol=1e-5)
    decoded_only = interpolate_latents(model, result.latents[:, 0], result.latents[:, -1], num_points=5, z_min=0.05,
                                       z_max=30.0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(decoded_only.x, result.x)
    assert 0 < decoded_only.nfe < result.nfe  # the whole interpolation also counts the encoding


def test_interpolated_latents_decode_onto_the_charges(generator):
    # Any latent of the exact field flows to the charges: the in-between points are data, not blends.
    charges = torch.randn(5, 3, generator=generator, dtype=torch.float64) * 2
    result = interpolate(exact_model(charges), charges[:2], charges[2:4], num_points=6, z_min=1e-3, z_max=40.0,
                         rtol=1e-6, atol=1e-6)
    distance = torch.cdist(result.x.reshape(-1, 3), charges).min(dim=1).values
    assert float(distance.max()) < 1e-2
    assert bool((result.x[:, 1:-1] - result.x[:, :1]).abs().amax(dim=(1, 2)).gt(1e-2).all()), "the path moves"


def test_temperature_one_is_plain_decoding(generator):
    charges = torch.randn(4, 2, generator=generator, dtype=torch.float64)
    latents = sample_prior(6, (2,), z_max=20.0, generator=generator).double()
    model = exact_model(charges)
    plain = sample(model, latents, z_max=20.0, z_min=1e-3, method="euler", steps=60).x
    hot = decode_with_temperature(model, latents, torch.tensor([0.5, 1.0, 1.5]), z_min=1e-3, z_max=20.0,
                                  method="euler", steps=60)
    assert hot.x.shape == (6, 3, 2) and hot.nfe == 60
    torch.testing.assert_close(hot.x[:, 1], plain)
    only_one = decode_with_temperature(model, latents, torch.tensor([1.0]), z_min=1e-3, z_max=20.0)
    torch.testing.assert_close(only_one.x[:, 0], sample(model, latents, z_max=20.0, z_min=1e-3).x)
    with pytest.raises(ValueError, match="positive"):
        decode_with_temperature(model, latents, torch.tensor([0.0, 1.0]), z_min=1e-3, z_max=20.0)


def test_scale_latents_scales_norms_and_keeps_directions(generator):
    latents = torch.randn(3, 1, 2, 2, generator=generator)
    scaled = scale_latents(latents, torch.tensor([0.25, 1.0, 2.0]))
    assert scaled.shape == (3, 3, 1, 2, 2)
    norms = scaled.flatten(2).norm(dim=2) / latents.flatten(1).norm(dim=1)[:, None]
    torch.testing.assert_close(norms, torch.tensor([0.25, 1.0, 2.0]).expand(3, 3))
    torch.testing.assert_close(scaled[:, 1], latents)


def test_one_charge_gives_straight_field_lines(generator):
    # For one charge y the field points from (x, z) to (y, 0), so x(z) = y + (x_start - y) z / z_max.
    charge = torch.tensor([[0.7, -0.3]], dtype=torch.float64)
    start = sample_prior(5, (2,), z_max=10.0, generator=generator).double()
    heights = torch.exp(ln_z_grid(10.0, 1e-2, 8))
    path = record_trajectories(exact_model(charge), start, heights, rtol=1e-8, atol=1e-8)
    assert path.x.shape == (9, 5, 2) and path.nfe > 0
    torch.testing.assert_close(path.z, heights)
    expected = charge + (start - charge)[None] * (path.z / 10.0)[:, None, None]
    torch.testing.assert_close(path.x, expected, rtol=1e-6, atol=1e-6)


def test_flow_heights_are_uniform_in_sqrt_z():
    heights = flow_heights(9.0, 1e-2, 5)
    assert heights[0] == 9.0 and heights[-1] == 1e-2 and bool((heights.diff() < 0).all())
    torch.testing.assert_close(heights.sqrt().diff(), heights.sqrt().diff()[:1].expand(4))
    with pytest.raises(ValueError, match="frames"):
        flow_heights(9.0, 1e-2, 1)


def test_trajectories_end_where_one_solve_ends(generator):
    charges = torch.randn(4, 2, generator=generator, dtype=torch.float64)
    start = sample_prior(8, (2,), z_max=20.0, generator=generator).double()
    model = exact_model(charges)
    path = record_trajectories(model, start, flow_heights(20.0, 1e-3, 6), rtol=1e-7, atol=1e-7)
    whole = sample(model, start, z_max=20.0, z_min=1e-3, rtol=1e-7, atol=1e-7).x
    torch.testing.assert_close(path.x[-1], whole, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(path.x[0], start)
    fixed = record_trajectories(model, start, flow_heights(20.0, 1e-3, 4), method="euler", steps=5)
    assert fixed.nfe == 3 * 5 and bool(torch.isfinite(fixed.x).all())
    with pytest.raises(ValueError, match="decreasing"):
        record_trajectories(model, start, torch.tensor([1.0, 2.0]))


# --- a trained model and one sampler setting --------------------------------------------------------

class ExactNet(nn.Module):
    """The exact field of `charges` as a network: TrainedModel reads its device from a parameter."""

    def __init__(self, charges: torch.Tensor):
        super().__init__()
        self.charges = charges
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x, z):
        return normalized_field(x, z, self.charges, gamma=5.0)


def _trained(charges: torch.Tensor, z_max: float = 30.0) -> TrainedModel:
    return TrainedModel(net=ExactNet(charges), shape=tuple(charges.shape[1:]), objective="pfgm",
                        hyperparameters={"z_max": z_max, "gamma": 5.0}, network_class="ExactNet")


PRECISE = SamplerSettings(method="dopri5", rtol=1e-7, atol=1e-7, z_min=0.05, z_exp=None, clip_prior=False)


def test_ode_options_are_the_setting_and_the_models_gamma():
    model = _trained(torch.zeros(1, 2))
    model.hyperparameters["gamma"] = 2.5
    settings = SamplerSettings(method="euler", steps=7, schedule="power", rho=5.0, z_exp=3.0)
    assert latent.ode_options(model, settings) == dict(method="euler", rtol=1e-4, atol=1e-4, steps=7, schedule="power",
                                                       rho=5.0, z_exp=3.0, gamma=2.5)


def test_encode_images_skips_the_images_whose_forward_flow_fails(monkeypatch):
    images = torch.arange(8.0).reshape(8, 1, 1).expand(8, 1, 2).contiguous()  # image k holds k
    model, calls = _trained(torch.zeros(1, 1, 2)), []

    def fake_encode(net, x, **kwargs):
        calls.append((float(x[0, 0, 0]), kwargs))
        if len(calls) == 2:
            raise SolveDiverged("gave up")
        return ODEResult(x=x * (float("nan") if len(calls) == 3 else 2.0), nfe=10 * len(calls))

    monkeypatch.setattr(latent, "encode", fake_encode)
    settings = SamplerSettings(method="euler", steps=4, z_min=0.1, z_exp=5.0)
    out = latent.encode_images(model, images, settings, wanted=2, attempts=3, generator=torch.Generator().manual_seed(3))
    order = torch.randperm(8, generator=torch.Generator().manual_seed(3)).tolist()
    assert [c[0] for c in calls] == order[:4]  # the 2nd diverged, the 3rd came back NaN: both skipped
    assert out.images[:, 0, 0].tolist() == [order[0], order[3]] and torch.equal(out.latents, 2 * out.images)
    assert out.skipped == 2 and out.nfe == 10 + 30 + 40  # the NaN solve's evaluations count too
    # The encoding takes the network's own v_z; the rest of the setting as given.
    assert calls[0][1] == dict(z_min=0.1, z_max=30.0, method="euler", rtol=1e-4, atol=1e-4, steps=4,
                               schedule="ln_z", rho=None, z_exp=None, gamma=5.0)

    def always(net, x, **kwargs):
        raise SolveDiverged("gave up")

    monkeypatch.setattr(latent, "encode", always)
    none = latent.encode_images(model, images, settings, wanted=2, attempts=3, generator=torch.Generator())
    assert none.images.shape == none.latents.shape == (0, 1, 2) and none.skipped == 6 and none.nfe == 0

    def broken(net, x, **kwargs):
        raise AssertionError("shapes do not match")  # a bug, not a solver giving up: it propagates

    monkeypatch.setattr(latent, "encode", broken)
    with pytest.raises(AssertionError, match="shapes"):
        latent.encode_images(model, images, settings, wanted=2, attempts=3, generator=torch.Generator())


def test_encoded_images_interpolate_in_pairs_back_to_their_ends(generator):
    charges = torch.randn(6, 2, generator=generator)
    model = _trained(charges)
    images = charges[:3] + 0.05 * torch.randn(3, 2, generator=generator)
    encoded = latent.encode_images(model, images, PRECISE, wanted=3, attempts=1, generator=generator)
    assert encoded.skipped == 0 and encoded.nfe > 0
    path = latent.interpolate_encoded(model, encoded, PRECISE, num_points=4)
    assert path.x.shape == (1, 4, 2)  # an odd third image is left out
    torch.testing.assert_close(path.x[0, 0], encoded.images[0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(path.x[0, -1], encoded.images[1], rtol=1e-3, atol=1e-3)


def test_prior_draws_decoded_with_temperature_and_followed_down(generator):
    charges = torch.randn(4, 2, generator=generator)
    model = _trained(charges, z_max=20.0)
    settings = SamplerSettings(method="euler", steps=30, z_min=1e-3, z_exp=None, clip_prior=False)
    hot = latent.decode_prior_with_temperature(model, settings, [0.5, 1.0], num_latents=3,
                                               generator=torch.Generator().manual_seed(1))
    prior = sample_prior(3, (2,), z_max=20.0, generator=torch.Generator().manual_seed(1))
    assert hot.x.shape == (3, 2, 2) and hot.nfe == 30
    torch.testing.assert_close(hot.x[:, 1], sample(ExactNet(charges), prior, z_max=20.0, z_min=1e-3,
                                                   method="euler", steps=30).x)
    path = latent.prior_trajectories(model, settings, num_points=5, frames=4, generator=torch.Generator().manual_seed(1))
    assert path.x.shape == (4, 5, 2) and path.nfe == 3 * 30
    torch.testing.assert_close(path.z, flow_heights(20.0, 1e-3, 4))
    torch.testing.assert_close(path.x[0], sample_prior(5, (2,), z_max=20.0, generator=torch.Generator().manual_seed(1)))
