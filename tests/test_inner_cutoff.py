"""The inner cutoff: below a pair's shortest training distance the learned model stops seeing the pair.

What it promises (docs/models.md, "Inner cutoff"): the switch is smooth (C2) and exact at both
ends; an edge switched off acts as if it were absent, for every backbone; structures whose pairs
are all at or above their inner cutoffs are untouched; forces and stress stay exact derivatives;
with ZBL a dimer's energy rises monotonically below the switch; ``auto`` takes each pair's shortest
distance in the training data (times ``inner_cutoff_fraction``), and a model file keeps the resolved values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.data import covalent_radii
from torch_geometric.data import Batch

from mlip import testing
from mlip.data.statistics import StatisticsAccumulator
from mlip.data.structure import Structure
from mlip.models.build import automatic_inner_cutoffs, build_potential
from mlip.models.potential import Potential
from mlip.nn.radial import inner_switch
from mlip.nn.zbl import ZBLRepulsion

BACKBONES = ("mace", "facet", "transip")
WIDTH = 0.25  # Å, the default


def dimer(distance: float, numbers=(1, 1)) -> testing.Geometry:
    return testing.Geometry(np.array(numbers), np.array([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]]))


# ----------------------------------------------------------------------------- the switch
def test_switch_is_one_above_zero_below_and_smooth_at_both_ends(float64_default):
    inner = torch.tensor(1.0)
    distances = torch.linspace(0.5, 1.5, 1001)
    weights = inner_switch(distances, inner.expand_as(distances), WIDTH)
    assert bool((weights[distances >= 1.0] == 1.0).all())
    assert bool((weights[distances <= 1.0 - WIDTH] == 0.0).all())
    inside = (distances > 1.0 - WIDTH) & (distances < 1.0)
    assert bool((weights[inside].diff() > 0).all()), "the switch must rise monotonically"
    # slope and curvature vanish at both ends and tend to zero next to them (C2)
    for edge in (1.0 - WIDTH, 1.0):
        for offset, slope_bound, curvature_bound in ((0.0, 1e-12, 1e-9), (1e-4, 1e-4, 0.5), (-1e-4, 1e-4, 0.5)):
            r = torch.tensor([edge + offset], requires_grad=True)
            (slope,) = torch.autograd.grad(inner_switch(r, inner[None], WIDTH).sum(), r, create_graph=True)
            (curvature,) = torch.autograd.grad(slope.sum(), r)
            assert abs(slope.item()) < slope_bound, (edge, offset)
            assert abs(curvature.item()) < curvature_bound, (edge, offset)
    middle = torch.tensor([1.0 - WIDTH / 2], requires_grad=True)
    (slope,) = torch.autograd.grad(inner_switch(middle, inner[None], WIDTH).sum(), middle)
    assert slope.item() == pytest.approx(1.875 / WIDTH, rel=1e-12)  # quintic smoothstep: steepest in the middle


def test_pairs_without_an_inner_cutoff_are_never_switched(float64_default):
    distances = torch.tensor([1e-3, 0.1, 2.0])
    assert bool((inner_switch(distances, torch.zeros(3), WIDTH) == 1.0).all())


# ------------------------------------------------------------------- every backbone honours it
def _without_edges_between(data, first: int, second: int):
    """The graph with the edges between atoms ``first`` and ``second`` removed (both directions)."""
    sender, receiver = data.edge_index
    keep = ~(((sender == first) & (receiver == second)) | ((sender == second) & (receiver == first)))
    data = data.clone()
    data.edge_index, data.shifts = data.edge_index[:, keep], data.shifts[keep]
    return data


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_switched_off_edge_acts_as_if_absent(float64_default, backbone):
    # atoms 0 (O) and 1 (H) 0.6 Å apart, below H-O's 1.0 - 0.25 Å; the others 1.3-2.2 Å apart
    geometry = testing.Geometry(
        np.array([8, 1, 6, 1]),
        np.array([[0.0, 0.0, 0.0], [0.6, 0.0, 0.0], [-0.9, 1.0, 0.0], [0.3, -1.3, 0.4]]),
    )
    with_switch = testing.small_potential(backbone, torch.float64, inner_cutoff={"O-H": 1.0})
    plain = testing.small_potential(backbone, torch.float64)
    plain.load_state_dict(with_switch.state_dict())
    data = testing.graph(geometry, with_switch.cutoff)
    switched = with_switch(Batch.from_data_list([data]))
    absent = plain(Batch.from_data_list([_without_edges_between(data, 0, 1)]))
    seen = plain(Batch.from_data_list([data]))
    torch.testing.assert_close(switched["energy"], absent["energy"], rtol=0, atol=1e-10)
    torch.testing.assert_close(switched["forces"], absent["forces"], rtol=0, atol=1e-9)
    assert float((seen["energy"] - absent["energy"]).abs()) > 1e-4, "the test needs the edge to matter"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_structures_above_their_inner_cutoffs_are_untouched(float64_default, backbone):
    geometries = [testing.molecule(0), testing.crystal(0)]  # nearest neighbours >= 0.9 / 1.0 Å
    with_switch = testing.small_potential(backbone, torch.float64, inner_cutoff=0.9)
    plain = testing.small_potential(backbone, torch.float64)
    plain.load_state_dict(with_switch.state_dict())
    for geometry in geometries:
        a = testing.predict(with_switch, geometry, compute_stress=geometry.cell is not None)
        b = testing.predict(plain, geometry, compute_stress=geometry.cell is not None)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forces_and_stress_are_derivatives_inside_the_switch(float64_default, backbone):
    # inner cutoff 1.6 Å with width 0.8: most pairs of the test molecule and crystal are inside the switch
    potential = testing.small_potential(
        backbone, torch.float64, inner_cutoff=1.6, inner_cutoff_width=0.8, pair_repulsion="zbl"
    )
    tolerances = testing.backbone_tolerances(backbone, torch.float64)
    for name in ("forces_match_finite_differences", "stress_matches_finite_differences", "rotation", "permutation"):
        testing.run_check(name, potential, tolerances)


def test_symmetry_checks_hold_for_mace_with_the_switch(float64_default):
    potential = testing.small_potential("mace", torch.float64, inner_cutoff=1.6, inner_cutoff_width=0.8)
    tolerances = testing.backbone_tolerances("mace", torch.float64)
    for name in ("translation", "reflection", "periodic_images", "batch_equals_singles"):
        testing.run_check(name, potential, tolerances)


# ----------------------------------------------------------------------- dimers with ZBL
@pytest.mark.parametrize("backbone", BACKBONES)
def test_with_zbl_a_dimer_rises_monotonically_below_the_switch(float64_default, backbone):
    inner = 1.2  # Å for H-H, above ZBL's own H-H reach (2 R_cov = 0.62 Å)
    potential = testing.small_potential(backbone, torch.float64, inner_cutoff={"H-H": inner}, pair_repulsion="zbl")
    distances = np.linspace(0.2, inner - WIDTH, 60)
    energies = np.array([testing.energy(potential, dimer(r)) for r in distances])
    assert bool((np.diff(energies) < 0).all()), "energy must fall as the pair separates, i.e. rise as it approaches"
    # below the switch only the repulsion varies: energy - ZBL is one constant
    zbl = potential.pair_repulsion
    vector = torch.tensor(distances)[:, None] * torch.tensor([[1.0, 0.0, 0.0]])
    repulsion = np.array([
        float(zbl(torch.tensor([0, 0]), torch.tensor([[1, 0], [0, 1]]), torch.stack([v, -v])).sum()) for v in vector
    ])
    learned = energies - repulsion
    assert np.ptp(learned) < 1e-10
    assert repulsion[-1] > 0, "ZBL must reach out to the inner cutoff"


def test_zbl_reaches_at_least_to_each_pairs_inner_cutoff(float64_default):
    table = torch.tensor([[1.4, 0.5], [0.5, 0.0]])  # H-H beyond, H-C inside ZBL's covalent reach
    zbl = ZBLRepulsion([1, 6], cutoff=5.0, minimum_pair_cutoffs=table)
    h, c = torch.tensor([0]), torch.tensor([1])
    assert float(zbl.pair_cutoffs(h, h)) == pytest.approx(1.4)
    assert float(zbl.pair_cutoffs(h, c)) == pytest.approx(covalent_radii[1] + covalent_radii[6])
    assert float(zbl.pair_cutoffs(c, c)) == pytest.approx(2 * covalent_radii[6])


# ------------------------------------------------------------------------ statistics and auto
def test_statistics_record_the_shortest_distance_of_each_pair():
    accumulator = StatisticsAccumulator(cutoff=3.0)
    water = Structure(numbers=np.array([8, 1, 1]), positions=np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]),
                      energy=-1.0)
    # a periodic cell in which the shortest C-C distance is to an image (2.2 Å across the boundary)
    cell = np.diag([5.0, 6.0, 6.0])
    crystal = Structure(numbers=np.array([6, 6, 1]), positions=np.array([[0.4, 0, 0], [3.2, 0, 0], [1.6, 1.2, 0]]),
                        cell=cell, pbc=np.array([True, True, True]), energy=-2.0)
    accumulator.add(water)
    accumulator.add(crystal)
    shortest = accumulator.result().shortest_distances
    expected_hh = float(np.linalg.norm(water.positions[1] - water.positions[2]))
    assert shortest["1-8"] == pytest.approx(0.96)
    assert shortest["1-1"] == pytest.approx(expected_hh)
    assert shortest["6-6"] == pytest.approx(2.2)  # the image, not the 2.8 Å in-cell pair
    assert shortest["1-6"] == pytest.approx(float(np.hypot(1.2, 1.2)))
    assert set(shortest) == {"1-1", "1-6", "1-8", "6-6"}  # no pair of the two structures together


def test_auto_takes_a_fraction_of_the_data_and_of_the_covalent_sum_for_unseen_pairs():
    statistics = {"shortest_distances": {"1-6": 0.96789, "1-1": 1.476}}
    cutoffs = automatic_inner_cutoffs([6, 1, 8], statistics, fraction=1.0)
    assert cutoffs["H-C"] == 0.9678  # rounded down: never above a training distance
    assert cutoffs["H-H"] == 1.476
    assert cutoffs["O-O"] == pytest.approx(2 * covalent_radii[8], abs=1e-4)  # unseen: the covalent sum
    assert set(cutoffs) == {"H-H", "H-C", "H-O", "C-C", "C-O", "O-O"}
    default = automatic_inner_cutoffs([6, 1, 8], statistics)  # 0.75 of each
    assert default["H-H"] == pytest.approx(0.75 * 1.476, abs=1e-4) and default["H-H"] <= 0.75 * 1.476
    assert default["O-O"] == pytest.approx(0.75 * 2 * covalent_radii[8], abs=1e-4)
    with pytest.raises(ValueError, match="shortest_distances"):
        automatic_inner_cutoffs([1], {})
    with pytest.raises(ValueError, match="inner_cutoff_fraction"):
        automatic_inner_cutoffs([1], statistics, fraction=1.5)


def test_auto_in_build_potential_and_the_model_file_keep_the_values(float64_default, tmp_path):
    import mlip
    from mlip.export import export_model

    model = {"backbone": {"name": "mace", **testing.SMALL_BACKBONES["mace"]}, "cutoff": testing.CUTOFF,
             "charge_spin_conditioning": False, "readout_hidden": [8], "inner_cutoff": "auto", "pair_repulsion": "zbl",
             "inner_cutoff_fraction": 0.5}
    statistics = {"elements": [1, 8], "atomic_energies": {1: -0.5, 8: -2.0}, "avg_num_neighbors": 2.0,
                  "shortest_distances": {"1-8": 0.9, "1-1": 1.5, "8-8": 2.4}}
    potential = build_potential(model, statistics, dtype=torch.float64)
    assert potential.config["inner_cutoff"] == {"H-H": 0.75, "H-O": 0.45, "O-O": 1.2}  # half the shortest distances
    assert "inner_cutoff_fraction" not in potential.config  # only how auto was resolved
    path = tmp_path / "model.pt"
    export_model(potential, path)
    loaded = mlip.load(path)
    assert loaded.config["inner_cutoff"] == potential.config["inner_cutoff"]
    geometry = testing.Geometry(np.array([8, 1, 1]), np.array([[0.0, 0, 0], [0.8, 0, 0], [-0.2, 0.7, 0]]))
    torch.testing.assert_close(testing.predict(loaded, geometry)["forces"], testing.predict(potential, geometry)["forces"])


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("inner_cutoff", "message"),
    [
        ({"C-X": 1.0}, "neither a chemical symbol"),
        ({"CH": 1.0}, "not an element pair"),
        ({"H-N": 1.0}, "not among the model's elements"),
        ({"H-H": -0.1}, "must be a distance"),
        (5.0, "must be a distance"),
        ("auto", "needs dataset statistics with shortest_distances"),  # resolved from the training data
    ],
)
def test_bad_inner_cutoffs_are_refused_with_the_pair_named(float64_default, inner_cutoff, message):
    with pytest.raises(ValueError, match=message):
        testing.small_potential("mace", torch.float64, inner_cutoff=inner_cutoff)


def test_a_backbone_without_edge_weights_is_refused(float64_default):
    backbone = testing.small_potential("mace", torch.float64).backbone
    options = {"elements": list(testing.ELEMENTS), "atomic_energies": testing.ATOMIC_ENERGIES, "cutoff": testing.CUTOFF,
               "condition_dim": 4}
    with pytest.raises(ValueError, match="must be None, a distance"):  # auto is for build_potential only
        Potential(backbone, inner_cutoff="auto", **options)
    with pytest.raises(ValueError, match="inner_cutoff_width"):
        Potential(backbone, inner_cutoff=1.0, inner_cutoff_width=0.0, **options)
    backbone.supports_edge_weights = False
    with pytest.raises(ValueError, match="supports_edge_weights"):
        Potential(backbone, inner_cutoff=1.0, **options)
