"""Physics of `Potential` + MACE backbone in float64: symmetries, derivatives, references, batching."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.structure import Structure
from mlip.models import BACKBONES, MACEBackbone, Potential, build_potential

CUTOFF = 3.0  # Å
ELEMENTS = [1, 6, 8, 14]
ATOMIC_ENERGIES = {1: -13.6, 6: -1029.5, 8: -2041.3, 14: -7875.0}  # eV
SCALE, SHIFT = 1.7, -0.3  # eV, eV/atom


def make_potential(dtype=torch.float64, conditioning=True, direct_forces=False, correlation=3, num_layers=2):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # e3nn bakes Clebsch-Gordan constants in the default dtype
    try:
        torch.manual_seed(0)
        backbone = MACEBackbone(
            num_elements=len(ELEMENTS),
            cutoff=CUTOFF,
            condition_dim=8 if conditioning else 0,
            num_channels=8,
            lmax=1,
            correlation=correlation,
            num_layers=num_layers,
            radial_mlp=[16],
            avg_num_neighbors=3.0,
        )
        potential = Potential(
            backbone,
            ELEMENTS,
            ATOMIC_ENERGIES,
            scale=SCALE,
            shift=SHIFT,
            cutoff=CUTOFF,
            charge_spin_conditioning=conditioning,
            condition_dim=8,
            direct_forces=direct_forces,
            readout_hidden=[8],
        )
    finally:
        torch.set_default_dtype(previous)
    return potential.to(dtype)


@pytest.fixture(scope="module")
def potential():
    return make_potential()


def graph(structure: Structure, dtype=torch.float64):
    return Batch.from_data_list([structure_to_graph(structure, CUTOFF, dtype)])


def transformed(structure: Structure, matrix: np.ndarray, translation=(0.0, 0.0, 0.0)) -> Structure:
    """Apply r -> matrix r + translation (Å) to positions and the cell."""
    cell = None if structure.cell is None else structure.cell @ matrix.T
    return Structure(
        numbers=structure.numbers,
        positions=structure.positions @ matrix.T + np.asarray(translation),
        cell=cell,
        pbc=structure.pbc,
        charge=structure.charge,
        spin=structure.spin,
    )


def strained(structure: Structure, strain: np.ndarray) -> Structure:
    return transformed(structure, np.eye(3) + strain)


def energy(potential, structure: Structure) -> float:
    return float(potential(graph(structure), compute_forces=False)["energy"][0].detach())


ROTATION = Rotation.from_euler("zyx", [0.7, -1.1, 2.3]).as_matrix()
REFLECTION = np.diag([1.0, -1.0, 1.0]) @ ROTATION


@pytest.mark.parametrize("name", ["molecule", "crystal"])
def test_energy_invariant_under_rotation_translation_reflection(potential, name, request):
    structure = request.getfixturevalue(name)
    reference = energy(potential, structure)
    assert abs(energy(potential, transformed(structure, ROTATION)) - reference) < 1e-10
    assert abs(energy(potential, transformed(structure, np.eye(3), np.array([0.3, -2.0, 5.1]))) - reference) < 1e-10
    assert abs(energy(potential, transformed(structure, REFLECTION)) - reference) < 1e-10


@pytest.mark.parametrize("name", ["molecule", "crystal"])
def test_energy_invariant_under_permutation(potential, name, request, rng):
    structure = request.getfixturevalue(name)
    order = rng.permutation(structure.n_atoms)
    permuted = Structure(
        numbers=structure.numbers[order], positions=structure.positions[order], cell=structure.cell, pbc=structure.pbc
    )
    reference = potential(graph(structure))
    result = potential(graph(permuted))
    assert abs(float(result["energy"][0].detach() - reference["energy"][0].detach())) < 1e-10
    torch.testing.assert_close(result["forces"], reference["forces"][order], atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["molecule", "crystal"])
def test_forces_rotate_with_the_structure(potential, name, request):
    structure = request.getfixturevalue(name)
    forces = potential(graph(structure))["forces"].detach().numpy()
    for matrix in (ROTATION, REFLECTION):
        moved = potential(graph(transformed(structure, matrix)))["forces"].detach().numpy()
        np.testing.assert_allclose(moved, forces @ matrix.T, atol=1e-10)
    assert np.abs(forces).max() > 1e-4, "forces are trivially zero: the test would prove nothing"


@pytest.mark.parametrize("name", ["molecule", "crystal"])
def test_forces_equal_finite_differences(potential, name, request):
    structure = request.getfixturevalue(name)
    forces = potential(graph(structure))["forces"].detach().numpy()
    step = 1e-4  # Å; smaller steps drown in round-off of the ~1e4 eV total energy
    numerical = np.zeros_like(forces)
    for atom in range(structure.n_atoms):
        for axis in range(3):
            plus, minus = structure.positions.copy(), structure.positions.copy()
            plus[atom, axis] += step
            minus[atom, axis] -= step
            e_plus = energy(potential, Structure(structure.numbers, plus, structure.cell, structure.pbc))
            e_minus = energy(potential, Structure(structure.numbers, minus, structure.cell, structure.pbc))
            numerical[atom, axis] = -(e_plus - e_minus) / (2 * step)
    np.testing.assert_allclose(forces, numerical, atol=1e-7)
    assert np.abs(forces).max() > 1e-4


def test_forces_sum_to_zero(potential, molecule, crystal):
    for structure in (molecule, crystal):
        forces = potential(graph(structure))["forces"]
        assert float(forces.sum(dim=0).abs().max()) < 1e-10


def test_stress_equals_strain_derivative_of_energy(potential, crystal):
    out = potential(graph(crystal), compute_stress=True)
    stress = out["stress"][0].detach().numpy()
    volume = abs(np.linalg.det(crystal.cell))
    step = 1e-4
    numerical = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            strain = np.zeros((3, 3))
            strain[i, j] += step / 2
            strain[j, i] += step / 2  # symmetric strain: dE/dε_ij = V (σ_ij + σ_ji) / 2 = V σ_ij
            e_plus = energy(potential, strained(crystal, strain))
            e_minus = energy(potential, strained(crystal, -strain))
            numerical[i, j] = (e_plus - e_minus) / (2 * step) / volume
    np.testing.assert_allclose(stress, numerical, atol=1e-8)
    np.testing.assert_allclose(stress, stress.T, atol=1e-12)
    np.testing.assert_allclose(out["virials"][0].detach().numpy(), -stress * volume, atol=1e-10)
    assert np.abs(stress).max() > 1e-5


def test_stress_is_nan_for_molecules_only(potential, molecule, crystal):
    batch = Batch.from_data_list([structure_to_graph(s, CUTOFF, torch.float64) for s in (molecule, crystal)])
    stress = potential(batch, compute_stress=True)["stress"]
    assert torch.isnan(stress[0]).all()
    assert torch.isfinite(stress[1]).all()


def test_energy_is_smooth_when_an_atom_crosses_the_cutoff(potential):
    """A dimer: E(r) -> E(isolated atoms) as r -> cutoff, with vanishing force (C1/C2 envelope)."""

    def dimer(distance: float) -> Structure:
        return Structure(numbers=[8, 1], positions=[[0.0, 0.0, 0.0], [distance, 0.0, 0.0]])

    isolated = sum(ATOMIC_ENERGIES[z] + SHIFT for z in (8, 1))
    inside = potential(graph(dimer(CUTOFF - 1e-3)))
    outside = potential(graph(dimer(CUTOFF + 1e-3)))
    assert float(outside["energy"][0]) == pytest.approx(isolated, abs=1e-12)
    assert abs(float(inside["energy"][0]) - isolated) < 1e-7
    assert float(inside["forces"].abs().max()) < 1e-5
    # deeper inside the interaction is real (otherwise this test would be vacuous)
    assert abs(energy(potential, dimer(CUTOFF - 0.5)) - isolated) > 1e-4
    # E - E_isolated ~ (r_c - r)^4 near the cutoff (Bessel functions vanish linearly there, the
    # envelope cubically): halving the distance to the cutoff divides it by ~16
    near = energy(potential, dimer(CUTOFF - 2e-2)) - isolated
    nearer = energy(potential, dimer(CUTOFF - 1e-2)) - isolated
    assert 13.0 < near / nearer < 19.0


def test_charge_and_spin_change_energy_only_with_conditioning(molecule):
    def energies(potential):
        results = []
        for charge, spin in [(0, 1), (1, 2), (-1, 2), (0, 3), (7, 1)]:
            structure = Structure(molecule.numbers, molecule.positions, charge=charge, spin=spin)
            results.append(energy(potential, structure))
        return np.array(results)

    with_conditioning = energies(make_potential(conditioning=True))
    assert np.abs(with_conditioning[1:] - with_conditioning[0]).min() > 1e-6
    without = energies(make_potential(conditioning=False))
    np.testing.assert_array_equal(without, without[0])


def test_isolated_atom_energy_is_reference_plus_shift(potential):
    for z in ELEMENTS:
        for charge in (0, 1):
            atom = Structure(numbers=[z], positions=[[0.1, 0.2, 0.3]], charge=charge, spin=2)
            out = potential(graph(atom), compute_stress=False)
            assert float(out["energy"][0]) == pytest.approx(ATOMIC_ENERGIES[z] + SHIFT, abs=1e-12)
            assert float(out["forces"].abs().max()) == 0.0


def test_batch_equals_individual_structures(potential, molecule, crystal):
    batch = Batch.from_data_list([structure_to_graph(s, CUTOFF, torch.float64) for s in (molecule, crystal)])
    together = potential(batch, compute_stress=True)
    singles = [potential(graph(s), compute_stress=True) for s in (molecule, crystal)]
    torch.testing.assert_close(together["energy"], torch.cat([s["energy"] for s in singles]), atol=1e-10, rtol=0)
    torch.testing.assert_close(together["forces"], torch.cat([s["forces"] for s in singles]), atol=1e-10, rtol=0)
    torch.testing.assert_close(together["stress"][1], singles[1]["stress"][0], atol=1e-10, rtol=0)
    with torch.no_grad():  # forces are still -dE/dr under no_grad (validation, MD)
        torch.testing.assert_close(potential(batch)["forces"], together["forces"], atol=1e-12, rtol=0)


def test_unknown_element_is_a_clear_error(potential):
    iron = Structure(numbers=[26, 8], positions=[[0, 0, 0], [1.8, 0, 0]])
    with pytest.raises(ValueError, match=r"Fe \(Z=26\)"):
        potential(graph(iron))


def test_missing_reference_energy_is_a_clear_error():
    backbone = MACEBackbone(num_elements=2, cutoff=CUTOFF, condition_dim=0, num_channels=4, num_layers=1)
    with pytest.raises(ValueError, match=r"O \(Z=8\)"):
        Potential(backbone, [1, 8], {1: -13.6}, cutoff=CUTOFF, charge_spin_conditioning=False)


def test_float32_path_runs(molecule, crystal):
    potential = make_potential(dtype=torch.float32)
    batch = Batch.from_data_list([structure_to_graph(s, CUTOFF, torch.float32) for s in (molecule, crystal)])
    out = potential(batch, compute_stress=True)
    assert out["energy"].dtype == torch.float32 and out["forces"].dtype == torch.float32
    assert torch.isfinite(out["forces"]).all() and torch.isfinite(out["stress"][1]).all()
    same_in_float64 = copy.deepcopy(potential).double()
    reference = same_in_float64(Batch.from_data_list([structure_to_graph(s, CUTOFF, torch.float64) for s in (molecule, crystal)]))
    torch.testing.assert_close(out["forces"].double(), reference["forces"], atol=1e-5, rtol=1e-3)
    torch.testing.assert_close(out["energy"].double(), reference["energy"], atol=1e-2, rtol=0)


def test_direct_forces_are_equivariant(molecule):
    potential = make_potential(direct_forces=True)
    direct = potential(graph(molecule), compute_forces=False)["direct_forces"].detach().numpy()
    rotated = potential(graph(transformed(molecule, ROTATION)), compute_forces=False)["direct_forces"]
    np.testing.assert_allclose(rotated.detach().numpy(), direct @ ROTATION.T, atol=1e-10)
    assert np.abs(direct).max() > 1e-6


def test_training_mode_lets_force_and_stress_losses_backpropagate(potential, molecule, crystal):
    batch = Batch.from_data_list([structure_to_graph(s, CUTOFF, torch.float64) for s in (molecule, crystal)])
    out = potential(batch, compute_stress=True, training=True)
    periodic = torch.tensor([False, True])  # the molecule's NaN stress is selected away, as losses do
    loss = out["forces"].square().sum() + out["stress"][periodic].square().sum()
    loss.backward()
    gradients = [p.grad for p in potential.parameters() if p.grad is not None]
    assert gradients and any(float(g.abs().max()) > 0 for g in gradients)
    assert all(bool(torch.isfinite(g).all()) for g in gradients), "NaN stress of a molecule leaked into gradients"
    potential.zero_grad()


def test_build_potential_from_statistics_and_rebuild_from_config(molecule):
    config = {
        "backbone": {"_target_": "mlip.models.backbones.mace.MACEBackbone", "num_channels": 4, "num_layers": 1,
                     "correlation": 2, "radial_mlp": [8]},
        "cutoff": CUTOFF,
        "condition_dim": 4,
        "readout_hidden": [4],
    }
    statistics = {"elements": ELEMENTS, "atomic_energies": ATOMIC_ENERGIES, "scale": 2.0, "shift": 0.5,
                  "avg_num_neighbors": 5.5}
    built = build_potential(config, statistics, dtype=torch.float64)
    assert built.atomic_energies.dtype == torch.float64
    assert built.backbone.config["avg_num_neighbors"] == 5.5
    assert built.config["atomic_energies"] == [ATOMIC_ENERGIES[z] for z in ELEMENTS]
    rebuilt = Potential.from_config(built.config, dtype=torch.float64)
    rebuilt.load_state_dict(built.state_dict())
    expected = built(graph(molecule))["energy"]
    torch.testing.assert_close(rebuilt(graph(molecule))["energy"], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_registered_backbone_gives_conservative_forces_and_stress(name, crystal):
    """Potential is backbone-agnostic: built by registry name, forces and stress are exact derivatives."""
    config = {"backbone": {"name": name}, "cutoff": CUTOFF, "condition_dim": 4, "readout_hidden": [4]}
    statistics = {"elements": ELEMENTS, "atomic_energies": ATOMIC_ENERGIES, "avg_num_neighbors": 6.0}
    potential = build_potential(config, statistics, dtype=torch.float64)
    out = potential(graph(crystal), compute_stress=True)
    step = 1e-4
    plus, minus = crystal.positions.copy(), crystal.positions.copy()
    plus[1, 2] += step
    minus[1, 2] -= step
    numerical_force = -(
        energy(potential, Structure(crystal.numbers, plus, crystal.cell, crystal.pbc))
        - energy(potential, Structure(crystal.numbers, minus, crystal.cell, crystal.pbc))
    ) / (2 * step)
    assert float(out["forces"][1, 2]) == pytest.approx(numerical_force, abs=1e-7)
    strain = np.zeros((3, 3))
    strain[0, 1] = strain[1, 0] = step / 2
    volume = abs(np.linalg.det(crystal.cell))
    numerical_stress = (energy(potential, strained(crystal, strain)) - energy(potential, strained(crystal, -strain))) / (
        2 * step * volume
    )
    assert float(out["stress"][0, 0, 1]) == pytest.approx(numerical_stress, abs=1e-8)
    assert abs(float(out["forces"][1, 2])) > 1e-6
