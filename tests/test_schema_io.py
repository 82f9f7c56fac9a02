"""HDF5 schema v1: write -> read round trips, file layout, attributes and atomic writes."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
from conftest import random_crystal, random_molecule

from mlip.data.reader import StructureReader
from mlip.data.schema import FIELDS, FORMAT_NAME, SCHEMA_VERSION
from mlip.data.structure import Structure
from mlip.data.writer import StructureWriter, write_structures


def labelled_molecule(rng) -> Structure:
    """A charged doublet with energy, forces and partial charges."""
    molecule = random_molecule(rng, numbers=(8, 1, 1, 6, 1))
    molecule.energy = -1234.5678
    molecule.forces = rng.normal(size=(5, 3))
    molecule.partial_charges = rng.normal(size=5)
    molecule.charge = -1
    molecule.spin = 2
    molecule.id = "anion-radical-7"
    molecule.subset = "radical"
    return molecule


def labelled_crystal(rng) -> Structure:
    """A triclinic periodic crystal with energy, forces, a full stress tensor and magmoms."""
    crystal = random_crystal(rng, numbers=(26, 26, 8, 8))
    crystal.energy = -45.25
    crystal.forces = rng.normal(size=(4, 3))
    stress = rng.normal(size=(3, 3)) * 1e-2
    crystal.stress = 0.5 * (stress + stress.T)
    crystal.magmom = np.array([2.2, -2.1, 0.05, 0.0])
    crystal.id = "Fe2O2-triclinic"
    crystal.subset = "crystal"
    return crystal


def assert_same_structure(read: Structure, written: Structure) -> None:
    np.testing.assert_array_equal(read.numbers, written.numbers)
    np.testing.assert_array_equal(read.positions, written.positions)  # float64: bit-exact
    np.testing.assert_array_equal(read.pbc, written.pbc)
    for name in ("cell", "forces", "stress", "magmom", "partial_charges"):
        written_value, read_value = getattr(written, name), getattr(read, name)
        if written_value is None:
            assert read_value is None, name
        else:
            np.testing.assert_array_equal(read_value, written_value, err_msg=name)
    assert read.energy == written.energy
    assert (read.charge, read.spin, read.id, read.subset) == (written.charge, written.spin, written.id, written.subset)


def test_round_trip_molecule_and_crystal_is_exact(tmp_path, rng):
    structures = [labelled_molecule(rng), labelled_crystal(rng)]
    path = tmp_path / "mixed.h5"
    assert write_structures(path, structures, level_of_theory="r2SCAN", source="unit test") == 2

    reader = StructureReader(path)
    assert len(reader) == 2
    for index, written in enumerate(structures):
        assert_same_structure(reader.read(index), written)
    assert_same_structure(reader.read(-1), structures[-1])
    molecule = reader.read(0)
    assert molecule.cell is None and not molecule.is_periodic
    assert molecule.charge == -1 and molecule.spin == 2


def test_missing_labels_come_back_as_none_with_false_masks_and_nan_on_disk(tmp_path, rng):
    bare = random_molecule(rng)  # no labels at all
    only_energy = random_molecule(rng)
    only_energy.energy = -3.0
    path = tmp_path / "partial.h5"
    write_structures(path, [bare, only_energy])

    reader = StructureReader(path)
    first, second = reader.read(0), reader.read(1)
    for name in ("energy", "forces", "stress", "magmom", "partial_charges"):
        assert getattr(first, name) is None, name
    assert second.energy == -3.0 and second.forces is None
    np.testing.assert_array_equal(reader.has_energy, [False, True])
    np.testing.assert_array_equal(reader.has_forces, [False, False])
    with h5py.File(path) as file:  # never zero-filled
        assert np.isnan(file["structures/energy"][0])
        assert np.isnan(file["atoms/forces"][()]).all()
        assert np.isnan(file["structures/stress"][()]).all()


def test_file_layout_is_flat_chunked_compressed_and_versioned(tmp_path, rng):
    structures = [labelled_molecule(rng) for _ in range(7)] + [labelled_crystal(rng) for _ in range(5)]
    path = tmp_path / "layout.h5"
    write_structures(path, structures, level_of_theory="PBE", energy_reference="isolated atoms", chunk_structures=4, chunk_atoms=16)

    n_atoms = sum(s.n_atoms for s in structures)
    with h5py.File(path) as file:
        assert set(file.keys()) == {"atoms", "structures"}  # no group per structure
        assert file.attrs["format"] == FORMAT_NAME
        assert file.attrs["schema_version"] == SCHEMA_VERSION == 1
        assert file.attrs["n_structures"] == 12 and file.attrs["n_atoms"] == n_atoms
        assert file.attrs["level_of_theory"] == "PBE"
        assert file.attrs["energy_reference"] == "isolated atoms"
        assert file.attrs["created_with"].startswith("mlip ")
        assert json.loads(file.attrs["units"])["energy"] == "eV"
        for field in FIELDS:
            dataset = file[field.path]
            rows = n_atoms if field.per_atom else 12
            assert dataset.shape == (rows, *field.shape_tail), field.name
            assert dataset.chunks is not None and dataset.compression == "gzip", field.name
            if field.optional:
                assert file[field.mask_path].shape == (12,)
        offsets = file["structures/offsets"][()]
        np.testing.assert_array_equal(np.diff(offsets), [s.n_atoms for s in structures])
        assert file["atoms/numbers"].dtype == np.int16
        assert file["structures/charge"].dtype == np.int32


def test_reader_metadata_without_reading_atoms(tmp_path, rng):
    structures = [labelled_molecule(rng), labelled_crystal(rng), random_molecule(rng, numbers=(1, 1))]
    structures[2].subset = "radical"
    path = tmp_path / "meta.h5"
    write_structures(path, structures)

    reader = StructureReader(path)
    np.testing.assert_array_equal(reader.n_atoms, [5, 4, 2])
    np.testing.assert_array_equal(reader.charge, [-1, 0, 0])
    np.testing.assert_array_equal(reader.spin, [2, 1, 1])
    np.testing.assert_array_equal(reader.has_stress, [False, True, False])
    np.testing.assert_array_equal(reader.has_magmom, [False, True, False])
    assert reader.subset_names == ("crystal", "radical")
    np.testing.assert_array_equal(reader.subset_codes, [1, 0, 1])
    assert [reader.read(k).subset for k in range(3)] == ["radical", "crystal", "radical"]  # from the codes
    np.testing.assert_array_equal(reader.elements, [1, 6, 8, 26])
    assert reader.attrs["n_structures"] == 3 and reader.attrs["units"]["length"] == "Angstrom"


def test_read_many_matches_single_reads_in_requested_order(tmp_path, rng):
    structures = [random_molecule(rng, numbers=(6,) + (1,) * (k % 4)) for k in range(20)]
    for k, structure in enumerate(structures):
        structure.id = f"m{k}"
    path = tmp_path / "many.h5"
    write_structures(path, structures, chunk_structures=3, chunk_atoms=5, buffer_structures=4)

    reader = StructureReader(path)
    order = [7, 3, 4, 5, 19, 0, 4, -1]
    assert [s.id for s in reader.read_many(order)] == [f"m{k % 20}" for k in order]
    for index in (0, 9, 19):
        assert_same_structure(reader.read(index), structures[index])
    assert [s.id for s in reader] == [s.id for s in structures]
    with pytest.raises(IndexError):
        reader.read(20)


def test_writer_streams_with_a_bounded_buffer(tmp_path, rng):
    path = tmp_path / "stream.h5"
    with StructureWriter(path, chunk_structures=4, buffer_structures=8) as writer:
        for _ in range(30):
            writer.write(random_molecule(rng, numbers=(1, 1)))
            assert len(writer._buffer) < 8  # flushed to disk whenever the buffer fills
    assert len(StructureReader(path)) == 30


def test_failed_write_leaves_no_file_and_no_temporary(tmp_path, rng):
    path = tmp_path / "aborted.h5"
    with pytest.raises(RuntimeError, match="converter crashed"):
        with StructureWriter(path, chunk_structures=2, buffer_structures=2) as writer:
            for _ in range(5):  # some chunks already flushed to the temporary file
                writer.write(random_molecule(rng))
            raise RuntimeError("converter crashed")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_not_clobbered_unless_overwrite(tmp_path, rng):
    path = tmp_path / "kept.h5"
    write_structures(path, [labelled_molecule(rng)])
    with pytest.raises(FileExistsError):
        write_structures(path, [labelled_crystal(rng), labelled_crystal(rng)])
    assert len(StructureReader(path)) == 1

    # A failing overwrite keeps the old file intact too.
    with pytest.raises(RuntimeError):
        with StructureWriter(path, overwrite=True) as writer:
            writer.write(labelled_crystal(rng))
            raise RuntimeError("interrupted")
    assert len(StructureReader(path)) == 1

    write_structures(path, [labelled_crystal(rng), labelled_crystal(rng)], overwrite=True)
    assert len(StructureReader(path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.h5"]


def test_lzf_and_uncompressed_files_read_back_identically(tmp_path, rng):
    crystal = labelled_crystal(rng)
    for compression in ("lzf", None):
        path = tmp_path / f"{compression}.h5"
        write_structures(path, [crystal], compression=compression)
        assert_same_structure(StructureReader(path).read(0), crystal)
        with h5py.File(path) as file:
            assert file["atoms/positions"].compression == compression


def test_reader_pickles_without_its_handle_and_reopens(tmp_path, rng):
    path = tmp_path / "pickled.h5"
    write_structures(path, [labelled_molecule(rng), labelled_crystal(rng)])
    reader = StructureReader(path)
    reader.read(0)  # opens a handle
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handle is None
    assert_same_structure(clone.read(1), reader.read(1))


def test_empty_file_is_valid(tmp_path):
    path = tmp_path / "empty.h5"
    assert write_structures(path, []) == 0
    reader = StructureReader(path)
    assert len(reader) == 0 and reader.elements.size == 0


def test_streaming_passes_agree_with_structures_across_slices(tmp_path, rng, monkeypatch):
    """Element sets and subset codes are computed slice by slice; slices cut structures apart."""
    import mlip.data.reader as reader_module

    element_choices = [(1, 8), (6, 1, 1, 1), (26,), (14, 8, 8), (79, 3)]
    structures = []
    for k in range(40):
        numbers = element_choices[k % len(element_choices)]
        structure = random_molecule(rng, numbers=numbers, spread=3.0)
        structure.subset = ["zeta", "alpha", "mid"][k % 3]
        structures.append(structure)
    path = tmp_path / "stream.h5"
    write_structures(path, structures)
    monkeypatch.setattr(reader_module, "_STREAM_ROWS", 7)  # slices of 7 atoms / 7 structures

    reader = StructureReader(path)
    assert reader.subset_names == ("alpha", "mid", "zeta")
    assert [reader.subset_names[code] for code in reader.subset_codes] == [s.subset for s in structures]
    for index, structure in enumerate(structures):
        np.testing.assert_array_equal(
            reader_module.bitmask_to_numbers(reader.element_masks[index]), np.unique(structure.numbers)
        )
    np.testing.assert_array_equal(reader.elements, [1, 3, 6, 8, 14, 26, 79])
