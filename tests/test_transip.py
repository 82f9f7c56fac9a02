"""TransIP-specific tests (float64): centred-position features, conditioning of the embedding,
hyperparameters, config file. The physics contract (translations exact, rotations measured,
derivatives, cutoff, batching) is tests/test_backbone_contract.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mlip.data.graph import structure_to_graph
from mlip.data.structure import Structure
from mlip.models import Potential, build_potential
from mlip.models.build import default_dtype
from mlip.models.backbones import BackboneInputs
from mlip.models.backbones.transip import TransIPBackbone

CUTOFF = 3.0  # Å
ELEMENTS = [1, 6, 8, 14]
ATOMIC_ENERGIES = {1: -13.6, 6: -1029.5, 8: -2041.3, 14: -7875.0}  # eV
REPO_ROOT = Path(__file__).resolve().parents[1]


def make_potential(dtype=torch.float64, **backbone_overrides) -> Potential:
    torch.manual_seed(0)
    kwargs = {"num_elements": len(ELEMENTS), "cutoff": CUTOFF, "condition_dim": 8, "dim": 16, "depth": 2, "heads": 2,
              "num_fourier": 8}
    kwargs.update(backbone_overrides)
    with default_dtype(dtype):
        return Potential(TransIPBackbone(**kwargs), ELEMENTS, ATOMIC_ENERGIES, scale=1.3, shift=-0.2,
                         cutoff=CUTOFF, condition_dim=8, readout_hidden=[8])


@pytest.fixture(scope="module")
def potential() -> Potential:
    return make_potential()


def graph(structure: Structure):
    return structure_to_graph(structure, CUTOFF, torch.float64)


def moved(structure: Structure, positions: np.ndarray, cell=None) -> Structure:
    return Structure(numbers=structure.numbers, positions=positions,
                     cell=structure.cell if cell is None else cell, pbc=structure.pbc, id=structure.id)


def predict(potential, structure: Structure, **kwargs) -> dict[str, torch.Tensor]:
    return {key: value.detach() for key, value in potential(graph(structure), **kwargs).items()}


@pytest.mark.parametrize("name", ["molecule", "crystal"])
def test_centred_positions_keep_translation_invariance_exact(name, request):
    """The contract (tests/test_backbone_contract.py) runs the default; this is the use_positions variant."""
    structure = request.getfixturevalue(name)
    potential = make_potential(use_positions=True)
    before = predict(potential, structure)
    after = predict(potential, moved(structure, structure.positions + np.array([3.7, -12.1, 0.45])))
    torch.testing.assert_close(after["energy"], before["energy"], atol=1e-10, rtol=0)
    torch.testing.assert_close(after["forces"], before["forces"], atol=1e-10, rtol=0)


def test_centred_positions_make_distant_fragments_interact():
    """Documented trade-off of `use_positions=True`: the energy is no longer local."""
    def dimer_energy(potential, distance: float) -> float:
        structure = Structure(numbers=np.array([6, 8]), positions=np.array([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]]))
        return float(predict(potential, structure, compute_forces=False)["energy"])

    local, nonlocal_ = make_potential(), make_potential(use_positions=True)
    assert dimer_energy(local, CUTOFF + 2.0) == pytest.approx(dimer_energy(local, CUTOFF + 1.0), abs=1e-12)
    assert abs(dimer_energy(nonlocal_, CUTOFF + 2.0) - dimer_energy(nonlocal_, CUTOFF + 1.0)) > 1e-6


def test_charge_conditioning_changes_the_embedding():
    with default_dtype(torch.float64):
        backbone = TransIPBackbone(num_elements=2, cutoff=CUTOFF, condition_dim=4, dim=8, heads=2, num_fourier=4)
    positions = torch.tensor([[0.0, 0.0, 0.0], [1.1, 0.2, -0.3]], dtype=torch.float64)
    edge_index = torch.tensor([[1, 0], [0, 1]])

    def embed(condition):
        inputs = BackboneInputs(species=torch.tensor([0, 1]), edge_index=edge_index,
                                edge_vectors=positions[edge_index[0]] - positions[edge_index[1]],
                                batch=torch.zeros(2, dtype=torch.long), num_graphs=1, node_condition=condition, pos=positions)
        return backbone.embed(inputs)

    neutral, charged = embed(torch.zeros(2, 4, dtype=torch.float64)), embed(torch.ones(2, 4, dtype=torch.float64))
    assert neutral.shape == (2, 8) and float((neutral - charged).detach().abs().max()) > 1e-3
    with pytest.raises(ValueError, match="node_condition=None"):
        embed(None)


def test_invalid_hyperparameters_are_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        TransIPBackbone(num_elements=2, cutoff=CUTOFF, dim=10, heads=4)
    with pytest.raises(ValueError, match="depth"):
        TransIPBackbone(num_elements=2, cutoff=CUTOFF, depth=0)


def test_config_file_builds_a_potential_that_rebuilds_identically(molecule):
    config = yaml.safe_load((REPO_ROOT / "mlip/configs/model/backbone/transip.yaml").read_text())
    statistics = {"elements": ELEMENTS, "atomic_energies": ATOMIC_ENERGIES, "scale": 1.0, "shift": 0.0, "avg_num_neighbors": 4.0}
    torch.manual_seed(0)
    built = build_potential({"backbone": config, "cutoff": CUTOFF}, statistics, dtype=torch.float64)
    assert isinstance(built.backbone, TransIPBackbone)
    rebuilt = Potential.from_config(built.config, dtype=torch.float64)
    rebuilt.load_state_dict(built.state_dict())
    torch.testing.assert_close(rebuilt(graph(molecule))["energy"], built(graph(molecule))["energy"])
