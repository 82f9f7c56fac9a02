"""Streaming writer of mlip HDF5 (schema v1) files.

`StructureWriter` validates each structure, buffers at most ``chunk_structures`` structures (or
``chunk_atoms`` atoms) in memory and appends them to resizable, chunked, compressed datasets.
It writes to a hidden temporary file in the destination directory and renames it onto the
destination only when closed without error, so a reader never sees a half-written file and a
failed conversion leaves nothing behind.

A process killed with SIGKILL (or by the OOM killer, or a power cut) cannot delete its
temporary file. Temporary names are therefore recognisable, ``.<name>.<host>.<pid>.<token>.mlip-tmp``
(`temporary_path_for`), and the next writer of the same destination deletes those whose
process, on this host, no longer exists (`sweep_stale_temporaries`).

    with StructureWriter("train.h5", level_of_theory="PBE", source="my-dft-run") as writer:
        for structure in structures:
            writer.write(structure)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

import mlip
from mlip.data.errors import MLIPDataError
from mlip.data.schema import (
    ATOM_FIELDS,
    FORMAT_NAME,
    LABEL_FIELDS,
    OFFSETS_PATH,
    SCHEMA_VERSION,
    STRUCTURE_FIELDS,
    Field,
    units_json,
    validate_structure,
)
from mlip.data.structure import Structure
from mlip.files import atomic_path, sweep_stale_temporaries, temporary_path_for  # noqa: F401 (re-exported)

DEFAULT_CHUNK_STRUCTURES = 256
DEFAULT_CHUNK_ATOMS = 1024
DEFAULT_BUFFER_STRUCTURES = 4096
DEFAULT_BUFFER_ATOMS = 1 << 17
_STRING_DTYPE = h5py.string_dtype("utf-8")


class StructureWriter:
    """Write structures to ``path`` one at a time; use as a context manager.

    Args:
        path: destination file.
        level_of_theory, energy_reference, source: free-text file attributes describing the
            labels (e.g. "PBE/PAW 520 eV"), the zero of energy (e.g. "isolated atoms") and
            where the data comes from.
        compression: "gzip", "lzf" or None.
        compression_opts: gzip level (default 4); ignored for lzf.
        chunk_structures: rows per HDF5 chunk of the per-structure datasets. Small chunks make
            random access cheap (a read decompresses whole chunks); the default suits
            shuffled training.
        chunk_atoms: rows per HDF5 chunk of the per-atom datasets.
        buffer_structures, buffer_atoms: the in-memory buffer is flushed to disk when it holds
            this many structures or atoms (bounds memory; larger buffers mean fewer, bigger
            HDF5 writes).
        overwrite: replace an existing file at ``path`` (only once writing succeeded).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        level_of_theory: str = "",
        energy_reference: str = "",
        source: str = "",
        compression: str | None = "gzip",
        compression_opts: int | None = None,
        chunk_structures: int = DEFAULT_CHUNK_STRUCTURES,
        chunk_atoms: int = DEFAULT_CHUNK_ATOMS,
        buffer_structures: int = DEFAULT_BUFFER_STRUCTURES,
        buffer_atoms: int = DEFAULT_BUFFER_ATOMS,
        overwrite: bool = False,
    ) -> None:
        if compression not in ("gzip", "lzf", None):
            raise ValueError(f"compression must be 'gzip', 'lzf' or None, got {compression!r}")
        if min(chunk_structures, chunk_atoms, buffer_structures, buffer_atoms) < 1:
            raise ValueError("chunk and buffer sizes must be positive")
        self.path = Path(path)
        self.overwrite = overwrite
        self._attributes = {
            "level_of_theory": str(level_of_theory),
            "energy_reference": str(energy_reference),
            "source": str(source),
        }
        self._compression = compression
        self._compression_opts = (4 if compression_opts is None else compression_opts) if compression == "gzip" else None
        self._chunk_structures = int(chunk_structures)
        self._chunk_atoms = int(chunk_atoms)
        self._buffer_structures = int(buffer_structures)
        self._buffer_atoms = int(buffer_atoms)
        self._file: h5py.File | None = None
        self._temporary_path: Path | None = None
        self._rename = contextlib.ExitStack()  # holds `atomic_path`: closing it renames the file
        self._buffer: list[Structure] = []
        self._buffered_atoms = 0
        self._n_structures = 0  # written to disk
        self._n_atoms = 0  # written to disk
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> StructureWriter:
        self.open()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Create the temporary file (done by ``with`` or the first `write`)."""
        if self._file is not None:
            return
        if self._closed:
            raise RuntimeError(f"writer for {self.path} is already closed")
        self._refuse_to_clobber()
        self._temporary_path = self._rename.enter_context(atomic_path(self.path))
        self._file = h5py.File(self._temporary_path, "x")
        try:
            self._create_datasets()
        except BaseException:
            self.abort()
            raise

    def close(self) -> None:
        """Flush, finalise the attributes and move the file into place."""
        if self._closed:
            return
        self.open()
        try:
            self._flush()
            self._file.attrs["n_structures"] = np.int64(self._n_structures)
            self._file.attrs["n_atoms"] = np.int64(self._n_atoms)
            self._file.close()
            self._refuse_to_clobber()
            self._rename.close()  # the rename onto self.path
        except BaseException:
            self.abort()
            raise
        self._file = None
        self._closed = True

    def abort(self) -> None:
        """Discard everything written so far: close and delete the temporary file."""
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away anyway
                pass
            self._file = None
        self._rename.__exit__(RuntimeError, RuntimeError("aborted"), None)  # deletes the temporary file
        self._buffer.clear()
        self._closed = True

    def _refuse_to_clobber(self) -> None:
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")

    # ---------------------------------------------------------------- writing

    @property
    def n_written(self) -> int:
        """Structures accepted so far (written to disk or buffered)."""
        return self._n_structures + len(self._buffer)

    def write(self, structure: Structure) -> None:
        """Validate and append one structure (raises `MLIPDataError` if it is malformed)."""
        if self._closed:
            raise RuntimeError(f"writer for {self.path} is closed")
        self.open()
        validate_structure(structure, self.n_written, str(self.path))
        self._buffer.append(structure)
        self._buffered_atoms += structure.n_atoms
        if len(self._buffer) >= self._buffer_structures or self._buffered_atoms >= self._buffer_atoms:
            self._flush()

    def write_many(self, structures: Iterable[Structure]) -> int:
        """Append every structure of an iterable (consumed lazily); return how many."""
        count = 0
        for structure in structures:
            self.write(structure)
            count += 1
        return count

    # ---------------------------------------------------------------- HDF5 details

    def _create_datasets(self) -> None:
        file = self._file
        file.attrs["format"] = FORMAT_NAME
        file.attrs["schema_version"] = np.int64(SCHEMA_VERSION)
        file.attrs["units"] = units_json()
        file.attrs["created_with"] = f"mlip {mlip.__version__}"
        for name, value in self._attributes.items():
            file.attrs[name] = value
        file.attrs["n_structures"] = np.int64(0)
        file.attrs["n_atoms"] = np.int64(0)

        for field in ATOM_FIELDS:
            self._create_growing(field.path, field.dtype, field.shape_tail, self._chunk_atoms)
        for field in STRUCTURE_FIELDS:
            self._create_growing(field.path, field.dtype, field.shape_tail, self._chunk_structures)
        for field in LABEL_FIELDS:
            self._create_growing(field.mask_path, "bool", (), self._chunk_structures)
        offsets = self._create_growing(OFFSETS_PATH, "int64", (), self._chunk_structures)
        offsets.resize((1,))
        offsets[0] = 0

    def _create_growing(self, path: str, dtype: str, shape_tail: tuple[int, ...], chunk_rows: int):
        """An empty dataset that grows along its first axis."""
        stored_dtype = _STRING_DTYPE if dtype == "str" else np.dtype(dtype)
        return self._file.create_dataset(
            path,
            shape=(0, *shape_tail),
            maxshape=(None, *shape_tail),
            dtype=stored_dtype,
            chunks=(chunk_rows, *shape_tail),
            compression=self._compression,
            compression_opts=self._compression_opts,
            shuffle=self._compression is not None and dtype != "str",
        )

    def _flush(self) -> None:
        if not self._buffer:
            return
        batch = self._buffer
        atom_columns = {field.name: _atom_column(batch, field, self._buffered_atoms) for field in ATOM_FIELDS}
        structure_columns = {field.name: _structure_column(batch, field) for field in STRUCTURE_FIELDS}
        masks = {field.mask_path: np.array([getattr(s, field.name) is not None for s in batch]) for field in LABEL_FIELDS}
        counts = np.fromiter((s.n_atoms for s in batch), dtype=np.int64, count=len(batch))
        offsets = self._n_atoms + np.cumsum(counts)

        try:
            for field in ATOM_FIELDS:
                _append(self._file[field.path], atom_columns[field.name])
            for field in STRUCTURE_FIELDS:
                _append(self._file[field.path], structure_columns[field.name])
            for mask_path, mask in masks.items():
                _append(self._file[mask_path], mask)
            _append(self._file[OFFSETS_PATH], offsets)
        except OSError as error:
            raise MLIPDataError(f"could not write to the temporary file: {error}", self.path) from error

        self._n_structures += len(batch)
        self._n_atoms += int(counts.sum())
        self._buffer = []
        self._buffered_atoms = 0


def _atom_column(batch: list[Structure], field: Field, n_atoms: int) -> np.ndarray:
    """Concatenate one per-atom field over a batch; NaN rows where the label is missing."""
    column = np.empty((n_atoms, *field.shape_tail), dtype=field.dtype)
    start = 0
    for structure in batch:
        stop = start + structure.n_atoms
        value = getattr(structure, field.name)
        column[start:stop] = np.nan if value is None else value
        start = stop
    return column


def _structure_column(batch: list[Structure], field: Field) -> np.ndarray:
    """Stack one per-structure field over a batch; NaN (labels) or zeros (cell) where missing."""
    if field.is_string:
        return np.array([getattr(s, field.name) for s in batch], dtype=object)
    column = np.empty((len(batch), *field.shape_tail), dtype=field.dtype)
    missing = np.nan if field.optional else 0
    for row, structure in enumerate(batch):
        value = getattr(structure, field.name)
        column[row] = missing if value is None else value
    return column


def _append(dataset: h5py.Dataset, rows: np.ndarray) -> None:
    start = dataset.shape[0]
    dataset.resize((start + rows.shape[0], *dataset.shape[1:]))
    dataset[start:] = rows


def write_structures(path: str | os.PathLike, structures: Iterable[Structure], **options) -> int:
    """Write an iterable of structures to ``path`` atomically; return how many were written.

    ``options`` are the keyword arguments of `StructureWriter` (file attributes, compression,
    chunk sizes, overwrite).
    """
    with StructureWriter(path, **options) as writer:
        return writer.write_many(structures)
