"""Neighbour graphs: from a `Structure` (or `ase.Atoms`) to a `torch_geometric` graph.

One builder serves training (through the dataset) and inference (through the ASE calculator),
so a model sees exactly the same edges in both. The convention, fixed in docs/design.md, is

    edge e = (j -> i):  edge_index[0, e] = j (neighbour, sender), edge_index[1, e] = i (centre,
    receiver), and the edge vector is  pos[j] - pos[i] + shifts[e] @ cell.

The list is full (both j -> i and i -> j), holds every pair closer than the cutoff, and has a
self-pair (i -> i) only towards a periodic image of atom i. Neighbour search is done by vesin
in `mlip.data.neighbours` (re-exported here: `neighbour_list`, `closest_pair`,
`check_min_distance`, `SkinNeighbourList`, ...), which also bounds the edges per atom and finds
coincident atoms. The ASE calculator builds its graphs with `atoms_to_graph` from the edges
of a `SkinNeighbourList` (reused across MD steps), the dataset with `structure_to_graph`; both
make their input fields in `_input_fields`.
`structure_to_graph` refuses atoms closer than ``min_distance`` from the lengths of the edges
it builds anyway, so the check costs no second search.

`edge_vectors` (from `mlip.geometry`, re-exported here) is the only place edge vectors are
computed from (pos, cell, shifts).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch_geometric.data import Data

from mlip.data import neighbours
from mlip.data.errors import MLIPDataError
from mlip.data.neighbours import (
    DEFAULT_MAX_NEIGHBOURS,
    DEFAULT_MIN_DISTANCE,
    AtomPair,
    GeometryError,
    SkinNeighbourList,
    check_edge_lengths,
    check_min_distance,
    closest_pair,
    neighbour_list,
    neighbour_search,
)
from mlip.data.structure import Structure
from mlip.geometry import edge_vectors

__all__ = [*neighbours.__all__, "atoms_to_graph", "edge_vectors", "structure_to_graph"]  # re-exports neighbours

# --------------------------------------------------------------------------------------------
# Graphs
# --------------------------------------------------------------------------------------------


def structure_to_graph(
    structure: Structure,
    cutoff: float | None,
    dtype: torch.dtype = torch.float32,
    *,
    min_distance: float | None = None,
    max_neighbours: float | None = DEFAULT_MAX_NEIGHBOURS,
    source: str | os.PathLike | None = None,
    index: int | None = None,
) -> Data:
    """A `Structure` as a graph with the fields of docs/design.md.

    Missing labels are NaN and their mask is False. With ``cutoff=None`` the graph has no edges
    (edge_index (2, 0), shifts (0, 3)), for pipelines that build edges later.

    ``min_distance`` (Å; None = no check, the default here; the dataset passes 0.1): refuse
    atoms closer than this, from the lengths of the edges just built (no second search unless
    the cutoff is None or below ``min_distance``). ``max_neighbours``: see `neighbour_list`.
    Geometry problems raise `MLIPDataError` located by ``source`` (the file) and ``index``.
    """
    n_atoms = structure.n_atoms
    check_edges = bool(min_distance) and cutoff is not None and cutoff >= min_distance
    if cutoff is None:
        edge_index = np.zeros((2, 0), dtype=np.int64)
        shifts = np.zeros((0, 3), dtype=np.int64)
    else:
        try:
            edge_index, shifts, distances = neighbour_search(
                structure.positions, structure.cell, structure.pbc, cutoff,
                max_neighbours=max_neighbours, distances=check_edges,
            )
        except GeometryError as error:
            raise MLIPDataError(
                error.reason, source, index=index, structure_id=structure.id, field=error.field
            ) from None
    if check_edges:
        check_edge_lengths(structure, edge_index, shifts, distances, min_distance, file=source, index=index)
    elif min_distance:
        check_min_distance(structure, min_distance, file=source, index=index)

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

    cell = structure.cell if structure.cell is not None else np.zeros((3, 3))
    return Data(
        **_input_fields(
            structure.positions, structure.numbers, cell, structure.pbc, edge_index, shifts,
            structure.charge, structure.spin, dtype,
        ),
        energy=label("energy", (1,)),
        forces=label("forces", (n_atoms, 3)),
        stress=label("stress", (1, 3, 3)),
        energy_mask=torch.tensor([structure.energy is not None]),
        forces_mask=torch.tensor([structure.forces is not None]),
        stress_mask=torch.tensor([structure.stress is not None]),
        subset=structure.subset,
        structure_id=structure.id,
    )


def _input_fields(positions, numbers, cell, pbc, edge_index, shifts, charge: int, spin: int, dtype) -> dict:
    """The model inputs of a graph (docs/design.md): pos, z, cell, pbc, edge_index, shifts,
    charge, spin, as tensors."""
    return {
        "pos": torch.as_tensor(positions, dtype=dtype),
        "z": torch.as_tensor(numbers, dtype=torch.long),
        "cell": torch.as_tensor(cell, dtype=dtype).reshape(1, 3, 3),
        "pbc": torch.as_tensor(pbc, dtype=torch.bool).reshape(1, 3),
        "edge_index": torch.as_tensor(edge_index, dtype=torch.long),
        "shifts": torch.as_tensor(shifts, dtype=dtype),
        "charge": torch.tensor([charge], dtype=torch.long),
        "spin": torch.tensor([spin], dtype=torch.long),
    }


def atoms_to_graph(
    atoms,
    cutoff: float | None,
    dtype: torch.dtype = torch.float32,
    charge: int | None = None,
    spin: int | None = None,
    *,
    edges: tuple[np.ndarray, np.ndarray] | None = None,
    labels: bool = True,
) -> Data:
    """An `ase.Atoms` as an unlabelled graph, for the ASE calculator.

    Total charge and spin multiplicity default to ``atoms.info["charge"]`` / ``["spin"]``, else
    0 / 1. Labels are never read from ``atoms.calc`` (that would call the calculator being
    served), so energy, forces and stress are NaN with masks False; ``labels=False`` leaves
    them (and subset, structure_id) out, giving only the inputs a `Potential` reads (what the
    calculator evaluates). ``edges`` (edge_index (2, E), shifts (E, 3)), e.g. from a
    `SkinNeighbourList`, are used instead of a neighbour search within ``cutoff``.
    """
    if charge is None:
        charge = int(atoms.info.get("charge", 0))
    if spin is None:
        spin = int(atoms.info.get("spin", 1))
    if not labels:  # the calculator's hot path: tensors straight from the Atoms' arrays
        if edges is None:
            edges = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
        return Data(**_input_fields(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc, *edges, charge, spin, dtype))
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    structure = Structure(
        numbers=atoms.numbers,
        positions=atoms.positions,
        cell=None if (not pbc.any() and not cell.any()) else cell,
        pbc=pbc,
        charge=charge,
        spin=spin,
        id=str(atoms.info.get("id", "")),
        subset=str(atoms.info.get("subset", "")),
    )
    graph = structure_to_graph(structure, cutoff if edges is None else None, dtype=dtype)
    if edges is not None:
        graph.edge_index = torch.as_tensor(edges[0], dtype=torch.long)
        graph.shifts = torch.as_tensor(edges[1], dtype=dtype)
    return graph
