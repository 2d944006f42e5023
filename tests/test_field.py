"""The empirical field against analytic facts and a float64 broadcast reference."""
from __future__ import annotations

import math

import pytest
import torch

import pfgm.field as field_module
from pfgm.field import empirical_field, normalized_field
from reference import broadcast_field


def _direction_and_magnitude_errors(fast, reference):
    fast, reference = fast.double(), reference.double()
    cos = (fast * reference).sum(1) / (fast.norm(dim=1) * reference.norm(dim=1))
    magnitude = (fast.norm(dim=1) / reference.norm(dim=1) - 1).abs()
    return (1 - cos).max().item(), magnitude.max().item()


@pytest.mark.parametrize("N", [1, 2, 5])
def test_single_charge_field_is_radial_with_magnitude_d(N, generator):
    charge = torch.randn(1, N, generator=generator)
    x = torch.randn(7, N, generator=generator) * 3
    z = torch.rand(7, generator=generator) + 0.1
    field = empirical_field(x, z, charge)
    expected = torch.cat([charge - x, -z[:, None]], dim=1)  # (y, 0) - (x, z): radial, |E| = d
    torch.testing.assert_close(field, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("N,D", [(1, 1), (3, 1), (2, 4)])
def test_two_charges_weights_follow_inverse_power_law(N, D, generator):
    # Along a line through two charges the weights can be read off E_x and must be d^-(N+D)-ratios.
    charges = torch.zeros(2, N, dtype=torch.float64)
    charges[0, 0], charges[1, 0] = -1.0, 1.0
    x = torch.zeros(5, N, dtype=torch.float64)
    x[:, 0] = torch.linspace(-0.6, 0.9, 5, dtype=torch.float64)
    z = torch.full((5,), 0.7, dtype=torch.float64)
    field = empirical_field(x, z, charges, D=D)
    w_first = (field[:, 0] + x[:, 0] - 1.0) / (-2.0)   # E_x = w1 y1 + w2 y2 - x with w1 + w2 = 1
    d1 = ((x[:, 0] + 1) ** 2 + z ** 2).sqrt()
    d2 = ((x[:, 0] - 1) ** 2 + z ** 2).sqrt()
    expected = d1 ** -(N + D) / (d1 ** -(N + D) + d2 ** -(N + D))
    torch.testing.assert_close(w_first, expected, rtol=1e-10, atol=1e-12)


def test_z_component_is_minus_z(generator):
    charges = torch.randn(50, 3, 4, 4, generator=generator)
    x = torch.randn(9, 3, 4, 4, generator=generator)
    z = torch.rand(9, generator=generator) * 10 + 1e-3
    assert torch.equal(empirical_field(x, z, charges)[:, -1], -z)


@pytest.mark.parametrize("N", [1, 2, 64, 768, 3072])
@pytest.mark.parametrize("radius", [1e-3, 1e-1, 1.0, 10.0, 1e3])
def test_float32_matches_float64_broadcast(N, radius, generator):
    charges = torch.rand(48, N, generator=generator) * 2 - 1
    source = torch.randint(0, 48, (12,), generator=generator)
    direction = torch.nn.functional.normalize(torch.randn(12, N, generator=generator), dim=1)
    x = charges[source] + radius * torch.rand(12, 1, generator=generator) * direction
    z = radius * (torch.rand(12, generator=generator) + 1e-3)
    reference = broadcast_field(x.double(), z.double(), charges.double())
    fast = empirical_field(x, z, charges)
    assert fast.dtype == torch.float32
    direction_error, magnitude_error = _direction_and_magnitude_errors(fast, reference)
    assert direction_error <= 1e-6 and magnitude_error <= 1e-3


@pytest.mark.parametrize("D", [1, 7, 128])
def test_matches_broadcast_for_image_shaped_input(D, generator):
    charges = torch.randn(20, 2, 3, 3, generator=generator)
    x = torch.randn(6, 2, 3, 3, generator=generator)
    z = torch.rand(6, generator=generator) * 2 + 0.05
    torch.testing.assert_close(empirical_field(x.double(), z.double(), charges.double(), D=D),
                               broadcast_field(x, z, charges, D=D), rtol=1e-9, atol=1e-10)


def test_permutation_invariant_in_charges(generator):
    charges = torch.randn(30, 6, generator=generator)
    x = torch.randn(5, 6, generator=generator)
    z = torch.rand(5, generator=generator) + 0.2
    shuffled = charges[torch.randperm(30, generator=generator)]
    torch.testing.assert_close(empirical_field(x, z, shuffled), empirical_field(x, z, charges),
                               rtol=1e-5, atol=1e-6)


def test_chunking_does_not_change_the_result(monkeypatch, generator):
    charges = torch.randn(40, 5, generator=generator)
    x = torch.randn(33, 5, generator=generator)
    z = torch.rand(33, generator=generator) + 0.1
    whole = empirical_field(x, z, charges)
    monkeypatch.setattr(field_module, "_CHUNK_ELEMENTS", 40 * 4)  # 4 rows per chunk
    torch.testing.assert_close(empirical_field(x, z, charges), whole)


def test_dtype_follows_input(generator):
    charges = torch.randn(4, 3, dtype=torch.float64, generator=generator)
    x = torch.randn(2, 3, dtype=torch.float64, generator=generator)
    out = normalized_field(x, torch.ones(2, dtype=torch.float64), charges)
    assert out.dtype == torch.float64 and out.shape == (2, 4)


@pytest.mark.parametrize("gamma", [0.0, 5.0])
def test_normalized_field_magnitude(gamma, generator):
    charges = torch.randn(10, 8, generator=generator)
    x = torch.randn(4, 8, generator=generator)
    z = torch.rand(4, generator=generator) + 0.5
    field = empirical_field(x, z, charges)
    target = normalized_field(x, z, charges, gamma=gamma)
    norm = field.norm(dim=1)
    torch.testing.assert_close(target.norm(dim=1), math.sqrt(8) * norm / (norm + gamma))
    torch.testing.assert_close(target / target.norm(dim=1, keepdim=True), field / norm[:, None])


@pytest.mark.parametrize("call,argument", [
    (lambda: empirical_field(torch.ones(2, 3), torch.ones(3), torch.ones(4, 3)), "z"),
    (lambda: empirical_field(torch.ones(2, 3), torch.tensor([1.0, 0.0]), torch.ones(4, 3)), "z"),
    (lambda: empirical_field(torch.ones(2, 3), torch.ones(2), torch.ones(0, 3)), "charges"),
    (lambda: empirical_field(torch.ones(2, 3), torch.ones(2), torch.ones(4, 2)), "charges"),
    (lambda: empirical_field(torch.full((2, 3), math.nan), torch.ones(2), torch.ones(4, 3)), "x"),
    (lambda: empirical_field(torch.ones(2, 3), torch.ones(2), torch.full((4, 3), math.inf)), "charges"),
    (lambda: empirical_field(torch.ones(3), torch.ones(3), torch.ones(4, 1)), "x"),
    (lambda: empirical_field(torch.ones(2, 3), torch.ones(2), torch.ones(4, 3), D=0), "D"),
    (lambda: normalized_field(torch.ones(2, 3), torch.ones(2), torch.ones(4, 3), gamma=-1.0), "gamma"),
])
def test_bad_input_names_the_argument(call, argument):
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        call()
