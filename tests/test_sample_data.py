"""The shipped sample data (mlip/sample_data/*.h5) are real, readable tblite labels, and the script that
makes them runs.

Re-labelling a few shipped frames with tblite proves the stored numbers are what GFN2-xTB /
GFN1-xTB give for the stored geometries; a finite difference of the energy checks the stored
stress convention.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlip.data.reader import StructureReader
from script_modules import load_script

REPO = Path(__file__).resolve().parents[1]
MOLECULES = REPO / "mlip" / "sample_data" / "molecules.h5"
CRYSTALS = REPO / "mlip" / "sample_data" / "crystals.h5"
MAX_FILE_BYTES = 5 * 1024 * 1024


def make_sample_data():
    """scripts/make_sample_data.py as a module (needs tblite)."""
    pytest.importorskip("tblite")
    return load_script("make_sample_data")


@pytest.fixture(scope="module")
def molecules() -> list:
    reader = StructureReader(MOLECULES)
    return [reader.read(index) for index in range(len(reader))]


@pytest.fixture(scope="module")
def crystals() -> list:
    reader = StructureReader(CRYSTALS)
    return [reader.read(index) for index in range(len(reader))]


def first(structures, predicate):
    return next(structure for structure in structures if predicate(structure))


# ---------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("path", [MOLECULES, CRYSTALS], ids=["molecules", "crystals"])
def test_shipped_files_are_small_and_describe_their_method(path):
    assert path.exists(), f"{path} is missing; run scripts/make_sample_data.py"
    assert path.stat().st_size < MAX_FILE_BYTES
    attributes = StructureReader(path).attrs
    method = "GFN2-xTB" if path == MOLECULES else "GFN1-xTB"
    assert method in attributes["level_of_theory"]
    assert "tblite" in attributes["level_of_theory"]
    assert "make_sample_data.py" in attributes["source"]
    assert attributes["energy_reference"]


def test_molecules_cover_charges_and_spin_states(molecules):
    assert len(molecules) >= 1000
    assert len({m.id for m in molecules}) == len(molecules)
    by_subset = {}
    for structure in molecules:
        by_subset.setdefault(structure.subset, []).append(structure)
    assert set(by_subset) == {"neutral", "radical", "cation", "anion"}
    assert all(m.charge == 0 and m.spin == 1 for m in by_subset["neutral"])
    assert all(m.charge == 0 and m.spin >= 2 for m in by_subset["radical"])
    assert all(m.charge == 1 for m in by_subset["cation"])
    assert all(m.charge == -1 for m in by_subset["anion"])
    assert {m.spin for m in by_subset["radical"]} == {2, 3}  # doublets and triplets
    assert {m.spin for m in by_subset["cation"]} == {1, 2}  # closed-shell and radical ions
    for structure in molecules:
        n_electrons = structure.numbers.sum() - structure.charge
        assert (n_electrons - (structure.spin - 1)) % 2 == 0, structure.id


def test_molecule_labels_are_physical(molecules):
    for structure in molecules:
        assert structure.cell is None and not structure.is_periodic, structure.id
        assert structure.stress is None, structure.id
        assert np.isfinite(structure.energy) and np.isfinite(structure.forces).all(), structure.id
        # isolated molecule: no net force; Mulliken charges add up to the total charge
        np.testing.assert_allclose(structure.forces.sum(axis=0), 0.0, atol=1e-4, err_msg=structure.id)
        np.testing.assert_allclose(structure.partial_charges.sum(), structure.charge, atol=1e-6)
    energies = np.array([m.energy for m in molecules])
    assert np.unique(energies).size == energies.size  # distinct MD frames, not copies


def test_crystals_have_cells_and_varied_stress(crystals):
    assert len(crystals) >= 200
    assert len({c.id for c in crystals}) == len(crystals)
    for structure in crystals:
        assert structure.pbc.all() and abs(np.linalg.det(structure.cell)) > 1.0, structure.id
        assert structure.stress.shape == (3, 3), structure.id
        np.testing.assert_allclose(structure.stress, structure.stress.T, atol=1e-10)
        np.testing.assert_allclose(structure.forces.sum(axis=0), 0.0, atol=1e-4, err_msg=structure.id)
        np.testing.assert_allclose(structure.partial_charges.sum(), 0.0, atol=1e-6)
        assert structure.magmom is None  # tblite gives no magnetic moments: left missing
    stresses = np.stack([c.stress for c in crystals])
    off_diagonal = stresses[:, [0, 0, 1], [1, 2, 2]]
    assert (stresses[:, 0, 0] > 0).any() and (stresses[:, 0, 0] < 0).any()  # tensile and compressive
    assert np.abs(off_diagonal).max() > 1e-3  # shear strains give shear stress (eV/Å³)
    assert len({c.subset for c in crystals}) >= 8


# ---------------------------------------------------------------------------- real labels


def test_shipped_molecule_labels_are_reproduced_by_gfn2_xtb(molecules):
    script = make_sample_data()
    radical_anion = first(molecules, lambda m: m.charge == -1 and m.spin == 2)
    for structure in (radical_anion, first(molecules, lambda m: m.subset == "cation")):
        labels = script.single_point(
            structure.to_atoms(), "GFN2-xTB", structure.charge, structure.spin
        )
        assert labels["energy"] == pytest.approx(structure.energy, abs=1e-5), structure.id
        np.testing.assert_allclose(labels["forces"], structure.forces, atol=1e-4)
        np.testing.assert_allclose(labels["partial_charges"], structure.partial_charges, atol=1e-4)


def test_shipped_crystal_labels_are_reproduced_by_gfn1_xtb(crystals):
    script = make_sample_data()
    structure = first(crystals, lambda c: c.subset == "NaCl" and not c.id.endswith("/0"))
    labels = script.single_point(structure.to_atoms(), "GFN1-xTB")
    assert labels["energy"] == pytest.approx(structure.energy, abs=1e-5)
    np.testing.assert_allclose(labels["forces"], structure.forces, atol=1e-4)
    np.testing.assert_allclose(labels["stress"], structure.stress, atol=1e-6)


def test_shipped_stress_is_volume_normalised_strain_derivative(crystals):
    """σ_xy = (1/V) dE/dε_xy (ASE sign) by a central difference on a sheared, rattled cell."""
    script = make_sample_data()
    structure = first(crystals, lambda c: c.subset == "Si" and not c.id.endswith("/0"))
    atoms = structure.to_atoms()
    step = 1e-4
    strain = np.zeros((3, 3))
    strain[0, 1] = strain[1, 0] = step / 2
    energy_plus, energy_minus = (
        script.single_point(script.strained(atoms, sign * strain), "GFN1-xTB")["energy"]
        for sign in (1, -1)
    )
    numeric = (energy_plus - energy_minus) / (2 * step) / atoms.get_volume()
    assert abs(structure.stress[0, 1]) > 1e-3
    assert numeric == pytest.approx(structure.stress[0, 1], abs=2e-5)


# ---------------------------------------------------------------------------- the script


def test_quick_run_writes_readable_files(tmp_path):
    script = make_sample_data()
    # the stress finite-difference check is tested on shipped data above; skipped here for speed
    script.main(["--quick", "--skip-stress-check", "--out-dir", str(tmp_path), "--seed", "3"])
    molecules = StructureReader(tmp_path / "molecules.h5")
    crystals = StructureReader(tmp_path / "crystals.h5")
    assert len(molecules) == 8 and len(crystals) == 4
    assert set(molecules.charge) == {-1, 0, 1} and set(molecules.spin) == {1, 2}
    assert crystals.masks["stress"].all() and not molecules.masks["stress"].any()
    assert "--seed 3" in molecules.attrs["source"]


def test_generation_is_deterministic_given_the_seed():
    script = make_sample_data()
    species = [spec for spec in script.molecule_specs() if spec.name in {"CH3", "OH-"}]

    def generate(seed):
        return list(script.molecule_structures(species, [400.0], seed, 2, 5, 5, 3))

    first_run, second_run, other_seed = generate(7), generate(7), generate(8)
    for a, b in zip(first_run, second_run):
        assert a.id == b.id
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.energy == b.energy
    assert not np.allclose(first_run[-1].positions, other_seed[-1].positions)
