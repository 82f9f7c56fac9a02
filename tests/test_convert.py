"""Converters into mlip's HDF5: every format is written here from scratch, converted with
`mlip-convert` and read back with `StructureReader`; bad input must fail loudly, name the file,
the structure and the field, and leave no output behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import GPa

import ase.db
import ase.io
from mlip.cli.convert import main
from mlip.data.convert import (
    convert,
    convert_with_summary,
    detect_format,
    read_aselmdb,
    read_mace_hdf5,
    read_mptrj,
    read_structures,
    write_aselmdb,
    write_mace_hdf5,
)
from mlip.data.errors import MLIPDataError
from mlip.data.formats.mptrj import _iter_json_object_items
from mlip.data.reader import StructureReader
from mlip.data.structure import Structure

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures


def random_crystal(rng, n_atoms=4, numbers=None) -> Atoms:
    cell = np.diag(rng.uniform(3.0, 4.0, 3)) + rng.uniform(-0.2, 0.2, (3, 3))
    fractional = rng.uniform(0.0, 1.0, (n_atoms, 3))
    numbers = rng.choice([3, 8, 26], n_atoms) if numbers is None else numbers
    return Atoms(numbers=numbers, scaled_positions=fractional, cell=cell, pbc=True)


def random_molecule(rng, n_atoms=3) -> Atoms:
    return Atoms(numbers=rng.choice([1, 6, 8], n_atoms), positions=rng.normal(0, 1.5, (n_atoms, 3)))


def symmetric(rng) -> np.ndarray:
    matrix = rng.normal(0, 0.01, (3, 3))
    return matrix + matrix.T


def labelled_frames(rng):
    """Three frames with REF_* labels: a charged doublet crystal (Voigt stress), a crystal
    without energy (9-value stress), and a neutral molecule with no stress."""
    crystal = random_crystal(rng)
    crystal.info.update(REF_energy=-12.5, charge=-1, spin=2, config_type="bulk")
    crystal.info["REF_stress"] = full_3x3_to_voigt_6_stress(symmetric(rng))
    crystal.arrays["REF_forces"] = rng.normal(0, 0.5, (4, 3))

    unlabelled = random_crystal(rng, n_atoms=5)
    unlabelled.info["REF_stress"] = symmetric(rng).reshape(9)
    unlabelled.arrays["REF_forces"] = rng.normal(0, 0.5, (5, 3))

    molecule = random_molecule(rng)
    molecule.info.update(REF_energy=-3.25, charge=0, spin=1)
    molecule.arrays["REF_forces"] = rng.normal(0, 0.5, (3, 3))
    return [crystal, unlabelled, molecule]


def voigt_to_full(voigt) -> np.ndarray:
    xx, yy, zz, yz, xz, xy = voigt
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def read_back(path) -> list[Structure]:
    with StructureReader(path) as reader:
        return [reader.read(i) for i in range(len(reader))]


def assert_no_output(directory: Path, output_name: str) -> None:
    leftovers = [p.name for p in directory.iterdir() if output_name in p.name]
    assert leftovers == [], f"conversion left files behind: {leftovers}"


REF_KEYS = ["--energy-key", "REF_energy", "--forces-key", "REF_forces", "--stress-key", "REF_stress"]


# ----------------------------------------------------------------------------- extxyz / ASE


def test_extxyz_round_trip_with_ref_keys_charge_spin_and_missing_labels(tmp_path):
    rng = np.random.default_rng(0)
    frames = labelled_frames(rng)
    source = tmp_path / "train.extxyz"
    ase.io.write(source, frames, format="extxyz")
    output = tmp_path / "train.h5"

    assert main([str(source), "-o", str(output), *REF_KEYS, "--level-of-theory", "PBE", "-q"]) == 0
    crystal, unlabelled, molecule = read_back(output)

    np.testing.assert_array_equal(crystal.numbers, frames[0].numbers)
    np.testing.assert_allclose(crystal.positions, frames[0].positions)
    np.testing.assert_allclose(crystal.cell, frames[0].cell.array)
    assert crystal.pbc.all()
    assert crystal.energy == pytest.approx(-12.5)
    np.testing.assert_allclose(crystal.forces, frames[0].arrays["REF_forces"])
    np.testing.assert_allclose(crystal.stress, voigt_to_full(frames[0].info["REF_stress"]))
    assert (crystal.charge, crystal.spin, crystal.subset) == (-1, 2, "bulk")

    assert unlabelled.energy is None  # missing stays missing, not 0
    np.testing.assert_allclose(unlabelled.stress, frames[1].info["REF_stress"].reshape(3, 3))
    assert (unlabelled.charge, unlabelled.spin) == (0, 1)

    assert not molecule.pbc.any() and molecule.stress is None
    assert molecule.energy == pytest.approx(-3.25)
    np.testing.assert_allclose(molecule.forces, frames[2].arrays["REF_forces"])
    with h5py.File(output) as file:
        assert file.attrs["level_of_theory"] == "PBE"


def test_labels_come_from_an_attached_calculator_with_default_keys(tmp_path):
    rng = np.random.default_rng(1)
    atoms = random_crystal(rng)
    stress = symmetric(rng)
    forces = rng.normal(0, 1, (4, 3))
    magmoms = rng.normal(0, 1, 4)
    atoms.calc = SinglePointCalculator(
        atoms, energy=-7.0, forces=forces, stress=full_3x3_to_voigt_6_stress(stress), magmoms=magmoms
    )
    source = tmp_path / "calc.xyz"
    ase.io.write(source, atoms, format="extxyz")

    (structure,) = list(read_structures(source))
    assert structure.energy == pytest.approx(-7.0)
    np.testing.assert_allclose(structure.forces, forces, atol=1e-8)
    np.testing.assert_allclose(structure.stress, stress, atol=1e-8)
    np.testing.assert_allclose(structure.magmom, magmoms, atol=1e-8)
    assert structure.partial_charges is None


def test_an_ase_trajectory_goes_through_the_generic_ase_reader(tmp_path):
    rng = np.random.default_rng(2)
    frames = [random_crystal(rng) for _ in range(3)]
    for index, atoms in enumerate(frames):
        atoms.calc = SinglePointCalculator(atoms, energy=-float(index), forces=np.full((4, 3), index))
    source = tmp_path / "md.traj"
    ase.io.write(source, frames)

    assert detect_format(source) == "ase"
    structures = list(read_structures(source, subset="md"))
    assert [s.energy for s in structures] == [0.0, -1.0, -2.0]
    assert all(s.subset == "md" and s.stress is None for s in structures)


# ----------------------------------------------------------------------------- ASE database


def test_ase_db_round_trip_reads_labels_from_data_and_key_value_pairs(tmp_path):
    rng = np.random.default_rng(3)
    source = tmp_path / "set.db"
    with ase.db.connect(source) as database:
        first = random_crystal(rng)
        first_stress = symmetric(rng)
        first.calc = SinglePointCalculator(first, energy=1.0, stress=full_3x3_to_voigt_6_stress(first_stress))
        first_forces = rng.normal(0, 1, (4, 3))
        database.write(
            first, key_value_pairs={"multiplicity": 3},
            data={"REF_energy": -5.5, "REF_forces": first_forces, "charge": 2},
        )
        second = random_molecule(rng)
        database.write(second, key_value_pairs={"subset": "gas"})

    output = tmp_path / "set.h5"
    assert main([str(source), "-o", str(output), "--energy-key", "REF_energy",
                 "--forces-key", "REF_forces", "--spin-key", "multiplicity", "-q"]) == 0
    crystal, molecule = read_back(output)
    assert crystal.energy == pytest.approx(-5.5)
    np.testing.assert_allclose(crystal.forces, first_forces)
    np.testing.assert_allclose(crystal.stress, first_stress, atol=1e-12)  # from the calculator columns
    assert (crystal.charge, crystal.spin) == (2, 3)
    assert crystal.id == "set.db:1"
    assert molecule.energy is None and molecule.forces is None
    assert molecule.subset == "gas"
    np.testing.assert_allclose(molecule.positions, second.positions)


# ----------------------------------------------------------------------------- ASE-LMDB (OMol25)


def omol_like_molecules(rng, count):
    molecules = []
    for index in range(count):
        atoms = random_molecule(rng, n_atoms=2 + index % 3)
        atoms.calc = SinglePointCalculator(
            atoms, energy=-100.0 - index, forces=rng.normal(0, 1, (len(atoms), 3))
        )
        atoms.info.update(charge=index % 3 - 1, spin=1 + index % 2, source=f"mol{index}")
        molecules.append(atoms)
    return molecules


@pytest.mark.parametrize("info_as", ["data", "key_value_pairs"])
def test_aselmdb_round_trip_in_row_id_order(tmp_path, info_as):
    rng = np.random.default_rng(4)
    molecules = omol_like_molecules(rng, 12)  # ids 1..12: "10" sorts before "2" as bytes
    source = tmp_path / "shard0.aselmdb"
    assert write_aselmdb(source, molecules, info_as=info_as) == 12

    output = tmp_path / "omol.h5"
    assert main([str(source), "-o", str(output), "-q"]) == 0
    structures = read_back(output)
    assert [s.id for s in structures] == [f"shard0.aselmdb:{i}" for i in range(1, 13)]
    for structure, atoms in zip(structures, molecules, strict=True):
        np.testing.assert_array_equal(structure.numbers, atoms.numbers)
        np.testing.assert_allclose(structure.positions, atoms.positions)
        assert structure.energy == pytest.approx(atoms.get_potential_energy())
        np.testing.assert_allclose(structure.forces, atoms.get_forces())
        assert (structure.charge, structure.spin) == (atoms.info["charge"], atoms.info["spin"])
        assert structure.cell is None and structure.stress is None


def test_aselmdb_reads_plain_list_rows_and_skips_bookkeeping_keys(tmp_path):
    """Older fairchem writers stored rows with orjson: arrays as plain lists, no __ndarray__."""
    source = tmp_path / "old.aselmdb"
    environment = lmdb.open(str(source), subdir=False, map_size=1 << 24, lock=False)
    row = {
        "numbers": [8, 1, 1],
        "positions": [[0.0, 0.0, 0.0], [0.0, 0.76, 0.59], [0.0, -0.76, 0.59]],
        "cell": [[0.0] * 3] * 3,
        "pbc": [False, False, False],
        "energy": -76.4,
        "forces": [[0.0, 0.0, 0.1], [0.0, 0.1, -0.05], [0.0, -0.1, -0.05]],
        "data": {"charge": 0, "spin": 1},
    }
    with environment.begin(write=True) as transaction:
        transaction.put(b"1", zlib.compress(json.dumps(row).encode()))
        transaction.put(b"nextid", zlib.compress(b"2"))
        transaction.put(b"metadata", zlib.compress(b'{"note": "test"}'))
        transaction.put(b"deleted_ids", zlib.compress(b"[]"))
    environment.close()

    (water,) = list(read_aselmdb(source))
    assert water.energy == pytest.approx(-76.4)
    np.testing.assert_array_equal(water.numbers, [8, 1, 1])
    np.testing.assert_allclose(water.forces[1], [0.0, 0.1, -0.05])


# ----------------------------------------------------------------------------- MPtrj


def pymatgen_structure_dict(atoms: Atoms, cartesian: bool = True) -> dict:
    sites = []
    symbols, fractional = atoms.get_chemical_symbols(), atoms.get_scaled_positions()
    for symbol, xyz, abc in zip(symbols, atoms.positions, fractional, strict=True):
        site = {"species": [{"element": symbol, "occu": 1}], "abc": abc.tolist(), "label": symbol,
                "properties": {}}
        if cartesian:
            site["xyz"] = xyz.tolist()
        sites.append(site)
    return {"@module": "pymatgen.core.structure", "@class": "Structure", "charge": 0,
            "lattice": {"matrix": atoms.cell.array.tolist(), "pbc": [True, True, True]}, "sites": sites}


def mptrj_frame(rng, atoms: Atoms, cartesian: bool = True) -> dict:
    n_atoms = len(atoms)
    return {
        "structure": pymatgen_structure_dict(atoms, cartesian),
        "uncorrected_total_energy": -20.0,
        "corrected_total_energy": -21.0,
        "energy_per_atom": -5.25,
        "ef_per_atom": -1.0,
        "force": rng.normal(0, 1, (n_atoms, 3)).tolist(),
        "stress": (symmetric(rng) * 1000).tolist(),  # kBar, VASP sign
        "magmom": rng.uniform(0, 3, n_atoms).tolist(),
        "bandgap": 0.0,
        "mp_id": "mp-1",
    }


def write_mptrj(rng, path: Path) -> tuple[list[Atoms], dict]:
    crystals = [random_crystal(rng, numbers=[3, 3, 8, 26]) for _ in range(3)]
    content = {
        "mp-1": {"mp-1-0-0": mptrj_frame(rng, crystals[0]), "mp-1-0-1": mptrj_frame(rng, crystals[1], cartesian=False)},
        "mp-22": {"mp-22-3-7": mptrj_frame(rng, crystals[2])},
    }
    content["mp-22"]["mp-22-3-7"]["magmom"] = None
    path.write_text(json.dumps(content, indent=1))
    return crystals, content


@pytest.mark.parametrize(("choice", "expected"), [("uncorrected", -20.0), ("corrected", -21.0), ("per_atom", -21.0)])
def test_mptrj_round_trip_converts_kbar_stress_to_ase_sign_and_picks_energy(tmp_path, choice, expected):
    rng = np.random.default_rng(5)
    source = tmp_path / "MPtrj.json"
    crystals, content = write_mptrj(rng, source)
    output = tmp_path / "mptrj.h5"

    assert main([str(source), "-o", str(output), "--mptrj-energy", choice, "--subset", "mptrj", "-q"]) == 0
    structures = read_back(output)
    frames = [content["mp-1"]["mp-1-0-0"], content["mp-1"]["mp-1-0-1"], content["mp-22"]["mp-22-3-7"]]
    assert [s.id for s in structures] == ["mp-1/mp-1-0-0", "mp-1/mp-1-0-1", "mp-22/mp-22-3-7"]
    for structure, atoms, frame in zip(structures, crystals, frames, strict=True):
        np.testing.assert_array_equal(structure.numbers, [3, 3, 8, 26])
        np.testing.assert_allclose(structure.positions, atoms.positions, atol=1e-10)  # xyz or abc @ cell
        np.testing.assert_allclose(structure.cell, atoms.cell.array)
        assert structure.pbc.all() and structure.subset == "mptrj"
        assert structure.energy == pytest.approx(expected)
        np.testing.assert_allclose(structure.forces, frame["force"])
        # 1 kBar = 0.1 GPa; VASP's positive (compressive) stress is negative in ASE's convention.
        np.testing.assert_allclose(structure.stress, -0.1 * GPa * np.array(frame["stress"]))
    np.testing.assert_allclose(structures[0].magmom, frames[0]["magmom"])
    assert structures[2].magmom is None


def test_mptrj_stress_sign_is_tensile_positive():
    """A cell under VASP pressure +10 kBar (compressed) has ASE stress -1 GPa on the diagonal."""
    frame = {
        "structure": pymatgen_structure_dict(Atoms("Si", positions=[[0, 0, 0]], cell=np.eye(3) * 2.5, pbc=True)),
        "uncorrected_total_energy": -5.0,
        "force": [[0.0, 0.0, 0.0]],
        "stress": (np.eye(3) * 10.0).tolist(),
    }
    from mlip.data.formats.mptrj import _structure_from_mptrj_frame

    structure = _structure_from_mptrj_frame(frame, "uncorrected", "mp-149/0", "")
    np.testing.assert_allclose(np.diag(structure.stress) / GPa, [-1.0, -1.0, -1.0])


def test_json_streaming_survives_tiny_chunks(tmp_path):
    content = {"a": {"x": [1, 2.5, {"y": "}"}]}, "b\\\"": {}, "c": [True, None, -1e-3]}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(content, indent=2))
    assert dict(_iter_json_object_items(path, chunk_chars=3)) == content


# ----------------------------------------------------------------------------- MACE HDF5


def test_mace_hdf5_round_trip_through_our_writer(tmp_path):
    rng = np.random.default_rng(6)
    originals = [
        Structure(numbers=[8, 1, 1], positions=rng.normal(0, 1, (3, 3)), energy=-10.0,
                  forces=rng.normal(0, 1, (3, 3)), partial_charges=[-0.8, 0.4, 0.4], charge=-1, spin=2,
                  subset="water"),
        Structure(numbers=[26, 26], positions=rng.normal(0, 1, (2, 3)), cell=np.eye(3) * 2.9, pbc=True,
                  stress=symmetric(rng), magmom=[2.2, 2.1]),
    ]
    source = tmp_path / "mace.h5"
    assert write_mace_hdf5(source, originals, batch_size=1) == 2
    with h5py.File(source) as file:
        assert sorted(file) == ["config_batch_0", "config_batch_1"]
        assert sorted(file["config_batch_0/config_0/properties"]) == [
            "charges", "energy", "forces", "magmom", "stress", "total_charge", "total_spin"]

    output = tmp_path / "out.h5"
    assert main([str(source), "-o", str(output), "-q"]) == 0
    water, iron = read_back(output)
    np.testing.assert_allclose(water.forces, originals[0].forces)
    np.testing.assert_allclose(water.partial_charges, [-0.8, 0.4, 0.4])
    assert (water.energy, water.charge, water.spin, water.subset) == (-10.0, -1, 2, "water")
    assert water.stress is None
    assert iron.energy is None and iron.forces is None  # "None" placeholders stay missing
    np.testing.assert_allclose(iron.stress, originals[1].stress)
    np.testing.assert_allclose(iron.magmom, [2.2, 2.1])
    assert iron.subset == ""


def test_older_mace_layout_with_virials_only(tmp_path):
    """Labels directly in the config group (older MACE); stress = -virials / volume."""
    cell = np.diag([2.0, 3.0, 4.0])
    virials = np.array([[2.4, 0.0, 0.0], [0.0, -1.2, 0.0], [0.0, 0.0, 0.0]])
    source = tmp_path / "old.h5"
    with h5py.File(source, "w") as file:
        group = file.create_group("config_batch_0/config_0")
        group["atomic_numbers"] = np.array([14])
        group["positions"] = np.zeros((1, 3))
        group["cell"] = cell
        group["pbc"] = np.array([True, True, True])
        group["energy"] = -5.4
        group["forces"] = np.zeros((1, 3))
        group["stress"] = "None"
        group["virials"] = virials
        group["charges"] = "None"
        group["config_type"] = "Default"
        group["weight"] = 1.0
        group["energy_weight"] = 1.0
        group["forces_weight"] = 0.0  # zero-filled forces: MACE's way of saying "absent"
    (silicon,) = list(read_mace_hdf5(source))
    assert silicon.energy == pytest.approx(-5.4)
    np.testing.assert_allclose(silicon.stress, -virials / 24.0)
    assert silicon.forces is None
    assert silicon.partial_charges is None and silicon.subset == ""


# ----------------------------------------------------------------------------- several inputs


def test_several_formats_into_one_file_and_python_api(tmp_path):
    rng = np.random.default_rng(7)
    xyz = tmp_path / "a.xyz"
    ase.io.write(xyz, labelled_frames(rng), format="extxyz")
    lmdb_path = tmp_path / "b.aselmdb"
    molecules = omol_like_molecules(rng, 2)
    for molecule in molecules:  # the same key options apply to every input
        molecule.info["REF_energy"] = molecule.get_potential_energy()
    write_aselmdb(lmdb_path, molecules)
    output = tmp_path / "all.h5"
    count = convert([xyz, lmdb_path], output, energy_key="REF_energy", energy_reference="none")
    assert count == 5
    structures = read_back(output)
    assert [s.energy for s in structures] == [-12.5, None, -3.25, -100.0, -101.0]
    with h5py.File(output) as file:
        assert file.attrs["source"] == "a.xyz, b.aselmdb"


# ----------------------------------------------------------------------------- bad input


def expect_failure(tmp_path, capsys, arguments, *fragments):
    """Run the CLI on bad input: exit status 1, one message naming all fragments, no output."""
    output = tmp_path / "out.h5"
    assert main([*map(str, arguments), "-o", str(output)]) == 1
    message = capsys.readouterr().err
    assert "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"
    assert_no_output(tmp_path, "out.h5")
    return message


def test_mptrj_missing_position_is_reported_with_file_index_and_field(tmp_path, capsys):
    rng = np.random.default_rng(8)
    source = tmp_path / "MPtrj.json"
    _, content = write_mptrj(rng, source)
    site = content["mp-22"]["mp-22-3-7"]["structure"]["sites"][2]
    del site["xyz"], site["abc"]
    source.write_text(json.dumps(content))
    expect_failure(tmp_path, capsys, [source], "MPtrj.json", "structure 2", "mp-22/mp-22-3-7",
                   "structure.sites[2].xyz")


def test_force_count_mismatch_is_reported(tmp_path, capsys):
    rng = np.random.default_rng(9)
    source = tmp_path / "MPtrj.json"
    _, content = write_mptrj(rng, source)
    content["mp-1"]["mp-1-0-1"]["force"].pop()
    source.write_text(json.dumps(content))
    message = expect_failure(tmp_path, capsys, [source], "MPtrj.json", "structure 1", "'force'")
    assert "(4, 3)" in message


def test_nan_energy_in_extxyz_is_rejected_not_masked(tmp_path, capsys):
    rng = np.random.default_rng(10)
    frames = labelled_frames(rng)
    frames[2].info["REF_energy"] = float("nan")
    source = tmp_path / "bad.xyz"
    ase.io.write(source, frames, format="extxyz")
    expect_failure(tmp_path, capsys, [source, *REF_KEYS], "bad.xyz", "structure 2", "REF_energy", "NaN")


def test_corrupt_lmdb_file_is_reported(tmp_path, capsys):
    source = tmp_path / "broken.aselmdb"
    source.write_bytes(b"this is not an lmdb file" * 400)
    expect_failure(tmp_path, capsys, [source], "broken.aselmdb", "LMDB")


def test_corrupt_lmdb_row_is_reported_with_its_index(tmp_path, capsys):
    rng = np.random.default_rng(11)
    source = tmp_path / "shard.aselmdb"
    write_aselmdb(source, omol_like_molecules(rng, 3))
    environment = lmdb.open(str(source), subdir=False, lock=False)
    with environment.begin(write=True) as transaction:
        transaction.put(b"2", b"\x00garbage, not zlib")
    environment.close()
    expect_failure(tmp_path, capsys, [source], "shard.aselmdb", "structure 1", "shard.aselmdb:2", "'row'")


def test_truncated_json_is_reported(tmp_path, capsys):
    rng = np.random.default_rng(12)
    source = tmp_path / "MPtrj.json"
    write_mptrj(rng, source)
    text = source.read_text()
    source.write_text(text[: len(text) // 2])
    expect_failure(tmp_path, capsys, [source], "MPtrj.json", "malformed JSON")


def test_a_failure_in_the_second_input_leaves_no_output(tmp_path, capsys):
    rng = np.random.default_rng(13)
    good = tmp_path / "good.xyz"
    ase.io.write(good, labelled_frames(rng), format="extxyz")
    bad = tmp_path / "bad.json"
    bad.write_text('{"mp-1": {"f": {"structure": {"lattice": {"matrix": [[1,0,0],[0,1,0],[0,0,1]]}}}}}')
    expect_failure(tmp_path, capsys, [good, bad], "bad.json", "structure 0", "structure.sites")


def test_missing_input_and_existing_output(tmp_path, capsys):
    expect_failure(tmp_path, capsys, [tmp_path / "nope.xyz"], "nope.xyz", "no such file")
    existing = tmp_path / "there.h5"
    existing.write_bytes(b"keep me")
    rng = np.random.default_rng(14)
    source = tmp_path / "a.xyz"
    ase.io.write(source, labelled_frames(rng), format="extxyz")
    assert main([str(source), "-o", str(existing)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me"


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="energy_kye"):
        read_structures("whatever.xyz", energy_kye="E")


def test_python_readers_raise_mlip_data_error(tmp_path):
    source = tmp_path / "MPtrj.json"
    source.write_text('{"mp-1": {"f": {"structure": "oops"}}}')
    with pytest.raises(MLIPDataError) as caught:
        list(read_mptrj(source))
    assert (caught.value.index, caught.value.field, caught.value.structure_id) == (0, "structure", "mp-1/f")


# ----------------------------------------------------------------------------- subprocess


def test_cli_in_a_subprocess_converts_and_summarises(tmp_path):
    rng = np.random.default_rng(15)
    source = tmp_path / "train.extxyz"
    ase.io.write(source, labelled_frames(rng), format="extxyz")
    output = tmp_path / "train.h5"
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run(
        [sys.executable, "-m", "mlip.cli.convert", str(source), "-o", str(output), *REF_KEYS],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "structures" in completed.stdout and "atoms" in completed.stdout
    assert len(read_back(output)) == 3


def test_mlip_files_can_be_merged_and_relabelled(tmp_path):
    rng = np.random.default_rng(16)
    source = tmp_path / "a.xyz"
    ase.io.write(source, labelled_frames(rng), format="extxyz")
    first = tmp_path / "first.h5"
    convert(source, first, energy_key="REF_energy", forces_key="REF_forces", stress_key="REF_stress")
    assert detect_format(first) == "mlip"
    merged = tmp_path / "merged.h5"
    assert main([str(first), str(first), "-o", str(merged), "--subset", "again", "-q"]) == 0
    originals, copies = read_back(first), read_back(merged)
    assert len(copies) == 6 and {s.subset for s in copies} == {"again"}
    for original, copy in zip(originals * 2, copies, strict=True):
        np.testing.assert_allclose(copy.positions, original.positions)
        assert copy.energy == original.energy


# ----------------------------------------------------------------------------- geometry checks


def test_coincident_atoms_are_refused_naming_the_pair(tmp_path, capsys):
    rng = np.random.default_rng(17)
    frames = labelled_frames(rng)
    crystal = frames[0]
    crystal.positions[2] = crystal.positions[1] + [0.0, 0.0, 0.03]
    source = tmp_path / "close.xyz"
    ase.io.write(source, frames, format="extxyz")
    symbols = crystal.get_chemical_symbols()
    message = expect_failure(tmp_path, capsys, [source, *REF_KEYS], "close.xyz", "structure 0", "'positions'",
                             f"atoms 1 ({symbols[1]}) and 2 ({symbols[2]}) are 0.03 Å apart", "--min-distance")
    assert "min_distance 0.1 Å" in message
    output = tmp_path / "out.h5"
    assert main([str(source), *REF_KEYS, "-o", str(output), "--min-distance", "0.01", "-q"]) == 0
    assert len(read_back(output)) == 3


def test_coincidence_through_a_periodic_image_is_refused(tmp_path, capsys):
    atoms = Atoms("Cu2", positions=[[0.01, 1.0, 1.0], [3.57, 1.0, 1.0]], cell=np.eye(3) * 3.6, pbc=True)
    source = tmp_path / "image.xyz"
    ase.io.write(source, [random_molecule(np.random.default_rng(0)), atoms], format="extxyz")
    expect_failure(tmp_path, capsys, [source], "image.xyz", "structure 1", "image.xyz:1",
                   "atoms 0 (Cu) and 1 (Cu) are 0.04 Å apart", "image")


def test_stress_on_a_slab_without_volume_is_refused(tmp_path, capsys):
    slab = Atoms("Cu2", positions=[[0, 0, 0], [1.3, 1.3, 1.8]], cell=np.diag([2.6, 2.6, 0.0]), pbc=[True, True, False])
    slab.calc = SinglePointCalculator(slab, energy=-7.0, stress=np.zeros(6))
    source = tmp_path / "slab.xyz"
    ase.io.write(source, [slab], format="extxyz")
    message = expect_failure(tmp_path, capsys, [source], "slab.xyz", "structure 0", "'stress'", "volume")
    assert "slab.xyz:0" in message


def test_virials_of_a_zero_volume_cell_are_refused(tmp_path, capsys):
    source = tmp_path / "old.h5"
    with h5py.File(source, "w") as file:
        group = file.create_group("config_batch_0/config_0")
        group["atomic_numbers"] = np.array([14])
        group["positions"] = np.zeros((1, 3))
        group["cell"] = np.diag([2.0, 3.0, 0.0])
        group["pbc"] = np.array([True, True, False])
        group["virials"] = np.eye(3)
    expect_failure(tmp_path, capsys, [source], "old.h5", "structure 0", "'virials'", "volume")


# ----------------------------------------------------------------------------- label keys that match nothing


@pytest.mark.parametrize("quiet", [False, True])
def test_a_label_key_found_in_no_structure_is_warned_about_even_when_quiet(tmp_path, capsys, quiet):
    rng = np.random.default_rng(18)
    source = tmp_path / "train.xyz"
    ase.io.write(source, labelled_frames(rng), format="extxyz")
    output = tmp_path / "train.h5"
    arguments = [str(source), "-o", str(output), "--energy-key", "REF_enrgy", "--forces-key", "REF_forces",
                 "--spin-key", "multiplicity", *(["-q"] if quiet else [])]
    assert main(arguments) == 0
    captured = capsys.readouterr()
    assert "mlip-convert: warning: --energy-key 'REF_enrgy' was found in no structure" in captured.err
    assert "mlip-convert: warning: --spin-key 'multiplicity' was found in no structure" in captured.err
    assert "--forces-key" not in captured.err  # found: no warning
    assert ("wrote" in captured.out) is not quiet
    assert all(s.energy is None for s in read_back(output))


def test_python_conversion_warns_about_unmatched_keys(tmp_path):
    rng = np.random.default_rng(19)
    source = tmp_path / "train.xyz"
    ase.io.write(source, labelled_frames(rng), format="extxyz")
    with pytest.warns(UserWarning, match=r"--stress-key 'virial' was found in no structure of train.xyz"):
        summary = convert_with_summary(source, tmp_path / "out.h5", stress_key="virial")
    assert summary.n_structures == 3 and summary.n_with_stress == 0
    assert len(summary.warnings) == 1 and "--stress-key 'virial'" in summary.warnings[0]


def test_a_label_key_for_a_format_without_keys_is_warned_about(tmp_path, capsys):
    rng = np.random.default_rng(20)
    source = tmp_path / "MPtrj.json"
    write_mptrj(rng, source)
    assert main([str(source), "-o", str(tmp_path / "out.h5"), "--energy-key", "E", "-q"]) == 0
    assert "--energy-key 'E'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- temporary files


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def with_pid(temporary: Path, pid: int) -> Path:
    """The temporary name that process ``pid`` would have used."""
    return temporary.with_name(temporary.name.replace(f".{os.getpid()}.", f".{pid}."))


def test_temporaries_of_killed_conversions_are_swept(tmp_path):
    from mlip.data.writer import temporary_path_for

    rng = np.random.default_rng(21)
    source = tmp_path / "a.xyz"
    ase.io.write(source, labelled_frames(rng), format="extxyz")
    output = tmp_path / "out.h5"
    ours = temporary_path_for(output)
    assert ours.parent == tmp_path and ours.name.startswith(".out.h5.") and ours.name.endswith(".mlip-tmp")
    assert f".{os.getpid()}." in ours.name

    pid = dead_pid()
    stale = with_pid(temporary_path_for(output), pid)
    alive = temporary_path_for(output)  # this process is alive: its file may still be written to
    other_output = with_pid(temporary_path_for(tmp_path / "other.h5"), pid)  # not ours to sweep
    for path in (stale, alive, other_output):
        path.write_bytes(b"half-written")
    assert main([str(source), "-o", str(output), "-q"]) == 0
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".mlip-tmp") == sorted(
        [alive.name, other_output.name])


def test_a_conversion_killed_with_sigkill_leaves_a_recognisable_temporary(tmp_path):
    """SIGKILL runs no cleanup: the temporary stays, named after the output and the dead pid."""
    import signal

    rng = np.random.default_rng(22)
    source = tmp_path / "a.xyz"
    ase.io.write(source, labelled_frames(rng) * 400, format="extxyz")
    output = tmp_path / "out.h5"
    script = (
        "import os, signal, sys\n"
        "from mlip.data import writer\n"
        "original = writer.StructureWriter._flush\n"
        "def flush_then_die(self):\n"
        "    original(self)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "writer.StructureWriter._flush = flush_then_die\n"
        "from mlip.cli.convert import main\n"
        f"main([{str(source)!r}, '-o', {str(output)!r}, '-q'])\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run([sys.executable, "-c", script], env=environment, timeout=120)
    assert completed.returncode == -signal.SIGKILL
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".mlip-tmp")]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".out.h5.") and not output.exists()
    assert main([str(source), "-o", str(output), "-q"]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".mlip-tmp")] == []
    assert len(read_back(output)) == 1200


def test_mace_and_aselmdb_writers_use_recognisable_temporaries(tmp_path, monkeypatch):
    seen = []
    import mlip.files

    original = mlip.files.temporary_path_for

    def spy(path):
        seen.append(original(path))
        return seen[-1]

    monkeypatch.setattr(mlip.files, "temporary_path_for", spy)
    rng = np.random.default_rng(23)
    write_aselmdb(tmp_path / "a.aselmdb", omol_like_molecules(rng, 2))
    write_mace_hdf5(tmp_path / "m.h5", [Structure(numbers=[1], positions=np.zeros((1, 3)))])
    assert [p.name.split(".")[1] for p in seen] == ["a", "m"]
    assert all(p.name.endswith(".mlip-tmp") and not p.exists() for p in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.aselmdb", "m.h5"]


# ----------------------------------------------------------------------------- values of the wrong type


def mptrj_with(tmp_path, change) -> Path:
    rng = np.random.default_rng(24)
    source = tmp_path / "MPtrj.json"
    _, content = write_mptrj(rng, source)
    change(content["mp-22"]["mp-22-3-7"])
    source.write_text(json.dumps(content))
    return source


def set_in(frame, path, value):
    target = frame
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


MPTRJ_TYPE_CONFUSIONS = {  # (where in the frame, value, field named, fragment of the reason)
    "species as a list of strings": (("structure", "sites", 1, "species"), ["Cu"], "structure.sites[1].species",
                                     "expected a list of"),
    "species as a string": (("structure", "sites", 1, "species"), "Cu", "structure.sites[1].species",
                            "expected a list of"),
    "element as a number": (("structure", "sites", 1, "species", 0, "element"), 29, "structure.sites[1].species",
                            "unknown element 29"),
    "occupancy as text": (("structure", "sites", 1, "species", 0, "occu"), "full", "structure.sites[1].species",
                          "occupancy"),
    "site as a list": (("structure", "sites", 1), [0.0, 0.0, 0.0], "structure.sites[1]", "expected an object"),
    "sites as an object": (("structure", "sites"), {"0": {}}, "structure.sites", "list"),
    "lattice as a list": (("structure", "lattice"), [[3, 0, 0], [0, 3, 0], [0, 0, 3]], "structure.lattice.matrix",
                          "missing"),
    "matrix of text": (("structure", "lattice", "matrix"), [["a", "b", "c"]] * 3, "structure.lattice.matrix",
                       "not numeric"),
    "xyz as text": (("structure", "sites", 1, "xyz"), "0 0 0", "structure.sites[1].xyz", "not numeric"),
    "charge as text": (("structure", "charge"), "neutral", "structure.charge", "not numeric"),
    "energy as an object": (("uncorrected_total_energy",), {"value": -1.0}, "uncorrected_total_energy", "not numeric"),
    "force as a number": (("force",), 0.0, "force", "expected shape"),
    "stress as text": (("stress",), "0", "stress", "expected 6"),
}


@pytest.mark.parametrize("case", list(MPTRJ_TYPE_CONFUSIONS))
def test_mptrj_values_of_the_wrong_type_are_located_errors(tmp_path, capsys, case):
    path, value, field, fragment = MPTRJ_TYPE_CONFUSIONS[case]
    source = mptrj_with(tmp_path, lambda frame: set_in(frame, path, value))
    with pytest.raises(MLIPDataError) as caught:
        list(read_mptrj(source))
    error = caught.value
    assert (error.index, error.structure_id, error.field) == (2, "mp-22/mp-22-3-7", field), str(error)
    assert fragment in error.reason, str(error)
    expect_failure(tmp_path, capsys, [source], "MPtrj.json", "structure 2", "mp-22/mp-22-3-7", repr(field))


def test_a_frame_of_the_wrong_type_is_located(tmp_path):
    source = tmp_path / "MPtrj.json"
    source.write_text(json.dumps({"mp-1": {"f": ["not", "a", "frame"]}}))
    with pytest.raises(MLIPDataError) as caught:
        list(read_mptrj(source))
    assert (caught.value.index, caught.value.structure_id, caught.value.field) == (0, "mp-1/f", "frame")


def test_mace_weight_of_the_wrong_type_is_located(tmp_path, capsys):
    source = tmp_path / "mace.h5"
    write_mace_hdf5(source, [Structure(numbers=[1, 1], positions=[[0, 0, 0], [0, 0, 0.74]], energy=-1.0)])
    with h5py.File(source, "r+") as file:
        del file["config_batch_0/config_0/property_weights/energy"]
        file["config_batch_0/config_0/property_weights/energy"] = "heavy"
    expect_failure(tmp_path, capsys, [source], "mace.h5", "structure 0", "'property_weights/energy'")


def test_aselmdb_data_of_the_wrong_type_is_located(tmp_path, capsys):
    source = tmp_path / "bad.aselmdb"
    environment = lmdb.open(str(source), subdir=False, map_size=1 << 24, lock=False)
    row = {"numbers": [1, 1], "positions": [[0, 0, 0], [0, 0, 0.74]], "cell": [[0.0] * 3] * 3,
           "pbc": [False] * 3, "data": ["charge", 0]}
    with environment.begin(write=True) as transaction:
        transaction.put(b"1", zlib.compress(json.dumps(row).encode()))
    environment.close()
    expect_failure(tmp_path, capsys, [source], "bad.aselmdb", "structure 0", "bad.aselmdb:1", "'data'")


def test_pbc_of_the_wrong_type_is_located(tmp_path, capsys):
    source = tmp_path / "bad.aselmdb"
    environment = lmdb.open(str(source), subdir=False, map_size=1 << 24, lock=False)
    row = {"numbers": [1, 1], "positions": [[0, 0, 0], [0, 0, 0.74]], "cell": [[0.0] * 3] * 3,
           "pbc": "periodic"}
    with environment.begin(write=True) as transaction:
        transaction.put(b"1", zlib.compress(json.dumps(row).encode()))
    environment.close()
    expect_failure(tmp_path, capsys, [source], "bad.aselmdb", "structure 0", "'pbc'")
