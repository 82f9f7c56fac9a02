"""TransIP backbone through `Potential` (float64): exact translation symmetry, *no* built-in rotation
symmetry, forces = -dE/dr, smoothness at the cutoff, batching, periodic images, config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.spatial.transform import Rotation
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.structure import Structure
from mlip.models import Potential, build_potential
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
    potential = Potential(TransIPBackbone(**kwargs), ELEMENTS, ATOMIC_ENERGIES, scale=1.3, shift=-0.2,
                          cutoff=CUTOFF, condition_dim=8, readout_hidden=[8])
    return potential.to(dtype)


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


@pytest.mark.parametrize("use_positions", [False, True])
@pytest.mark.parametrize("name", ["molecule", "crystal"])
def test_energy_and_forces_exactly_translation_invariant(name, use_positions, request):
    structure = request.getfixturevalue(name)
    potential = make_potential(use_positions=use_positions)
    before = predict(potential, structure)
    after = predict(potential, moved(structure, structure.positions + np.array([3.7, -12.1, 0.45])))
    torch.testing.assert_close(after["energy"], before["energy"], atol=1e-10, rtol=0)
    torch.testing.assert_close(after["forces"], before["forces"], atol=1e-10, rtol=0)


def test_crystal_energy_independent_of_which_periodic_image_holds_an_atom(potential, crystal):
    positions = crystal.positions.copy()
    positions[1] += crystal.cell[0] - 2 * crystal.cell[2]  # same crystal, atom 1 stored in another image
    torch.testing.assert_close(predict(potential, moved(crystal, positions))["energy"],
                               predict(potential, crystal)["energy"], atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["molecule", "crystal"])
def test_rotation_symmetry_is_not_built_in(potential, name, request):
    """The architecture is deliberately non-equivariant: an untrained model changes its energy."""
    structure = request.getfixturevalue(name)
    matrix = Rotation.from_euler("xyz", [0.4, -1.1, 2.0]).as_matrix()
    cell = None if structure.cell is None else structure.cell @ matrix.T
    rotated = moved(structure, structure.positions @ matrix.T, cell)
    change = (predict(potential, rotated)["energy"] - predict(potential, structure)["energy"]).abs()
    assert float(change) > 1e-4


@pytest.mark.parametrize("name", ["molecule", "crystal"])
def test_forces_equal_finite_differences(potential, name, request):
    structure = request.getfixturevalue(name)
    forces = predict(potential, structure)["forces"]
    step = 1e-4  # Å (total energies are ~1e4 eV: a smaller step loses digits to cancellation)
    for atom, axis in [(0, 0), (1, 2), (2, 1)]:
        plus, minus = structure.positions.copy(), structure.positions.copy()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        difference = predict(potential, moved(structure, plus))["energy"] - predict(potential, moved(structure, minus))["energy"]
        assert float(-difference / (2 * step)) == pytest.approx(float(forces[atom, axis]), abs=1e-6)


def test_stress_equals_strain_derivative_of_energy(potential, crystal):
    stress = predict(potential, crystal, compute_stress=True)["stress"][0]
    volume = abs(np.linalg.det(crystal.cell))
    step = 1e-6
    for i, j in [(0, 0), (1, 2)]:
        strain = np.zeros((3, 3))
        strain[i, j] = strain[j, i] = step / 2 if i != j else step
        energies = []
        for sign in (1, -1):
            deformation = np.eye(3) + sign * strain
            energies.append(float(predict(potential, moved(crystal, crystal.positions @ deformation, crystal.cell @ deformation))["energy"]))
        derivative = (energies[0] - energies[1]) / (2 * step)  # dE/dε_ij (symmetric pair counts once)
        assert derivative / volume == pytest.approx(float(stress[i, j]), abs=1e-7)


def test_energy_is_continuous_when_an_atom_crosses_the_cutoff(potential):
    def dimer(distance: float) -> float:
        structure = Structure(numbers=np.array([6, 8]), positions=np.array([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]]))
        return float(predict(potential, structure, compute_forces=False)["energy"])

    isolated = dimer(CUTOFF + 1.0)
    assert dimer(CUTOFF + 1e-7) == pytest.approx(isolated, abs=1e-12)
    assert dimer(CUTOFF - 1e-4) == pytest.approx(isolated, abs=1e-8)  # envelope ~ (Δr)³ near the cutoff
    assert abs(dimer(CUTOFF - 0.8) - isolated) > 1e-6  # atoms inside the cutoff do interact


def test_centred_positions_make_distant_fragments_interact():
    """Documented trade-off of `use_positions=True`: the energy is no longer local."""
    def dimer_energy(potential, distance: float) -> float:
        structure = Structure(numbers=np.array([6, 8]), positions=np.array([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]]))
        return float(predict(potential, structure, compute_forces=False)["energy"])

    local, nonlocal_ = make_potential(), make_potential(use_positions=True)
    assert dimer_energy(local, CUTOFF + 2.0) == pytest.approx(dimer_energy(local, CUTOFF + 1.0), abs=1e-12)
    assert abs(dimer_energy(nonlocal_, CUTOFF + 2.0) - dimer_energy(nonlocal_, CUTOFF + 1.0)) > 1e-6


def test_batch_equals_individual_structures(potential, molecule, crystal):
    single = Structure(numbers=np.array([8]), positions=np.zeros((1, 3)))  # an atom without neighbours
    structures = [molecule, crystal, single]
    outputs = potential(Batch.from_data_list([graph(s) for s in structures]), compute_stress=True)
    for index, structure in enumerate(structures):
        alone = predict(potential, structure)
        torch.testing.assert_close(outputs["energy"][index].detach(), alone["energy"][0], atol=1e-12, rtol=0)
    torch.testing.assert_close(outputs["forces"][: molecule.n_atoms].detach(), predict(potential, molecule)["forces"],
                               atol=1e-12, rtol=0)


def test_charge_conditioning_changes_the_embedding():
    backbone = TransIPBackbone(num_elements=2, cutoff=CUTOFF, condition_dim=4, dim=8, heads=2, num_fourier=4).double()
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
    config = yaml.safe_load((REPO_ROOT / "configs/model/backbone/transip.yaml").read_text())
    statistics = {"elements": ELEMENTS, "atomic_energies": ATOMIC_ENERGIES, "scale": 1.0, "shift": 0.0, "avg_num_neighbors": 4.0}
    torch.manual_seed(0)
    built = build_potential({"backbone": config, "cutoff": CUTOFF}, statistics, dtype=torch.float64)
    assert isinstance(built.backbone, TransIPBackbone)
    rebuilt = Potential.from_config(built.config, dtype=torch.float64)
    rebuilt.load_state_dict(built.state_dict())
    torch.testing.assert_close(rebuilt(graph(molecule))["energy"], built(graph(molecule))["energy"])
