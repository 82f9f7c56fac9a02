"""Neighbour graphs: from a `Structure` (or `ase.Atoms`) to a `torch_geometric` graph.

One builder serves training (through the dataset) and inference (through the ASE calculator),
so a model sees exactly the same edges in both. The convention, fixed in docs/design.md, is

    edge e = (j -> i):  edge_index[0, e] = j (neighbour, sender), edge_index[1, e] = i (centre,
    receiver), and the edge vector is  pos[j] - pos[i] + shifts[e] @ cell.

The list is full (both j -> i and i -> j), holds every pair closer than the cutoff, and has a
self-pair (i -> i) only towards a periodic image of atom i. Neighbour search is done by vesin
(see docs/graph.md for the comparison with matscipy and why vesin was chosen); it handles any
triclinic cell, cells smaller than the cutoff, mixed periodicity and cell-less molecules.

`edge_vectors` is the only place edge vectors are computed from (pos, cell, shifts), so that
forces (d/dpos) and stress (a strain applied to pos and cell) flow through one function.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import vesin
from torch_geometric.data import Data

from mlip.data.structure import Structure

__all__ = ["atoms_to_graph", "edge_vectors", "neighbour_list", "structure_to_graph"]


# --------------------------------------------------------------------------------------------
# Neighbour search (NumPy in, NumPy out; no torch needed)
# --------------------------------------------------------------------------------------------


def neighbour_list(
    positions: np.ndarray,
    cell: np.ndarray | None,
    pbc,
    cutoff: float,
    *,
    n_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (j -> i) with |pos[j] - pos[i] + shift @ cell| < cutoff.

    Args:
        positions: (n, 3) Cartesian positions, Å. Atoms need not be wrapped into the cell.
        cell: (3, 3) lattice vectors as rows, Å, or None for a molecule. Rows of non-periodic
            directions are ignored (they may be zero).
        pbc: bool or (3,) bools, periodicity along each cell vector.
        cutoff: neighbour cutoff radius, Å (> 0).
        n_threads: threads for vesin. 1 by default, because data loaders run one builder per
            worker process; the ASE calculator may ask for more on large systems.

    Returns:
        edge_index: (2, E) int64, row 0 = neighbour j, row 1 = centre i; sorted by centre i
            (the order of neighbours of one centre is unspecified).
        shifts: (E, 3) int64 cell-image multiples (zero along non-periodic directions).
    """
    positions, cell, pbc = _validated_geometry(positions, cell, pbc, cutoff)
    if positions.shape[0] == 0:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)

    calculator = vesin.NeighborList(
        cutoff=float(cutoff), full_list=True, sorted=True, n_threads=n_threads
    )
    centres, neighbours, shifts = calculator.compute(
        points=positions, box=cell, periodic=pbc.tolist(), quantities="ijS", copy=True
    )
    # vesin's pair (i, j, S) has vector pos[j] - pos[i] + S @ box: i is our centre (receiver).
    edge_index = np.stack([neighbours, centres]).astype(np.int64, copy=False)
    return edge_index, shifts.astype(np.int64, copy=False)


def _validated_geometry(positions, cell, pbc, cutoff) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrays in the shapes vesin wants, or a ValueError saying which argument is wrong."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {positions.shape}")
    if not np.isfinite(positions).all():
        raise ValueError("positions contain NaN or infinite values")
    if not (isinstance(cutoff, numbers.Real) and math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive finite number of Å, got {cutoff!r}")

    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if cell is None:
        if pbc.any():
            raise ValueError(f"pbc={pbc.tolist()} needs a cell, but cell is None")
        cell = np.zeros((3, 3))
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {cell.shape}")
    if not np.isfinite(cell).all():
        raise ValueError("cell contains NaN or infinite values")

    periodic_vectors = cell[pbc]  # (n_periodic, 3)
    if len(periodic_vectors) and _is_degenerate(periodic_vectors):
        raise ValueError(
            f"the periodic cell vectors are zero or linearly dependent (pbc={pbc.tolist()}, "
            f"cell={cell.tolist()})"
        )
    return positions, cell, pbc


def _is_degenerate(vectors: np.ndarray) -> bool:
    """True when the rows of `vectors` (k, 3) do not span a k-dimensional lattice."""
    lengths = np.linalg.norm(vectors, axis=1)
    if (lengths == 0).any():
        return True
    singular_values = np.linalg.svd(vectors / lengths[:, None], compute_uv=False)
    return bool(singular_values[-1] < 1e-8)


# --------------------------------------------------------------------------------------------
# Graphs
# --------------------------------------------------------------------------------------------


def structure_to_graph(
    structure: Structure, cutoff: float | None, dtype: torch.dtype = torch.float32
) -> Data:
    """A `Structure` as a graph with the fields of docs/design.md.

    Missing labels are NaN and their mask is False. With ``cutoff=None`` the graph has no edges
    (edge_index (2, 0), shifts (0, 3)), for pipelines that build edges later.
    """
    n_atoms = structure.n_atoms
    cell = structure.cell if structure.cell is not None else np.zeros((3, 3))
    if cutoff is None:
        edge_index = np.zeros((2, 0), dtype=np.int64)
        shifts = np.zeros((0, 3), dtype=np.int64)
    else:
        try:
            edge_index, shifts = neighbour_list(
                structure.positions, structure.cell, structure.pbc, cutoff
            )
        except ValueError as error:
            raise ValueError(f"structure {structure.id!r}: {error}") from error

    def label(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        values = getattr(structure, name)
        if values is None:
            return torch.full(shape, float("nan"), dtype=dtype)
        values = np.asarray(values, dtype=np.float64)
        if values.size != int(np.prod(shape)):
            raise ValueError(
                f"structure {structure.id!r}: {name} has shape {values.shape}, expected {shape}"
            )
        return torch.as_tensor(values, dtype=dtype).reshape(shape)

    return Data(
        pos=torch.as_tensor(structure.positions, dtype=dtype),
        z=torch.as_tensor(structure.numbers, dtype=torch.long),
        cell=torch.as_tensor(cell, dtype=dtype).reshape(1, 3, 3),
        pbc=torch.as_tensor(structure.pbc, dtype=torch.bool).reshape(1, 3),
        edge_index=torch.from_numpy(edge_index),
        shifts=torch.from_numpy(shifts).to(dtype),
        charge=torch.tensor([structure.charge], dtype=torch.long),
        spin=torch.tensor([structure.spin], dtype=torch.long),
        energy=label("energy", (1,)),
        forces=label("forces", (n_atoms, 3)),
        stress=label("stress", (1, 3, 3)),
        energy_mask=torch.tensor([structure.energy is not None]),
        forces_mask=torch.tensor([structure.forces is not None]),
        stress_mask=torch.tensor([structure.stress is not None]),
        subset=structure.subset,
        structure_id=structure.id,
    )


def atoms_to_graph(
    atoms,
    cutoff: float | None,
    dtype: torch.dtype = torch.float32,
    charge: int | None = None,
    spin: int | None = None,
) -> Data:
    """An `ase.Atoms` as an unlabelled graph, for the ASE calculator.

    Total charge and spin multiplicity default to ``atoms.info["charge"]`` / ``["spin"]``, else
    0 / 1. Labels are never read from ``atoms.calc`` (that would call the calculator being
    served), so energy, forces and stress are NaN with masks False.
    """
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    structure = Structure(
        numbers=atoms.numbers,
        positions=atoms.positions,
        cell=None if (not pbc.any() and not cell.any()) else cell,
        pbc=pbc,
        charge=int(atoms.info.get("charge", 0)) if charge is None else charge,
        spin=int(atoms.info.get("spin", 1)) if spin is None else spin,
        id=str(atoms.info.get("id", "")),
        subset=str(atoms.info.get("subset", "")),
    )
    return structure_to_graph(structure, cutoff, dtype=dtype)


def edge_vectors(
    pos: torch.Tensor,
    cell: torch.Tensor,
    edge_index: torch.Tensor,
    shifts: torch.Tensor,
    batch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Edge vectors pos[j] - pos[i] + shifts @ cell[graph of i], Å; shape (E, 3).

    Args:
        pos: (n, 3) positions of all atoms in the batch.
        cell: (G, 3, 3) cells (rows = lattice vectors) of the G graphs, or (3, 3) for one graph.
        edge_index: (2, E), row 0 = neighbour j, row 1 = centre i (indices into the batch).
        shifts: (E, 3) integer cell-image multiples (any dtype; cast to pos.dtype).
        batch: (n,) graph index of every atom; None means a single graph.

    Differentiable with respect to both `pos` and `cell`.
    """
    neighbour, centre = edge_index[0], edge_index[1]
    vectors = pos[neighbour] - pos[centre]  # (E, 3)
    if shifts.shape[0] == 0:
        return vectors
    cell = cell.reshape(-1, 3, 3)
    if batch is None:
        edge_cells = cell.expand(shifts.shape[0], 3, 3)  # (E, 3, 3)
    else:
        edge_cells = cell[batch[centre]]  # (E, 3, 3)
    periodic_offsets = torch.einsum("ek,ekc->ec", shifts.to(pos.dtype), edge_cells)
    return vectors + periodic_offsets
