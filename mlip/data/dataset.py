"""`HDF5Dataset`: a lazy torch Dataset of neighbour graphs over one or several mlip HDF5 files.

All files (or shards, globs allowed) form one index space. Structures are read only when asked
for; what stays in memory is a handful of compact NumPy arrays per structure (offsets, charge,
spin, label masks, and the selected indices), so memory does not grow while iterating.

    dataset = HDF5Dataset("data/train-*.h5", cutoff=5.0, subsets=["neutral"], elements=["H", "C", "O"])
    train, val, test = dataset.split(val_fraction=0.1, test_fraction=0.1, seed=0)
    loader = torch_geometric.loader.DataLoader(train, batch_size=32, shuffle=True, num_workers=2)

Selections (`split`, `subset`) are `HDF5Dataset`s themselves: they expose `get_structure`, the
metadata arrays and can be split again.
"""

from __future__ import annotations

import copy
import glob
import os
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from mlip.constants import is_integer
from mlip.data.graph import DEFAULT_MAX_NEIGHBOURS, DEFAULT_MIN_DISTANCE, structure_to_graph
from mlip.data.reader import StructureReader, bitmask_to_numbers, numbers_to_bitmask
from mlip.data.structure import Structure


def _per_structure(attribute: str, doc: str) -> cached_property:
    """A cached (len,) array: the readers' per-structure ``attribute`` over the selection."""

    def values(self) -> np.ndarray:
        return self._concatenated(attribute)[self._selection]

    values.__name__ = attribute
    values.__doc__ = doc
    return cached_property(values)


class DatasetSplit(NamedTuple):
    """Disjoint parts of a dataset; ``test`` is empty when no test fraction was asked for."""

    train: HDF5Dataset
    val: HDF5Dataset
    test: HDF5Dataset


class HDF5Dataset(Dataset):
    """Structures of one or several mlip HDF5 files as torch_geometric graphs.

    Args:
        paths: a file, a glob pattern, or a sequence of them (shards are concatenated in the
            given order; each glob is sorted).
        cutoff: neighbour cutoff, Å, for the graphs of `__getitem__` (None: graphs without edges).
        dtype: floating dtype of positions, cell and labels in the graphs.
        subsets: keep only structures whose subset label is one of these.
        charges: keep only structures whose total charge is one of these.
        spins: keep only structures whose spin multiplicity is one of these.
        elements: keep only structures made exclusively of these elements (symbols or atomic
            numbers). Elements that no file contains are allowed (a model's element list).
        max_atoms: keep only structures with at most this many atoms.
        min_distance: refuse (`MLIPDataError` naming file, structure and the pair of atoms) a
            structure with two atoms closer than this, Å, periodic images included; checked on
            the edge lengths of each graph, so it costs no extra neighbour search. None or 0:
            no check.
        max_neighbours: refuse a structure with more neighbour edges per atom (mean) than this
            (a collapsed cell would exhaust memory); see `mlip.data.graph.neighbour_list`.
        file_heads: for multi-head training, the head index of each file (aligned with the
            resolved `paths`): every graph of a file gets it as ``graph.head`` (a (1,) long
            tensor), and `heads` holds it per structure. None: graphs without a head.
        cache_graphs: keep every graph in memory once built, so that later epochs neither read
            the file nor search neighbours again (what MACE and NequIP do by preloading). Worth
            it for data sets that fit in memory (a 9-atom molecule's graph is about 5 kB);
            graphs are shared by the views of this dataset and must not be changed in place.

    Selections (``subsets``, ``charges``, ``spins``, ``elements``) take one value or a list;
    None keeps everything. An empty list, a subset name, charge or multiplicity that no file
    holds (a typo) raise `SelectionError`, naming what the files do hold.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        cutoff: float | None = None,
        dtype: torch.dtype = torch.float32,
        subsets: Iterable[str] | str | None = None,
        charges: Iterable[int] | int | None = None,
        spins: Iterable[int] | int | None = None,
        elements: Iterable[str | int] | None = None,
        max_atoms: int | None = None,
        min_distance: float | None = DEFAULT_MIN_DISTANCE,
        max_neighbours: float | None = DEFAULT_MAX_NEIGHBOURS,
        file_heads: Sequence[int] | None = None,
        cache_graphs: bool = False,
    ) -> None:
        self.paths = resolve_paths(paths)
        if file_heads is not None and len(file_heads) != len(self.paths):
            raise ValueError(f"HDF5Dataset: {len(file_heads)} file_heads for {len(self.paths)} files {self.paths}")
        self.file_heads = None if file_heads is None else np.asarray(file_heads, dtype=np.int64)
        self.cutoff = cutoff
        self.dtype = dtype
        self.min_distance = min_distance
        self.max_neighbours = max_neighbours
        self.readers = [StructureReader(path) for path in self.paths]
        sizes = np.array([len(reader) for reader in self.readers], dtype=np.int64)
        self._file_starts = np.concatenate([[0], np.cumsum(sizes)])  # (n_files+1,) global index space
        keep = self._filter_mask(subsets, charges, spins, elements, max_atoms)
        self._selection = np.flatnonzero(keep).astype(np.int64)  # (len,) global indices kept
        self.indices = self._selection.copy()  # positions in the parent (here: all files)
        # {global index: graph}, shared by every view of this dataset (`subset`, `split`)
        self._graph_cache: dict[int, object] | None = {} if cache_graphs else None

    # ---------------------------------------------------------------- selection

    def _filter_mask(self, subsets, charges, spins, elements, max_atoms) -> np.ndarray:
        """(S_total,) bool: which structures of all files pass every filter."""
        keep = np.ones(self._file_starts[-1], dtype=bool)
        if subsets is not None:
            wanted = _selection("subsets", "subset", subsets, str)
            names = self._all_subset_names()
            unknown = [name for name in wanted if name not in names]
            if unknown:
                raise SelectionError(
                    "subsets",
                    f"unknown subset{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                    f"known subsets: {self._subsets_and_files()}",
                )
            keep &= np.isin(self._all_subset_codes(), [names.index(name) for name in wanted])
        for argument, attribute, description, values in (
            ("charges", "charge", "charge", charges),
            ("spins", "spin", "spin multiplicity", spins),
        ):
            if values is None:
                continue
            wanted = _selection(argument, attribute, values, _as_int)
            present = self._concatenated(attribute)
            values_present = np.unique(present).tolist()
            absent = sorted(set(wanted) - set(values_present))
            if absent:
                raise SelectionError(
                    argument,
                    f"no structure has {description} {', '.join(map(str, absent))}; "
                    f"{attribute}s present: {values_present}",
                )
            keep &= np.isin(present, wanted)
        if elements is not None:
            allowed = numbers_to_bitmask(_as_atomic_numbers(_selection("elements", "element", elements, None)))
            masks = np.concatenate([reader.element_masks for reader in self.readers]) if self.readers else np.zeros((0, 2), np.uint64)
            keep &= ((masks & ~allowed) == 0).all(axis=1)
        if max_atoms is not None:
            keep &= self._concatenated("n_atoms") <= max_atoms
        return keep

    def _subsets_and_files(self) -> str:
        """"crystal (crystals.h5), neutral (molecules.h5), ..." for error messages."""
        files_of: dict[str, list[str]] = {}
        for path, reader in zip(self.paths, self.readers, strict=True):
            for name in reader.subset_names:
                files_of.setdefault(name, []).append(path.name)
        if not files_of:
            return "none (the files are empty)"
        return ", ".join(f"{name or '(empty label)'} ({', '.join(files)})" for name, files in sorted(files_of.items()))

    def _concatenated(self, attribute: str) -> np.ndarray:
        """A per-structure reader attribute over all files, in the global index space."""
        return np.concatenate([getattr(reader, attribute) for reader in self.readers])

    def _all_subset_names(self) -> tuple[str, ...]:
        return tuple(sorted({name for reader in self.readers for name in reader.subset_names}))

    def _all_subset_codes(self) -> np.ndarray:
        """Subset codes of all files, re-numbered into `_all_subset_names`."""
        names = self._all_subset_names()
        code_of = {name: code for code, name in enumerate(names)}
        parts = []
        for reader in self.readers:
            translate = np.array([code_of[name] for name in reader.subset_names], dtype=np.int32)
            parts.append(translate[reader.subset_codes] if len(translate) else reader.subset_codes)
        return np.concatenate(parts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> HDF5Dataset:
        """A view on the structures at ``indices`` of this dataset (no data is read)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"subset indices out of range for a dataset of {len(self)} structures")
        view = copy.copy(self)  # shares the readers (and their open handles)
        for name in _METADATA_NAMES:
            view.__dict__.pop(name, None)
        view._selection = self._selection[indices]
        view.indices = indices % max(len(self), 1)
        return view

    def split(self, val_fraction: float, test_fraction: float = 0.0, seed: int = 0) -> DatasetSplit:
        """Random disjoint train / validation / test views; the same seed gives the same split.

        The sizes are ``round(fraction * len(self))`` for validation and test, the rest is train;
        indices inside each part are sorted (file order, friendlier to disk reads).
        """
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= fraction < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {fraction}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
        permutation = np.random.default_rng(seed).permutation(len(self))
        n_val = round(val_fraction * len(self))
        n_test = round(test_fraction * len(self))
        val = np.sort(permutation[:n_val])
        test = np.sort(permutation[n_val : n_val + n_test])
        train = np.sort(permutation[n_val + n_test :])
        return DatasetSplit(self.subset(train), self.subset(val), self.subset(test))

    # ---------------------------------------------------------------- access

    def __len__(self) -> int:
        return int(self._selection.shape[0])

    def __repr__(self) -> str:
        files = ", ".join(str(path) for path in self.paths)
        return f"HDF5Dataset([{files}], n_structures={len(self)}, cutoff={self.cutoff})"

    @property
    def global_indices(self) -> np.ndarray:
        """(len,) int64 positions of this dataset's structures in the concatenation of all files.

        Identifies a selection exactly, whatever chain of filters, splits and subsets made it.
        """
        return self._selection

    def locate(self, index: int) -> tuple[Path, int]:
        """(file, index inside that file) of structure ``index`` of this dataset."""
        file_number, local_index = self._locate(index)
        return self.paths[file_number], local_index

    def _checked_index(self, index: int) -> int:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} structures")
        return index

    def _locate(self, index: int) -> tuple[int, int]:
        global_index = int(self._selection[self._checked_index(index)])
        file_number = int(np.searchsorted(self._file_starts, global_index, side="right") - 1)
        return file_number, global_index - int(self._file_starts[file_number])

    def get_structure(self, index: int) -> Structure:
        """Structure ``index`` of this dataset, read from disk."""
        file_number, local_index = self._locate(index)
        return self.readers[file_number].read(local_index)

    def get_structures(self, indices: Sequence[int]) -> list[Structure]:
        """Several structures, read file by file with slice reads where indices are consecutive."""
        locations = [self._locate(i) for i in indices]
        by_file: dict[int, list[int]] = {}
        for file_number, local_index in locations:
            by_file.setdefault(file_number, []).append(local_index)
        read = {
            file_number: dict(zip(local_indices, self.readers[file_number].read_many(local_indices)))
            for file_number, local_indices in by_file.items()
        }
        return [read[file_number][local_index] for file_number, local_index in locations]

    def __getitem__(self, index):
        """The graph of structure ``index`` (see mlip.data.graph.structure_to_graph)."""
        if isinstance(index, torch.Tensor):
            index = index.item()
        if self._graph_cache is not None:
            global_index = int(self._selection[self._checked_index(index)])
            graph = self._graph_cache.get(global_index)
            if graph is None:
                graph = self._graph_cache[global_index] = self._build_graph(index)
            return graph
        return self._build_graph(index)

    def cache_graphs(self) -> None:
        """Keep graphs in memory from now on (as ``cache_graphs=True``); call before making views."""
        if self._graph_cache is None:
            self._graph_cache = {}

    @property
    def caches_graphs(self) -> bool:
        """Whether built graphs are kept in memory (``cache_graphs``)."""
        return self._graph_cache is not None

    def _build_graph(self, index: int):
        file_number, local_index = self._locate(index)
        graph = structure_to_graph(
            self.readers[file_number].read(local_index),
            cutoff=self.cutoff,
            dtype=self.dtype,
            min_distance=self.min_distance,
            max_neighbours=self.max_neighbours,
            source=str(self.paths[file_number]),
            index=local_index,
        )
        if self.file_heads is not None:
            graph.head = torch.tensor([int(self.file_heads[file_number])], dtype=torch.long)
        return graph

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    # ---------------------------------------------------------------- metadata (no atoms read)

    n_atoms = _per_structure("n_atoms", "(len,) int64 atoms per structure.")
    charge = _per_structure("charge", "(len,) int32 total charge.")
    spin = _per_structure("spin", "(len,) int32 spin multiplicity.")
    has_energy = _per_structure("has_energy", "(len,) bool: energy label present.")
    has_forces = _per_structure("has_forces", "(len,) bool: force labels present.")
    has_stress = _per_structure("has_stress", "(len,) bool: stress label present.")
    has_magmom = _per_structure("has_magmom", "(len,) bool: magnetic moments present.")
    has_partial_charges = _per_structure("has_partial_charges", "(len,) bool: partial charges present.")

    @cached_property
    def heads(self) -> np.ndarray | None:
        """(len,) int64 head index of each structure (that of its file; `file_heads`), or None."""
        if self.file_heads is None:
            return None
        file_numbers = np.searchsorted(self._file_starts, self._selection, side="right") - 1
        return self.file_heads[file_numbers]

    @cached_property
    def subset_names(self) -> tuple[str, ...]:
        """Distinct subset labels over all files (sorted); `subset_codes` index into it."""
        return self._all_subset_names()

    @cached_property
    def subset_codes(self) -> np.ndarray:
        """(len,) int32 index of each structure's subset label into `subset_names`."""
        return self._all_subset_codes()[self._selection]

    @property
    def subset_labels(self) -> np.ndarray:
        """(len,) fixed-width string array of subset labels (built from the codes)."""
        return np.array(self.subset_names or ("",))[self.subset_codes]

    @cached_property
    def element_masks(self) -> np.ndarray:
        """(len, 2) uint64 bit sets of the elements of each structure (bit Z-1)."""
        return np.concatenate([reader.element_masks for reader in self.readers])[self._selection]

    @property
    def elements(self) -> np.ndarray:
        """Sorted atomic numbers occurring in this dataset."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.int64)
        return bitmask_to_numbers(np.bitwise_or.reduce(self.element_masks, axis=0))


_METADATA_NAMES = {
    name for name, value in vars(HDF5Dataset).items() if isinstance(value, cached_property)
}


def resolve_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files named by a path, a glob or a sequence of them; raises if one names nothing."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    resolved: list[Path] = []
    for entry in paths:
        entry = os.fspath(entry)
        if glob.has_magic(entry):
            matches = sorted(glob.glob(entry))
            if not matches:
                raise FileNotFoundError(f"no dataset file matches {entry!r}")
            resolved.extend(Path(match) for match in matches)
        elif Path(entry).is_file():
            resolved.append(Path(entry))
        else:
            raise FileNotFoundError(f"no such dataset file: {entry}")
    if not resolved:
        raise ValueError("no dataset files given")
    return resolved


class SelectionError(ValueError):
    """A selection argument of `HDF5Dataset` that would silently select the wrong structures.

    ``argument`` names it (``subsets``, ``charges``, ``spins``, ``elements``), so that callers
    such as the training config can say which of their settings is wrong.
    """

    def __init__(self, argument: str, reason: str) -> None:
        super().__init__(f"{argument}: {reason}")
        self.argument = argument
        self.reason = reason


def _selection(argument: str, noun: str, values, convert) -> list:
    """One value or an iterable of them as a list (a single string is one value, not letters).

    Raises `SelectionError` for an empty list: "select nothing" is never what was meant, and
    None already means "everything".
    """
    if isinstance(values, (str, bytes, int, np.integer)) or not isinstance(values, Iterable):
        values = [values]
    values = list(values)
    if not values:
        raise SelectionError(argument, f"empty {noun} list; use None for all {noun}s")
    if convert is None:
        return values
    try:
        return [convert(value) for value in values]
    except ValueError as error:
        raise SelectionError(argument, str(error)) from None


def _as_int(value) -> int:
    """An integer selection value; text such as "-1" (from a command line) is accepted."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    elif is_integer(value):
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")


def _as_atomic_numbers(elements: Iterable[str | int]) -> list[int]:
    from ase.data import atomic_numbers

    if isinstance(elements, (str, int, np.integer)):
        elements = [elements]
    numbers = []
    for element in elements:
        if isinstance(element, str):
            if element not in atomic_numbers or element == "X":
                raise ValueError(f"unknown element symbol {element!r}")
            numbers.append(atomic_numbers[element])
        else:
            numbers.append(int(element))
    return numbers
