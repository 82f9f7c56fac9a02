"""Reference energies as users set them (`model.atomic_energies`: average, isolated, a mapping)
and isolated atoms in the statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mlip import testing
from mlip.data.statistics import compute_statistics
from mlip.data.structure import Structure
from mlip.export import export_model, load
from mlip.models import BACKBONES, build_potential
from mlip.train.build import build_model, read_isolated_atom_energies

ETHANOL_ISOLATED = Path(__file__).resolve().parents[1] / "data/benchmarks/ethanol_pbe/isolated_atoms.xyz"
ISOLATED = {1: -13.568, 6: -1025.277, 8: -2035.571, 14: -7870.0}  # eV


def model_config(name="mace", **options):
    return {"backbone": {"name": name, **testing.SMALL_BACKBONES[name]}, "cutoff": testing.CUTOFF,
            "condition_dim": 4, "readout_hidden": [8], **options}


def statistics(**extra):
    return {"elements": list(testing.ELEMENTS), "atomic_energies": testing.ATOMIC_ENERGIES, "scale": 10.0,
            "shift": -0.2, "avg_num_neighbors": 4.0, **extra}


def lone_atom_energy(potential, z: int, charge=0, spin=1) -> float:
    atom = testing.Geometry(np.array([z]), np.array([[0.3, -0.2, 0.1]]), charge=charge, spin=spin)
    return testing.energy(potential, atom)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_isolated_references_make_a_lone_atom_exactly_its_dft_energy(name):
    torch.manual_seed(0)
    potential = build_potential(model_config(name, atomic_energies="isolated"),
                                statistics(isolated_atom_energies=ISOLATED), dtype=torch.float64)
    assert potential.config["reference_energies"] == "isolated" and potential.config["shift"] == 0.0
    for z, reference in ISOLATED.items():
        for charge, spin in ((0, 1), (1, 2)):
            assert abs(lone_atom_energy(potential, z, charge, spin) - reference) < 1e-6
    # atoms with neighbours still have a learned energy
    molecule = testing.molecule(0)
    assert abs(testing.energy(potential, molecule) - sum(ISOLATED[int(z)] for z in molecule.numbers)) > 1e-3


def test_average_is_the_default_and_a_mapping_takes_symbols_or_atomic_numbers():
    average = build_potential(model_config(), statistics(), dtype=torch.float64)
    assert average.config["reference_energies"] == "average"
    assert average.config["atomic_energies"] == [testing.ATOMIC_ENERGIES[z] for z in testing.ELEMENTS]
    explicit = build_potential(model_config(atomic_energies={"H": -13.6, "C": -1029.5, 8: -2041.3, "14": -7875.0}),
                               statistics(), dtype=torch.float64)
    assert explicit.config["reference_energies"] == "explicit"
    assert explicit.config["atomic_energies"] == [-13.6, -1029.5, -2041.3, -7875.0]
    assert explicit.config["shift"] == -0.2  # from the statistics, unlike `isolated`
    with pytest.raises(ValueError, match="'Xx' is neither a chemical symbol nor an atomic number"):
        build_potential(model_config(atomic_energies={"Xx": 1.0}), statistics(), dtype=torch.float64)
    with pytest.raises(ValueError, match="expected average, isolated, or a mapping"):
        build_potential(model_config(atomic_energies="mean"), statistics(), dtype=torch.float64)
    with pytest.raises(ValueError, match="shift must be 0"):
        build_potential(model_config(atomic_energies="isolated", shift=0.1),
                        statistics(isolated_atom_energies=ISOLATED), dtype=torch.float64)


def test_isolated_atoms_file_is_read_and_a_missing_element_is_named_with_the_file():
    energies = read_isolated_atom_energies(ETHANOL_ISOLATED)
    assert {1, 6, 8} <= set(energies) and 14 not in energies and energies[1] == pytest.approx(-13.568422383046626, abs=1e-12)
    config = OmegaConf.create({"dtype": "float64", "model": model_config(
        atomic_energies="isolated", isolated_atoms=str(ETHANOL_ISOLATED))})
    with pytest.raises(ValueError, match=rf"no isolated-atom energy for Si \(Z=14\) in {ETHANOL_ISOLATED}"):
        build_model(config, compute_statistics([_atom(14, -7.0), _molecule()], testing.CUTOFF, cache=False))
    potential = build_model(config, compute_statistics([_molecule()], testing.CUTOFF, cache=False))
    assert potential.elements == [1, 8]
    for z in (1, 8):
        assert abs(lone_atom_energy(potential, z) - energies[z]) < 1e-6


def test_isolated_atoms_from_the_training_data_and_the_choice_is_exported(tmp_path):
    data = [_atom(1, -13.5), _atom(8, -2035.0), _molecule()]
    stats = compute_statistics(data, testing.CUTOFF, cache=False)
    config = OmegaConf.create({"dtype": "float64", "model": model_config(atomic_energies="isolated")})
    potential = build_model(config, stats)
    assert potential.config["atomic_energies"] == [-13.5, -2035.0]
    export_model(potential, tmp_path / "model.pt")
    loaded = load(tmp_path / "model.pt", dtype=torch.float64)
    assert loaded.config["reference_energies"] == "isolated"
    assert lone_atom_energy(loaded, 8) == pytest.approx(-2035.0, abs=1e-9)
    with pytest.raises(ValueError, match="only used with model.atomic_energies=isolated"):
        build_model(OmegaConf.create({"dtype": "float64", "model": model_config(isolated_atoms=str(ETHANOL_ISOLATED))}),
                    stats)


def test_statistics_record_isolated_atoms_and_can_leave_them_out():
    data = [_atom(1, -13.5), _atom(8, -2035.0), _molecule(), _molecule(seed=1)]
    kept = compute_statistics(data, testing.CUTOFF, cache=False)
    left_out = compute_statistics(data, testing.CUTOFF, cache=False, exclude_isolated_atoms=True)
    only_molecules = compute_statistics(data[2:], testing.CUTOFF, cache=False)
    for result in (kept, left_out):
        assert result.isolated_atom_energies == {1: -13.5, 8: -2035.0} and result.n_isolated_atoms == 2
    assert kept.n_structures == 4 and left_out.n_structures == 2
    assert left_out.atomic_energies == pytest.approx(only_molecules.atomic_energies)
    assert left_out.force_rms == pytest.approx(only_molecules.force_rms)
    # an atom in a small periodic box has neighbours (its images): not isolated
    boxed = Structure(numbers=np.array([1]), positions=np.zeros((1, 3)), cell=2.0 * np.eye(3),
                      pbc=np.array([True] * 3), energy=-1.0)
    assert compute_statistics([boxed], testing.CUTOFF, cache=False).isolated_atom_energies == {}


def _atom(z: int, energy: float) -> Structure:
    return Structure(numbers=np.array([z]), positions=np.zeros((1, 3)), energy=energy, forces=np.zeros((1, 3)))


def _molecule(seed: int = 0) -> Structure:
    rng = np.random.default_rng(seed)
    positions = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]) + 0.02 * rng.normal(size=(3, 3))
    return Structure(numbers=np.array([8, 1, 1]), positions=positions, energy=-2076.0 + rng.normal(),
                     forces=rng.normal(size=(3, 3)))


def test_isolated_atoms_are_references_not_training_structures_of_a_run(tmp_path):
    """With model.atomic_energies=isolated (data.exclude_isolated_atoms: auto), single atoms in the
    data leave the training split, their energies become the references, and the rest is unchanged."""
    from train_helpers import compose_config, tiny_overrides

    from mlip.data.writer import StructureWriter
    from mlip.train.build import build_datamodule

    path = tmp_path / "with_atoms.h5"
    with StructureWriter(path) as writer:
        for structure in [_atom(1, -13.5), _atom(8, -2035.0)] + [_molecule(seed) for seed in range(8)]:
            writer.write(structure)
    common = tiny_overrides([str(path)], tmp_path / "run", **{"data.val_fraction": 0.2, "data.test_fraction": 0.0})

    plain = build_datamodule(compose_config(common))
    plain.setup()
    isolated = build_datamodule(compose_config(common + ["model.atomic_energies=isolated"]))
    isolated.setup()
    assert not plain.exclude_isolated_atoms and isolated.exclude_isolated_atoms
    atoms_in_plain_train = int((plain.train_set.n_atoms == 1).sum())
    assert atoms_in_plain_train > 0  # the split (seed 0) keeps at least one atom in training
    assert len(isolated.train_set) == len(plain.train_set) - atoms_in_plain_train
    assert int((isolated.train_set.n_atoms == 1).sum()) == 0
    assert len(isolated.isolated_atoms) == atoms_in_plain_train
    statistics = isolated.statistics()
    expected = {z: e for z, e in ((1, -13.5), (8, -2035.0)) if z in statistics.isolated_atom_energies}
    assert statistics.isolated_atom_energies == expected and len(expected) == atoms_in_plain_train
    assert statistics.n_structures == len(isolated.train_set)
