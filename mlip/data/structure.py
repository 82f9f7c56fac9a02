"""One labelled atomic structure, as plain NumPy arrays.

`Structure` is the currency between converters (which produce them), the HDF5 writer
(which stores them), the dataset (which reads them back) and the graph builder (which turns
them into neighbour graphs). Units are ASE's: Å, eV, eV/Å, eV/Å³ (ASE sign: positive = tensile).

A label that is unknown is ``None`` here and masked downstream; it is never replaced by zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Structure:
    """A molecule (no cell, no periodicity) or a crystal (cell and pbc)."""

    numbers: np.ndarray  # (n_atoms,) int, atomic numbers
    positions: np.ndarray  # (n_atoms, 3) float64, Å
    cell: np.ndarray | None = None  # (3, 3) float64, Å, rows are lattice vectors; None for molecules
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))  # (3,) bool
    energy: float | None = None  # total energy, eV
    forces: np.ndarray | None = None  # (n_atoms, 3), eV/Å
    stress: np.ndarray | None = None  # (3, 3), eV/Å³, ASE sign convention
    magmom: np.ndarray | None = None  # (n_atoms,), μB
    partial_charges: np.ndarray | None = None  # (n_atoms,), e
    charge: int = 0  # total charge, e
    spin: int = 1  # spin multiplicity 2S+1
    id: str = ""  # stable string id of the structure in its source
    subset: str = ""  # subset label (e.g. "neutral", "radical", "crystal")

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        if self.cell is not None:
            self.cell = np.asarray(self.cell, dtype=np.float64)
        self.pbc = np.broadcast_to(np.asarray(self.pbc, dtype=bool), (3,)).copy()
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
        if self.stress is not None:
            self.stress = np.asarray(self.stress, dtype=np.float64)
        if self.magmom is not None:
            self.magmom = np.asarray(self.magmom, dtype=np.float64)
        if self.partial_charges is not None:
            self.partial_charges = np.asarray(self.partial_charges, dtype=np.float64)
        if self.energy is not None:
            self.energy = float(self.energy)
        self.charge = int(self.charge)
        self.spin = int(self.spin)

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def is_periodic(self) -> bool:
        return bool(self.pbc.any())

    def to_atoms(self):
        """This structure as an `ase.Atoms` (labels attached through a SinglePointCalculator)."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(
            numbers=self.numbers,
            positions=self.positions,
            cell=self.cell if self.cell is not None else np.zeros((3, 3)),
            pbc=self.pbc,
        )
        atoms.info["charge"] = self.charge
        atoms.info["spin"] = self.spin
        if self.id:
            atoms.info["id"] = self.id
        if self.subset:
            atoms.info["subset"] = self.subset
        if self.magmom is not None:
            atoms.set_initial_magnetic_moments(self.magmom)
        if self.partial_charges is not None:
            atoms.set_initial_charges(self.partial_charges)
        results = {}
        if self.energy is not None:
            results["energy"] = self.energy
            results["free_energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces
        if self.stress is not None:
            from ase.stress import full_3x3_to_voigt_6_stress

            results["stress"] = full_3x3_to_voigt_6_stress(self.stress)
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms
