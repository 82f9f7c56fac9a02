"""Bad structures and bad files are refused with an error naming the file, structure and field."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
from conftest import random_crystal, random_molecule

from mlip.data.errors import MLIPDataError
from mlip.data.reader import StructureReader
from mlip.data.dataset import HDF5Dataset
from mlip.data.schema import MAX_ABS_CHARGE, MAX_MULTIPLICITY, validate_structure
from mlip.data.structure import Structure
from mlip.data.writer import StructureWriter, write_structures

SOURCE = "/data/incoming/batch-3.extxyz"


def assert_names(error: MLIPDataError, file, index, field, structure_id=None) -> None:
    """The message (not just the attributes) says where the problem is."""
    message = str(error)
    assert str(file) in message
    assert f"field {field!r}" in message
    assert error.file == str(file) and error.field == field
    if index is not None:
        assert f"structure {index}" in message and error.index == index
    if structure_id is not None:
        assert repr(structure_id) in message


def molecule(**changes) -> Structure:
    structure = random_molecule(np.random.default_rng(0))
    structure.id = "water-dimer-12"
    for name, value in changes.items():
        setattr(structure, name, value)
    return structure


def crystal(**changes) -> Structure:
    structure = random_crystal(np.random.default_rng(1))
    structure.id = "quartz-3"
    for name, value in changes.items():
        setattr(structure, name, value)
    return structure


BAD_STRUCTURES = {
    "missing positions": (lambda: molecule(positions=None), "positions"),
    "missing numbers": (lambda: molecule(numbers=None), "numbers"),
    "positions wrong shape": (lambda: molecule(positions=np.zeros((5, 2))), "positions"),
    "forces wrong shape": (lambda: molecule(forces=np.zeros((5, 3, 1))), "forces"),
    "stress as Voigt 6-vector": (lambda: crystal(stress=np.zeros(6)), "stress"),
    "cell wrong shape": (lambda: crystal(cell=np.eye(2)), "cell"),
    "NaN position": (lambda: molecule(positions=np.full((5, 3), np.nan)), "positions"),
    "inf force": (lambda: molecule(forces=np.array([[np.inf, 0, 0]] + [[0, 0, 0]] * 4)), "forces"),
    "NaN energy": (lambda: molecule(energy=float("nan")), "energy"),
    "NaN stress": (lambda: crystal(stress=np.full((3, 3), np.nan)), "stress"),
    "NaN magmom": (lambda: crystal(magmom=np.array([np.nan, 0, 0, 0])), "magmom"),
    "Z = 0": (lambda: molecule(numbers=np.array([0, 1, 1, 6, 1])), "numbers"),
    "Z = 119": (lambda: molecule(numbers=np.array([119, 1, 1, 6, 1])), "numbers"),
    "no atoms": (lambda: Structure(numbers=np.zeros(0, int), positions=np.zeros((0, 3)), id="empty"), "numbers"),
    "fewer positions than numbers": (lambda: molecule(positions=np.zeros((4, 3))), "positions"),
    "forces for another structure": (lambda: molecule(forces=np.zeros((6, 3))), "forces"),
    "magmom length mismatch": (lambda: crystal(magmom=np.zeros(5)), "magmom"),
    "partial charges length mismatch": (lambda: molecule(partial_charges=np.zeros(3)), "partial_charges"),
    "pbc without cell": (lambda: molecule(pbc=np.ones(3, bool)), "cell"),
    "pbc with zero cell": (lambda: crystal(cell=np.zeros((3, 3))), "cell"),
    "pbc with singular cell": (lambda: crystal(cell=np.array([[3.0, 0, 0], [0, 3, 0], [3, 3, 0]])), "cell"),
    "slab with zero periodic vector": (
        lambda: crystal(pbc=np.array([True, True, False]), cell=np.diag([3.0, 0.0, 0.0])),
        "cell",
    ),
    "stress on a molecule": (lambda: molecule(stress=np.zeros((3, 3))), "stress"),
    "stress on a slab without volume": (
        lambda: crystal(pbc=np.array([True, True, False]), cell=np.diag([3.0, 4.0, 0.0]), stress=np.eye(3)),
        "stress",
    ),
    "charge beyond the supported range": (lambda: molecule(charge=2_000_000_000), "charge"),
    "charge just beyond the supported range": (lambda: molecule(charge=-(MAX_ABS_CHARGE + 1)), "charge"),
    "multiplicity beyond the supported range": (lambda: molecule(spin=MAX_MULTIPLICITY + 1), "spin"),
    "spin multiplicity 0": (lambda: molecule(spin=0), "spin"),
    "negative spin": (lambda: molecule(spin=-1), "spin"),
    "non-integer spin": (lambda: molecule(spin=1.5), "spin"),
    "non-integer charge": (lambda: molecule(charge=0.5), "charge"),
    "id not a string": (lambda: molecule(id=17), "id"),
}


@pytest.mark.parametrize("case", list(BAD_STRUCTURES))
def test_validate_structure_names_source_index_field_and_id(case):
    make, field = BAD_STRUCTURES[case]
    structure = make()
    with pytest.raises(MLIPDataError) as caught:
        validate_structure(structure, 41, SOURCE)
    structure_id = structure.id if isinstance(structure.id, str) and structure.id else None
    assert_names(caught.value, SOURCE, 41, field, structure_id)


def test_valid_edge_cases_pass_validation():
    validate_structure(molecule(), 0, SOURCE)
    validate_structure(crystal(stress=np.eye(3), magmom=np.zeros(4)), 1, SOURCE)
    # A slab: periodic in-plane only, the third vector may be zero.
    validate_structure(crystal(pbc=np.array([True, True, False]), cell=np.diag([3.0, 4.0, 0.0])), 2, SOURCE)
    # A molecule in a non-periodic box keeps its cell.
    validate_structure(molecule(cell=np.eye(3) * 10.0), 3, SOURCE)
    # A slab in a box with vacuum has a volume, so its stress is defined (ASE's convention).
    validate_structure(crystal(pbc=np.array([True, True, False]), cell=np.diag([3.0, 4.0, 20.0]), stress=np.eye(3)), 4, SOURCE)
    # The supported charge and multiplicity ranges are inclusive.
    validate_structure(molecule(charge=-MAX_ABS_CHARGE, spin=MAX_MULTIPLICITY), 5, SOURCE)


def test_writer_refuses_bad_structure_and_leaves_nothing(tmp_path):
    path = tmp_path / "out.h5"
    with pytest.raises(MLIPDataError) as caught:
        with StructureWriter(path) as writer:
            writer.write(molecule())
            writer.write(crystal())
            writer.write(molecule(forces=np.zeros((5, 2))))
    assert_names(caught.value, path, 2, "forces", "water-dimer-12")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_non_structures(tmp_path):
    with pytest.raises(MLIPDataError, match="expected an mlip Structure"):
        write_structures(tmp_path / "x.h5", [{"numbers": [1]}])
    assert list(tmp_path.iterdir()) == []


def test_error_survives_pickling_with_its_location():
    error = MLIPDataError("contains NaN", "a.h5", index=3, structure_id="x", field="forces")
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == str(error) and clone.index == 3 and clone.field == "forces"
    assert isinstance(error, ValueError)


# ------------------------------------------------------------------------------------- files


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.h5"
    structures = [molecule(energy=-1.0, forces=np.zeros((5, 3))), crystal(energy=-2.0, stress=np.eye(3))]
    structures[1].id = "quartz-3"
    write_structures(path, structures)
    return path


def test_truncated_file_is_reported(good_file):
    data = good_file.read_bytes()
    good_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(MLIPDataError) as caught:
        StructureReader(good_file)
    assert str(good_file) in str(caught.value) and "truncated or corrupt" in str(caught.value)


def test_random_bytes_are_not_an_hdf5_file(tmp_path):
    path = tmp_path / "noise.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MLIPDataError) as caught:
        StructureReader(path)
    assert str(path) in str(caught.value)


def test_corrupt_chunk_is_reported_with_structure_and_field(good_file):
    with h5py.File(good_file) as file:
        chunk = file["atoms/positions"].id.get_chunk_info(0)
    with open(good_file, "r+b") as handle:  # scribble over the compressed positions
        handle.seek(chunk.byte_offset)
        handle.write(b"\xff" * chunk.size)
    reader = StructureReader(good_file)
    with pytest.raises(MLIPDataError) as caught:
        reader.read(1)
    assert_names(caught.value, good_file, 1, "positions")


def test_hdf5_file_of_another_program_is_not_an_mlip_file(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as file:
        file["positions"] = np.zeros((3, 3))
    with pytest.raises(MLIPDataError) as caught:
        StructureReader(path)
    assert_names(caught.value, path, None, "format")
    assert "not an mlip dataset" in str(caught.value)


@pytest.mark.parametrize("version", [2, 0])
def test_unknown_schema_version_is_refused(good_file, version):
    with h5py.File(good_file, "r+") as file:
        file.attrs["schema_version"] = version
    with pytest.raises(MLIPDataError) as caught:
        StructureReader(good_file)
    assert_names(caught.value, good_file, None, "schema_version")
    assert f"unsupported schema_version {version}" in str(caught.value)


def test_missing_dataset_is_reported(good_file):
    with h5py.File(good_file, "r+") as file:
        del file["atoms/positions"]
    with pytest.raises(MLIPDataError) as caught:
        StructureReader(good_file)
    assert_names(caught.value, good_file, None, "positions")


def test_dataset_of_wrong_length_is_reported(good_file):
    with h5py.File(good_file, "r+") as file:
        file["structures/energy"].resize((1,))
    with pytest.raises(MLIPDataError) as caught:
        StructureReader(good_file)
    assert_names(caught.value, good_file, None, "energy")


def test_dataset_of_wrong_dtype_is_reported(good_file):
    with h5py.File(good_file, "r+") as file:
        del file["atoms/positions"]
        file["atoms/positions"] = np.zeros((9, 3), dtype="S4")
    with pytest.raises(MLIPDataError) as caught:
        StructureReader(good_file)
    assert_names(caught.value, good_file, None, "positions")
    assert "dtype" in str(caught.value)


def test_unknown_element_in_a_file_names_the_structure(good_file):
    with h5py.File(good_file, "r+") as file:
        file["atoms/numbers"][6] = 0  # an atom of structure 1
    reader = StructureReader(good_file)
    reader.read(0)
    with pytest.raises(MLIPDataError) as caught:
        reader.read(1)
    assert_names(caught.value, good_file, 1, "numbers", "quartz-3")
    with pytest.raises(MLIPDataError) as caught:
        _ = reader.elements  # the streaming pass over all atoms
    assert_names(caught.value, good_file, 1, "numbers")


def test_inconsistent_offsets_name_the_structure(good_file):
    with h5py.File(good_file, "r+") as file:
        file["structures/offsets"][1] = 0  # structure 0 would have no atoms
    with pytest.raises(MLIPDataError) as caught:
        StructureReader(good_file)
    assert_names(caught.value, good_file, 0, "offsets")


@pytest.mark.parametrize(
    ("path", "index", "field"),
    [("structures/energy", 1, "energy"), ("atoms/forces", 0, "forces"), ("structures/stress", 1, "stress")],
)
def test_nan_where_mask_says_present_is_reported(good_file, path, index, field):
    with h5py.File(good_file, "r+") as file:
        dataset = file[path]
        values = dataset[()]
        values[...] = np.nan
        dataset[...] = values
        file[f"structures/has_{field}"][index] = True
    reader = StructureReader(good_file)
    with pytest.raises(MLIPDataError) as caught:
        reader.read(index)
    structure_id = "water-dimer-12" if index == 0 else "quartz-3"
    assert_names(caught.value, good_file, index, field, structure_id)


def test_label_absent_from_the_whole_file_reads_as_missing(good_file):
    with h5py.File(good_file, "r+") as file:  # e.g. a file from a tool that knows no magmoms
        del file["atoms/magmom"]
        del file["structures/has_magmom"]
    reader = StructureReader(good_file)
    assert reader.read(1).magmom is None and not reader.has_magmom.any()


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        StructureReader(tmp_path / "nope.h5")


@pytest.mark.parametrize(
    ("field", "value"),
    [("charge", 2_000_000_000), ("charge", -(MAX_ABS_CHARGE + 1)), ("spin", 0), ("spin", -3), ("spin", MAX_MULTIPLICITY + 1)],
)
def test_out_of_range_charge_or_spin_in_a_file_is_refused_on_open(good_file, field, value):
    """Training would otherwise produce NaN (or crash mid-epoch) without naming the file."""
    with h5py.File(good_file, "r+") as file:
        file[f"structures/{field}"][1] = value
    with pytest.raises(MLIPDataError) as caught:
        StructureReader(good_file)
    assert_names(caught.value, good_file, 1, field, "quartz-3")
    assert str(value) in str(caught.value)


def test_charge_too_large_for_int32_in_an_int64_dataset_is_not_wrapped(good_file):
    with h5py.File(good_file, "r+") as file:
        charges = file["structures/charge"][()].astype(np.int64)
        charges[0] = 2**32  # would wrap to 0 in the reader's int32 array
        del file["structures/charge"]
        file["structures/charge"] = charges
    with pytest.raises(MLIPDataError) as caught:
        StructureReader(good_file)
    assert_names(caught.value, good_file, 0, "charge", "water-dimer-12")


def test_stress_on_a_zero_volume_cell_in_a_file_is_refused(good_file):
    with h5py.File(good_file, "r+") as file:  # structure 1 becomes a slab without a third vector
        file["structures/cell"][1, 2] = 0.0
        file["structures/pbc"][1] = [True, True, False]
    reader = StructureReader(good_file)
    with pytest.raises(MLIPDataError) as caught:
        reader.read(1)
    assert_names(caught.value, good_file, 1, "stress", "quartz-3")
    assert "volume" in str(caught.value)


def test_non_finite_cell_in_a_file_is_refused(good_file):
    with h5py.File(good_file, "r+") as file:
        file["structures/cell"][1, 0, 0] = np.nan
    with pytest.raises(MLIPDataError) as caught:
        StructureReader(good_file).read(1)
    assert_names(caught.value, good_file, 1, "cell", "quartz-3")


def test_coincident_atoms_in_a_file_are_refused_by_the_dataset(good_file):
    with h5py.File(good_file, "r+") as file:  # atom 1 of the crystal onto atom 0, plus 0.02 Å
        positions = file["atoms/positions"]
        positions[6] = positions[5] + [0.0, 0.02, 0.0]
    reader = StructureReader(good_file)
    reader.read(1)  # the reader alone does not build neighbour lists
    for cutoff in (4.0, None):  # from the graph's edges, or a search of its own without a cutoff
        with pytest.raises(MLIPDataError) as caught:
            HDF5Dataset(good_file, cutoff=cutoff)[1]
        assert_names(caught.value, good_file, 1, "positions", "quartz-3")
        assert "atoms 0 (Si) and 1 (O) are 0.02 Å apart" in str(caught.value)
    assert HDF5Dataset(good_file, cutoff=4.0, min_distance=0.01)[1].num_nodes == 4
    assert HDF5Dataset(good_file, cutoff=4.0, min_distance=None)[1].num_nodes == 4


def test_coincidence_through_a_periodic_image_is_refused_by_the_dataset(tmp_path):
    cell = np.eye(3) * 5.0
    structure = Structure([3, 3], [[0.01, 1.0, 1.0], [4.98, 1.0, 1.0]], cell=cell, pbc=True, id="li-image")
    path = tmp_path / "image.h5"
    write_structures(path, [molecule(), structure])
    with pytest.raises(MLIPDataError) as caught:
        HDF5Dataset(path, cutoff=3.0)[1]
    assert_names(caught.value, path, 1, "positions", "li-image")
    assert "0.03 Å" in str(caught.value) and "image" in str(caught.value)


def test_error_with_an_id_but_no_index_still_names_the_structure():
    error = MLIPDataError("too close", None, structure_id="x-1", field="positions")
    assert "structure (id 'x-1')" in str(error)
