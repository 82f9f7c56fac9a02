"""The energy readout with a linear term (`model.readout_linear`, `LinearPlusMLPReadout`): the
physics contract still holds, the term really enters the energy, files round-trip, old files
(no such key) load as before, and a multi-head model gets one linear term per head."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

import mlip
from mlip import testing
from mlip.export import export_model
from mlip.models.potential import LinearPlusMLPReadout


@pytest.mark.parametrize("backbone", ["mace", "facet"])
def test_linear_readout_keeps_the_physics_contract(backbone):
    potential = testing.small_potential(backbone, torch.float64, readout_linear=True)
    assert isinstance(potential.readout, LinearPlusMLPReadout)
    testing.check_contract(potential, testing.backbone_tolerances(backbone, torch.float64))


def test_the_linear_term_is_part_of_the_energy_and_saved(tmp_path):
    potential = testing.small_potential("mace", torch.float64, readout_linear=True)
    geometry = testing.molecule(0)
    before = testing.energy(potential, geometry)
    with torch.no_grad():
        potential.readout.linear.weight.add_(0.5)
    changed = testing.energy(potential, geometry)
    assert abs(changed - before) > 1e-3  # the term reaches the energy
    path = export_model(potential, tmp_path / "linear.pt")
    loaded = mlip.load(path)
    assert loaded.config["readout_linear"] is True
    assert abs(testing.energy(loaded, geometry) - changed) < 1e-10


def test_models_without_the_key_load_with_the_plain_mlp(tmp_path):
    potential = testing.small_potential("mace", torch.float64)
    assert isinstance(potential.readout, torch.nn.Sequential) and potential.config["readout_linear"] is False
    path = export_model(potential, tmp_path / "plain.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["potential_config"]["readout_linear"] is False
    payload["potential_config"].pop("readout_linear")  # a file written before the option existed
    torch.save(payload, tmp_path / "old.pt")
    old = mlip.load(tmp_path / "old.pt")
    assert isinstance(old.readout, torch.nn.Sequential)
    geometry = testing.molecule(1)
    assert abs(testing.energy(old, geometry) - testing.energy(potential, geometry)) < 1e-10


def test_each_head_has_its_own_linear_term():
    from mlip.models.build import build_potential

    head_statistics = {"atomic_energies": testing.ATOMIC_ENERGIES, "scale": testing.SCALE, "shift": testing.SHIFT}
    statistics = {"elements": list(testing.ELEMENTS), "avg_num_neighbors": 4.0,
                  "heads": {"dft": head_statistics, "xtb": head_statistics}}
    config = {"backbone": {"name": "mace", **testing.SMALL_BACKBONES["mace"]}, "cutoff": testing.CUTOFF,
              "condition_dim": 4, "readout_hidden": [8], "readout_linear": True, "heads": ["dft", "xtb"]}
    torch.manual_seed(0)
    potential = build_potential(config, statistics, dtype=torch.float64)
    assert all(isinstance(head, LinearPlusMLPReadout) for head in potential.readout.heads)
    with torch.no_grad():
        potential.readout.heads[1].linear.weight.add_(0.5)
    data = testing.graph(testing.molecule(0), potential.cutoff, torch.float64)
    energies = []
    for head in (0, 1):
        data.head = torch.tensor([head])
        energies.append(float(potential(Batch.from_data_list([data]), compute_forces=False)["energy"][0]))
    assert abs(energies[0] - energies[1]) > 1e-3
