"""Neighbour search and geometry sanity checks: NumPy in, NumPy out, no torch code.

`neighbour_list` finds every pair (j -> i) closer than a cutoff with vesin (any triclinic cell,
cells smaller than the cutoff, mixed periodicity, cell-less molecules; see docs/graph.md for
why vesin). `mlip.data.graph` builds graphs from it, and re-exports everything public here.

Two sanity bounds protect training from broken geometry:

* coincident atoms (closer than ``min_distance``, default `DEFAULT_MIN_DISTANCE` = 0.1 Å,
  periodic images included) make edge directions NaN. `closest_pair` finds the closest pair
  with one small-radius search and `check_min_distance` turns it into a located
  `MLIPDataError`; the converter calls it per structure, and the graph builder checks the
  lengths of the edges it has already built instead (no second search on the hot path);
* a collapsed cell (e.g. 0.1 Å instead of 10 Å) has millions of images within the cutoff:
  `neighbour_list` refuses more than ``max_neighbours`` edges per atom on average (default
  `DEFAULT_MAX_NEIGHBOURS`), first from a density estimate *before* the search allocates
  anything, then from the actual count.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import numpy as np

from mlip.data.errors import MLIPDataError
from mlip.data.schema import degenerate_lattice
from mlip.data.structure import Structure

__all__ = [
    "DEFAULT_MAX_NEIGHBOURS",
    "DEFAULT_MIN_DISTANCE",
    "AtomPair",
    "GeometryError",
    "SkinNeighbourList",
    "check_edge_lengths",
    "check_min_distance",
    "closest_pair",
    "neighbour_list",
    "neighbour_search",
]

#: Atoms closer than this (Å) are refused by the converter and the dataset: a real structure
#: never has them (the shortest bond, H2, is 0.74 Å), and coincident atoms make edge directions
#: NaN, which a model then trains on.
DEFAULT_MIN_DISTANCE = 0.1
#: Most neighbour edges per atom (mean over the structure) a graph may have. Dense solids have
#: ~160 neighbours within 6 Å, ~740 within 10 Å; a cell given in nm instead of Å has ~10^5.
DEFAULT_MAX_NEIGHBOURS = 2000
#: Search radius (Å) of `closest_pair` when asked about a smaller distance. vesin bins space by
#: the radius: 0.1 Å bins make a 4 Å cell 40³ bins (4 ms per search); 2 Å finds only bonded
#: neighbours, a handful per atom, and costs about as much as the graph's own search.
_CLOSEST_PAIR_SEARCH_RADIUS = 2.0
#: The density estimate refuses a structure before the search only when it expects more than
#: this multiple of the bound (the estimate assumes uniform atoms; the actual count decides).
_ESTIMATE_MARGIN = 2.0


class GeometryError(ValueError):
    """A bad geometry argument or an unbounded neighbour list; ``field`` names the culprit."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class AtomPair:
    """Two atoms ``distance`` Å apart: atom j's image at pos[j] + shift @ cell and atom i (i <= j).

    ``i == j`` is an atom and one of its own periodic images.
    """

    i: int
    j: int
    distance: float  # Å
    shift: tuple[int, int, int]  # cell-image multiples of atom j (zeros: the atom itself)


# --------------------------------------------------------------------------------------------
# Neighbour search
# --------------------------------------------------------------------------------------------


def _vesin():
    """The vesin module, imported on first use: it imports torch when torch is installed
    (~1 s), which `mlip-convert --help` and the schema code should not pay for."""
    import vesin

    return vesin



def neighbour_list(
    positions: np.ndarray,
    cell: np.ndarray | None,
    pbc,
    cutoff: float,
    *,
    n_threads: int = 1,
    max_neighbours: float | None = DEFAULT_MAX_NEIGHBOURS,
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
        max_neighbours: most edges per atom (mean over the structure); more raise a
            `GeometryError` (a ValueError) instead of exhausting memory. Checked from the
            atom density before the search (periodic structures) and from the actual count
            after it. None disables the bound.

    Returns:
        edge_index: (2, E) int64, row 0 = neighbour j, row 1 = centre i; sorted by centre i
            (the order of neighbours of one centre is unspecified).
        shifts: (E, 3) int64 cell-image multiples (zero along non-periodic directions).
    """
    edge_index, shifts, _ = neighbour_search(
        positions, cell, pbc, cutoff, n_threads=n_threads, max_neighbours=max_neighbours
    )
    return edge_index, shifts


def neighbour_search(
    positions,
    cell,
    pbc,
    cutoff: float,
    *,
    n_threads: int = 1,
    max_neighbours: float | None = DEFAULT_MAX_NEIGHBOURS,
    distances: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`neighbour_list`, plus the (E,) edge lengths in Å when ``distances`` is True (else None).

    vesin computes the lengths anyway; asking for them costs one more output array.
    """
    positions, cell, pbc = _validated_geometry(positions, cell, pbc, cutoff)
    n_atoms = positions.shape[0]
    if n_atoms == 0:
        empty = np.zeros(0) if distances else None
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64), empty
    if max_neighbours is not None:
        _check_expected_neighbours(positions, cell, pbc, cutoff, max_neighbours)

    calculator = _vesin().NeighborList(
        cutoff=float(cutoff), full_list=True, sorted=True, n_threads=n_threads
    )
    results = calculator.compute(
        points=positions, box=cell, periodic=pbc.tolist(), quantities="ijSd" if distances else "ijS", copy=True
    )
    centres, neighbours, shifts = results[:3]
    n_edges = centres.shape[0]
    if max_neighbours is not None and n_edges > max_neighbours * n_atoms:
        raise GeometryError(
            "cell" if pbc.any() else "positions",
            f"{n_edges} neighbour edges ({n_edges / n_atoms:.1f} per atom) within {cutoff:g} Å, more than "
            f"max_neighbours={max_neighbours:g} per atom: atoms crammed together or a cell too small "
            "(wrong length unit?); raise max_neighbours if this is intended",
        )
    # vesin's pair (i, j, S) has vector pos[j] - pos[i] + S @ box: i is our centre (receiver).
    edge_index = np.stack([neighbours, centres]).astype(np.int64, copy=False)
    return edge_index, shifts.astype(np.int64, copy=False), results[3] if distances else None


def _check_expected_neighbours(positions, cell, pbc, cutoff: float, max_neighbours: float) -> None:
    """Refuse, before any allocation, a periodic structure far denser than the bound allows."""
    expected, measure = _expected_neighbours_per_atom(positions, cell, pbc, cutoff)
    if expected > _ESTIMATE_MARGIN * max_neighbours:
        raise GeometryError(
            "cell",
            f"about {expected:.0f} neighbour edges per atom expected within {cutoff:g} Å "
            f"({positions.shape[0]} atoms per {measure}), more than max_neighbours={max_neighbours:g}: "
            f"the cell is far too small (wrong length unit?), cell={cell.tolist()}; raise "
            "max_neighbours if this is intended",
        )


def _expected_neighbours_per_atom(positions, cell, pbc, cutoff: float) -> tuple[float, str]:
    """(mean neighbours per atom if the atoms were spread uniformly, the periodic measure).

    Periodic in 3 directions: n / V * (4/3) pi r^3. A slab (2 directions, area A) is treated as
    a layer of thickness max(t, 4r/3), t = the atoms' extent along the normal, so that a flat
    layer gives n pi r^2 / A; a wire (1 direction, length L) as a prism of cross-section
    max(S, 2 pi r^2 / 3), S = the atoms' bounding box across it, so that a line gives
    n 2r / L. Molecules give 0 (no images; only the actual count bounds them).
    """
    n_atoms = positions.shape[0]
    sphere = 4.0 / 3.0 * math.pi * cutoff**3
    periodic = cell[pbc]
    if len(periodic) == 3:
        (a1, a2, a3), (b1, b2, b3), (c1, c2, c3) = periodic.tolist()
        volume = abs(a1 * (b2 * c3 - b3 * c2) - a2 * (b1 * c3 - b3 * c1) + a3 * (b1 * c2 - b2 * c1))
        return n_atoms * sphere / volume, f"{volume:.3g} Å³"
    if len(periodic) == 2:
        normal = np.cross(periodic[0], periodic[1])
        area = float(np.linalg.norm(normal))
        thickness = float(np.ptp(positions @ (normal / area)))
        return n_atoms * sphere / (area * max(thickness, 4.0 * cutoff / 3.0)), f"{area:.3g} Å² of slab"
    if len(periodic) == 1:
        length = float(np.linalg.norm(periodic[0]))
        axis = periodic[0] / length
        across = np.linalg.svd(np.eye(3) - np.outer(axis, axis))[0][:, :2]  # two unit vectors ⟂ axis
        extent = np.ptp(positions @ across, axis=0)
        section = max(float(extent[0] * extent[1]), 2.0 * math.pi * cutoff**2 / 3.0)
        return n_atoms * sphere / (length * section), f"{length:.3g} Å of wire"
    return 0.0, "molecule"


def _validated_geometry(positions, cell, pbc, cutoff) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrays in the shapes vesin wants, or a ValueError saying which argument is wrong."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise GeometryError("positions", f"positions must have shape (n_atoms, 3), got {positions.shape}")
    if not np.isfinite(positions).all():
        raise GeometryError("positions", "positions contain NaN or infinite values")
    if not (isinstance(cutoff, numbers.Real) and math.isfinite(cutoff) and cutoff > 0):
        raise GeometryError("cutoff", f"cutoff must be a positive finite number of Å, got {cutoff!r}")

    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if cell is None:
        if pbc.any():
            raise GeometryError("cell", f"pbc={pbc.tolist()} needs a cell, but cell is None")
        cell = np.zeros((3, 3))
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    if cell.shape != (3, 3):
        raise GeometryError("cell", f"cell must have shape (3, 3), got {cell.shape}")
    if not np.isfinite(cell).all():
        raise GeometryError("cell", "cell contains NaN or infinite values")

    periodic_vectors = cell[pbc]  # (n_periodic, 3)
    if degenerate_lattice(periodic_vectors):
        raise GeometryError(
            "cell",
            f"the periodic cell vectors are zero or linearly dependent (pbc={pbc.tolist()}, "
            f"cell={cell.tolist()})"
        )
    return positions, cell, pbc


# --------------------------------------------------------------------------------------------
# A neighbour list reused across steps (MD, relaxation)
# --------------------------------------------------------------------------------------------


class SkinNeighbourList:
    """Pairs within ``cutoff`` of a changing configuration, searched within cutoff + ``skin``
    and reused while no atom moved more than skin/2 (a Verlet list).

    If no atom moved more than skin/2 since the search, no pair can have closed in from beyond
    cutoff + skin to inside the cutoff, so the stored pairs filtered by their current length are
    exactly the pairs a fresh `neighbour_list` would give (up to order). A change of the atomic
    numbers, cell or pbc triggers a new search; ``skin=0`` searches whenever anything moved.

        neighbours = SkinNeighbourList(cutoff=5.0, skin=0.5)
        edge_index, shifts, squared_lengths = neighbours.search(positions, cell, pbc, numbers)

    ``builds`` counts the searches done. The arguments of `search` are as for `neighbour_list`.
    """

    def __init__(
        self, cutoff: float, skin: float = 0.5, *, max_neighbours: float | None = DEFAULT_MAX_NEIGHBOURS
    ) -> None:
        if not skin >= 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.max_neighbours = max_neighbours
        self.builds = 0
        self._reference_positions: np.ndarray | None = None
        self._cell = self._pbc = self._numbers = None
        self._edge_index = np.zeros((2, 0), dtype=np.int64)
        self._shifts = np.zeros((0, 3))

    def needs_rebuild(self, positions: np.ndarray, cell: np.ndarray, pbc, numbers) -> bool:
        """Whether `search` would search again for this configuration."""
        if self._reference_positions is None or len(numbers) != len(self._numbers):
            return True
        if not np.array_equal(numbers, self._numbers):
            return True
        if not np.array_equal(pbc, self._pbc) or not np.array_equal(cell, self._cell):
            return True
        displacement = np.linalg.norm(positions - self._reference_positions, axis=1)
        return bool(displacement.max() > 0.5 * self.skin)

    def search(
        self, positions: np.ndarray, cell: np.ndarray, pbc, numbers
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pairs (j -> i) closer than the cutoff: edge_index (2, E) int64 (row 0 = j, row 1 =
        i), shifts (E, 3) float64 integer cell multiples, and squared lengths (E,) Å²."""
        if self.needs_rebuild(positions, cell, pbc, numbers):
            edge_index, shifts = neighbour_list(
                positions, cell, pbc, self.cutoff + self.skin, max_neighbours=self.max_neighbours
            )
            self._edge_index, self._shifts = edge_index, shifts.astype(np.float64)
            self._reference_positions = np.array(positions, dtype=np.float64)
            self._cell, self._pbc, self._numbers = np.array(cell), np.array(pbc), np.array(numbers)
            self.builds += 1
        vectors = edge_vectors_numpy(positions, cell, self._edge_index, self._shifts)
        squared_lengths = np.einsum("ij,ij->i", vectors, vectors)
        inside = squared_lengths < self.cutoff * self.cutoff
        return self._edge_index[:, inside], self._shifts[inside], squared_lengths[inside]


def edge_vectors_numpy(positions: np.ndarray, cell: np.ndarray, edge_index: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """(E, 3) Å: pos[j] - pos[i] + shift @ cell for the edges (j -> i); NumPy twin of
    `mlip.geometry.edge_vectors` for one structure (no gradients)."""
    senders, receivers = edge_index
    return positions[senders] - positions[receivers] + shifts @ cell


# --------------------------------------------------------------------------------------------
# Coincident atoms
# --------------------------------------------------------------------------------------------


def closest_pair(positions: np.ndarray, cell: np.ndarray | None, pbc, within: float) -> AtomPair | None:
    """The closest pair of atoms, periodic images included, if it is closer than ``within`` Å.

    One half neighbour list with radius max(``within``, `_CLOSEST_PAIR_SEARCH_RADIUS`): 40-70 µs
    for a small molecule or crystal, 0.7 ms for 4000 atoms. Returns None when no two atoms (and
    no atom and its own image) are closer than ``within``. Arguments as for `neighbour_list`;
    a cell so small that the search would be unbounded raises `GeometryError`.
    """
    radius = max(float(within), _CLOSEST_PAIR_SEARCH_RADIUS)
    positions, cell, pbc = _validated_geometry(positions, cell, pbc, radius)
    if positions.shape[0] == 0:
        return None
    _check_expected_neighbours(positions, cell, pbc, radius, DEFAULT_MAX_NEIGHBOURS)
    calculator = _vesin().NeighborList(cutoff=radius, full_list=False, sorted=False)
    centres, neighbours, shifts, distances = calculator.compute(
        points=positions, box=cell, periodic=pbc.tolist(), quantities="ijSd", copy=False
    )
    if distances.shape[0] == 0:
        return None
    edge = int(np.argmin(distances))
    if distances[edge] >= within:
        return None
    return _pair_at(centres, neighbours, shifts, distances, edge)


def check_edge_lengths(
    structure: Structure,
    edge_index: np.ndarray,
    shifts: np.ndarray,
    distances: np.ndarray,
    min_distance: float,
    *,
    file: str | os.PathLike | None = None,
    index: int | None = None,
) -> None:
    """`check_min_distance` from a neighbour list already built with a cutoff >= ``min_distance``.

    ``edge_index``, ``shifts`` and ``distances`` (Å) as returned by `neighbour_search`; costs one
    pass over the distances, no search.
    """
    pair = closest_edge(edge_index, shifts, distances, within=min_distance)
    if pair is not None:
        raise _too_close(structure, pair, min_distance, file, index)


def closest_edge(edge_index: np.ndarray, shifts: np.ndarray, distances: np.ndarray, within: float) -> AtomPair | None:
    """The shortest edge of a neighbour list as an `AtomPair`, if it is shorter than ``within`` Å.

    ``edge_index`` (2, E) edges j -> i, ``shifts`` (E, 3) cell multiples, ``distances`` (E,) Å, as
    `neighbour_search` returns them. One pass over the distances, no search.
    """
    if distances.shape[0] == 0:
        return None
    edge = int(np.argmin(distances))
    if distances[edge] >= within:
        return None
    return _pair_at(edge_index[1], edge_index[0], shifts, distances, edge)


def _pair_at(centres, neighbours, shifts, distances, edge: int) -> AtomPair:
    """Edge ``edge`` of a vesin-style list (vector pos[j] - pos[i] + S @ cell) as an `AtomPair`."""
    i, j, shift = int(centres[edge]), int(neighbours[edge]), np.asarray(shifts[edge], dtype=np.int64)
    if i > j:  # the same pair seen from j: pos[i] - pos[j] - S @ cell
        i, j, shift = j, i, -shift
    return AtomPair(i, j, float(distances[edge]), tuple(int(k) for k in shift))


def check_min_distance(
    structure: Structure,
    min_distance: float | None = DEFAULT_MIN_DISTANCE,
    *,
    file: str | os.PathLike | None = None,
    index: int | None = None,
) -> None:
    """Raise `MLIPDataError` (field ``positions``) if two atoms are closer than ``min_distance`` Å.

    Periodic images count (an atom 0.05 Å from its neighbour's image, or from its own image in
    a 0.05 Å cell, is refused). ``file`` and ``index`` locate the structure in the message,
    which names the pair (indices, elements, distance in Å). ``None`` or 0 disables the check.
    """
    if not min_distance:
        return
    try:
        pair = closest_pair(structure.positions, structure.cell, structure.pbc, within=min_distance)
    except GeometryError as error:
        raise MLIPDataError(error.reason, file, index=index, structure_id=structure.id, field=error.field) from None
    if pair is not None:
        raise _too_close(structure, pair, min_distance, file, index)


def _too_close(structure: Structure, pair: AtomPair, min_distance: float, file, index) -> MLIPDataError:
    from ase.data import chemical_symbols

    symbol_i, symbol_j = (chemical_symbols[int(structure.numbers[k])] for k in (pair.i, pair.j))
    image = ""
    if any(pair.shift):
        whose = "its own" if pair.i == pair.j else f"atom {pair.j}'s"
        image = f" ({whose} periodic image, cell shift {pair.shift})"
    return MLIPDataError(
        f"atoms {pair.i} ({symbol_i}) and {pair.j} ({symbol_j}) are {pair.distance:.3g} Å apart{image}, "
        f"closer than min_distance {min_distance:g} Å: coincident atoms make edge directions NaN "
        "(lower mlip-convert --min-distance / data.min_distance if this is intended)",
        file,
        index=index,
        structure_id=structure.id,
        field="positions",
    )
