"""Dataset statistics that a potential is initialised from, computed in one streaming pass.

`compute_statistics` reads each structure once and keeps only fixed-size accumulators, so it
works on datasets far larger than memory:

* per-element reference energies (eV) by least squares of total energy against element counts,
  accumulated as the normal equations AᵀA, Aᵀb over the 119 possible atomic numbers and solved
  at the end with a tiny ridge (so a set where two elements always appear in the same ratio,
  e.g. only water, still gives a finite, minimum-norm-like answer);
* mean and standard deviation of the per-atom energy residual after those references, from
  moments accumulated alongside (the residual is linear in the references, so its first and
  second moments follow from Σe, Σe², Σx, Σe·x, Σxxᵀ with e = E/n and x = counts/n);
* the average number of neighbours within the cutoff (edges / atoms, all structures);
* the RMS force component (eV/Å) over structures that have forces;
* counts: structures, atoms, labels present, per subset, per total charge, per multiplicity;
* the energies of isolated atoms: single-atom structures with an energy and no neighbour
  within the cutoff (`isolated_atom_energies`, eV by Z; the last one seen per element wins).
  With ``exclude_isolated_atoms=True`` such structures count only there (and in
  ``n_isolated_atoms``), not in any other statistic: they are then reference data, not training
  structures (as MACE does with ``config_type=IsolatedAtom``).

Results are cached as JSON keyed by the dataset's files (path, size, mtime), its selection, the
cutoff and `STATISTICS_VERSION`, in a ``.mlip_cache/`` directory next to the first data file
(or ``~/.cache/mlip`` when that is not writable).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from mlip.constants import MAX_ATOMIC_NUMBER
from mlip.data.neighbours import neighbour_list
from mlip.data.structure import Structure
from mlip.files import atomic_write

__all__ = ["STATISTICS_VERSION", "DatasetStatistics", "compute_statistics", "is_isolated_atom"]

logger = logging.getLogger(__name__)

#: Bump when the definition of any statistic changes: old cache files are then ignored.
STATISTICS_VERSION = 3  # 2: isolated_atom_energies, exclude_isolated_atoms; 3: shortest_distances
#: Ridge added to the diagonal of AᵀA, relative to its mean diagonal entry.
RIDGE_FRACTION = 1e-10
_N_ATOMIC_NUMBERS = MAX_ATOMIC_NUMBER + 1  # 0..118
_CHUNK_STRUCTURES = 2048  # structures folded into the accumulators at once
_READ_BATCH = 256  # structures per read from datasets that support batched reads
_CACHE_DIRECTORY_NAME = ".mlip_cache"
_FALLBACK_CACHE_DIRECTORY = Path.home() / ".cache" / "mlip"


@dataclass
class DatasetStatistics:
    """Summary of a dataset; energies in eV, forces in eV/Å, cutoff in Å.

    ``force_rms`` and the residual fields are None when no structure carries forces / energies.
    Elements that occur only in structures without an energy get a reference energy of 0.0
    (there is nothing to fit them to); they are listed in ``elements_without_energy``.
    """

    elements: list[int]
    atomic_energies: dict[int, float]
    avg_num_neighbors: float
    force_rms: float | None
    energy_residual_per_atom_mean: float | None
    energy_residual_per_atom_std: float | None
    n_structures: int
    n_atoms: int
    n_with_energy: int
    n_with_forces: int
    n_with_stress: int
    cutoff: float
    subset_counts: dict[str, int] = field(default_factory=dict)
    charge_counts: dict[int, int] = field(default_factory=dict)
    spin_counts: dict[int, int] = field(default_factory=dict)
    elements_without_energy: list[int] = field(default_factory=list)
    isolated_atom_energies: dict[int, float] = field(default_factory=dict)
    n_isolated_atoms: int = 0
    exclude_isolated_atoms: bool = False
    #: shortest distance (Å) of each element pair within the cutoff, keyed "Z_a-Z_b" with Z_a <= Z_b
    shortest_distances: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (integer keys become strings)."""
        values = asdict(self)
        for name in ("atomic_energies", "charge_counts", "spin_counts", "isolated_atom_energies"):
            values[name] = {str(key): value for key, value in values[name].items()}
        return values

    @classmethod
    def from_dict(cls, values: dict) -> DatasetStatistics:
        """Inverse of `to_dict`; unknown keys are an error (a stale or foreign file)."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown DatasetStatistics fields: {sorted(unknown)}")
        values = dict(values)
        values["atomic_energies"] = {int(k): float(v) for k, v in values["atomic_energies"].items()}
        values["isolated_atom_energies"] = {int(k): float(v) for k, v in values.get("isolated_atom_energies", {}).items()}
        for name in ("charge_counts", "spin_counts"):
            values[name] = {int(k): int(v) for k, v in values.get(name, {}).items()}
        values["elements"] = [int(z) for z in values["elements"]]
        return cls(**values)

    def save(self, path: str | os.PathLike) -> None:
        _write_json_atomically(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> DatasetStatistics:
        return cls.from_dict(json.loads(Path(path).read_text()))


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def compute_statistics(
    dataset, cutoff: float, cache: bool = True, exclude_isolated_atoms: bool = False
) -> DatasetStatistics:
    """Statistics of `dataset` with neighbours counted within `cutoff` (Å).

    Isolated atoms (`is_isolated_atom`) always give `isolated_atom_energies`; with
    ``exclude_isolated_atoms`` they are left out of every other statistic.

    `dataset` may be an mlip `HDF5Dataset` (anything with ``__len__`` and
    ``get_structure(i)``), a `StructureReader`, or any iterable of `Structure`. Caching needs
    to know the files behind the data (a ``paths`` or ``path`` attribute); for plain
    sequences nothing is cached.
    """
    cache_key = _cache_key(dataset, cutoff, exclude_isolated_atoms) if cache else None
    if cache_key is not None:
        cached = _read_cache(dataset, cache_key)
        if cached is not None:
            return cached

    accumulator = StatisticsAccumulator(cutoff, exclude_isolated_atoms=exclude_isolated_atoms)
    for structure in _structures_of(dataset):
        accumulator.add(structure)
    statistics = accumulator.result()

    if cache_key is not None:
        _write_cache(dataset, cache_key, statistics)
    return statistics


def _structures_of(dataset) -> Iterator[Structure]:
    if hasattr(dataset, "get_structures"):  # HDF5Dataset: batched reads are much faster
        for start in range(0, len(dataset), _READ_BATCH):
            yield from dataset.get_structures(range(start, min(start + _READ_BATCH, len(dataset))))
    elif hasattr(dataset, "get_structure"):
        for index in range(len(dataset)):
            yield dataset.get_structure(index)
    else:
        for index, structure in enumerate(dataset):
            if not isinstance(structure, Structure):
                raise TypeError(
                    f"item {index} of the dataset is a {type(structure).__name__}, expected a "
                    "Structure (or give a dataset with get_structure(i))"
                )
            yield structure


# --------------------------------------------------------------------------------------------
# Streaming accumulation
# --------------------------------------------------------------------------------------------


def is_isolated_atom(structure: Structure, cutoff: float, edge_index: np.ndarray | None = None) -> bool:
    """A single-atom structure with an energy and no neighbour (not even a periodic image) within
    ``cutoff`` Å: what a model sees as an isolated atom. ``edge_index``: its neighbour list, if known."""
    if structure.n_atoms != 1 or structure.energy is None:
        return False
    if edge_index is None:
        edge_index, _ = neighbour_list(structure.positions, structure.cell, structure.pbc, cutoff)
    return edge_index.shape[1] == 0


class StatisticsAccumulator:
    """Fixed-size running sums; `add` structures one at a time, then call `result`."""

    def __init__(self, cutoff: float, exclude_isolated_atoms: bool = False) -> None:
        if cutoff is None or not float(cutoff) > 0:
            raise ValueError(f"statistics need a positive neighbour cutoff in Å, got {cutoff!r}")
        self.cutoff = float(cutoff)
        self.exclude_isolated_atoms = bool(exclude_isolated_atoms)
        self.isolated_atom_energies: dict[int, float] = {}
        self.n_isolated_atoms = 0
        self.n_structures = 0
        self.n_atoms = 0
        self.n_edges = 0
        self.shortest = np.full(_N_ATOMIC_NUMBERS * _N_ATOMIC_NUMBERS, np.inf)  # Å, by pair code Z_a · 119 + Z_b
        self.atoms_per_element = np.zeros(_N_ATOMIC_NUMBERS, dtype=np.int64)
        self.atoms_per_element_with_energy = np.zeros(_N_ATOMIC_NUMBERS, dtype=np.int64)
        self.n_with_energy = 0
        self.n_with_forces = 0
        self.n_with_stress = 0
        self.force_square_sum = 0.0  # Σ f², eV²/Å²
        self.force_components = 0
        self.subset_counts: Counter[str] = Counter()
        self.charge_counts: Counter[int] = Counter()
        self.spin_counts: Counter[int] = Counter()
        # Energy sums in extended precision: total energies can be ~1e5 eV while the residuals
        # whose spread we want are ~1e-2 eV/atom.
        k = _N_ATOMIC_NUMBERS
        self.gram = np.zeros((k, k), dtype=np.longdouble)  # AᵀA, A = element counts
        self.counts_dot_energy = np.zeros(k, dtype=np.longdouble)  # Aᵀb, b = energies
        self.sum_e = np.longdouble(0.0)  # e = E / n, eV/atom
        self.sum_e2 = np.longdouble(0.0)
        self.sum_x = np.zeros(k, dtype=np.longdouble)  # x = counts / n
        self.sum_ex = np.zeros(k, dtype=np.longdouble)
        self.sum_xx = np.zeros((k, k), dtype=np.longdouble)
        self._pending_counts: list[np.ndarray] = []  # element counts of energy-labelled structures
        self._pending_energies: list[float] = []

    def add(self, structure: Structure) -> None:
        n_atoms = structure.n_atoms
        counts = np.bincount(structure.numbers, minlength=_N_ATOMIC_NUMBERS)
        if counts.shape[0] > _N_ATOMIC_NUMBERS:
            raise ValueError(f"structure {structure.id!r}: atomic number above {MAX_ATOMIC_NUMBER}")
        edge_index, shifts = neighbour_list(
            structure.positions, structure.cell, structure.pbc, self.cutoff
        )
        if is_isolated_atom(structure, self.cutoff, edge_index):
            self.isolated_atom_energies[int(structure.numbers[0])] = float(structure.energy)
            self.n_isolated_atoms += 1
            if self.exclude_isolated_atoms:
                return
        self.n_structures += 1
        self.n_atoms += n_atoms
        self.atoms_per_element += counts
        self.subset_counts[structure.subset] += 1
        self.charge_counts[structure.charge] += 1
        self.spin_counts[structure.spin] += 1
        self.n_edges += edge_index.shape[1]
        self._add_shortest_distances(structure, edge_index, shifts)

        if structure.forces is not None:
            self.n_with_forces += 1
            self.force_square_sum += float(np.square(structure.forces).sum())
            self.force_components += structure.forces.size
        if structure.stress is not None:
            self.n_with_stress += 1
        if structure.energy is not None:
            self.n_with_energy += 1
            self.atoms_per_element_with_energy += counts
            self._pending_counts.append(counts)
            self._pending_energies.append(structure.energy)
            if len(self._pending_energies) >= _CHUNK_STRUCTURES:
                self._fold_energies()

    def _add_shortest_distances(self, structure: Structure, edge_index: np.ndarray, shifts: np.ndarray) -> None:
        """Fold the structure's pair distances into the shortest distance of each element pair."""
        if edge_index.shape[1] == 0:
            return
        sender, receiver = edge_index
        vectors = structure.positions[sender] - structure.positions[receiver]  # (E, 3) Å
        if structure.cell is not None and shifts.any():
            vectors = vectors + shifts @ np.asarray(structure.cell, dtype=np.float64)
        distances = np.linalg.norm(vectors, axis=1)
        z_sender, z_receiver = structure.numbers[sender], structure.numbers[receiver]
        codes = np.minimum(z_sender, z_receiver) * _N_ATOMIC_NUMBERS + np.maximum(z_sender, z_receiver)
        np.minimum.at(self.shortest, codes, distances)

    def _fold_energies(self) -> None:
        """Add the pending energy-labelled structures to the energy sums (vectorised)."""
        if not self._pending_energies:
            return
        counts = np.stack(self._pending_counts).astype(np.float64)  # (m, 119)
        energies = np.asarray(self._pending_energies, dtype=np.float64)  # (m,)
        n_atoms = counts.sum(axis=1)
        per_atom_energy = energies / n_atoms  # (m,)
        fractions = counts / n_atoms[:, None]  # (m, 119)
        self.gram += counts.T @ counts
        self.counts_dot_energy += counts.T @ energies
        self.sum_e += per_atom_energy.sum()
        self.sum_e2 += np.square(per_atom_energy).sum()
        self.sum_x += fractions.sum(axis=0)
        self.sum_ex += fractions.T @ per_atom_energy
        self.sum_xx += fractions.T @ fractions
        self._pending_counts.clear()
        self._pending_energies.clear()

    def result(self) -> DatasetStatistics:
        self._fold_energies()
        elements = np.flatnonzero(self.atoms_per_element)
        fitted = np.flatnonzero(self.atoms_per_element_with_energy)
        references = self._reference_energies(fitted)  # (119,) eV, zero where not fitted
        unfitted = sorted(set(elements.tolist()) - set(fitted.tolist()))
        if unfitted and self.n_with_energy:
            warnings.warn(
                f"elements {unfitted} occur only in structures without an energy; "
                "their reference energy is set to 0.0 eV",
                stacklevel=3,
            )
        mean, std = self._residual_moments(references)
        return DatasetStatistics(
            elements=elements.tolist(),
            atomic_energies={int(z): float(references[z]) for z in elements},
            avg_num_neighbors=self.n_edges / self.n_atoms if self.n_atoms else 0.0,
            force_rms=(
                float(np.sqrt(self.force_square_sum / self.force_components))
                if self.force_components
                else None
            ),
            energy_residual_per_atom_mean=mean,
            energy_residual_per_atom_std=std,
            n_structures=self.n_structures,
            n_atoms=self.n_atoms,
            n_with_energy=self.n_with_energy,
            n_with_forces=self.n_with_forces,
            n_with_stress=self.n_with_stress,
            cutoff=self.cutoff,
            subset_counts=dict(sorted(self.subset_counts.items())),
            charge_counts=dict(sorted(self.charge_counts.items())),
            spin_counts=dict(sorted(self.spin_counts.items())),
            elements_without_energy=unfitted,
            isolated_atom_energies=dict(sorted(self.isolated_atom_energies.items())),
            n_isolated_atoms=self.n_isolated_atoms,
            exclude_isolated_atoms=self.exclude_isolated_atoms,
            shortest_distances={
                f"{code // _N_ATOMIC_NUMBERS}-{code % _N_ATOMIC_NUMBERS}": float(self.shortest[code])
                for code in np.flatnonzero(np.isfinite(self.shortest))
            },
        )

    def _reference_energies(self, fitted: np.ndarray) -> np.ndarray:
        """Least-squares per-element energies (eV) from the normal equations, small ridge."""
        references = np.zeros(_N_ATOMIC_NUMBERS)
        if fitted.size == 0:
            return references
        gram = self.gram[np.ix_(fitted, fitted)].astype(np.float64)
        rhs = self.counts_dot_energy[fitted].astype(np.float64)
        ridge = RIDGE_FRACTION * np.trace(gram) / fitted.size
        references[fitted] = np.linalg.solve(gram + ridge * np.eye(fitted.size), rhs)
        return references

    def _residual_moments(self, references: np.ndarray) -> tuple[float | None, float | None]:
        """Mean and std (eV/atom) of r = E/n - Σ_Z E_Z counts_Z/n over energy-labelled structures."""
        if self.n_with_energy == 0:
            return None, None
        w = references.astype(np.longdouble)
        m = self.n_with_energy
        residual_sum = self.sum_e - w @ self.sum_x
        residual_square_sum = self.sum_e2 - 2 * (w @ self.sum_ex) + w @ self.sum_xx @ w
        mean = residual_sum / m
        variance = max(residual_square_sum / m - mean**2, 0.0)
        return float(mean), float(np.sqrt(variance))


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def _data_files(dataset) -> list[Path] | None:
    """The files behind `dataset`, or None when they cannot be known (no caching then)."""
    paths = getattr(dataset, "paths", None)
    if paths is None and getattr(dataset, "path", None) is not None:
        paths = [dataset.path]
    if paths is None or isinstance(paths, (str, os.PathLike)):
        paths = None if paths is None else [paths]
    if not paths:
        return None
    return [Path(path).resolve() for path in paths]


def _selection_description(dataset) -> dict:
    """Which structures of the files the dataset uses, as hashes of its index arrays.

    HDF5Dataset keeps the global indices it selected in ``_selection``; that identifies the
    selection exactly (``indices`` is relative to a parent view, so two different nested views
    can share it), so ``indices`` is used only by datasets without ``_selection``.
    """
    description = {"length": len(dataset) if hasattr(dataset, "__len__") else None}
    for name in ("_selection", "indices"):
        value = getattr(dataset, name, None)
        if value is None or callable(value):
            continue
        indices = np.ascontiguousarray(np.asarray(value, dtype=np.int64))
        description[name] = hashlib.sha256(indices.tobytes()).hexdigest()
        break
    return description


def _cache_key(dataset, cutoff: float, exclude_isolated_atoms: bool = False) -> str | None:
    files = _data_files(dataset)
    if files is None:
        return None
    identity = {
        "statistics_version": STATISTICS_VERSION,
        "cutoff": float(cutoff),
        "exclude_isolated_atoms": bool(exclude_isolated_atoms),
        "files": [_file_fingerprint(path) for path in files],
        "selection": _selection_description(dataset),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _file_fingerprint(path: Path) -> list:
    status = path.stat()
    return [str(path), status.st_size, status.st_mtime_ns]


def _cache_candidates(dataset, key: str) -> list[Path]:
    name = f"statistics-{key}.json"
    first_file = _data_files(dataset)[0]
    return [first_file.parent / _CACHE_DIRECTORY_NAME / name, _FALLBACK_CACHE_DIRECTORY / name]


def _read_cache(dataset, key: str) -> DatasetStatistics | None:
    for path in _cache_candidates(dataset, key):
        if not path.exists():
            continue
        try:
            statistics = DatasetStatistics.load(path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("ignoring unreadable statistics cache %s: %s", path, error)
            continue
        logger.info("dataset statistics read from cache %s", path)
        return statistics
    return None


def _write_cache(dataset, key: str, statistics: DatasetStatistics) -> None:
    for path in _cache_candidates(dataset, key):
        try:
            _write_json_atomically(path, statistics.to_dict())
        except OSError as error:
            logger.info("cannot write statistics cache %s (%s); trying the next place", path, error)
            continue
        logger.info("dataset statistics cached in %s", path)
        return
    logger.warning("dataset statistics could not be cached anywhere")


def _write_json_atomically(path: Path, values: dict) -> None:
    """Write JSON to a temporary file in the target directory, then rename it into place."""
    with atomic_write(path) as stream:
        json.dump(values, stream, indent=2)
