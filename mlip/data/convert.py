"""Readers of foreign dataset formats, and `convert`, which streams them into mlip's HDF5 schema.

Every reader is a generator of `Structure` objects: it never holds more than one structure (or
one MPtrj material) in memory, so converting a dataset larger than memory works.

Formats:

* ``extxyz`` / ``ase``  any file `ase.io.iread` understands (`read_ase`)
* ``asedb``             an ASE database, e.g. ``*.db`` (`read_asedb`)
* ``aselmdb``           fairchem's ASE-LMDB shards (OMol25, OMat24, ...), read without fairchem
                        (`read_aselmdb`; `write_aselmdb` writes the same layout)
* ``mptrj``             the MPtrj JSON of CHGNet (`read_mptrj`), read without pymatgen
* ``mace-hdf5``         the HDF5 files of MACE's ``preprocess_data.py`` (`read_mace_hdf5`;
                        `write_mace_hdf5` writes the same layout)
* ``mlip``              an mlip HDF5 file (`read_mlip_hdf5`), to merge or re-compress files

Units out are ASE's: Å, eV, eV/Å, eV/Å³ with ASE's stress sign. A label that is absent from the
input stays ``None`` (masked downstream); it is never replaced by zeros. Bad input raises
`MLIPDataError` naming the input file, the structure index (and id) and the field.
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase.units import GPa

from mlip.data.errors import MLIPDataError
from mlip.data.neighbours import DEFAULT_MIN_DISTANCE, check_min_distance
from mlip.data.schema import validate_structure, zero_volume_reason
from mlip.data.structure import Structure
from mlip.data.writer import StructureWriter, sweep_stale_temporaries, temporary_path_for

FORMATS = ("extxyz", "ase", "asedb", "aselmdb", "mptrj", "mace-hdf5", "mlip")

# Keys the ASE-LMDB format reserves for bookkeeping; every other key is a row id.
ASELMDB_RESERVED_KEYS = ("nextid", "metadata", "deleted_ids")

# MPtrj energies a user may train on; see `read_mptrj`.
MPTRJ_ENERGY_LABELS = ("uncorrected", "corrected", "per_atom")

# VASP (and so MPtrj) reports stress in kBar, positive = compressive; ASE uses eV/Å³, positive =
# tensile. 1 kBar = 0.1 GPa.
KBAR_TO_EV_PER_A3 = 0.1 * GPa


# --------------------------------------------------------------------------------------------
# Which input keys hold which label
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelKeys:
    """Names under which an ASE-style input stores each label.

    Scalars (energy, stress, charge, spin, subset, id) are looked up in ``atoms.info`` (extxyz)
    or in a database row's ``data`` and ``key_value_pairs``; per-atom arrays (forces, magmom,
    partial charges) in ``atoms.arrays`` or the row's ``data``. Whatever is not found there is
    taken from the attached calculator results (``atoms.calc.results`` / the row's own columns),
    which is where ASE puts ``energy``, ``forces``, ``stress``, ``magmoms`` and ``charges``.
    """

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    magmom: str = "magmoms"
    partial_charges: str = "charges"
    charge: str = "charge"
    spin: str = "spin"
    subset: str | None = None  # None: look for "subset", then MACE's "config_type"
    id: str = "id"

    def subset_keys(self) -> tuple[str, ...]:
        return ("subset", "config_type") if self.subset is None else (self.subset,)


# --------------------------------------------------------------------------------------------
# Error reporting: field-level problems are raised as `_FieldError` by the value parsers and
# located (file, structure index, id) by the reader loop.
# --------------------------------------------------------------------------------------------


class _FieldError(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


#: What a parser may raise on a value of an unexpected type (a list where an object belongs, ...).
_TYPE_CONFUSIONS = (TypeError, AttributeError, KeyError, IndexError, ValueError)


@contextmanager
def _located(path: str | os.PathLike, index: int, structure_id: str | None = None, record: str = "-"):
    """Turn a `_FieldError` raised inside into an `MLIPDataError` naming file and structure.

    A safety net catches what the parsers did not foresee (a value of a type no check expects)
    and reports it as an error in ``record`` (the input's unit: ``frame``, ``row``, ...),
    located in the same way, rather than as a traceback.
    """
    try:
        yield
    except _FieldError as error:
        raise MLIPDataError(
            error.reason, path, index=index, structure_id=structure_id, field=error.field
        ) from None
    except MLIPDataError:
        raise
    except _TYPE_CONFUSIONS as error:
        raise MLIPDataError(
            f"unexpected value ({type(error).__name__}: {error})", path, index=index,
            structure_id=structure_id, field=record,
        ) from None


# --------------------------------------------------------------------------------------------
# Value parsers: one input value -> one checked NumPy value (or None when the label is absent)
# --------------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    """None, and MACE's "None" placeholder string, mean "no label"."""
    if value is None:
        return True
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return isinstance(value, str) and value == "None"


def _float_array(value: Any, field: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise _FieldError(field, f"not numeric ({error})") from None
    if not np.all(np.isfinite(array)):
        raise _FieldError(field, "contains NaN or infinite values")
    return array


def _number(value: Any, field: str) -> float | None:
    """One finite number (a total energy in eV, a MACE label weight), or None when absent."""
    if _is_missing(value):
        return None
    array = _float_array(value, field)
    if array.size != 1:
        raise _FieldError(field, f"expected one number, got shape {array.shape}")
    return float(array.reshape(()))


_energy = _number


def _per_atom_vectors(value: Any, n_atoms: int, field: str) -> np.ndarray | None:
    """(n_atoms, 3) array (forces, positions), or None."""
    if _is_missing(value):
        return None
    array = _float_array(value, field)
    if array.shape != (n_atoms, 3):
        raise _FieldError(field, f"expected shape ({n_atoms}, 3) for {n_atoms} atoms, got {array.shape}")
    return array


def _per_atom_scalars(value: Any, n_atoms: int, field: str) -> np.ndarray | None:
    """(n_atoms,) array (magnetic moments, partial charges), or None."""
    if _is_missing(value):
        return None
    array = _float_array(value, field)
    if array.shape != (n_atoms,):
        raise _FieldError(field, f"expected shape ({n_atoms},) for {n_atoms} atoms, got {array.shape}")
    return array


def _stress_tensor(value: Any, field: str) -> np.ndarray | None:
    """Full (3, 3) stress from Voigt-6 (xx, yy, zz, yz, xz, xy), 9 values or a 3x3 matrix."""
    if _is_missing(value):
        return None
    array = _float_array(value, field)
    if array.size == 6:
        xx, yy, zz, yz, xz, xy = array.reshape(6)
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if array.size == 9:
        return array.reshape(3, 3)
    raise _FieldError(field, f"expected 6 (Voigt), 9 or 3x3 values, got shape {array.shape}")


def _integer(value: Any, field: str, default: int) -> int:
    """An integer-valued label (total charge, multiplicity); `default` when absent."""
    if _is_missing(value):
        return default
    array = _float_array(value, field)
    if array.size != 1 or array.reshape(()) != np.round(array.reshape(())):
        raise _FieldError(field, f"expected an integer, got {value!r}")
    return int(array.reshape(()))


def _atomic_numbers(value: Any, field: str) -> np.ndarray:
    if _is_missing(value):
        raise _FieldError(field, "missing")
    try:
        numbers = np.asarray(value).reshape(-1)
        integral = numbers.astype(np.int64)
    except (TypeError, ValueError) as error:
        raise _FieldError(field, f"not integer atomic numbers ({error})") from None
    if numbers.size == 0:
        raise _FieldError(field, "structure has no atoms")
    if not np.array_equal(integral, numbers) or integral.min() < 1 or integral.max() > 118:
        raise _FieldError(field, "atomic numbers must be integers in 1..118")
    return integral


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)


def _cell_and_pbc(cell: Any, pbc: Any) -> tuple[np.ndarray | None, np.ndarray]:
    """Cell in Å (None for a non-periodic structure) and (3,) periodicity flags."""
    if isinstance(cell, Mapping):  # ASE's Cell.todict(): {"array": ..., "pbc": ...}
        cell = cell.get("array")
    pbc_flags = _pbc_flags(pbc)
    if not pbc_flags.any():
        return None, pbc_flags
    if _is_missing(cell):
        raise _FieldError("cell", "periodic structure without a cell")
    cell_array = _float_array(cell, "cell")
    if cell_array.size != 9:
        raise _FieldError("cell", f"expected a 3x3 cell, got shape {cell_array.shape}")
    cell_array = cell_array.reshape(3, 3)
    for axis in np.flatnonzero(pbc_flags):
        if not np.any(cell_array[axis]):
            raise _FieldError("cell", f"lattice vector {axis} is zero along a periodic direction")
    return cell_array, pbc_flags


def _pbc_flags(pbc: Any) -> np.ndarray:
    """(3,) periodicity flags from one boolean or three (also 0/1); None means not periodic."""
    if pbc is None:
        return np.zeros(3, dtype=bool)
    flags = np.asarray(pbc).reshape(-1)
    if flags.size not in (1, 3) or flags.dtype.kind not in "biu" or not np.isin(flags, (0, 1)).all():
        raise _FieldError("pbc", f"expected one or three booleans, got {pbc!r}")
    return np.broadcast_to(flags.astype(bool), (3,)).copy()


def _mapping_or_none(value: Any, field: str) -> Mapping | None:
    """A label dictionary (a row's ``data`` or key-value pairs), or None when absent."""
    if value is None or isinstance(value, Mapping):
        return value
    raise _FieldError(field, f"expected an object of labels, got {type(value).__name__}")


def _validated(structure: Structure, path: Path, index: int) -> Structure:
    """The structure, after the schema's checks (errors name the input file and index)."""
    validate_structure(structure, index, str(path))
    return structure


def _first_present(key: str, sources: Sequence[Mapping | None]) -> Any:
    """The value of `key` in the first source that has it (and not as None), else None."""
    for source in sources:
        if source is not None and key in source and not _is_missing(source[key]):
            return source[key]
    return None


def _labelled_structure(
    numbers: Any,
    positions: Any,
    cell: Any,
    pbc: Any,
    scalars: Sequence[Mapping | None],
    per_atom: Sequence[Mapping | None],
    keys: LabelKeys,
    default_id: str,
    subset: str | None,
    found_keys: Counter | None = None,
) -> Structure:
    """A Structure from geometry plus label dictionaries searched in order (see `LabelKeys`).

    ``found_keys``, if given, counts per `LabelKeys` field (``"energy"``, ``"charge"``, ...) the
    structures in which its key was found, so that a key matching nothing can be reported.
    """
    numbers = _atomic_numbers(numbers, "numbers")
    n_atoms = numbers.shape[0]
    positions = _per_atom_vectors(positions, n_atoms, "positions")
    if positions is None:
        raise _FieldError("positions", "missing")
    cell, pbc = _cell_and_pbc(cell, pbc)

    def lookup(label: str, sources: Sequence[Mapping | None]) -> Any:
        value = _first_present(getattr(keys, label), sources)
        if value is not None and found_keys is not None:
            found_keys[label] += 1
        return value

    subset_value = subset
    if subset_value is None:
        found = (_first_present(key, scalars) for key in keys.subset_keys())
        subset_value = next((_text(value) for value in found if value is not None), None)
        if subset_value is not None and found_keys is not None:
            found_keys["subset"] += 1
    structure_id = _first_present(keys.id, scalars)
    return Structure(
        numbers=numbers,
        positions=positions,
        cell=cell,
        pbc=pbc,
        energy=_energy(lookup("energy", scalars), keys.energy),
        forces=_per_atom_vectors(lookup("forces", per_atom), n_atoms, keys.forces),
        stress=_stress_tensor(lookup("stress", scalars), keys.stress),
        magmom=_per_atom_scalars(lookup("magmom", per_atom), n_atoms, keys.magmom),
        partial_charges=_per_atom_scalars(lookup("partial_charges", per_atom), n_atoms, keys.partial_charges),
        charge=_integer(lookup("charge", scalars), keys.charge, default=0),
        spin=_integer(lookup("spin", scalars), keys.spin, default=1),
        id=default_id if structure_id is None else _text(structure_id),
        subset=subset_value or "",
    )


_KEY_OPTION_FIELDS = {
    "energy_key": "energy",
    "forces_key": "forces",
    "stress_key": "stress",
    "magmom_key": "magmom",
    "charges_key": "partial_charges",
    "charge_key": "charge",
    "spin_key": "spin",
    "subset_key": "subset",
}


def _label_keys(**keys: str | None) -> LabelKeys:
    """LabelKeys from reader keywords (``energy_key=...``); None keeps the default."""
    return LabelKeys(**{_KEY_OPTION_FIELDS[name]: value for name, value in keys.items() if value is not None})


# --------------------------------------------------------------------------------------------
# ASE-readable files (extxyz, traj, ...)
# --------------------------------------------------------------------------------------------


def read_ase(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
    magmom_key: str = "magmoms",
    charges_key: str = "charges",
    charge_key: str = "charge",
    spin_key: str = "spin",
    subset_key: str | None = None,
    subset: str | None = None,
    found_keys: Counter | None = None,
) -> Iterator[Structure]:
    """Structures of any file `ase.io.iread` reads (``format=None``: ASE guesses).

    Labels come from ``atoms.info`` / ``atoms.arrays`` under the given keys (e.g.
    ``energy_key="REF_energy"``), else from the attached calculator's results (ASE's extxyz
    reader moves ``energy``, ``forces``, ``stress`` there). ``subset`` fixes the subset label of
    every structure; otherwise it is read from ``subset_key`` (default: ``subset``, then
    ``config_type``). The id is ``atoms.info["id"]`` or ``"<file name>:<index>"``.
    ``found_keys`` (a Counter), if given, receives per label (``"energy"``, ``"forces"``,
    ``"stress"``, ``"magmom"``, ``"partial_charges"``, ``"charge"``, ``"spin"``, ``"subset"``)
    the number of structures in which its key was found.
    """
    import ase.io

    keys = _label_keys(
        energy_key=energy_key, forces_key=forces_key, stress_key=stress_key,
        magmom_key=magmom_key, charges_key=charges_key, charge_key=charge_key,
        spin_key=spin_key, subset_key=subset_key,
    )
    path = _existing_file(path)
    frames = ase.io.iread(path, index=":", format=format)
    index = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as error:  # ASE's parsers raise many types; report them uniformly
            raise MLIPDataError(f"ASE could not parse it: {error}", path, index=index) from None
        with _located(path, index, atoms.info.get(keys.id), record="atoms"):
            structure = _structure_from_atoms(atoms, keys, f"{path.name}:{index}", subset, found_keys)
        yield _validated(structure, path, index)
        index += 1


def read_extxyz(path: str | os.PathLike, **options) -> Iterator[Structure]:
    """`read_ase` with ASE's extended-XYZ parser."""
    return read_ase(path, format="extxyz", **options)


def _structure_from_atoms(
    atoms, keys: LabelKeys, default_id: str, subset: str | None, found_keys: Counter | None = None
) -> Structure:
    results = atoms.calc.results if atoms.calc is not None else {}
    return _labelled_structure(
        atoms.numbers,
        atoms.positions,
        atoms.cell.array,
        atoms.pbc,
        scalars=(atoms.info, results),
        per_atom=(atoms.arrays, results),
        keys=keys,
        default_id=default_id,
        subset=subset,
        found_keys=found_keys,
    )


# --------------------------------------------------------------------------------------------
# ASE databases and fairchem's ASE-LMDB shards
# --------------------------------------------------------------------------------------------


def _structure_from_row(
    row: Mapping, data: Mapping | None, key_value_pairs: Mapping | None,
    keys: LabelKeys, default_id: str, subset: str | None, found_keys: Counter | None = None,
) -> Structure:
    """A Structure from an ASE database row held as a dict (``numbers``, ``positions``, ``cell``,
    ``pbc``, calculator results such as ``energy``/``forces``/``stress``, ``data``, and
    ``key_value_pairs``). Labels are looked up in ``data``, then ``key_value_pairs``, then the
    row's own columns."""
    data = _mapping_or_none(data, "data")
    key_value_pairs = _mapping_or_none(key_value_pairs, "key_value_pairs")
    return _labelled_structure(
        row.get("numbers"),
        row.get("positions"),
        row.get("cell"),
        row.get("pbc"),
        scalars=(data, key_value_pairs, row),
        per_atom=(data, row),
        keys=keys,
        default_id=default_id,
        subset=subset,
        found_keys=found_keys,
    )


def read_asedb(
    path: str | os.PathLike,
    *,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
    magmom_key: str = "magmoms",
    charges_key: str = "charges",
    charge_key: str = "charge",
    spin_key: str = "spin",
    subset_key: str | None = None,
    subset: str | None = None,
    found_keys: Counter | None = None,
) -> Iterator[Structure]:
    """Structures of an ASE database (``ase.db.connect``), in row order.

    Labels are looked up in the row's ``data``, then its key-value pairs, then its calculator
    columns. Note that ASE's SQLite rows carry a built-in ``charge`` column (the sum of initial
    charges) that hides a key-value pair named ``charge``: store the total charge in ``data``
    or under another key (``charge_key="total_charge"``). The id is ``"<file name>:<row id>"``
    unless the row has an ``id`` entry in ``data``. ``found_keys``: as for `read_ase`.
    """
    import ase.db

    keys = _label_keys(
        energy_key=energy_key, forces_key=forces_key, stress_key=stress_key,
        magmom_key=magmom_key, charges_key=charges_key, charge_key=charge_key,
        spin_key=spin_key, subset_key=subset_key,
    )
    path = _existing_file(path)
    try:
        database = ase.db.connect(path)
        rows = database.select()
    except Exception as error:
        raise MLIPDataError(f"not a readable ASE database: {error}", path) from None
    index = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as error:
            raise MLIPDataError(f"ASE could not read the row: {error}", path, index=index) from None
        columns = {name: value for name, value in row.__dict__.items() if not name.startswith("_")}
        columns.pop("id", None)  # the row id is not a structure label
        row_data = dict(row.data)
        with _located(path, index, f"{path.name}:{row.id}", record="row"):
            structure = _structure_from_row(
                columns, row_data, row.key_value_pairs, keys, f"{path.name}:{row.id}", subset, found_keys
            )
        yield _validated(structure, path, index)
        index += 1


def read_aselmdb(
    path: str | os.PathLike,
    *,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
    magmom_key: str = "magmoms",
    charges_key: str = "charges",
    charge_key: str = "charge",
    spin_key: str = "spin",
    subset_key: str | None = None,
    subset: str | None = None,
    found_keys: Counter | None = None,
) -> Iterator[Structure]:
    """Structures of a fairchem ASE-LMDB shard (``*.aselmdb``, e.g. OMol25), without fairchem.

    Layout (fairchem's ``LMDBDatabase`` / ase-db-backends): one LMDB environment in a single
    file (``subdir=False``); each row is stored under the ASCII key ``str(row_id)`` (ids count
    from 1) as zlib-compressed JSON of the ASE row dict, arrays either ASE-encoded
    (``{"__ndarray__": [shape, dtype, flat]}``) or plain nested lists (older orjson writer).
    The keys ``nextid``, ``metadata`` and ``deleted_ids`` are bookkeeping and skipped. Rows are
    read in increasing id order. OMol25 keeps ``charge`` and ``spin`` (multiplicity) in the
    row's ``data``; key-value pairs are searched too. The id is ``"<file name>:<row id>"``.
    ``found_keys``: as for `read_ase`.
    """
    import lmdb

    keys = _label_keys(
        energy_key=energy_key, forces_key=forces_key, stress_key=stress_key,
        magmom_key=magmom_key, charges_key=charges_key, charge_key=charge_key,
        spin_key=spin_key, subset_key=subset_key,
    )
    path = _existing_file(path)
    try:
        environment = lmdb.open(
            str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False
        )
    except lmdb.Error as error:
        raise MLIPDataError(f"not a readable LMDB file: {error}", path) from None
    try:
        with environment.begin(write=False) as transaction:
            for index, row_id in enumerate(_aselmdb_row_ids(transaction, path)):
                structure_id = f"{path.name}:{row_id}"
                with _located(path, index, structure_id, record="row"):
                    row = _decode_aselmdb_row(transaction.get(str(row_id).encode("ascii")))
                    structure = _structure_from_row(
                        row, row.get("data"), row.get("key_value_pairs"), keys, structure_id, subset, found_keys
                    )
                yield _validated(structure, path, index)
    finally:
        environment.close()


def _decode_aselmdb_row(value: bytes) -> Mapping:
    """One stored row: zlib-compressed JSON, arrays ASE-encoded or as plain lists."""
    from ase.io.jsonio import decode

    try:
        row = decode(zlib.decompress(value).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, ValueError, TypeError) as error:
        raise _FieldError("row", f"not zlib-compressed JSON ({error})") from None
    if not isinstance(row, Mapping):
        raise _FieldError("row", f"not a JSON object but {type(row).__name__}")
    return row


def _aselmdb_row_ids(transaction, path: Path) -> list[int]:
    """Row ids stored in an ASE-LMDB transaction, in increasing order (bookkeeping keys skipped)."""
    import lmdb

    row_ids = []
    try:
        for key in transaction.cursor().iternext(keys=True, values=False):
            text = bytes(key).decode("ascii", errors="replace")
            if text in ASELMDB_RESERVED_KEYS:
                continue
            if not text.isdigit():
                raise MLIPDataError(f"unexpected key {text!r} (row keys are integers)", path, field="key")
            row_ids.append(int(text))
    except lmdb.Error as error:
        raise MLIPDataError(f"corrupt LMDB file: {error}", path) from None
    return sorted(row_ids)


def write_aselmdb(
    path: str | os.PathLike, atoms_list: Iterable, *, info_as: str = "data"
) -> int:
    """Write `ase.Atoms` as an ASE-LMDB shard in fairchem's layout (see `read_aselmdb`).

    Each row holds the atoms' geometry and calculator results; ``atoms.info`` goes to the row's
    ``data`` (as OMol25 does) or, with ``info_as="key_value_pairs"``, to its key-value pairs.
    Written to a temporary file and renamed, so a failure leaves no partial shard. Returns the
    number of rows.
    """
    import lmdb
    from ase.db.row import AtomsRow
    from ase.io.jsonio import encode

    if info_as not in ("data", "key_value_pairs"):
        raise ValueError(f"info_as must be 'data' or 'key_value_pairs', got {info_as!r}")
    path = Path(path)
    sweep_stale_temporaries(path)
    temporary = temporary_path_for(path)
    environment = lmdb.open(str(temporary), subdir=False, map_size=2**36, lock=False, meminit=False)
    n_rows = 0
    try:
        with environment.begin(write=True) as transaction:
            for n_rows, atoms in enumerate(atoms_list, start=1):
                row = AtomsRow(atoms)
                record = {name: value for name, value in row.__dict__.items() if not name.startswith("_")}
                record.pop("id", None)
                record["cell"] = np.asarray(record["cell"])
                record[info_as] = dict(atoms.info)
                transaction.put(str(n_rows).encode("ascii"), zlib.compress(encode(record).encode("utf-8")))
            transaction.put(b"nextid", zlib.compress(encode(n_rows + 1).encode("utf-8")))
        environment.close()
        os.replace(temporary, path)
    except BaseException:
        environment.close()
        temporary.unlink(missing_ok=True)
        raise
    return n_rows


# --------------------------------------------------------------------------------------------
# MPtrj JSON (CHGNet's Materials Project trajectories)
# --------------------------------------------------------------------------------------------


def read_mptrj(
    path: str | os.PathLike,
    *,
    energy: str = "uncorrected",
    subset: str | None = None,
) -> Iterator[Structure]:
    """Structures of the MPtrj JSON ``{mp_id: {frame_id: frame}}``, streamed material by material.

    ``frame["structure"]`` is a pymatgen Structure dict (parsed without pymatgen: Cartesian
    ``sites[].xyz``, else fractional ``sites[].abc`` times ``lattice.matrix``); ordered sites only.
    ``energy`` picks the label: ``"uncorrected"`` (``uncorrected_total_energy``, the raw DFT
    energy; default), ``"corrected"`` (``corrected_total_energy``, with MP2020 corrections) or
    ``"per_atom"`` (``energy_per_atom`` times the number of atoms). Forces come from ``force``
    (eV/Å), magnetic moments from ``magmom``, and ``stress`` (kBar, VASP sign: positive =
    compressive) becomes eV/Å³ with ASE's sign: ``stress_ase = -0.1 GPa/kBar * stress_vasp``.
    The id is ``"<mp_id>/<frame_id>"``; the subset is ``subset`` (default: empty).
    """
    if energy not in MPTRJ_ENERGY_LABELS:
        raise ValueError(f"energy must be one of {MPTRJ_ENERGY_LABELS}, got {energy!r}")
    path = _existing_file(path)
    index = 0
    materials = _iter_json_object_items(path)
    while True:
        try:
            mp_id, frames = next(materials)
        except StopIteration:
            return
        except MLIPDataError as error:  # malformed JSON: say which structure could not be read
            raise MLIPDataError(error.reason, path, index=index, field=error.field) from None
        if not isinstance(frames, Mapping):
            raise MLIPDataError(
                f"material {mp_id!r} is not an object of frames", path, index=index, field=mp_id
            )
        for frame_id, frame in frames.items():
            structure_id = f"{mp_id}/{frame_id}"
            with _located(path, index, structure_id, record="frame"):
                structure = _structure_from_mptrj_frame(frame, energy, structure_id, subset or "")
            yield _validated(structure, path, index)
            index += 1


_MPTRJ_ENERGY_FIELDS = {
    "uncorrected": "uncorrected_total_energy",
    "corrected": "corrected_total_energy",
    "per_atom": "energy_per_atom",
}


def _structure_from_mptrj_frame(frame: Any, energy_label: str, structure_id: str, subset: str) -> Structure:
    if not isinstance(frame, Mapping):
        raise _FieldError("frame", "not a JSON object")
    if "structure" not in frame:
        raise _FieldError("structure", "missing")
    numbers, positions, cell = _parse_pymatgen_structure(frame["structure"])
    n_atoms = numbers.shape[0]
    energy_field = _MPTRJ_ENERGY_FIELDS[energy_label]
    energy = _energy(frame.get(energy_field), energy_field)
    if energy is not None and energy_label == "per_atom":
        energy *= n_atoms
    stress_kbar = _stress_tensor(frame.get("stress"), "stress")
    return Structure(
        numbers=numbers,
        positions=positions,
        cell=cell,
        pbc=True,
        energy=energy,
        forces=_per_atom_vectors(frame.get("force"), n_atoms, "force"),
        stress=None if stress_kbar is None else -KBAR_TO_EV_PER_A3 * stress_kbar,
        magmom=_per_atom_scalars(frame.get("magmom"), n_atoms, "magmom"),
        charge=_integer(frame["structure"].get("charge"), "structure.charge", default=0),
        id=structure_id,
        subset=subset,
    )


def _parse_pymatgen_structure(structure: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Atomic numbers, Cartesian positions (Å) and cell (Å) of a pymatgen ``Structure.as_dict()``."""
    from ase.data import atomic_numbers

    if not isinstance(structure, Mapping):
        raise _FieldError("structure", "not a pymatgen Structure dict")
    try:
        matrix = structure["lattice"]["matrix"]
    except (KeyError, TypeError):
        raise _FieldError("structure.lattice.matrix", "missing") from None
    cell = _float_array(matrix, "structure.lattice.matrix")
    if cell.shape != (3, 3):
        raise _FieldError("structure.lattice.matrix", f"expected shape (3, 3), got {cell.shape}")
    sites = structure.get("sites")
    if not isinstance(sites, list) or not sites:
        found = "empty" if isinstance(sites, list) else ("missing" if sites is None else type(sites).__name__)
        raise _FieldError("structure.sites", f"expected a non-empty list of sites, got {found}")
    numbers = np.empty(len(sites), dtype=np.int64)
    positions = np.empty((len(sites), 3))
    for site_index, site in enumerate(sites):
        where = f"structure.sites[{site_index}]"
        if not isinstance(site, Mapping):
            raise _FieldError(where, f"expected an object (a pymatgen site), got {type(site).__name__}")
        numbers[site_index] = _site_element(site.get("species"), f"{where}.species", atomic_numbers)
        if site.get("xyz") is not None:
            positions[site_index] = _site_coordinates(site["xyz"], f"{where}.xyz")
        elif site.get("abc") is not None:
            positions[site_index] = _site_coordinates(site["abc"], f"{where}.abc") @ cell
        else:
            raise _FieldError(f"{where}.xyz", "missing position (neither 'xyz' nor 'abc')")
    return numbers, positions, cell


def _site_element(species: Any, field: str, atomic_numbers: Mapping[str, int]) -> int:
    """Atomic number of an ordered pymatgen site, ``species = [{"element": "Cu", "occu": 1}]``."""
    if species is None or (isinstance(species, list) and not species):
        raise _FieldError(field, "missing")
    if not isinstance(species, list) or not all(isinstance(entry, Mapping) for entry in species):
        raise _FieldError(field, f'expected a list of {{"element": ..., "occu": ...}} objects, got {species!r}')
    occupancy = species[0].get("occu", 1.0)
    if isinstance(occupancy, bool) or not isinstance(occupancy, (int, float)):
        raise _FieldError(field, f"occupancy 'occu' is not a number: {occupancy!r}")
    if len(species) != 1 or float(occupancy) != 1.0:
        raise _FieldError(field, "disordered site (partial occupancy) is not supported")
    element = species[0].get("element")
    if not isinstance(element, str) or element not in atomic_numbers or element == "X":
        raise _FieldError(field, f"unknown element {element!r}")
    return atomic_numbers[element]


def _site_coordinates(value: Any, field: str) -> np.ndarray:
    coordinates = _float_array(value, field)
    if coordinates.shape != (3,):
        raise _FieldError(field, f"expected 3 coordinates, got shape {coordinates.shape}")
    return coordinates


def _iter_json_object_items(path: Path, chunk_chars: int = 1 << 22) -> Iterator[tuple[str, Any]]:
    """(key, value) pairs of a top-level JSON object, parsed value by value.

    Only one top-level value (one MPtrj material) is decoded at a time, so files larger than
    memory stream through. Top-level values must be JSON objects or arrays.
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as stream:
        buffer = stream.read(chunk_chars)
        at_end = len(buffer) < chunk_chars
        position = 0
        consumed = 0  # characters dropped from the front of the buffer, for error positions

        def skip_space() -> None:
            nonlocal position
            while position < len(buffer) and buffer[position] in " \t\r\n":
                position += 1

        def refill() -> bool:
            """Append more text (dropping what was consumed); False at end of file."""
            nonlocal buffer, position, at_end, consumed
            if at_end:
                return False
            more = stream.read(max(chunk_chars, len(buffer)))  # grow geometrically for big values
            at_end = len(more) == 0
            consumed += position
            buffer = buffer[position:] + more
            position = 0
            return not at_end

        def bad(reason: str) -> MLIPDataError:
            return MLIPDataError(f"malformed JSON: {reason}", path, field="json")

        def expect(character: str) -> None:
            nonlocal position
            skip_space()
            while position >= len(buffer) and refill():
                skip_space()
            if position >= len(buffer) or buffer[position] != character:
                found = repr(buffer[position]) if position < len(buffer) else "end of file"
                raise bad(f"expected {character!r} at character {consumed + position}, found {found}")
            position += 1

        def decode_value() -> Any:
            nonlocal position
            while True:
                skip_space()
                try:
                    value, end = decoder.raw_decode(buffer, position)
                except json.JSONDecodeError as error:
                    if refill():
                        continue
                    raise bad(f"{error.msg} at character {consumed + error.pos}") from None
                if end == len(buffer) and not isinstance(value, (dict, list, str)) and refill():
                    continue  # a number or literal cut by the chunk boundary
                position = end
                return value

        expect("{")
        skip_space()
        while position >= len(buffer) and refill():
            skip_space()
        if position < len(buffer) and buffer[position] == "}":
            return
        while True:
            key = decode_value()
            if not isinstance(key, str):
                raise bad(f"object key {key!r} is not a string")
            expect(":")
            yield key, decode_value()
            skip_space()
            while position >= len(buffer) and refill():
                skip_space()
            if position < len(buffer) and buffer[position] == "}":
                return
            expect(",")


# --------------------------------------------------------------------------------------------
# MACE's HDF5 (preprocess_data.py)
# --------------------------------------------------------------------------------------------

_MACE_DEFAULT_CONFIG_TYPE = "Default"


def read_mace_hdf5(path: str | os.PathLike, *, subset: str | None = None) -> Iterator[Structure]:
    """Structures of a MACE HDF5 file (``mace/cli/preprocess_data.py``).

    Layout: groups ``config_batch_<b>/config_<c>`` holding ``atomic_numbers``, ``positions``,
    ``cell``, ``pbc``, ``weight``, ``config_type`` and the labels, either in a ``properties``
    subgroup (current MACE: ``energy``, ``forces``, ``stress``, ``virials``, ``charges``,
    ``total_charge``, ``total_spin``, ...) or directly in the group (older MACE). A missing label
    is the string ``"None"``; a label whose weight (``property_weights/<name>``, older
    ``<name>_weight``) is 0 is also treated as missing, since MACE zero-fills absent labels
    that way. Stress is taken as is (MACE uses ASE's eV/Å³ and sign); when only virials are
    given, stress = -virials / volume. ``config_type`` becomes the subset (MACE's
    placeholder ``"Default"`` becomes the empty subset) unless ``subset`` is given. Batches and
    configurations are read in numeric order; the id is ``"<file name>:<index>"``.
    """
    import h5py

    path = _existing_file(path)
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise MLIPDataError(f"not a readable HDF5 file: {error}", path) from None
    with file:
        index = 0
        for batch_name in _numbered_members(file, "config_batch_", path):
            batch = file[batch_name]
            for config_name in _numbered_members(batch, "config_", path):
                structure_id = f"{path.name}:{index}"
                with _located(path, index, structure_id, record="config"):
                    structure = _structure_from_mace_group(batch[config_name], structure_id, subset)
                yield _validated(structure, path, index)
                index += 1


def _numbered_members(group, prefix: str, path: Path) -> list[str]:
    names = [name for name in group.keys() if name.startswith(prefix) and name[len(prefix):].isdigit()]
    if not names and prefix == "config_batch_":
        raise MLIPDataError("no config_batch_<n> groups: not a MACE HDF5 file", path, field="config_batch_0")
    return sorted(names, key=lambda name: int(name[len(prefix):]))


def _structure_from_mace_group(group, structure_id: str, subset: str | None) -> Structure:
    def value(name: str, container=group) -> Any:
        return container[name][()] if name in container else None

    properties = group["properties"] if "properties" in group else group
    weights = group["property_weights"] if "property_weights" in group else None

    def label(name: str) -> Any:
        """A label, or None if absent or given zero weight (MACE's mark of a filled-in label)."""
        weight_field = f"property_weights/{name}" if weights is not None else f"{name}_weight"
        weight = value(name, weights) if weights is not None else value(f"{name}_weight")
        if _number(weight, weight_field) == 0.0:
            return None
        return value(name, properties)

    numbers = _atomic_numbers(value("atomic_numbers"), "atomic_numbers")
    n_atoms = numbers.shape[0]
    positions = _per_atom_vectors(value("positions"), n_atoms, "positions")
    if positions is None:
        raise _FieldError("positions", "missing")
    cell, pbc = _cell_and_pbc(value("cell"), None if _is_missing(value("pbc")) else value("pbc"))
    stress = _stress_tensor(label("stress"), "stress")
    if stress is None:
        virials = _stress_tensor(label("virials"), "virials")
        if virials is not None:
            if cell is None:
                raise _FieldError("virials", "virials of a non-periodic structure cannot give a stress")
            no_volume = zero_volume_reason(cell)
            if no_volume:
                raise _FieldError("virials", f"virials cannot give a stress: {no_volume}")
            stress = -virials / abs(np.linalg.det(cell))
    config_type = value("config_type")
    if subset is None:
        subset = "" if _is_missing(config_type) else _text(config_type)
        subset = "" if subset == _MACE_DEFAULT_CONFIG_TYPE else subset
    return Structure(
        numbers=numbers,
        positions=positions,
        cell=cell,
        pbc=pbc,
        energy=_energy(label("energy"), "energy"),
        forces=_per_atom_vectors(label("forces"), n_atoms, "forces"),
        stress=stress,
        magmom=_per_atom_scalars(label("magmom"), n_atoms, "magmom"),
        partial_charges=_per_atom_scalars(label("charges"), n_atoms, "charges"),
        charge=_integer(value("total_charge", properties), "total_charge", default=0),
        spin=_integer(value("total_spin", properties), "total_spin", default=1),
        id=structure_id,
        subset=subset,
    )


def write_mace_hdf5(
    path: str | os.PathLike, structures: Iterable[Structure], *, batch_size: int | None = None
) -> int:
    """Write structures in the current MACE HDF5 layout (see `read_mace_hdf5`).

    All configurations go to ``config_batch_0`` (as MACE's ``save_configurations_as_HDF5``
    does) unless ``batch_size`` splits them into ``config_batch_<b>`` groups of that many.
    Missing labels are written as the string ``"None"``, stress as a (3, 3) eV/Å³ tensor,
    ``total_charge``/``total_spin`` as properties. Temporary file + rename. Returns the count.
    """
    import h5py

    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    path = Path(path)
    sweep_stale_temporaries(path)
    temporary = temporary_path_for(path)
    n_written = 0
    try:
        with h5py.File(temporary, "x") as file:
            for n_written, structure in enumerate(structures, start=1):
                index = n_written - 1
                batch_index, config_index = (0, index) if batch_size is None else divmod(index, batch_size)
                batch = file.require_group(f"config_batch_{batch_index}")
                _write_mace_config(batch.create_group(f"config_{config_index}"), structure)
            file.attrs["drop_last"] = False
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return n_written


def _write_mace_config(group, structure: Structure) -> None:
    def or_none(value):
        return "None" if value is None else value

    group["atomic_numbers"] = structure.numbers
    group["positions"] = structure.positions
    group["cell"] = structure.cell if structure.cell is not None else np.zeros((3, 3))
    group["pbc"] = structure.pbc
    group["weight"] = 1.0
    group["config_type"] = structure.subset or _MACE_DEFAULT_CONFIG_TYPE
    properties = group.create_group("properties")
    properties["energy"] = or_none(structure.energy)
    properties["forces"] = or_none(structure.forces)
    properties["stress"] = or_none(structure.stress)
    properties["charges"] = or_none(structure.partial_charges)
    properties["magmom"] = or_none(structure.magmom)
    properties["total_charge"] = float(structure.charge)
    properties["total_spin"] = float(structure.spin)
    weights = group.create_group("property_weights")
    for name in ("energy", "forces", "stress", "virials", "dipole", "charges"):
        weights[name] = 1.0


# --------------------------------------------------------------------------------------------
# mlip's own HDF5 (to merge or re-compress files)
# --------------------------------------------------------------------------------------------


def read_mlip_hdf5(path: str | os.PathLike, *, subset: str | None = None) -> Iterator[Structure]:
    """Structures of an mlip HDF5 file, via `StructureReader`; ``subset`` relabels them all."""
    from mlip.data.reader import StructureReader

    with StructureReader(_existing_file(path)) as reader:
        for structure in reader:
            if subset is not None:
                structure.subset = subset
            yield structure


# --------------------------------------------------------------------------------------------
# Dispatch and conversion
# --------------------------------------------------------------------------------------------

_READERS = {
    "extxyz": read_extxyz,
    "ase": read_ase,
    "asedb": read_asedb,
    "aselmdb": read_aselmdb,
    "mptrj": read_mptrj,
    "mace-hdf5": read_mace_hdf5,
    "mlip": read_mlip_hdf5,
}

_KEY_OPTIONS = tuple(_KEY_OPTION_FIELDS)

# Which `read_structures` options each format understands; others are ignored for that format.
_FORMAT_OPTIONS = {
    "extxyz": {*_KEY_OPTIONS, "subset", "found_keys"},
    "ase": {*_KEY_OPTIONS, "subset", "found_keys"},
    "asedb": {*_KEY_OPTIONS, "subset", "found_keys"},
    "aselmdb": {*_KEY_OPTIONS, "subset", "found_keys"},
    "mptrj": {"mptrj_energy", "subset"},
    "mace-hdf5": {"subset"},
    "mlip": {"subset"},
}

_ALL_OPTIONS = set().union(*_FORMAT_OPTIONS.values())


def detect_format(path: str | os.PathLike) -> str:
    """The format of a file from its name (and, for ``.h5``, its top-level groups)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".xyz", ".extxyz"):
        return "extxyz"
    if suffix == ".db":
        return "asedb"
    if suffix in (".aselmdb", ".lmdb"):
        return "aselmdb"
    if suffix == ".json":
        return "mptrj"
    if suffix in (".h5", ".hdf5"):
        return _detect_hdf5_flavour(path)
    return "ase"


def _detect_hdf5_flavour(path: Path) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as file:
            if file.attrs.get("format") in ("mlip-hdf5", b"mlip-hdf5"):
                return "mlip"
            if any(name.startswith("config_batch_") for name in file.keys()):
                return "mace-hdf5"
    except OSError as error:
        raise MLIPDataError(f"not a readable HDF5 file: {error}", path) from None
    raise MLIPDataError("HDF5 file is neither mlip's schema nor MACE's layout", path)


def read_structures(path: str | os.PathLike, format: str = "auto", **options) -> Iterator[Structure]:
    """Structures of one file in any supported format (``format="auto"``: from the file name).

    Options: ``energy_key``, ``forces_key``, ``stress_key``, ``magmom_key``, ``charges_key``,
    ``charge_key``, ``spin_key``, ``subset_key`` (ASE-style formats), ``mptrj_energy``
    (``uncorrected``/``corrected``/``per_atom``), ``found_keys`` (ASE-style formats; see
    `read_ase`) and ``subset`` (all formats). Options a format does not use are ignored for it,
    so one set of options can serve several input files.
    """
    unknown = set(options) - _ALL_OPTIONS
    if unknown:
        raise TypeError(f"unknown conversion option(s): {', '.join(sorted(unknown))}")
    if format == "auto":
        format = detect_format(_existing_file(path))
    if format not in _READERS:
        raise ValueError(f"unknown format {format!r}; choose from auto, {', '.join(FORMATS)}")
    chosen = {name: value for name, value in options.items() if name in _FORMAT_OPTIONS[format] and value is not None}
    if "mptrj_energy" in chosen:
        chosen["energy"] = chosen.pop("mptrj_energy")
    return _READERS[format](path, **chosen)


@dataclass
class ConversionSummary:
    """What a conversion wrote, and the warnings it gave."""

    output: Path
    n_structures: int = 0
    n_atoms: int = 0
    element_counts: Counter = field(default_factory=Counter)  # atomic number -> atom count
    n_with_energy: int = 0
    n_with_forces: int = 0
    n_with_stress: int = 0
    subsets: Counter = field(default_factory=Counter)  # subset -> structure count
    warnings: list[str] = field(default_factory=list)  # e.g. a requested label key found nowhere

    def add(self, structure: Structure) -> None:
        self.n_structures += 1
        self.n_atoms += structure.n_atoms
        self.element_counts.update(structure.numbers.tolist())
        self.n_with_energy += structure.energy is not None
        self.n_with_forces += structure.forces is not None
        self.n_with_stress += structure.stress is not None
        self.subsets[structure.subset] += 1


class LabelKeyWarning(UserWarning):
    """A label key given explicitly (``energy_key="REF_energy"``, ...) matched no structure."""


def convert_with_summary(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    format: str = "auto",
    *,
    level_of_theory: str = "",
    energy_reference: str = "",
    source: str = "",
    compression: str = "gzip",
    overwrite: bool = False,
    min_distance: float | None = DEFAULT_MIN_DISTANCE,
    **options,
) -> ConversionSummary:
    """`convert`, returning a `ConversionSummary` (counts of structures, atoms, elements, labels).

    ``min_distance`` (Å): a structure with two atoms closer than this, periodic images
    included, is an error naming the pair (`mlip.data.neighbours.check_min_distance`); None or
    0 disables the check. Every label key given explicitly (``energy_key``, ``forces_key``,
    ..., ``subset_key``) that was found in no structure gives a `LabelKeyWarning` (also listed
    in ``summary.warnings``): a mistyped key would otherwise silently store the label as
    missing everywhere.
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not paths:
        raise ValueError("no input files given")
    output = Path(output)
    for path in paths:
        if Path(path).resolve() == output.resolve():
            raise ValueError(f"input {os.fspath(path)!r} is also the output file")
    if min_distance is not None and not min_distance >= 0:
        raise ValueError(f"min_distance must be a distance >= 0 in Å (0 or None: no check), got {min_distance!r}")
    # Check every input exists and the options are known before anything is written.
    formats = [detect_format(_existing_file(path)) if format == "auto" else format for path in paths]
    found_keys: Counter = Counter()
    streams = [
        read_structures(_existing_file(path), path_format, found_keys=found_keys, **options)
        for path, path_format in zip(paths, formats, strict=True)
    ]
    summary = ConversionSummary(output=output)
    with StructureWriter(
        output,
        level_of_theory=level_of_theory,
        energy_reference=energy_reference,
        source=source or ", ".join(Path(path).name for path in paths),
        compression=compression,
        overwrite=overwrite,
    ) as writer:
        for path, stream in zip(paths, streams, strict=True):
            for index, structure in enumerate(stream):
                check_min_distance(structure, min_distance, file=path, index=index)
                writer.write(structure)
                summary.add(structure)
    summary.warnings = _unmatched_key_warnings(options, found_keys, paths, formats, summary.n_structures)
    for message in summary.warnings:
        warnings.warn(message, LabelKeyWarning, stacklevel=2)
    return summary


def _unmatched_key_warnings(options: Mapping, found_keys: Counter, paths, formats, n_structures: int) -> list[str]:
    """One message per explicitly given label key that no structure had."""
    keyed = [
        Path(path).name
        for path, path_format in zip(paths, formats, strict=True)
        if "found_keys" in _FORMAT_OPTIONS[path_format]  # the formats that use label keys
    ]
    messages = []
    for option, label in _KEY_OPTION_FIELDS.items():
        key = options.get(option)
        if key is None or found_keys[label]:
            continue
        flag = "--" + option.replace("_", "-")
        if keyed:
            where = f"was found in no structure of {', '.join(keyed)}"
            effect = {"charge": "charge 0 used", "spin": "multiplicity 1 used", "subset": "no subset label"}.get(
                label, f"{label} stored as missing"
            )
            messages.append(f"{flag} {key!r} {where} ({effect} for all {n_structures} structures)")
        else:
            messages.append(
                f"{flag} {key!r} was found in no structure: it applies to extxyz/ASE files, ASE databases and "
                f"ASE-LMDB shards only, and the inputs are {', '.join(sorted(set(formats)))}"
            )
    return messages


def convert(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    format: str = "auto",
    **options,
) -> int:
    """Stream one or several input files into one mlip HDF5 file; returns the structure count.

    ``format`` applies to every input (``"auto"``: detected per file from its name). Keywords:
    ``level_of_theory``, ``energy_reference``, ``source`` (file attributes; ``source`` defaults
    to the input file names), ``compression``, ``overwrite``, and the reader options of
    `read_structures`, and ``min_distance`` (see `convert_with_summary`). Structures are written
    as they are read, never all held in memory; on any error the output file is not created
    (the writer writes to a temporary file).
    """
    return convert_with_summary(inputs, output, format, **options).n_structures


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise MLIPDataError("no such file", path)
    return path
