"""Neighbour lists and graphs against a brute-force reference that loops over cell images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation
from torch_geometric.data import Batch

from mlip.data.errors import MLIPDataError
from mlip.data.graph import (
    DEFAULT_MAX_NEIGHBOURS,
    atoms_to_graph,
    check_min_distance,
    closest_pair,
    edge_vectors,
    neighbour_list,
    structure_to_graph,
)
from mlip.data.structure import Structure

# ---------------------------------------------------------------------------- reference


def _completed_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """The cell with each non-periodic row replaced by a unit vector orthogonal to the rest.

    Its reciprocal vectors then measure the true lattice-plane spacing of the periodic
    directions, whatever the non-periodic rows held (zeros included).
    """
    completed = cell.copy()
    spanning = [cell[k] for k in range(3) if pbc[k]]
    for k in range(3):
        if pbc[k]:
            continue
        if not spanning:
            direction = np.eye(3)[k]
        elif len(spanning) == 1:
            a = spanning[0]
            direction = np.cross(a, np.eye(3)[np.argmin(np.abs(a))])
        else:
            direction = np.cross(spanning[0], spanning[1])
        direction = direction / np.linalg.norm(direction)
        completed[k] = direction
        spanning.append(direction)
    return completed


def brute_force_pairs(positions, cell, pbc, cutoff) -> dict[tuple, float]:
    """{(i, j, s0, s1, s2): distance} for every pair closer than `cutoff`, by enumeration.

    Image range: the fractional coordinate of (pos[j] - pos[i]) along a periodic direction k
    is f; an image S_k can only be within the cutoff if |f + S_k| * spacing_k < cutoff.
    """
    positions = np.asarray(positions, dtype=float)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=float)
    differences = positions[None, :, :] - positions[:, None, :]  # [i, j] = pos[j] - pos[i]
    reciprocal = np.linalg.inv(_completed_cell(cell, pbc)).T  # rows b_k, a_m . b_k = delta_mk
    image_ranges = []
    for k in range(3):
        if not pbc[k]:
            image_ranges.append([0])
            continue
        spacing = 1.0 / np.linalg.norm(reciprocal[k])
        fractional = differences @ reciprocal[k]
        low = int(np.floor(-fractional.max() - cutoff / spacing))
        high = int(np.ceil(-fractional.min() + cutoff / spacing))
        image_ranges.append(range(low, high + 1))
    pairs = {}
    for shift in itertools.product(*image_ranges):
        distances = np.linalg.norm(differences + np.array(shift) @ cell, axis=-1)
        for i, j in zip(*np.nonzero(distances < cutoff)):
            if i == j and not any(shift):
                continue
            pairs[(int(i), int(j), *shift)] = float(distances[i, j])
    return pairs


def pairs_from_neighbour_list(positions, cell, pbc, cutoff) -> dict[tuple, float]:
    edge_index, shifts = neighbour_list(positions, cell, pbc, cutoff)
    vectors = edge_vectors(
        torch.as_tensor(positions, dtype=torch.float64),
        torch.as_tensor(np.zeros((3, 3)) if cell is None else cell, dtype=torch.float64),
        torch.from_numpy(edge_index),
        torch.from_numpy(shifts),
    ).numpy()
    distances = np.linalg.norm(vectors, axis=1)
    keys = [(int(i), int(j), *map(int, s)) for j, i, s in zip(*edge_index, shifts)]
    assert len(set(keys)) == len(keys), "duplicate edges"
    return dict(zip(keys, map(float, distances)))


def assert_same_pairs(positions, cell, pbc, cutoff) -> int:
    expected = brute_force_pairs(positions, cell, pbc, cutoff)
    found = pairs_from_neighbour_list(positions, cell, pbc, cutoff)
    assert found.keys() == expected.keys(), (
        f"missing {sorted(expected.keys() - found.keys())[:5]}, "
        f"extra {sorted(found.keys() - expected.keys())[:5]}"
    )
    for key, distance in expected.items():
        assert found[key] == pytest.approx(distance, abs=1e-9)
    return len(expected)


def random_cell(rng, scale: float) -> np.ndarray:
    """A random triclinic cell with volume bounded away from zero."""
    while True:
        cell = rng.normal(size=(3, 3)) * scale + np.eye(3) * scale * rng.uniform(0, 2)
        lengths = np.linalg.norm(cell, axis=1)
        if abs(np.linalg.det(cell)) > 0.15 * np.prod(lengths):
            return cell


# ---------------------------------------------------------------------------- neighbour_list


@pytest.mark.parametrize("seed", range(12))
def test_random_triclinic_cells_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    cell = random_cell(rng, scale=rng.uniform(1.5, 5.0))
    n_atoms = int(rng.integers(1, 7))
    # Fractional coordinates outside [0, 1): atoms need not be wrapped.
    positions = rng.uniform(-0.5, 1.5, size=(n_atoms, 3)) @ cell
    cutoff = rng.uniform(2.0, 5.0)
    assert_same_pairs(positions, cell, True, cutoff)


def test_strongly_skewed_cell_smaller_than_cutoff():
    # a and b almost parallel: the b-planes are 0.3 Å apart, so many images lie within 4 Å.
    cell = np.array([[3.0, 0.0, 0.0], [2.9, 0.3, 0.0], [0.5, 0.4, 2.0]])
    positions = np.array([[0.1, 0.05, 0.2], [1.7, 0.2, 1.1], [2.5, 0.1, 1.8]])
    n_pairs = assert_same_pairs(positions, cell, True, cutoff=4.0)
    assert n_pairs > 100


def test_single_atom_in_small_cell_sees_its_own_images():
    cell = np.eye(3) * 2.0
    edge_index, shifts = neighbour_list(np.zeros((1, 3)), cell, True, cutoff=2.5)
    # Images at 2.0 Å (6) and 2.83 Å (excluded): exactly the six face neighbours.
    assert edge_index.shape == (2, 6)
    assert (edge_index == 0).all()
    assert sorted(map(tuple, shifts)) == sorted(
        [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    )
    assert_same_pairs(np.zeros((1, 3)), cell, True, cutoff=4.5)


@pytest.mark.parametrize("pbc", [(True, True, False), (True, False, False), (False, True, True)])
@pytest.mark.parametrize("zero_non_periodic_rows", [False, True])
def test_mixed_periodicity_matches_brute_force(pbc, zero_non_periodic_rows):
    rng = np.random.default_rng(hash(pbc) % 2**32)
    cell = random_cell(rng, scale=3.0)
    positions = rng.uniform(-0.3, 1.3, size=(5, 3)) @ cell
    positions[:, 2] += rng.normal(scale=8.0, size=5)  # atoms far outside the cell height
    if zero_non_periodic_rows:
        cell[~np.asarray(pbc)] = 0.0
    _edge_index, shifts = neighbour_list(positions, cell, pbc, cutoff=4.5)
    assert (shifts[:, ~np.asarray(pbc)] == 0).all()
    assert_same_pairs(positions, cell, pbc, cutoff=4.5)


def test_molecule_without_cell_matches_brute_force():
    rng = np.random.default_rng(3)
    positions = rng.normal(scale=3.0, size=(15, 3)) + 100.0  # far from the origin
    for cell in (None, np.zeros((3, 3)), np.eye(3) * 2.0):  # a cell is ignored without pbc
        n_pairs = assert_same_pairs(positions, cell, False, cutoff=3.0)
        assert n_pairs > 0
        edge_index, shifts = neighbour_list(positions, cell, False, cutoff=3.0)
        assert not shifts.any()
        assert (edge_index[0] != edge_index[1]).all()


def test_isolated_and_empty_structures_have_no_edges():
    far_apart = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    for positions in (np.zeros((1, 3)), far_apart, np.zeros((0, 3))):
        edge_index, shifts = neighbour_list(positions, None, False, cutoff=5.0)
        assert edge_index.shape == (2, 0) and edge_index.dtype == np.int64
        assert shifts.shape == (0, 3) and shifts.dtype == np.int64


def test_edges_are_sorted_by_centre_and_come_in_both_directions():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    edge_index, shifts = neighbour_list(atoms.positions, atoms.cell.array, True, cutoff=3.0)
    assert (np.diff(edge_index[1]) >= 0).all()
    forward = {(j, i, *s) for j, i, s in zip(*edge_index, shifts.tolist())}
    backward = {(i, j, *(-np.array(s))) for j, i, s in zip(*edge_index, shifts.tolist())}
    assert forward == backward
    assert np.bincount(edge_index[1]).tolist() == [4] * len(atoms)  # diamond: 4 bonds each


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cell": None, "pbc": True}, "needs a cell"),
        ({"cell": np.zeros((3, 3)), "pbc": True}, "linearly dependent"),
        ({"cell": np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]]), "pbc": True}, "dependent"),
        ({"cell": np.eye(3), "pbc": True, "cutoff": 0.0}, "cutoff"),
        ({"cell": np.eye(3), "pbc": True, "positions": np.full((2, 3), np.nan)}, "NaN"),
    ],
)
def test_bad_geometry_raises_a_clear_error(kwargs, message):
    arguments = {"positions": np.zeros((2, 3)), "cutoff": 3.0} | kwargs
    with pytest.raises(ValueError, match=message):
        neighbour_list(**arguments)


def test_edge_set_is_invariant_under_rotation_and_translation():
    rng = np.random.default_rng(7)
    cell = random_cell(rng, scale=4.0)
    positions = rng.uniform(0, 1, size=(6, 3)) @ cell
    rotation = Rotation.random(random_state=11).as_matrix()
    translation = np.array([3.1, -7.2, 0.4])

    reference = pairs_from_neighbour_list(positions, cell, True, 4.0)
    moved = pairs_from_neighbour_list(positions @ rotation.T + translation, cell @ rotation.T,
                                      True, 4.0)
    # Rotating the cell with the atoms keeps (i, j, shift) labels; translation keeps all.
    assert moved.keys() == reference.keys()
    for key, distance in reference.items():
        assert moved[key] == pytest.approx(distance, abs=1e-9)


# ---------------------------------------------------------------------------- graphs


def test_structure_to_graph_fields_and_missing_labels():
    structure = Structure(
        numbers=[8, 1, 1],
        positions=molecule("H2O").positions,
        energy=-14.2,
        forces=None,
        stress=None,
        charge=-1,
        spin=2,
        id="water-0",
        subset="anion",
    )
    graph = structure_to_graph(structure, cutoff=3.0)
    assert graph.pos.shape == (3, 3) and graph.pos.dtype == torch.float32
    assert graph.z.tolist() == [8, 1, 1] and graph.z.dtype == torch.long
    assert graph.cell.shape == (1, 3, 3) and not graph.cell.any()
    assert graph.pbc.shape == (1, 3) and not graph.pbc.any()
    assert graph.edge_index.shape == (2, 6) and graph.edge_index.dtype == torch.long
    assert graph.shifts.shape == (6, 3) and graph.shifts.dtype == torch.float32
    assert graph.charge.tolist() == [-1] and graph.spin.tolist() == [2]
    assert graph.charge.dtype == torch.long and graph.spin.dtype == torch.long
    assert graph.energy.tolist() == pytest.approx([-14.2])
    assert graph.forces.shape == (3, 3) and graph.forces.isnan().all()
    assert graph.stress.shape == (1, 3, 3) and graph.stress.isnan().all()
    assert graph.energy_mask.tolist() == [True]
    assert graph.forces_mask.tolist() == [False] and graph.stress_mask.tolist() == [False]
    assert graph.subset == "anion" and graph.structure_id == "water-0"


def test_structure_to_graph_without_cutoff_has_no_edges_and_keeps_dtype():
    atoms = bulk("Cu", "fcc", a=3.6)
    structure = Structure(atoms.numbers, atoms.positions, atoms.cell.array, (True,) * 3,
                          energy=-3.7, forces=np.zeros((1, 3)), stress=np.eye(3) * 0.01)
    graph = structure_to_graph(structure, cutoff=None, dtype=torch.float64)
    assert graph.edge_index.shape == (2, 0) and graph.shifts.shape == (0, 3)
    assert graph.pos.dtype == graph.cell.dtype == graph.stress.dtype == torch.float64
    assert graph.stress_mask.tolist() == [True] and graph.forces_mask.tolist() == [True]
    assert torch.equal(graph.stress[0], torch.eye(3, dtype=torch.float64) * 0.01)


def test_bad_structure_error_names_the_structure():
    structure = Structure([1], np.zeros((1, 3)), cell=None, pbc=True, id="broken-7")
    with pytest.raises(ValueError, match="broken-7.*needs a cell"):
        structure_to_graph(structure, cutoff=3.0)


def test_label_of_the_wrong_shape_names_structure_and_field():
    structure = Structure([1, 1], np.zeros((2, 3)) + [[0, 0, 0], [0, 0, 0.74]],
                          forces=np.zeros((3, 3)), id="h2-3")
    with pytest.raises(ValueError, match=r"'h2-3': forces has shape \(3, 3\), expected \(2, 3\)"):
        structure_to_graph(structure, cutoff=2.0)


def test_atoms_to_graph_reads_charge_spin_and_ignores_calculator_results():
    atoms = molecule("CH3")
    atoms.info.update(charge=1, spin=1)
    graph = atoms_to_graph(atoms, cutoff=2.0)
    assert graph.charge.tolist() == [1] and graph.spin.tolist() == [1]
    assert not graph.energy_mask.any() and graph.energy.isnan().all()
    assert graph.edge_index.shape[1] > 0

    default = atoms_to_graph(Atoms("Ar"), cutoff=2.0, charge=None, spin=None)
    assert default.charge.tolist() == [0] and default.spin.tolist() == [1]
    overridden = atoms_to_graph(atoms, cutoff=2.0, charge=0, spin=2)
    assert overridden.charge.tolist() == [0] and overridden.spin.tolist() == [2]


def test_atoms_to_graph_matches_structure_to_graph_for_a_crystal():
    atoms = bulk("NaCl", "rocksalt", a=5.64) * (2, 1, 1)
    from_atoms = atoms_to_graph(atoms, cutoff=4.0, dtype=torch.float64)
    structure = Structure(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    from_structure = structure_to_graph(structure, cutoff=4.0, dtype=torch.float64)
    assert torch.equal(from_atoms.edge_index, from_structure.edge_index)
    assert torch.equal(from_atoms.shifts, from_structure.shifts)
    assert torch.equal(from_atoms.cell, from_structure.cell)


# ---------------------------------------------------------------------------- edge_vectors


def test_edge_vectors_gradcheck_wrt_positions_and_cell():
    rng = np.random.default_rng(5)
    cell_np = random_cell(rng, scale=2.5)
    positions_np = rng.uniform(0, 1, size=(3, 3)) @ cell_np
    edge_index, shifts = neighbour_list(positions_np, cell_np, True, cutoff=3.0)
    assert np.abs(shifts).max() > 0  # the check must exercise the cell term
    edge_index, shifts = torch.from_numpy(edge_index), torch.from_numpy(shifts).double()
    positions = torch.tensor(positions_np, requires_grad=True)
    cell = torch.tensor(cell_np, requires_grad=True).reshape(1, 3, 3)
    batch = torch.zeros(3, dtype=torch.long)

    def vectors(pos, cell):
        return edge_vectors(pos, cell, edge_index, shifts, batch)

    assert torch.autograd.gradcheck(vectors, (positions, cell))


def test_batched_edge_vectors_use_each_graphs_cell():
    crystal = bulk("Si", "diamond", a=5.43)
    strained = crystal.copy()
    strained.set_cell(crystal.cell.array @ np.diag([1.05, 0.98, 1.0]), scale_atoms=True)
    water = molecule("H2O")
    graphs = [atoms_to_graph(a, cutoff=4.0, dtype=torch.float64) for a in (crystal, water, strained)]
    batch = Batch.from_data_list(graphs)

    assert batch.cell.shape == (3, 3, 3) and batch.pbc.shape == (3, 3)
    assert batch.charge.shape == (3,) and batch.energy_mask.shape == (3,)
    assert batch.structure_id == ["", "", ""]
    offsets = np.cumsum([0] + [g.num_nodes for g in graphs])
    edge_counts = [g.edge_index.shape[1] for g in graphs]
    for k, graph in enumerate(graphs):
        start = sum(edge_counts[:k])
        edges = batch.edge_index[:, start : start + edge_counts[k]]
        assert torch.equal(edges, graph.edge_index + offsets[k])

    batched = edge_vectors(batch.pos, batch.cell, batch.edge_index, batch.shifts, batch.batch)
    separate = torch.cat(
        [edge_vectors(g.pos, g.cell, g.edge_index, g.shifts) for g in graphs]
    )
    assert torch.allclose(batched, separate, atol=1e-12)
    # Every edge of every graph is shorter than the cutoff with its own cell.
    assert batched.norm(dim=1).max() < 4.0


# ---------------------------------------------------------------------------- coincident atoms


def test_closest_pair_sees_periodic_images():
    """Atoms 9.95 Å apart inside a 10 Å cell are 0.05 Å apart through the next image."""
    cell = np.eye(3) * 10.0
    positions = np.array([[0.02, 1.0, 1.0], [9.97, 1.0, 1.0], [5.0, 5.0, 5.0]])
    pair = closest_pair(positions, cell, True, within=0.1)
    assert (pair.i, pair.j) == (0, 1) or (pair.i, pair.j) == (1, 0)
    assert pair.distance == pytest.approx(0.05)
    assert abs(pair.shift[0]) == 1 and pair.shift[1:] == (0, 0)
    assert closest_pair(positions, cell, True, within=0.04) is None
    assert closest_pair(positions, None, False, within=0.1) is None  # no image without pbc


def test_closest_pair_of_an_atom_with_its_own_image():
    pair = closest_pair(np.zeros((1, 3)), np.diag([0.05, 3.0, 3.0]), True, within=0.1)
    assert (pair.i, pair.j) == (0, 0) and pair.distance == pytest.approx(0.05)


def test_check_min_distance_names_the_pair_elements_and_distance():
    structure = Structure([8, 1, 1], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.96], [0.0, 0.0, 0.97]], id="water-9")
    with pytest.raises(MLIPDataError) as caught:
        check_min_distance(structure, 0.1, file="in.xyz", index=4)
    error = caught.value
    assert (error.file, error.index, error.structure_id, error.field) == ("in.xyz", 4, "water-9", "positions")
    assert "atoms 1 (H) and 2 (H)" in str(error) and "0.01 Å" in str(error) and "0.1 Å" in str(error)
    check_min_distance(structure, 0.005, file="in.xyz", index=4)  # a lower threshold passes
    check_min_distance(structure, None)  # None (or 0) disables the check


def test_structure_to_graph_refuses_coincident_atoms_from_its_own_edges():
    cell = np.eye(3) * 4.0
    structure = Structure([14, 14], [[0.0, 0.0, 0.0], [3.99, 0.0, 0.0]], cell=cell, pbc=True, id="si-2")
    with pytest.raises(MLIPDataError, match=r"atoms 0 \(Si\) and 1 \(Si\) are 0.01 Å apart") as caught:
        structure_to_graph(structure, cutoff=3.0, min_distance=0.1, source="si.h5", index=7)
    assert (caught.value.file, caught.value.index, caught.value.field) == ("si.h5", 7, "positions")
    assert "shift" in str(caught.value)
    # Without a threshold (the default) the graph is built; with cutoff=None the check still runs.
    assert structure_to_graph(structure, cutoff=3.0).edge_index.shape[1] > 0
    with pytest.raises(MLIPDataError, match="0.01 Å apart"):
        structure_to_graph(structure, cutoff=None, min_distance=0.1)


def test_a_collapsed_cell_is_refused_before_the_neighbour_search():
    """One atom in a 0.1 Å cube has ~520,000 images within 5 Å: refused at once, not built."""
    import time

    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"max_neighbours") as caught:
        neighbour_list(np.zeros((1, 3)), np.eye(3) * 0.1, True, cutoff=5.0)
    assert time.perf_counter() - start < 1.0
    assert "523" in str(caught.value)  # the estimated count (4/3 π 5³ / 0.001 ≈ 523,599 per atom)
    structure = Structure([29], np.zeros((1, 3)), cell=np.eye(3) * 0.1, pbc=True, id="collapsed")
    with pytest.raises(MLIPDataError, match="max_neighbours") as caught:
        structure_to_graph(structure, cutoff=5.0, source="cu.h5", index=3)
    assert (caught.value.file, caught.value.index, caught.value.structure_id) == ("cu.h5", 3, "collapsed")


@pytest.mark.parametrize("pbc", [(True, True, False), (True, False, False)])
def test_a_collapsed_slab_or_wire_is_refused_before_the_neighbour_search(pbc):
    cell = np.diag([0.05, 0.05, 0.0]) if pbc[1] else np.diag([0.001, 0.0, 0.0])
    with pytest.raises(ValueError, match="max_neighbours"):
        neighbour_list(np.zeros((2, 3)) + [[0, 0, 0], [0, 0, 1.0]], cell, pbc, cutoff=5.0)


def test_the_actual_neighbour_count_is_bounded_too():
    """A dense cluster (no cell to estimate from) is refused after the search, with its count."""
    positions = np.random.default_rng(0).uniform(0, 1.0, size=(40, 3))
    with pytest.raises(ValueError, match=r"1560 neighbour edges \(39.0 per atom\).*max_neighbours=10"):
        neighbour_list(positions, None, False, cutoff=3.0, max_neighbours=10)
    assert neighbour_list(positions, None, False, cutoff=3.0)[0].shape == (2, 1560)


def test_small_cells_with_many_images_stay_within_the_default_bound():
    # 8 Å cutoff around one atom in a 2 Å cube: 250 images (~268 by density), far below the bound.
    edge_index, _ = neighbour_list(np.zeros((1, 3)), np.eye(3) * 2.0, True, cutoff=8.0)
    assert edge_index.shape[1] == 250 < DEFAULT_MAX_NEIGHBOURS
