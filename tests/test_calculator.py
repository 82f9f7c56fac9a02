"""MLIPCalculator: derivatives, neighbour-list reuse, batching, errors, and use with ASE drivers.

The physics checks use a small untrained MACE potential (random weights give a smooth,
non-trivial energy surface); the drivers are only exercised for a few steps.
"""

from __future__ import annotations

import platform
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError

from mlip.calculator import MLIPCalculator, MLIPInputError, MLIPPredictionError
from mlip.models.backbones.mace import MACEBackbone
from mlip.models.potential import Potential

ELEMENTS = [1, 6, 8, 14]
CUTOFF = 4.0


def tiny_potential(seed: int = 0, charge_spin_conditioning: bool = True) -> Potential:
    torch.manual_seed(seed)
    condition_dim = 8 if charge_spin_conditioning else 0
    backbone = MACEBackbone(
        num_elements=len(ELEMENTS), cutoff=CUTOFF, condition_dim=condition_dim,
        num_channels=8, lmax=1, correlation=2, num_layers=2, radial_mlp=(16,), avg_num_neighbors=8.0,
    )
    return Potential(
        backbone, elements=ELEMENTS, atomic_energies=[-13.6, -1029.0, -2041.0, -7850.0], scale=5.0,
        shift=0.0, cutoff=CUTOFF, charge_spin_conditioning=charge_spin_conditioning, condition_dim=8,
        readout_hidden=(8,),
    )


@pytest.fixture(scope="module")
def potential() -> Potential:
    return tiny_potential()


def rattled_molecule(seed: int = 1) -> Atoms:
    atoms = molecule("CH3OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


def rattled_crystal(seed: int = 2) -> Atoms:
    """A sheared 2-atom SiC cell: small enough that atoms see their own images within the cutoff."""
    atoms = bulk("SiC", "zincblende", a=4.36)
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.03, 0.0], [0.0, 0.98, 0.02], [0.01, 0.0, 1.02]]), scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    return atoms


def finite_difference_forces(atoms: Atoms, step: float = 1e-4) -> np.ndarray:
    forces = np.zeros((len(atoms), 3))
    for atom in range(len(atoms)):
        for axis in range(3):
            energies = []
            for sign in (1, -1):
                displaced = atoms.copy()
                displaced.calc = atoms.calc
                displaced.positions[atom, axis] += sign * step
                energies.append(displaced.get_potential_energy())
            forces[atom, axis] = -(energies[0] - energies[1]) / (2 * step)
    return forces


def finite_difference_stress(atoms: Atoms, step: float = 1e-5) -> np.ndarray:
    """σ_ab = (1/V) dE/dε_ab under a symmetric strain that scales the cell and the atoms."""
    stress = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                strain = np.zeros((3, 3))
                strain[a, b] += 0.5 * sign * step
                strain[b, a] += 0.5 * sign * step
                strained = atoms.copy()
                strained.calc = atoms.calc
                strained.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
                energies.append(strained.get_potential_energy())
            stress[a, b] = (energies[0] - energies[1]) / (2 * step) / atoms.get_volume()
    return stress


def test_forces_match_finite_differences_of_the_energy(potential):
    for atoms in (rattled_molecule(), rattled_crystal()):
        atoms.calc = MLIPCalculator(potential, skin=0.0)
        forces = atoms.get_forces()
        assert np.abs(forces).max() > 1e-3  # a non-trivial check
        np.testing.assert_allclose(forces, finite_difference_forces(atoms), atol=1e-6)


def test_stress_matches_finite_differences_under_strain(potential):
    atoms = rattled_crystal()
    atoms.calc = MLIPCalculator(potential, skin=0.0)
    stress = atoms.get_stress(voigt=False)
    assert np.abs(stress).max() > 1e-4
    np.testing.assert_allclose(stress, finite_difference_stress(atoms), atol=1e-7)
    np.testing.assert_allclose(stress, stress.T, atol=1e-12)


def test_stress_of_a_molecule_is_not_implemented(potential):
    atoms = rattled_molecule()
    atoms.calc = MLIPCalculator(potential)
    atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_energy_is_sum_of_atomic_energies_and_float32_agrees(potential):
    atoms = rattled_crystal().repeat((2, 1, 1))
    atoms.calc = MLIPCalculator(potential)
    energy = atoms.get_potential_energy()
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), energy, rtol=0, atol=1e-8)
    assert atoms.calc.get_property("free_energy", atoms) == energy
    single = atoms.copy()
    single.calc = MLIPCalculator(tiny_potential(), dtype="float32")
    np.testing.assert_allclose(single.get_potential_energy(), energy, rtol=1e-6)
    np.testing.assert_allclose(single.get_forces(), atoms.get_forces(), atol=2e-3)


def test_the_callers_model_is_left_untouched():
    model = tiny_potential()
    dtype = next(model.parameters()).dtype
    MLIPCalculator(model, dtype="float64" if dtype == torch.float32 else "float32")
    assert next(model.parameters()).dtype == dtype
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_skin_list_gives_fresh_list_results_and_skips_rebuilds(potential):
    """A random walk of 0.08 Å per step: pairs enter and leave the cutoff, the list is rebuilt rarely."""
    rng = np.random.default_rng(0)
    for atoms in (rattled_molecule(), rattled_crystal().repeat((2, 1, 1))):
        reused = MLIPCalculator(potential, skin=0.5)
        fresh = MLIPCalculator(potential, skin=0.0)
        n_steps = 15
        for _ in range(n_steps):
            atoms.positions += rng.normal(scale=0.08 / np.sqrt(3), size=atoms.positions.shape)
            reused.calculate(atoms, ["energy", "forces"])
            fresh.calculate(atoms, ["energy", "forces"])
            assert reused.results["energy"] == pytest.approx(fresh.results["energy"], abs=1e-9)
            np.testing.assert_allclose(reused.results["forces"], fresh.results["forces"], atol=1e-9)
        assert fresh.neighbour_list_builds == n_steps
        assert 1 < reused.neighbour_list_builds < n_steps // 2


def test_skin_list_is_rebuilt_when_an_atom_moves_more_than_half_the_skin(potential):
    atoms = rattled_molecule()
    calculator = MLIPCalculator(potential, skin=0.4)
    calculator.calculate(atoms, ["energy"])
    atoms.positions[0, 0] += 0.19
    calculator.calculate(atoms, ["energy"])
    assert calculator.neighbour_list_builds == 1
    atoms.positions[0, 0] += 0.02  # now 0.21 Å from the build positions
    calculator.calculate(atoms, ["energy"])
    assert calculator.neighbour_list_builds == 2
    atoms.set_cell(np.eye(3) * 20.0)  # any cell change rebuilds
    calculator.calculate(atoms, ["energy"])
    assert calculator.neighbour_list_builds == 3


def test_predict_batch_matches_one_by_one(potential):
    structures = [rattled_molecule(seed) for seed in range(3)] + [rattled_crystal(seed) for seed in range(3)]
    structures[1].info.update(charge=1, spin=2)
    calculator = MLIPCalculator(potential)
    batched = calculator.predict_batch(structures, max_atoms_per_batch=10)  # forces several batches
    for atoms, prediction in zip(structures, batched):
        calculator.calculate(atoms, ["energy", "forces"])
        assert prediction["energy"] == pytest.approx(calculator.results["energy"], abs=1e-9)
        np.testing.assert_allclose(prediction["forces"], calculator.results["forces"], atol=1e-9)
        assert ("stress" in prediction) == bool(atoms.pbc.any())
        if atoms.pbc.any():
            np.testing.assert_allclose(prediction["stress"], calculator.results["stress"], atol=1e-10)


def test_charge_and_spin_are_read_from_atoms_info(potential):
    atoms = rattled_molecule()
    calculator = MLIPCalculator(potential)
    neutral = calculator.get_potential_energy(atoms)
    atoms.info["charge"] = 1
    cation_singlet = calculator.get_potential_energy(atoms)
    atoms.info["spin"] = 2
    cation_doublet = calculator.get_potential_energy(atoms)
    assert len({neutral, cation_singlet, cation_doublet}) == 3
    assert MLIPCalculator(potential, default_charge=1).get_potential_energy(rattled_molecule()) == pytest.approx(cation_singlet)


def test_fractional_charge_is_a_clear_error(potential):
    atoms = rattled_molecule()
    atoms.info["charge"] = 0.5
    atoms.calc = MLIPCalculator(potential)
    with pytest.raises(MLIPInputError, match=r"charge.*must be an integer, got 0.5"):
        atoms.get_potential_energy()


def test_unknown_element_is_named(potential):
    atoms = molecule("CH3Cl")
    atoms.calc = MLIPCalculator(potential)
    with pytest.raises(MLIPInputError, match=r"Cl \(Z=17\)"):
        atoms.get_potential_energy()
    with pytest.raises(MLIPInputError, match=r"structure 1: .*Cl \(Z=17\)"):
        atoms.calc.predict_batch([rattled_molecule(), atoms])


def test_empty_atoms_is_a_clear_error(potential):
    atoms = Atoms()
    atoms.calc = MLIPCalculator(potential)
    with pytest.raises(MLIPInputError, match="empty"):
        atoms.get_potential_energy()


def test_missing_charge_for_a_charged_model_is_a_clear_error():
    potential = tiny_potential()
    potential.statistics = {"charge_counts": {"-1": 4, "0": 10, "1": 3}}  # as in an export's statistics
    atoms = rattled_molecule()
    atoms.calc = MLIPCalculator(potential)
    with pytest.raises(MLIPInputError, match=r"atoms.info has no 'charge'"):
        atoms.get_potential_energy()
    atoms.info["charge"] = 0
    assert np.isfinite(atoms.get_potential_energy())
    explicit = rattled_molecule()
    explicit.calc = MLIPCalculator(potential, default_charge=0)
    assert explicit.get_potential_energy() == pytest.approx(atoms.get_potential_energy())


def test_nan_position_after_a_first_call_is_an_error_on_every_call(potential):
    """A NaN displacement never exceeds skin/2, so the skin list alone would be reused with it."""
    atoms = rattled_molecule()
    atoms.calc = MLIPCalculator(potential, skin=0.5)
    assert np.isfinite(atoms.get_potential_energy())
    atoms.positions[2, 0] = np.nan
    for _ in range(2):
        with pytest.raises(MLIPInputError, match=r"non-finite position \(NaN or inf\) of atom 2 \(H\)"):
            atoms.get_forces()
    atoms.positions[2, 0] = np.inf
    atoms.positions[4, 1] = np.nan
    with pytest.raises(MLIPInputError, match=r"atoms 2 \(H\), 4 \(H\)"):
        atoms.get_potential_energy()
    with pytest.raises(MLIPInputError, match=r"structure 1: .*non-finite position .*atoms 2 \(H\), 4 \(H\)"):
        atoms.calc.predict_batch([rattled_molecule(), atoms])


def test_nan_cell_is_an_error(potential):
    atoms = rattled_crystal()
    atoms.calc = MLIPCalculator(potential)
    assert np.isfinite(atoms.get_potential_energy())
    cell = atoms.cell.array.copy()
    cell[1, 2] = np.nan
    atoms.set_cell(cell)
    with pytest.raises(MLIPInputError, match="the cell contains NaN or inf"):
        atoms.get_potential_energy()


def test_coincident_atoms_are_named_on_every_call(potential):
    atoms = rattled_molecule()
    atoms.calc = MLIPCalculator(potential)
    assert np.isfinite(atoms.get_potential_energy())
    atoms.positions[3] = atoms.positions[2] + [0.03, 0.0, 0.0]
    for _ in range(2):  # ASE would otherwise serve a cached result; the calculator has none to serve
        with pytest.raises(MLIPInputError, match=r"atoms 2 \(H\) and 3 \(H\) are 0.0300 Å apart, closer than min_distance = 0.1 Å"):
            atoms.get_potential_energy()
    with pytest.raises(MLIPInputError, match=r"structure 0: atoms 2 \(H\) and 3 \(H\) are 0.0300 Å apart"):
        atoms.calc.predict_batch([atoms])
    atoms.calc = MLIPCalculator(potential, min_distance=0.01)  # the threshold is the caller's
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(ValueError, match=r"min_distance must be in \[0, cutoff"):
        MLIPCalculator(potential, min_distance=CUTOFF)


def test_coincident_periodic_image_is_named(potential):
    atoms = rattled_crystal()
    atoms.calc = MLIPCalculator(potential)
    atoms.positions[1] = atoms.positions[0] + atoms.cell.array[0] + [0.0, 0.0, 0.02]  # on atom 0's image
    with pytest.raises(MLIPInputError, match=r"atoms 0 \(Si\) and 1 \(C\) \(periodic image, cell shift \[.*\]\) are 0.0200 Å apart"):
        atoms.get_potential_energy()


def test_nonfinite_prediction_is_an_error(potential):
    """With the distance check off, coincident atoms make the MACE-like model return NaN."""
    atoms = rattled_molecule()
    atoms.positions[3] = atoms.positions[2]
    atoms.calc = MLIPCalculator(potential, min_distance=0.0)
    with pytest.raises(MLIPPredictionError, match=r"non-finite forces on atoms .*2 \(H\), 3 \(H\)"):
        atoms.get_potential_energy()
    with pytest.raises(MLIPPredictionError, match=r"structure 1: .*non-finite forces"):
        atoms.calc.predict_batch([rattled_molecule(), atoms])


# ------------------------------------------------------------------------------------------------
# ASE drivers: a few steps each, checking they run and do what they promise
# ------------------------------------------------------------------------------------------------


def test_bfgs_and_fire_lower_the_energy(potential):
    from ase.optimize import BFGS, FIRE

    for optimizer in (BFGS, FIRE):
        atoms = rattled_molecule()
        atoms.calc = MLIPCalculator(potential)
        start_energy = atoms.get_potential_energy()
        optimizer(atoms, logfile=None).run(fmax=1e-3, steps=15)
        assert atoms.get_potential_energy() < start_energy


def test_frechet_cell_filter_relaxes_cell_and_positions(potential):
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    atoms = rattled_crystal()
    atoms.calc = MLIPCalculator(potential)
    start_energy, start_cell = atoms.get_potential_energy(), atoms.cell.array.copy()
    FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-3, steps=5)
    assert atoms.get_potential_energy() < start_energy
    assert not np.allclose(atoms.cell.array, start_cell)


@pytest.mark.parametrize("driver", ["VelocityVerlet", "Langevin", "NPTBerendsen", "MelchionnaNPT"])
def test_md_drivers_run(potential, driver):
    from ase import units
    from ase.md import Langevin, VelocityVerlet
    from ase.md.melchionna import MelchionnaNPT
    from ase.md.nptberendsen import NPTBerendsen
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = bulk("SiC", "zincblende", a=4.36, cubic=True)  # 8 atoms; Melchionna NPT needs an upper-triangular cell
    atoms.rattle(0.05, seed=3)
    atoms.calc = MLIPCalculator(potential)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    timestep = 0.5 * units.fs
    if driver == "VelocityVerlet":
        dynamics = VelocityVerlet(atoms, timestep)
    elif driver == "Langevin":
        dynamics = Langevin(atoms, timestep, temperature_K=300, friction=0.02 / units.fs, fixcm=False,
                            rng=np.random.default_rng(0))
    elif driver == "NPTBerendsen":
        dynamics = NPTBerendsen(atoms, timestep, temperature_K=300, pressure_au=0.0, taut=10 * units.fs,
                                taup=50 * units.fs, compressibility_au=1e-2 / units.GPa)
    else:
        dynamics = MelchionnaNPT(atoms, timestep, temperature_K=300, externalstress=0.0, ttime=20 * units.fs,
                       pfactor=100.0 * units.fs**2 * units.GPa)
    start_cell = atoms.cell.array.copy()
    dynamics.run(5)
    assert np.isfinite(atoms.get_potential_energy()) and np.isfinite(atoms.get_forces()).all()
    if driver.startswith("NPT"):
        assert not np.allclose(atoms.cell.array, start_cell)


def tiny_facet_potential(seed: int = 0) -> Potential:
    from mlip.models.backbones.facet import FacetBackbone

    torch.manual_seed(seed)
    backbone = FacetBackbone(
        num_elements=len(ELEMENTS), cutoff=CUTOFF, condition_dim=8, num_channels=8, num_layers=2, avg_num_neighbors=8.0
    )
    return Potential(
        backbone, ELEMENTS, [-13.6, -1029.0, -2041.0, -7850.0], scale=5.0, cutoff=CUTOFF, condition_dim=8,
        readout_hidden=(8,),
    )


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="torch.compile needs a C++ compiler on CPU")
def test_compiled_facet_backbone_gives_the_eager_results():
    """compile=True runs the backbone through TorchInductor; energies, forces and stress must not change,
    and a changing edge count (MD) must not break it."""
    model = tiny_facet_potential()
    eager = MLIPCalculator(model, skin=0.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="MLIPCalculator")  # a fallback to eager would make this test vacuous
        compiled = MLIPCalculator(model, skin=0.0, compile=True)
        for seed in (1, 2):
            atoms = rattled_crystal(seed).repeat((2, 1, 1))
            atoms.rattle(0.2, seed=seed)  # different edge counts across calls
            results = {}
            for name, calculator in (("eager", eager), ("compiled", compiled)):
                atoms.calc = calculator
                results[name] = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())
            assert abs(results["eager"][0] - results["compiled"][0]) < 1e-9
            assert np.allclose(results["eager"][1], results["compiled"][1], atol=1e-9, rtol=0)
            assert np.allclose(results["eager"][2], results["compiled"][2], atol=1e-9, rtol=0)
    assert compiled.compiled
    assert "forward" not in model.backbone.__dict__  # the caller's module keeps its eager forward


def test_compile_falls_back_to_eager_with_a_warning_for_the_mace_backbone(potential):
    atoms = rattled_molecule()
    atoms.calc = MLIPCalculator(potential, compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        energy = atoms.get_potential_energy()
    atoms.calc = MLIPCalculator(potential)
    assert abs(energy - atoms.get_potential_energy()) < 1e-9


def test_retain_freed_memory_applies_on_linux_glibc():
    from mlip.performance import retain_freed_memory

    applied = retain_freed_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied
    atoms = rattled_molecule()
    atoms.calc = MLIPCalculator(tiny_potential(), retain_freed_memory=True)
    assert np.isfinite(atoms.get_forces()).all()
