"""Random access to one mlip HDF5 (schema v1) file.

`StructureReader` checks the file on construction (format, schema version, layout, offsets),
keeps a few compact per-structure NumPy arrays in memory (offsets, charge, spin, label masks)
and reads atoms only when a structure is asked for.

The HDF5 handle is opened lazily and never pickled: each process (e.g. each DataLoader worker)
opens its own handle on first use, detected through ``os.getpid()``.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mlip.constants import MAX_ATOMIC_NUMBER
from mlip.data.errors import MLIPDataError
from mlip.data.schema import (
    ATOM_FIELDS,
    FIELDS,
    LABEL_FIELDS,
    INTEGER_RANGES,
    OFFSETS_PATH,
    STRUCTURE_FIELDS,
    check_header,
    range_reason,
    zero_volume_reason,
)
from mlip.data.structure import Structure

#: Atoms per read in the streaming passes over the whole file (element sets, subset labels).
_STREAM_ROWS = 1 << 20
#: Per-dataset HDF5 chunk cache (bytes). Reads go block by block, so a few chunks suffice.
_CHUNK_CACHE_BYTES = 1 << 20
#: Fields kept in memory as compact per-structure arrays (read once on open).
_CACHED_STRUCTURE_FIELDS = ("charge", "spin")
#: `read` fetches aligned blocks of this many structures and keeps the last `_CACHED_BLOCKS`.
_READ_AHEAD = 32
_CACHED_BLOCKS = 2
#: Blocks with more atoms than this are not read ahead (huge structures are read alone).
_MAX_BLOCK_ATOMS = 1 << 16
#: NumPy dtype kinds accepted on reading, per schema dtype (strings may be variable or fixed length).
_DTYPE_KINDS = {"int16": "iu", "int32": "iu", "int64": "iu", "float64": "f", "bool": "b", "str": "OSU"}


@dataclass
class _Columns:
    """Raw dataset rows of consecutive structures, starting at structure ``start``."""

    start: int
    atom_start: int
    atoms: dict  # field name -> per-atom rows (or None if the field is absent from the file)
    structures: dict  # field name -> per-structure rows


class StructureReader:
    """Read structures from one mlip HDF5 file.

    Attributes (NumPy arrays of length ``len(reader)``, cheap, no atoms read):
        offsets (S+1,) int64, n_atoms (S,) int64, charge (S,) int32, spin (S,) int32,
        has_energy, has_forces, has_stress, has_magmom, has_partial_charges (S,) bool.
    Lazily computed by a streaming pass: `subset_codes` / `subset_names`, `element_masks`,
    `elements`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._handle: h5py.File | None = None
        self._handle_pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}  # open datasets keep their chunk caches
        self._blocks: OrderedDict[int, _Columns] = OrderedDict()  # recently read blocks of rows
        self._subset_codes: np.ndarray | None = None
        self._subset_names: tuple[str, ...] | None = None
        self._element_masks: np.ndarray | None = None

        try:
            self._load_index()
        finally:
            # Leave no handle open in the constructing process: forked workers then start clean.
            self.close()

    def _load_index(self) -> None:
        """Check the file and read the compact per-structure arrays."""
        file = self._file()
        self.schema_version = check_header(file.attrs, str(self.path))
        self.attrs = _decode_attributes(file.attrs, str(self.path))
        self.n_structures = self._count_attribute("n_structures")
        self.n_total_atoms = self._count_attribute("n_atoms")
        self._check_layout(file)
        self.offsets = self._read_whole(OFFSETS_PATH).astype(np.int64, copy=False)
        self._check_offsets()
        self.n_atoms = np.diff(self.offsets)
        self.charge = self._read_in_range("charge")
        self.spin = self._read_in_range("spin")
        self.masks = {field.name: self._read_mask(field) for field in LABEL_FIELDS}

    def _read_in_range(self, name: str) -> np.ndarray:
        """The (S,) int32 charges or multiplicities, after checking all are in `INTEGER_RANGES`.

        Checked on open, vectorised, so that a bad value stops a run before training instead of
        producing NaN (or an embedding index error) in the middle of an epoch.
        """
        values = self._read_whole(f"structures/{name}")
        low, high = INTEGER_RANGES[name]
        bad = np.flatnonzero((values < low) | (values > high))  # before the cast: no wrap-around
        if bad.size:
            index = int(bad[0])
            more = f" ({bad.size} structures in all)" if bad.size > 1 else ""
            raise MLIPDataError(
                range_reason(name, int(values[index])) + more,
                self.path,
                index=index,
                structure_id=self._read_id(index),
                field=name,
            )
        return values.astype(np.int32, copy=False)

    def _read_id(self, index: int) -> str | None:
        """The id of one structure, for error messages (None if it cannot be read)."""
        try:
            return str(self._file()["structures/id"].asstr()[index])
        except (OSError, KeyError, ValueError):
            return None

    def _count_attribute(self, name: str) -> int:
        value = self.attrs[name]
        if isinstance(value, (bool, float)) or not isinstance(value, int) or value < 0:
            raise MLIPDataError(f"expected a non-negative integer, got {value!r}", self.path, field=name)
        return value

    # ---------------------------------------------------------------- handle management

    def _file(self) -> h5py.File:
        """The HDF5 handle of this process, opened on first use."""
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = self._open()
            self._handle_pid = os.getpid()
            self._datasets = {}
            self._blocks = OrderedDict()
        return self._handle

    def _dataset(self, path: str) -> h5py.Dataset | None:
        """An open dataset of this process's handle (None if absent from the file).

        Datasets are opened once per handle: each keeps its own HDF5 chunk cache, so reading
        neighbouring structures does not decompress the same chunk again.
        """
        file = self._file()
        if path not in self._datasets:
            self._datasets[path] = file[path] if path in file else None
        return self._datasets[path]

    def _open(self) -> h5py.File:
        if not self.path.exists():
            raise FileNotFoundError(f"no such dataset file: {self.path}")
        try:
            return h5py.File(self.path, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES)
        except OSError as error:
            raise MLIPDataError(f"cannot open as HDF5 (truncated or corrupt?): {error}", self.path) from error

    def close(self) -> None:
        """Close this process's handle (it reopens on the next read)."""
        if self._handle is not None and self._handle_pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._handle_pid = None
        self._datasets = {}
        self._blocks = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_handle_pid"] = None
        state["_datasets"] = {}
        state["_blocks"] = OrderedDict()
        return state

    def __enter__(self) -> StructureReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---------------------------------------------------------------- checks on open

    def _check_layout(self, file: h5py.File) -> None:
        n_rows = {"atoms": self.n_total_atoms, "structures": self.n_structures}
        for field in FIELDS:
            if field.optional and field.path not in file and field.mask_path not in file:
                continue  # label absent from the whole file: read as missing everywhere
            shape = (n_rows[field.group], *field.shape_tail)
            self._check_dataset(file, field.path, shape, field.name, _DTYPE_KINDS[field.dtype])
            if field.optional:
                self._check_dataset(file, field.mask_path, (self.n_structures,), field.mask_name, "b")
        self._check_dataset(file, OFFSETS_PATH, (self.n_structures + 1,), "offsets", "iu")

    def _check_dataset(self, file: h5py.File, path: str, shape: tuple[int, ...], name: str, kinds: str) -> None:
        if path not in file:
            raise MLIPDataError(f"dataset /{path} is missing", self.path, field=name)
        dataset = file[path]
        if not isinstance(dataset, h5py.Dataset):
            raise MLIPDataError(f"/{path} is not a dataset", self.path, field=name)
        if dataset.shape != shape:
            raise MLIPDataError(
                f"dataset /{path} has shape {dataset.shape}, expected {shape} "
                "(from the n_structures / n_atoms attributes)",
                self.path,
                field=name,
            )
        if dataset.dtype.kind not in kinds:
            raise MLIPDataError(f"dataset /{path} has dtype {dataset.dtype}, not the schema's", self.path, field=name)

    def _check_offsets(self) -> None:
        offsets = self.offsets
        if offsets[0] != 0:
            raise MLIPDataError(f"offsets[0] is {offsets[0]}, expected 0", self.path, index=0, field="offsets")
        empty_or_decreasing = np.flatnonzero(np.diff(offsets) < 1)
        if empty_or_decreasing.size:
            raise MLIPDataError(
                "offsets are not strictly increasing (a structure would have no atoms)",
                self.path,
                index=int(empty_or_decreasing[0]),
                field="offsets",
            )
        if offsets[-1] != self.n_total_atoms:
            raise MLIPDataError(
                f"last offset {offsets[-1]} differs from n_atoms {self.n_total_atoms}",
                self.path,
                index=self.n_structures - 1,
                field="offsets",
            )

    def _read_whole(self, path: str) -> np.ndarray:
        try:
            return self._file()[path][()]
        except OSError as error:
            raise MLIPDataError(f"cannot read /{path} (corrupt file?): {error}", self.path, field=path) from error

    def _read_mask(self, field) -> np.ndarray:
        if field.mask_path not in self._file():
            return np.zeros(self.n_structures, dtype=bool)
        return self._read_whole(field.mask_path).astype(bool, copy=False)

    # ---------------------------------------------------------------- metadata

    def __len__(self) -> int:
        return self.n_structures

    def __repr__(self) -> str:
        return f"StructureReader({str(self.path)!r}, n_structures={self.n_structures}, n_atoms={self.n_total_atoms})"

    has_energy = property(lambda self: self.masks["energy"], doc="(S,) bool: energy label present.")
    has_forces = property(lambda self: self.masks["forces"], doc="(S,) bool: force labels present.")
    has_stress = property(lambda self: self.masks["stress"], doc="(S,) bool: stress label present.")
    has_magmom = property(lambda self: self.masks["magmom"], doc="(S,) bool: magnetic moments present.")
    has_partial_charges = property(lambda self: self.masks["partial_charges"], doc="(S,) bool: partial charges present.")

    @property
    def subset_codes(self) -> np.ndarray:
        """(S,) int32: index of each structure's subset label into `subset_names`."""
        if self._subset_codes is None:
            self._subset_codes, self._subset_names = self._encode_subsets()
        return self._subset_codes

    @property
    def subset_names(self) -> tuple[str, ...]:
        """The distinct subset labels of the file, sorted."""
        if self._subset_names is None:
            self._subset_codes, self._subset_names = self._encode_subsets()
        return self._subset_names

    def _encode_subsets(self) -> tuple[np.ndarray, tuple[str, ...]]:
        """Stream the subset labels once, turning strings into small integer codes."""
        dataset = self._file()["structures/subset"].asstr()
        codes_by_name: dict[str, int] = {}
        codes = np.empty(self.n_structures, dtype=np.int32)
        for start in range(0, self.n_structures, _STREAM_ROWS):
            stop = min(start + _STREAM_ROWS, self.n_structures)
            labels = dataset[start:stop]
            unique_labels, inverse = np.unique(labels.astype(str), return_inverse=True)
            chunk_codes = np.array([codes_by_name.setdefault(str(name), len(codes_by_name)) for name in unique_labels])
            codes[start:stop] = chunk_codes[inverse.reshape(-1)]
        # Re-number so that the codes follow the sorted names.
        names = sorted(codes_by_name)
        recode = np.empty(len(names), dtype=np.int32)
        for sorted_code, name in enumerate(names):
            recode[codes_by_name[name]] = sorted_code
        return (recode[codes] if names else codes), tuple(names)

    @property
    def element_masks(self) -> np.ndarray:
        """(S, 2) uint64 bit sets: bit Z-1 of the 128 bits is set if element Z occurs."""
        if self._element_masks is None:
            self._element_masks = self._compute_element_masks()
        return self._element_masks

    @property
    def elements(self) -> np.ndarray:
        """Sorted atomic numbers present in the file."""
        union = np.bitwise_or.reduce(self.element_masks, axis=0) if self.n_structures else np.zeros(2, np.uint64)
        return bitmask_to_numbers(union)

    def _compute_element_masks(self) -> np.ndarray:
        """One streaming pass over /atoms/numbers."""
        masks = np.zeros((self.n_structures, 2), dtype=np.uint64)
        numbers_dataset = self._file()["atoms/numbers"]
        for atom_start in range(0, self.n_total_atoms, _STREAM_ROWS):
            atom_stop = min(atom_start + _STREAM_ROWS, self.n_total_atoms)
            numbers = numbers_dataset[atom_start:atom_stop].astype(np.int64)
            if numbers.min() < 1 or numbers.max() > MAX_ATOMIC_NUMBER:
                bad_atom = atom_start + int(np.flatnonzero((numbers < 1) | (numbers > MAX_ATOMIC_NUMBER))[0])
                raise MLIPDataError(
                    f"unknown element (atomic number outside 1..{MAX_ATOMIC_NUMBER})",
                    self.path,
                    index=self._structure_of_atom(bad_atom),
                    field="numbers",
                )
            # Structure index of every atom in this slice.
            structure_of_atom = np.searchsorted(self.offsets, np.arange(atom_start, atom_stop), side="right") - 1
            pair_keys = np.unique(structure_of_atom * 128 + (numbers - 1))
            structures, bits = np.divmod(pair_keys, 128)
            words, bits_in_word = np.divmod(bits, 64)
            np.bitwise_or.at(masks, (structures, words), np.left_shift(np.uint64(1), bits_in_word.astype(np.uint64)))
        return masks

    def _structure_of_atom(self, atom: int) -> int:
        return int(np.searchsorted(self.offsets, atom, side="right") - 1)

    # ---------------------------------------------------------------- reading structures

    def read(self, index: int) -> Structure:
        """The structure at ``index`` (negative indices count from the end).

        Reads the aligned block of `_READ_AHEAD` structures around ``index`` with one slice
        per dataset and keeps it, so sequential or strided access costs one HDF5 read per
        dataset per block rather than per structure.
        """
        index = self._normalise_index(index)
        block_start = index - index % _READ_AHEAD
        block = self._blocks.get(block_start)
        if block is None:
            block_stop = min(block_start + _READ_AHEAD, self.n_structures)
            if self.offsets[block_stop] - self.offsets[block_start] > _MAX_BLOCK_ATOMS:
                return self._assemble_from(self._read_columns(index, index + 1, index), index)
            block = self._read_columns(block_start, block_stop, index)
            self._blocks[block_start] = block
            while len(self._blocks) > _CACHED_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(block_start)
        return self._assemble_from(block, index)

    def __getitem__(self, index: int) -> Structure:
        return self.read(index)

    def read_many(self, indices: Sequence[int] | np.ndarray) -> list[Structure]:
        """Structures at ``indices``, in that order; consecutive indices share one slice read."""
        indices = np.array([self._normalise_index(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)])
        if indices.size == 0:
            return []
        unique_sorted = np.unique(indices)
        run_breaks = np.flatnonzero(np.diff(unique_sorted) != 1) + 1
        by_index: dict[int, Structure] = {}
        for run in np.split(unique_sorted, run_breaks):
            for index, structure in zip(range(run[0], run[-1] + 1), self._read_run(int(run[0]), int(run[-1]) + 1)):
                by_index[index] = structure
        return [by_index[int(i)] for i in indices]

    def __iter__(self):
        """All structures in order, read block by block (bounded memory)."""
        block = 256
        for start in range(0, self.n_structures, block):
            yield from self._read_run(start, min(start + block, self.n_structures))

    def _normalise_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.n_structures
        if not 0 <= index < self.n_structures:
            raise IndexError(f"structure index out of range for {self.path} ({self.n_structures} structures)")
        return index

    def _read_run(self, start: int, stop: int) -> list[Structure]:
        """Structures start..stop-1 with one slice read per dataset."""
        columns = self._read_columns(start, stop, start)
        return [self._assemble_from(columns, index) for index in range(start, stop)]

    def _read_columns(self, start: int, stop: int, reported_index: int) -> _Columns:
        """Raw rows of the datasets for structures start..stop-1 (errors name ``reported_index``).

        Skipped (None): labels that no structure of the range has, charge and spin (kept in
        memory), and subset labels once their codes are known.
        """
        atom_start, atom_stop = int(self.offsets[start]), int(self.offsets[stop])

        def needed(field) -> bool:
            if field.optional:
                return bool(self.masks[field.name][start:stop].any())
            if field.name == "subset":
                return self._subset_codes is None
            return field.name not in _CACHED_STRUCTURE_FIELDS

        atom_columns = {
            field.name: self._read_slice(field, atom_start, atom_stop, reported_index) if needed(field) else None
            for field in ATOM_FIELDS
        }
        structure_columns = {
            field.name: self._read_slice(field, start, stop, reported_index) if needed(field) else None
            for field in STRUCTURE_FIELDS
        }
        return _Columns(start, atom_start, atom_columns, structure_columns)

    def _assemble_from(self, columns: _Columns, index: int) -> Structure:
        row = index - columns.start
        first = int(self.offsets[index]) - columns.atom_start
        last = int(self.offsets[index + 1]) - columns.atom_start
        atoms = {name: None if column is None else column[first:last] for name, column in columns.atoms.items()}
        scalars = {name: None if column is None else column[row] for name, column in columns.structures.items()}
        return self._assemble(index, atoms, scalars)

    def _read_slice(self, field, start: int, stop: int, first_structure: int) -> np.ndarray | None:
        dataset = self._dataset(field.path)
        if dataset is None:  # a label absent from the whole file
            return None
        try:
            return dataset.asstr()[start:stop] if field.is_string else dataset[start:stop]
        except OSError as error:
            raise MLIPDataError(
                f"cannot read rows {start}:{stop} of /{field.path} (corrupt file?): {error}",
                self.path,
                index=first_structure,
                field=field.name,
            ) from error

    def _subset_label(self, index: int, stored_label) -> str:
        if stored_label is None:  # not read: the codes are known
            return self._subset_names[self._subset_codes[index]]
        return str(stored_label)

    def _assemble(self, index: int, atoms: dict, scalars: dict) -> Structure:
        structure_id = str(scalars["id"])

        def label(name: str, value):
            """The stored value if its mask says present (and then it must be finite)."""
            if not self.masks[name][index]:
                return None
            if not np.isfinite(value).all():
                raise MLIPDataError(
                    "label marked present (has_" + name + " is True) but contains NaN or inf",
                    self.path,
                    index=index,
                    structure_id=structure_id,
                    field=name,
                )
            return np.array(value, dtype=np.float64)

        numbers = atoms["numbers"].astype(np.int64)
        if numbers.min() < 1 or numbers.max() > MAX_ATOMIC_NUMBER:
            raise MLIPDataError(
                f"unknown element (atomic number outside 1..{MAX_ATOMIC_NUMBER})",
                self.path,
                index=index,
                structure_id=structure_id,
                field="numbers",
            )
        positions = np.array(atoms["positions"], dtype=np.float64)
        if not np.isfinite(positions).all():
            raise MLIPDataError("contains NaN or inf", self.path, index=index, structure_id=structure_id, field="positions")
        cell = np.array(scalars["cell"], dtype=np.float64)
        if not np.isfinite(cell).all():
            raise MLIPDataError("contains NaN or inf", self.path, index=index, structure_id=structure_id, field="cell")
        pbc = np.array(scalars["pbc"], dtype=bool)
        energy = label("energy", scalars["energy"])
        stress = label("stress", scalars["stress"])
        if stress is not None:
            no_volume = zero_volume_reason(cell)
            if no_volume:
                raise MLIPDataError(
                    f"stress present but {no_volume}", self.path, index=index, structure_id=structure_id, field="stress"
                )
        return Structure(
            numbers=numbers,
            positions=positions,
            cell=None if (not pbc.any() and not cell.any()) else cell,
            pbc=pbc,
            energy=None if energy is None else float(energy),
            forces=label("forces", atoms["forces"]),
            stress=stress,
            magmom=label("magmom", atoms["magmom"]),
            partial_charges=label("partial_charges", atoms["partial_charges"]),
            charge=int(self.charge[index]),
            spin=int(self.spin[index]),
            id=structure_id,
            subset=self._subset_label(index, scalars["subset"]),
        )


def _decode_attributes(attrs, file: str) -> dict:
    decoded = {}
    for name, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, np.generic):
            value = value.item()
        decoded[name] = value
    try:
        decoded["units"] = json.loads(decoded["units"])
    except (TypeError, ValueError):
        raise MLIPDataError(f"attribute is not valid JSON: {decoded['units']!r}", file, field="units") from None
    return decoded


def numbers_to_bitmask(numbers) -> np.ndarray:
    """(2,) uint64 bit set of atomic numbers (bit Z-1)."""
    mask = np.zeros(2, dtype=np.uint64)
    for number in np.unique(np.asarray(numbers, dtype=np.int64)):
        if not 1 <= number <= MAX_ATOMIC_NUMBER:
            raise ValueError(f"atomic number {number} outside 1..{MAX_ATOMIC_NUMBER}")
        word, bit = divmod(int(number) - 1, 64)
        mask[word] |= np.uint64(1) << np.uint64(bit)
    return mask


def bitmask_to_numbers(mask: np.ndarray) -> np.ndarray:
    """Inverse of `numbers_to_bitmask`: sorted atomic numbers whose bits are set."""
    numbers = [
        word * 64 + bit + 1
        for word in range(2)
        for bit in range(64)
        if (int(mask[word]) >> bit) & 1
    ]
    return np.array(numbers, dtype=np.int64)
