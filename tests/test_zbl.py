"""The ZBL repulsion prior: reference values, one energy per pair, smooth switch-off, monotonic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.data import covalent_radii

from mlip import testing
from mlip.nn.zbl import ZBLRepulsion, zbl_pair_energy


def dimer_energy(zbl: ZBLRepulsion, distance: torch.Tensor, species=(0, 1)) -> torch.Tensor:
    """Total ZBL energy (eV) of a dimer along x at ``distance`` Å (both directed edges)."""
    vector = torch.stack([distance, torch.zeros_like(distance), torch.zeros_like(distance)])
    edge_index = torch.tensor([[1, 0], [0, 1]])  # [sender, receiver]
    edge_vectors = torch.stack([vector, -vector])
    return zbl(torch.tensor(species), edge_index, edge_vectors).sum()


def test_pair_energy_matches_the_zbl_formula(float64_default):
    # hand evaluation of the universal ZBL function for C-O at 0.7 Å
    z_i, z_j, r = 6.0, 8.0, 0.7
    a = 0.8854 * 0.52917721 / (z_i**0.23 + z_j**0.23)
    x = r / a
    phi = 0.18175 * math.exp(-3.19980 * x) + 0.50986 * math.exp(-0.94229 * x)
    phi += 0.28022 * math.exp(-0.40290 * x) + 0.02817 * math.exp(-0.20162 * x)
    expected = 14.399645 * z_i * z_j / r * phi
    actual = zbl_pair_energy(torch.tensor([r]), torch.tensor([z_i]), torch.tensor([z_j]))
    assert float(actual) == pytest.approx(expected, rel=1e-12)


def test_dimer_counts_the_pair_once(float64_default):
    zbl = ZBLRepulsion([6, 8], cutoff=5.0)
    r = torch.tensor(0.6)
    pair_cutoff = covalent_radii[6] + covalent_radii[8]
    envelope = zbl_pair_energy(r[None], torch.tensor([6.0]), torch.tensor([8.0]))
    from mlip.nn.radial import polynomial_envelope

    expected = envelope * polynomial_envelope(r / pair_cutoff, 6)
    assert float(dimer_energy(zbl, r)) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("pair", [(1, 1), (1, 6), (6, 8), (8, 8)])
def test_energy_falls_monotonically_to_zero_at_the_pair_cutoff(float64_default, pair):
    zbl = ZBLRepulsion(list(dict.fromkeys(pair)), cutoff=5.0)
    species = (0, 0) if pair[0] == pair[1] else (0, 1)
    pair_cutoff = covalent_radii[pair[0]] + covalent_radii[pair[1]]
    distances = torch.linspace(0.2, pair_cutoff + 0.5, 400)
    energies = torch.stack([dimer_energy(zbl, r, species) for r in distances])
    inside = distances < pair_cutoff
    assert bool((energies[inside].diff() < 0).all()), "repulsion must decrease with distance"
    assert bool((energies[~inside] == 0).all())
    assert float(energies[0]) > 10.0  # eV: steep at short range


def test_value_and_slope_vanish_at_the_pair_cutoff(float64_default):
    zbl = ZBLRepulsion([1, 8], cutoff=5.0)
    pair_cutoff = covalent_radii[1] + covalent_radii[8]
    r = torch.tensor(pair_cutoff - 1e-6, requires_grad=True)  # value ~ δ³, slope ~ δ²
    energy = dimer_energy(zbl, r)
    (slope,) = torch.autograd.grad(energy, r)
    assert abs(energy.item()) < 1e-12
    assert abs(float(slope)) < 1e-8


def test_forces_match_finite_differences(float64_default):
    zbl = ZBLRepulsion([1, 6, 8], cutoff=5.0)
    generator = torch.Generator().manual_seed(0)
    positions = torch.randn(5, 3, generator=generator) * 0.6
    species = torch.tensor([0, 1, 2, 1, 0])
    senders, receivers = zip(*[(j, i) for i in range(5) for j in range(5) if i != j])
    edge_index = torch.tensor([senders, receivers])

    def energy(pos):
        return zbl(species, edge_index, pos[edge_index[0]] - pos[edge_index[1]]).sum()

    assert torch.autograd.gradcheck(energy, (positions.requires_grad_(True),))


def test_cutoff_of_the_model_caps_the_pair_cutoff(float64_default):
    zbl = ZBLRepulsion([55], cutoff=2.0)  # caesium: covalent radii sum > 4 Å
    assert float(zbl.pair_cutoffs(torch.tensor([0]), torch.tensor([0]))) == pytest.approx(2.0)
    assert float(dimer_energy(zbl, torch.tensor(2.1), (0, 0))) == 0.0


# ------------------------------------------------------------------ wired into `Potential`


def _compressed(geometry: testing.Geometry, factor: float) -> testing.Geometry:
    cell = None if geometry.cell is None else geometry.cell * factor
    return testing.Geometry(geometry.numbers, geometry.positions * factor, cell)


def _zbl_part(potential, geometry: testing.Geometry) -> float:
    """eV of the ZBL term alone for ``geometry`` (to check the tests exercise it)."""
    graph = testing.graph(geometry, potential.cutoff)
    species = potential.species(graph.z)
    inputs = potential._inputs(graph, species, graph.pos, graph.cell.reshape(-1, 3, 3), None,
                               torch.zeros(len(species), dtype=torch.long))
    return float(potential.pair_repulsion(species, inputs.edge_index, inputs.edge_vectors).sum())


@pytest.fixture(scope="module")
def zbl_potential():
    return testing.small_potential("mace", torch.float64, pair_repulsion="zbl")


def test_potential_adds_the_zbl_energy_per_atom(zbl_potential):
    plain = testing.small_potential("mace", torch.float64)  # same seed: the same learned part
    geometry = _compressed(testing.molecule(0), 0.6)
    with_zbl, without = testing.predict(zbl_potential, geometry), testing.predict(plain, geometry)
    zbl = _zbl_part(zbl_potential, geometry)
    assert zbl > 1.0  # eV: close pairs, so the checks below exercise the term
    assert float(with_zbl["energy"][0] - without["energy"][0]) == pytest.approx(zbl, rel=1e-10)
    assert zbl_potential.config["pair_repulsion"] == "zbl" and plain.config["pair_repulsion"] is None


def test_zbl_forces_and_stress_match_finite_differences(zbl_potential):
    tolerances = testing.Tolerances.for_dtype(torch.float64)
    molecule = _compressed(testing.molecule(0), 0.6)
    crystal = _compressed(testing.crystal(0), 0.75)
    assert _zbl_part(zbl_potential, crystal) > 1.0
    testing.check_forces_match_finite_differences(zbl_potential, molecule, tolerances,
                                                  components=((0, 0), (1, 2), (2, 1), (3, 0), (4, 1)))
    testing.check_stress_matches_finite_differences(zbl_potential, crystal, tolerances,
                                                    components=((0, 0), (0, 1), (1, 2), (2, 2)))


def test_untrained_dimer_energy_rises_monotonically_below_0_6_angstrom():
    potential = testing.small_potential("mace", torch.float64, pair_repulsion="zbl", seed=3)
    distances = np.linspace(0.1, 0.6, 26)
    for pair in ((6, 8), (1, 1), (14, 14)):
        energies = [testing.energy(potential, testing.Geometry(np.array(pair), np.array([[0, 0, 0], [r, 0, 0]])))
                    for r in distances]
        assert np.all(np.diff(energies) < 0), f"{pair}: energy must fall as the atoms separate below 0.6 Å"


def test_export_and_load_keep_the_pair_repulsion(zbl_potential, tmp_path):
    from mlip.export import export_model, load

    path = tmp_path / "zbl.pt"
    export_model(zbl_potential, path)
    loaded = load(path, dtype=torch.float64)
    assert loaded.config["pair_repulsion"] == "zbl" and isinstance(loaded.pair_repulsion, ZBLRepulsion)
    geometry = _compressed(testing.molecule(1), 0.6)
    expected, actual = testing.predict(zbl_potential, geometry), testing.predict(loaded, geometry)
    for key in ("energy", "forces"):
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-10)


def test_an_unknown_pair_repulsion_is_a_clear_error():
    with pytest.raises(ValueError, match="pair_repulsion='lj' is not one of None, 'zbl'"):
        testing.small_potential("mace", torch.float64, pair_repulsion="lj")
    with pytest.raises(ValueError, match="pair_repulsion"):
        testing.small_potential("mace", torch.float64, pair_repulsion="mlip.nn.zbl.ZBLRepulsion")


def test_the_physics_contract_holds_with_zbl(zbl_potential):
    """Symmetries, derivatives, cutoff smoothness, isolated atoms (E_ref + shift: no pairs), batching."""
    testing.check_contract(zbl_potential, testing.backbone_tolerances("mace", torch.float64))
