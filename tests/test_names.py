"""pfgm.names, the torch-free catalog params validation reads, against what it names: the networks' real
signatures, the backbones EDMPrecond wraps, torchdiffeq's methods and our z-solvers."""
from __future__ import annotations

import inspect

import pytest
from torchdiffeq._impl.odeint import SOLVERS as TORCHDIFFEQ_SOLVERS
from torchdiffeq._impl.solvers import AdaptiveStepsizeODESolver

from pfgm import names, zsolvers
from pfgm.networks.edm import MODEL_TYPES, precond_kwargs
from pfgm.training.checkpoint import NETWORKS


def test_the_catalog_names_every_network_and_backbone():
    assert set(names.NETWORK_ARGUMENTS) == set(NETWORKS)
    assert set(names.BACKBONE_ARGUMENTS) == set(MODEL_TYPES)


@pytest.mark.parametrize("network", sorted(set(NETWORKS) - {"EDMPrecond"}))
def test_a_field_networks_arguments_are_its_signature(network):
    parameters = inspect.signature(NETWORKS[network]).parameters.values()
    assert not any(p.kind == p.VAR_KEYWORD for p in parameters)  # else its arguments could not be listed
    assert names.NETWORK_ARGUMENTS[network] == tuple(p.name for p in parameters)


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_edmprecond_arguments_are_its_own_then_its_backbones(model_type):
    catalog = names.NETWORK_ARGUMENTS["EDMPrecond"] + names.BACKBONE_ARGUMENTS[model_type]
    assert list(catalog) == precond_kwargs(model_type)


def test_every_torchdiffeq_method_is_offered_once():
    assert sorted(method for method, _ in names.TORCHDIFFEQ_METHODS.values()) == sorted(TORCHDIFFEQ_SOLVERS)


@pytest.mark.parametrize("name", sorted(names.TORCHDIFFEQ_METHODS))
def test_adaptive_methods_are_torchdiffeqs_adaptive_solvers(name):
    method, _ = names.TORCHDIFFEQ_METHODS[name]
    # scipy's solve_ivp chooses its own steps too, though torchdiffeq does not wrap it as adaptive.
    adaptive = method == "scipy_solver" or issubclass(TORCHDIFFEQ_SOLVERS[method], AdaptiveStepsizeODESolver)
    assert (name in names.ADAPTIVE_METHODS) == adaptive


def test_zsolvers_are_the_catalogs():
    assert tuple(zsolvers.SOLVERS) == names.ZSOLVERS
    assert names.GENERIC < set(names.ZSOLVERS) and not names.ADAPTIVE_METHODS & set(names.ZSOLVERS)
    assert set(names.METHODS) == set(names.ZSOLVERS) | set(names.TORCHDIFFEQ_METHODS)
