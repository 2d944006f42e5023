"""Latent interpolation, temperature and recorded field lines, checked on exact fields."""
from __future__ import annotations

import pytest
import torch

from helpers import exact_model
from pfgm.latent import (decode_with_temperature, flow_heights, interpolate, interpolate_latents, record_trajectories,
                         scale_latents, slerp)
from pfgm.ode import encode, ln_z_grid, sample
from pfgm.prior import sample_prior

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
