"""The structures the physical tasks start from, chosen from a test set.

* molecules: neutral closed-shell structures without a cell (charge 0, multiplicity 1, at least
  two atoms), the first of each chemical formula, in test-set order. Charged and open-shell
  structures are left to the `errors` task: an external calculator such as tblite takes its
  charge and spin from its own keyword arguments, not from ``atoms.info``, so only neutral
  singlets mean the same thing to every model;
* crystals: periodic structures with a cell of nonzero volume, the first of each empirical
  formula (one per material).

`training_test_split` reproduces the random test split of `mlip-train` (`mlip.train.datamodule`:
``HDF5Dataset(paths).split(val_fraction, test_fraction, seed)`` over the files together).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from ase import Atoms

from mlip.data.structure import Structure


def training_test_split(paths: Sequence[str | os.PathLike], val_fraction: float = 0.1, test_fraction: float = 0.1,
               seed: int = 0) -> list[Structure]:
    """The structures of the test split `mlip-train` draws from ``paths`` (its defaults: 0.1, 0.1, seed 0)."""
    from mlip.data.dataset import HDF5Dataset

    dataset = HDF5Dataset([os.fspath(path) for path in paths], min_distance=None, max_neighbours=None)
    test = dataset.split(val_fraction, test_fraction=test_fraction, seed=seed).test
    structures = []
    for index in range(len(test)):
        path, local_index = test.locate(index)
        structures.append(dataset.readers[dataset.paths.index(path)].read(local_index))
    return structures


def is_crystal(structure: Structure) -> bool:
    if structure.cell is None or not np.any(structure.pbc):
        return False
    return abs(float(np.linalg.det(structure.cell))) > 1e-6


def to_atoms(structure: Structure, name: str) -> Atoms:
    """``structure`` as bare Atoms (no labels attached), named ``atoms.info["name"]``, with its
    charge and spin in ``atoms.info`` and, for calculators that read them instead (tblite), as
    initial charges and magnetic moments summing to the total charge and 2S."""
    atoms = structure.to_atoms()
    atoms.calc = None
    atoms.info["name"] = name
    set_charge_and_spin(atoms, int(structure.charge), int(structure.spin))
    return atoms


def set_charge_and_spin(atoms: Atoms, charge: int, spin: int) -> None:
    """Total charge (e) and multiplicity 2S+1 in atoms.info and as initial charges / magnetic moments."""
    atoms.info["charge"], atoms.info["spin"] = int(charge), int(spin)
    charges = np.zeros(len(atoms))
    charges[0] = charge
    moments = np.zeros(len(atoms))
    moments[0] = spin - 1
    atoms.set_initial_charges(charges)
    atoms.set_initial_magnetic_moments(moments)


def _named(structures: list[Structure], key, limit: int | None) -> list[Atoms]:
    chosen, seen = [], set()
    for structure in structures:
        atoms = structure.to_atoms()
        name = key(atoms)
        if name in seen:
            continue
        seen.add(name)
        chosen.append(to_atoms(structure, name))
        if limit is not None and len(chosen) == limit:
            break
    return chosen


def molecule_starts(structures: Sequence[Structure], limit: int | None = None, min_atoms: int = 2) -> list[Atoms]:
    """Neutral closed-shell molecules, one per chemical formula (named by it), at most ``limit``."""
    candidates = [
        structure for structure in structures
        if not is_crystal(structure) and not np.any(structure.pbc) and structure.charge == 0 and structure.spin == 1
        and structure.n_atoms >= min_atoms
    ]
    return _named(candidates, lambda atoms: atoms.get_chemical_formula(), limit)


def crystal_starts(structures: Sequence[Structure], limit: int | None = None) -> list[Atoms]:
    """Periodic structures, one per empirical formula (named by it), at most ``limit``."""
    candidates = [structure for structure in structures if is_crystal(structure)]
    return _named(candidates, lambda atoms: atoms.get_chemical_formula(empirical=True), limit)


def elements_of(structures: Sequence[Structure]) -> list[int]:
    """Sorted atomic numbers occurring in ``structures``."""
    return sorted({int(z) for structure in structures for z in structure.numbers})
