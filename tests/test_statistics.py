"""Dataset statistics: reference energies, neighbour counts, force RMS, counts and the cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from ase.build import bulk

import mlip.data.statistics as statistics_module
from mlip.data.reader import StructureReader
from mlip.data.statistics import DatasetStatistics, compute_statistics
from mlip.data.structure import Structure
from mlip.data.writer import write_structures

REFERENCES = {1: -13.6, 6: -1029.5, 8: -2041.8, 26: -3400.25}  # eV, DFT-like magnitudes


def random_molecule(rng, index: int, energy_noise: float = 0.0, with_forces: bool = True):
    n_atoms = int(rng.integers(2, 9))
    numbers = rng.choice(list(REFERENCES), size=n_atoms)
    positions = rng.uniform(0.0, 4.0, size=(n_atoms, 3))
    energy = sum(REFERENCES[z] for z in numbers) + energy_noise * n_atoms * rng.normal()
    return Structure(
        numbers=numbers,
        positions=positions,
        energy=energy,
        forces=rng.normal(size=(n_atoms, 3)) if with_forces else None,
        charge=int(index % 3 == 0),
        spin=1 + int(index % 2),
        id=f"mol-{index}",
        subset="odd" if index % 2 else "even",
    )


def test_least_squares_recovers_exact_reference_energies():
    rng = np.random.default_rng(0)
    structures = [random_molecule(rng, k) for k in range(60)]
    statistics = compute_statistics(structures, cutoff=3.0)
    assert statistics.elements == sorted(REFERENCES)
    for z, energy in REFERENCES.items():
        assert statistics.atomic_energies[z] == pytest.approx(energy, abs=1e-6)
    assert statistics.energy_residual_per_atom_mean == pytest.approx(0.0, abs=1e-6)
    assert statistics.energy_residual_per_atom_std == pytest.approx(0.0, abs=1e-4)


def test_residual_moments_match_a_direct_computation(monkeypatch):
    monkeypatch.setattr(statistics_module, "_CHUNK_STRUCTURES", 7)  # several partial folds
    rng = np.random.default_rng(1)
    structures = [random_molecule(rng, k, energy_noise=0.05) for k in range(80)]
    statistics = compute_statistics(structures, cutoff=3.0)
    residuals = [
        (s.energy - sum(statistics.atomic_energies[z] for z in s.numbers)) / s.n_atoms
        for s in structures
    ]
    assert statistics.energy_residual_per_atom_mean == pytest.approx(np.mean(residuals), abs=1e-8)
    assert statistics.energy_residual_per_atom_std == pytest.approx(np.std(residuals), rel=1e-6)
    assert statistics.energy_residual_per_atom_std > 0.01  # the noise is seen


def test_collinear_compositions_give_finite_references_that_fit_the_energies():
    # Only water: E = 2 E_H + E_O has infinitely many solutions; the ridge picks a finite one.
    water_energy = 2 * REFERENCES[1] + REFERENCES[8]
    structures = [
        Structure([8, 1, 1], np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]) + k,
                  energy=water_energy)
        for k in range(5)
    ]
    statistics = compute_statistics(structures, cutoff=2.0)
    fitted = 2 * statistics.atomic_energies[1] + statistics.atomic_energies[8]
    assert np.isfinite(list(statistics.atomic_energies.values())).all()
    assert fitted == pytest.approx(water_energy, abs=1e-6)


def test_average_neighbours_match_brute_force_count():
    rng = np.random.default_rng(2)
    crystal = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    structures = [random_molecule(rng, k) for k in range(10)] + [
        Structure(crystal.numbers, crystal.positions, crystal.cell.array, (True,) * 3,
                  energy=-43.3)
    ]
    cutoff = 3.0
    n_edges = 0
    for structure in structures[:-1]:  # molecules: all pairs closer than the cutoff
        distances = np.linalg.norm(
            structure.positions[:, None] - structure.positions[None], axis=-1
        )
        n_edges += int((distances < cutoff).sum() - structure.n_atoms)
    n_edges += 4 * len(crystal)  # diamond at 3 Å: exactly the 4 nearest neighbours (2.35 Å)
    n_atoms = sum(s.n_atoms for s in structures)

    statistics = compute_statistics(structures, cutoff=cutoff)
    assert statistics.avg_num_neighbors == pytest.approx(n_edges / n_atoms)
    assert statistics.n_atoms == n_atoms and statistics.n_structures == len(structures)


def test_force_rms_and_references_skip_missing_labels():
    rng = np.random.default_rng(3)
    with_forces = [random_molecule(rng, k) for k in range(6)]
    without_forces = [random_molecule(rng, k, with_forces=False) for k in range(6, 10)]
    without_energy = Structure([1, 26], [[0, 0, 0], [0, 0, 1.5]], energy=None,
                               forces=np.full((2, 3), 100.0))
    structures = with_forces + without_forces + [without_energy]

    statistics = compute_statistics(structures, cutoff=3.0)
    forces = np.concatenate([s.forces for s in with_forces] + [without_energy.forces])
    assert statistics.force_rms == pytest.approx(np.sqrt(np.mean(forces**2)))
    assert statistics.n_with_forces == 7 and statistics.n_with_energy == 10
    for z, energy in REFERENCES.items():
        assert statistics.atomic_energies[z] == pytest.approx(energy, abs=1e-6)


def test_label_free_dataset_has_no_force_or_energy_statistics():
    structures = [Structure([1, 1], [[0, 0, 0], [0, 0, 0.74]])]
    statistics = compute_statistics(structures, cutoff=2.0)
    assert statistics.force_rms is None
    assert statistics.energy_residual_per_atom_mean is None
    assert statistics.avg_num_neighbors == 1.0


def test_element_without_any_energy_is_reported():
    structures = [
        Structure([1, 1], [[0, 0, 0], [0, 0, 0.74]], energy=-27.2),
        Structure([79], [[0, 0, 0]]),
    ]
    with pytest.warns(UserWarning, match=r"\[79\]"):
        statistics = compute_statistics(structures, cutoff=2.0)
    assert statistics.elements == [1, 79]
    assert statistics.elements_without_energy == [79]
    assert statistics.atomic_energies[79] == 0.0


def test_counts_per_subset_charge_and_spin():
    rng = np.random.default_rng(4)
    structures = [random_molecule(rng, k) for k in range(9)]
    statistics = compute_statistics(structures, cutoff=3.0)
    assert statistics.subset_counts == {"even": 5, "odd": 4}
    assert statistics.charge_counts == {0: 6, 1: 3}
    assert statistics.spin_counts == {1: 5, 2: 4}


def test_cutoff_must_be_positive():
    with pytest.raises(ValueError, match="cutoff"):
        compute_statistics([], cutoff=None)
    with pytest.raises(ValueError, match="cutoff"):
        compute_statistics([], cutoff=0.0)


def test_dict_round_trip_through_json():
    rng = np.random.default_rng(5)
    statistics = compute_statistics([random_molecule(rng, k) for k in range(5)], cutoff=3.0)
    restored = DatasetStatistics.from_dict(json.loads(json.dumps(statistics.to_dict())))
    assert restored == statistics
    with pytest.raises(ValueError, match="unknown"):
        DatasetStatistics.from_dict(statistics.to_dict() | {"bogus": 1})


# ---------------------------------------------------------------------------- cache


class CountingReader(StructureReader):
    """A StructureReader that counts structure reads, to see whether the cache was used."""

    reads = 0

    def get_structure(self, index: int) -> Structure:
        CountingReader.reads += 1
        return self.read(index)


def write_sample(path, seed: int, n: int = 12):
    rng = np.random.default_rng(seed)
    write_structures(path, [random_molecule(rng, k) for k in range(n)], overwrite=True)


def test_cache_hit_returns_identical_statistics_and_file_change_invalidates(tmp_path):
    path = tmp_path / "sample.h5"
    write_sample(path, seed=6)
    CountingReader.reads = 0
    first = compute_statistics(CountingReader(path), cutoff=3.0)
    assert CountingReader.reads == 12
    cache_files = list((tmp_path / ".mlip_cache").glob("statistics-*.json"))
    assert len(cache_files) == 1

    second = compute_statistics(CountingReader(path), cutoff=3.0)
    assert CountingReader.reads == 12  # nothing read: served from the cache
    assert second == first

    other_cutoff = compute_statistics(CountingReader(path), cutoff=2.5)
    assert CountingReader.reads == 24 and other_cutoff.cutoff == 2.5

    write_sample(path, seed=7, n=13)
    changed = compute_statistics(CountingReader(path), cutoff=3.0)
    assert CountingReader.reads == 37
    assert changed.n_structures == 13 and changed != first


def test_cache_falls_back_to_home_cache_when_next_to_data_is_not_writable(tmp_path, monkeypatch):
    path = tmp_path / "sample.h5"
    write_sample(path, seed=8)
    (tmp_path / ".mlip_cache").write_text("a file where the cache directory would go")
    fallback = tmp_path / "home-cache"
    monkeypatch.setattr(statistics_module, "_FALLBACK_CACHE_DIRECTORY", fallback)

    first = compute_statistics(StructureReader(path), cutoff=3.0)
    assert len(list(fallback.glob("statistics-*.json"))) == 1
    CountingReader.reads = 0
    assert compute_statistics(CountingReader(path), cutoff=3.0) == first
    assert CountingReader.reads == 0


def test_cache_write_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "sample.h5"
    write_sample(path, seed=9)
    compute_statistics(StructureReader(path), cutoff=3.0)
    leftovers = [p for p in (tmp_path / ".mlip_cache").iterdir() if p.suffix != ".json"]
    assert leftovers == []


def test_plain_sequences_are_not_cached(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(statistics_module, "_FALLBACK_CACHE_DIRECTORY", tmp_path / "home")
    rng = np.random.default_rng(10)
    compute_statistics([random_molecule(rng, 0)], cutoff=3.0)
    assert not os.listdir(tmp_path)


def test_hdf5_dataset_selections_are_cached_separately(tmp_path):
    from mlip.data.dataset import HDF5Dataset

    path = tmp_path / "sample.h5"
    write_sample(path, seed=11, n=12)
    even = compute_statistics(HDF5Dataset(path, subsets="even"), cutoff=3.0)
    odd = compute_statistics(HDF5Dataset(path, subsets="odd"), cutoff=3.0)
    assert even.subset_counts == {"even": 6} and odd.subset_counts == {"odd": 6}

    full = HDF5Dataset(path)
    first_half, second_half = full.subset(range(6)), full.subset(range(6, 12))
    # Nested views whose parent-relative indices coincide must not share a cache entry.
    nested = full.subset(range(6, 12)).subset(range(6))
    assert compute_statistics(first_half, 3.0).n_structures == 6
    from_nested = compute_statistics(nested, 3.0)
    assert from_nested == compute_statistics(second_half, 3.0)
    assert from_nested != compute_statistics(first_half, 3.0)
    assert len(list((tmp_path / ".mlip_cache").glob("*.json"))) == 4
