"""The two MLP parameterisations (mlip.nn.mlp): torch's and e3nn's normalised one, used by the
MACE-like radial MLP (`normalized_radial_mlp`) and the energy readout (`readout_normalized`)."""

from __future__ import annotations

import math

import pytest
import torch

import mlip
from mlip import testing
from mlip.export import export_model
from mlip.nn.mlp import MLP, NormalizedActivation, NormalizedLinear, second_moment_scale


@pytest.mark.parametrize("name", ["silu", "tanh", "gelu", "relu"])
def test_normalized_activation_has_unit_second_moment(name):
    torch.manual_seed(0)
    samples = torch.randn(2_000_000, dtype=torch.float64)
    second_moment = NormalizedActivation(name)(samples).pow(2).mean().item()
    assert abs(second_moment - 1.0) < 5e-3  # Monte Carlo error ~1e-3
    if name == "relu":  # E[relu(z)²] = 1/2 exactly
        assert abs(second_moment_scale("relu") - math.sqrt(2.0)) < 1e-3


def test_normalized_linear_divides_by_sqrt_fan_in():
    torch.manual_seed(0)
    layer = NormalizedLinear(64, 32, bias=False).double()
    inputs = torch.randn(5, 64, dtype=torch.float64)
    assert torch.allclose(layer(inputs), inputs @ layer.weight.T / 8.0)
    assert abs(layer.weight.std().item() - 1.0) < 0.05  # N(0, 1): the scale lives outside the parameter
    assert NormalizedLinear(4, 3).bias.abs().sum() == 0  # biases start at zero


def test_a_deep_normalized_mlp_keeps_unit_variance_and_torch_one_shrinks():
    torch.manual_seed(0)
    inputs = torch.randn(20_000, 64)
    widths = [64, 64, 64]
    normalized = MLP(64, widths, 64, bias=False, normalized=True)
    plain = MLP(64, widths, 64, bias=False)
    with torch.no_grad():
        normalized_var, plain_var = normalized(inputs).var().item(), plain(inputs).var().item()
    assert 0.5 < normalized_var < 2.0
    assert plain_var < 0.01  # each default torch Linear + SiLU divides the variance by ~3 or more


def test_both_parameterisations_have_the_same_parameter_names_and_shapes():
    plain = MLP(8, [16], 4, bias=False)
    normalized = MLP(8, [16], 4, bias=False, normalized=True)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in normalized.state_dict().items()}
    assert normalized(torch.zeros(3, 8)).abs().max() == 0  # bias-free: zero in, zero out


@pytest.mark.parametrize("options", [
    {"readout_normalized": True},
    {"readout_normalized": True, "readout_linear": True},
])
def test_normalized_mace_keeps_the_physics_contract(options):
    backbone = {"name": "mace", **testing.SMALL_BACKBONES["mace"], "normalized_radial_mlp": True}
    potential = testing.small_potential(backbone, torch.float64, **options)
    radial_mlp = list(potential.backbone.layers[0].radial_mlp)
    assert isinstance(radial_mlp[0], NormalizedLinear) and isinstance(radial_mlp[1], NormalizedActivation)
    testing.check_contract(potential, testing.backbone_tolerances("mace", torch.float64))


def test_normalized_model_round_trips_through_a_file(tmp_path):
    backbone = {"name": "mace", **testing.SMALL_BACKBONES["mace"], "normalized_radial_mlp": True}
    potential = testing.small_potential(backbone, torch.float64, readout_normalized=True, readout_linear=True)
    geometry = testing.molecule(0)
    loaded = mlip.load(export_model(potential, tmp_path / "normalized.pt"))
    assert loaded.config["readout_normalized"] is True
    assert loaded.config["backbone"]["normalized_radial_mlp"] is True
    assert isinstance(loaded.readout.linear, NormalizedLinear)
    assert abs(testing.energy(loaded, geometry) - testing.energy(potential, geometry)) < 1e-10


def test_files_without_the_keys_load_with_torch_layers(tmp_path):
    potential = testing.small_potential("mace", torch.float64)
    payload = torch.load(export_model(potential, tmp_path / "plain.pt"), weights_only=True)
    payload["potential_config"].pop("readout_normalized")  # a file written before the options existed
    payload["potential_config"]["backbone"].pop("normalized_radial_mlp")
    torch.save(payload, tmp_path / "old.pt")
    old = mlip.load(tmp_path / "old.pt")
    assert isinstance(old.readout[0], torch.nn.Linear)
    assert isinstance(old.backbone.layers[0].radial_mlp[0], torch.nn.Linear)
    geometry = testing.molecule(1)
    assert abs(testing.energy(old, geometry) - testing.energy(potential, geometry)) < 1e-10
