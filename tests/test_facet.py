"""FacetBackbone through `Potential`, in float64: symmetries, forces, smoothness, periodic cells, config."""

from pathlib import Path

import numpy as np
import pytest
import torch
from e3nn import o3
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.structure import Structure
from mlip.models.backbones.base import BackboneInputs
from mlip.models.backbones.facet import (
    EdgeGeometry,
    FacetBackbone,
    FacetInteraction,
    GauntEdgeMatrix,
)
from mlip.models.potential import Potential, build_potential
from tests.conftest import random_crystal, random_molecule

CUTOFF = 3.0  # Å
ELEMENTS = [1, 6, 8, 14]
CONDITION_DIM = 4
# relative rotation error of energies and forces allowed: the documented whole-model aliasing
# bounds (docs/facet.md) at the default grid degree 10 lmax + 1 and on a fine grid
ROTATION_TOLERANCE = 1e-6
ROTATION_TOLERANCE_FINE_GRID = 1e-9
EXACT = 1e-10


pytestmark = pytest.mark.usefixtures("float64_default")


def make_potential(seed: int = 0, **backbone_options) -> Potential:
    torch.manual_seed(seed)
    options = {"num_channels": 4, "lmax": 1, "num_layers": 2, "num_spline_knots": 6, "avg_num_neighbors": 3.0}
    options.update(backbone_options)
    backbone = FacetBackbone(num_elements=len(ELEMENTS), cutoff=CUTOFF, condition_dim=CONDITION_DIM, **options)
    potential = Potential(backbone, ELEMENTS, [0.0] * len(ELEMENTS), cutoff=CUTOFF, condition_dim=CONDITION_DIM)
    return potential.double()


def graph(structure: Structure, graph_cutoff: float = CUTOFF):
    """A one-graph batch; `graph_cutoff` > CUTOFF adds edges that must contribute exactly nothing."""
    return Batch.from_data_list([structure_to_graph(structure, graph_cutoff, dtype=torch.float64)])


def with_positions(structure: Structure, positions, cell=None) -> Structure:
    return Structure(
        numbers=structure.numbers,
        positions=np.asarray(positions),
        cell=structure.cell if cell is None else np.asarray(cell),
        pbc=structure.pbc,
        id=structure.id,
    )


def predict(potential, structure, **options):
    outputs = potential(graph(structure, options.pop("graph_cutoff", CUTOFF)), **options)
    return {key: value.detach() for key, value in outputs.items()}


@pytest.fixture
def potential():
    return make_potential()


@pytest.fixture
def molecule(rng):
    return random_molecule(rng, numbers=(8, 1, 1, 6, 1, 14))


def test_energy_depends_on_geometry(potential, molecule):
    forces = predict(potential, molecule)["forces"]
    assert forces.abs().max() > 1e-3  # otherwise every symmetry test below would pass trivially


def assert_rotation_invariant(potential, molecule, tolerance):
    reference = predict(potential, molecule)
    torch.manual_seed(3)
    for rotation in (o3.rand_matrix(), -o3.rand_matrix(), torch.diag(torch.tensor([-1.0, 1.0, 1.0]))):
        matrix = rotation.numpy()
        rotated = predict(potential, with_positions(molecule, molecule.positions @ matrix.T))
        energy_error = abs((rotated["energy"] - reference["energy"]).item()) / abs(reference["energy"].item())
        assert energy_error < tolerance
        expected_forces = reference["forces"] @ rotation.T
        force_error = (rotated["forces"] - expected_forces).norm() / expected_forces.norm()
        assert force_error < tolerance


def test_rotation_and_reflection_invariance_and_force_equivariance(potential, molecule):
    assert_rotation_invariant(potential, molecule, ROTATION_TOLERANCE)


@pytest.mark.parametrize("bound", [None, 0.8])
def test_rotation_error_stays_below_bound_for_large_weights_only_with_the_anisotropy_bound(molecule, bound):
    """Trained grid MLPs have large first-layer weights; the default anisotropy bound keeps the
    whole-model rotation error below 1e-6 for them, the unbounded layer does not."""
    potential = make_potential(num_channels=8, grid_quadrature="lebedev", grid_anisotropy_bound=bound)
    with torch.no_grad():
        for layer in potential.backbone.layers:
            layer.node_mlp.mlp[0].weight.mul_(30.0)
            layer.linear_update.weight.mul_(3.0)
    if bound is None:
        with pytest.raises(AssertionError):
            assert_rotation_invariant(potential, molecule, ROTATION_TOLERANCE)
    else:
        assert_rotation_invariant(potential, molecule, ROTATION_TOLERANCE)


def test_axial_grid_keeps_a_potential_exactly_symmetric_for_large_weights(molecule):
    potential = make_potential(num_channels=8)  # lmax 1 defaults: axial rule, no anisotropy bound
    assert potential.backbone.config["grid_quadrature"] == "axial"
    with torch.no_grad():
        for layer in potential.backbone.layers:
            layer.node_mlp.mlp[0].weight.mul_(30.0)
            layer.linear_update.weight.mul_(3.0)
    assert_rotation_invariant(potential, molecule, 1e-11)


@pytest.mark.parametrize(
    ("quadrature", "grid_degree", "tolerance"),
    [
        ("lebedev", None, ROTATION_TOLERANCE),
        ("gauss_legendre", None, ROTATION_TOLERANCE),
        ("gauss_legendre", 23, ROTATION_TOLERANCE_FINE_GRID),
    ],
)
def test_lmax2_rotation_error_within_documented_bound(molecule, quadrature, grid_degree, tolerance):
    potential = make_potential(lmax=2, grid_quadrature=quadrature, grid_degree=grid_degree)
    assert_rotation_invariant(potential, molecule, tolerance)
    coarse = make_potential(lmax=2, grid_degree=5)  # aliasing is real: a too coarse grid fails the bound
    with pytest.raises(AssertionError):
        assert_rotation_invariant(coarse, molecule, ROTATION_TOLERANCE)


def test_translation_and_permutation_are_exact(potential, molecule):
    reference = predict(potential, molecule)
    translated = predict(potential, with_positions(molecule, molecule.positions + np.array([3.1, -0.7, 12.0])))
    assert torch.allclose(translated["energy"], reference["energy"], atol=EXACT, rtol=0)
    assert torch.allclose(translated["forces"], reference["forces"], atol=EXACT, rtol=0)
    order = np.random.default_rng(5).permutation(molecule.n_atoms)
    permuted = Structure(numbers=molecule.numbers[order], positions=molecule.positions[order])
    shuffled = predict(potential, permuted)
    assert torch.allclose(shuffled["energy"], reference["energy"], atol=EXACT, rtol=0)
    assert torch.allclose(shuffled["forces"], reference["forces"][order], atol=EXACT, rtol=0)


def energy_at(potential, structure, positions, graph_cutoff):
    return predict(potential, with_positions(structure, positions), compute_forces=False, graph_cutoff=graph_cutoff)[
        "energy"
    ].item()


def test_forces_equal_finite_differences(potential, molecule):
    # the graph is built with a margin so that no pair crosses the edge list during the displacement
    forces = predict(potential, molecule, graph_cutoff=CUTOFF + 1.0)["forces"]
    step = 1e-5  # Å
    for atom, axis in [(0, 0), (2, 1), (4, 2), (5, 0)]:
        plus, minus = molecule.positions.copy(), molecule.positions.copy()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        difference = energy_at(potential, molecule, plus, CUTOFF + 1.0) - energy_at(potential, molecule, minus, CUTOFF + 1.0)
        derivative = difference / (2 * step)
        assert abs(-derivative - forces[atom, axis].item()) < 1e-7


def test_energy_is_smooth_as_an_atom_crosses_the_cutoff(potential):
    def cluster(distance):  # atom 2 moves along -x; only its distance to atom 0 crosses the cutoff
        positions = np.array([[0.0, 0.0, 0.0], [1.3, 0.2, 0.0], [-distance, 0.0, 0.0]])
        return Structure(numbers=np.array([6, 8, 1]), positions=positions)

    margin = CUTOFF + 1.5  # fixed edge list along the path

    def energy_and_force(distance):
        outputs = predict(potential, cluster(distance), graph_cutoff=margin)
        return outputs["energy"].item(), outputs["forces"][2].norm().item()

    delta = 1e-3
    inside, force_inside = energy_and_force(CUTOFF - delta)
    at_cutoff, force_at_cutoff = energy_and_force(CUTOFF)
    beyond, force_beyond = energy_and_force(CUTOFF + delta)
    far, _ = energy_and_force(CUTOFF + 1.0)
    well_inside, _ = energy_and_force(CUTOFF - 1.2)
    assert abs(well_inside - far) > 1e-6  # the third atom does interact inside the cutoff (>> EXACT)
    assert abs(beyond - far) < EXACT and abs(at_cutoff - far) < EXACT  # and not at all beyond it
    assert abs(inside - at_cutoff) < 1e-7  # C2 spline: the energy change is O(delta^3)
    assert force_at_cutoff < EXACT and force_beyond < EXACT and force_inside < 1e-4


@pytest.fixture
def crystal(rng):
    return random_crystal(rng, numbers=(14, 8, 8, 14, 6))


def test_periodic_structure_symmetries_and_forces(potential, crystal):
    reference = predict(potential, crystal, compute_stress=True)
    assert torch.isfinite(reference["stress"]).all()
    assert torch.allclose(reference["stress"], reference["stress"].transpose(-1, -2), atol=EXACT)
    assert reference["forces"].abs().max() > 1e-3
    assert abs(reference["forces"].sum(dim=0)).max() < EXACT  # no net force on a periodic cell
    # rotate atoms and cell together
    rotation = o3.rand_matrix().numpy()
    rotated = predict(potential, with_positions(crystal, crystal.positions @ rotation.T, crystal.cell @ rotation.T))
    assert abs((rotated["energy"] - reference["energy"]).item()) / abs(reference["energy"].item()) < ROTATION_TOLERANCE
    # move one atom by a lattice vector (a different image, the same crystal) and translate all atoms
    moved = crystal.positions + np.array([0.4, -0.3, 0.2])
    moved[1] += crystal.cell[0] - crystal.cell[2]
    shifted = predict(potential, with_positions(crystal, moved))
    assert torch.allclose(shifted["energy"], reference["energy"], atol=EXACT, rtol=0)
    assert torch.allclose(shifted["forces"], reference["forces"], atol=EXACT, rtol=0)


def test_periodic_stress_equals_strain_derivative(potential, crystal):
    stress = predict(potential, crystal, compute_stress=True, graph_cutoff=CUTOFF + 1.0)["stress"][0]
    volume = abs(np.linalg.det(crystal.cell))
    step = 1e-5
    strained_energy = []
    for sign in (1, -1):
        deformation = np.eye(3)
        deformation[0, 1] = deformation[1, 0] = sign * step / 2  # symmetric shear ε_xy = ε_yx = step / 2
        strained = with_positions(crystal, crystal.positions @ deformation, crystal.cell @ deformation)
        outputs = predict(potential, strained, compute_forces=False, graph_cutoff=CUTOFF + 1.0)
        strained_energy.append(outputs["energy"].item())
    derivative = (strained_energy[0] - strained_energy[1]) / (2 * step)  # = (∂E/∂ε_xy + ∂E/∂ε_yx) / 2
    assert abs(stress[0, 1].item()) > 1e-6  # far above the tolerance below: the comparison can fail
    assert abs(derivative / volume - stress[0, 1].item()) < 1e-9


def test_force_training_has_second_derivatives(potential, molecule):
    outputs = potential(graph(molecule), training=True)
    outputs["forces"].square().sum().backward()
    spline = potential.backbone.layers[0].radial.coefficients
    assert spline.grad is not None and spline.grad.abs().max() > 0


def test_backbone_outputs_and_condition(molecule):
    backbone = make_potential().backbone
    data = graph(molecule)
    vectors = data.pos[data.edge_index[0]] - data.pos[data.edge_index[1]]
    inputs = BackboneInputs(
        species=torch.zeros(molecule.n_atoms, dtype=torch.long),
        edge_index=data.edge_index,
        edge_vectors=vectors,
        batch=data.batch,
        num_graphs=1,
        node_condition=torch.randn(molecule.n_atoms, CONDITION_DIM),
    )
    features = backbone(inputs)
    assert features.scalars.shape == (molecule.n_atoms, backbone.num_scalar_features)
    assert features.vectors.shape == (molecule.n_atoms, backbone.num_vector_features, 3)
    # l = 1 outputs rotate as Cartesian vectors
    rotation = o3.rand_matrix()
    inputs.edge_vectors = vectors @ rotation.T
    rotated = backbone(inputs)
    vector_error = (rotated.vectors - features.vectors @ rotation.T).norm() / features.vectors.norm()
    assert vector_error < ROTATION_TOLERANCE
    without_condition = FacetBackbone(num_elements=4, cutoff=CUTOFF, condition_dim=0, num_channels=4)
    with pytest.raises(ValueError, match="condition_dim=0"):
        without_condition(inputs)


def test_config_builds_through_build_potential(molecule):
    omegaconf = pytest.importorskip("omegaconf")
    path = Path(__file__).resolve().parents[1] / "configs" / "model" / "backbone" / "facet.yaml"
    backbone_config = omegaconf.OmegaConf.to_container(omegaconf.OmegaConf.load(path))
    backbone_config.update(num_channels=4, num_layers=1)  # keep the test small
    config = {"backbone": backbone_config, "cutoff": CUTOFF, "elements": ELEMENTS, "atomic_energies": [0.0] * 4}
    potential = build_potential(config, statistics={"avg_num_neighbors": 4.5}).double()
    assert potential.backbone.config["avg_num_neighbors"] == 4.5
    assert potential.backbone.config["grid_degree"] == 10 * backbone_config["lmax"] + 1
    assert potential.backbone.config["grid_quadrature"] == "axial"  # the exact rule at lmax 1
    assert potential.backbone.config["grid_anisotropy_bound"] is None
    assert torch.isfinite(predict(potential, molecule)["forces"]).all()
    rebuilt = Potential.from_config(potential.config)
    assert isinstance(rebuilt.backbone, FacetBackbone)


def test_batched_graphs_equal_separate_graphs(potential, molecule, crystal):
    separate = [predict(potential, structure) for structure in (molecule, crystal)]
    data = [structure_to_graph(structure, CUTOFF, dtype=torch.float64) for structure in (molecule, crystal)]
    together = potential(Batch.from_data_list(data))
    assert torch.allclose(together["energy"].detach(), torch.cat([s["energy"] for s in separate]), atol=EXACT, rtol=0)
    forces = torch.cat([s["forces"] for s in separate])
    assert torch.allclose(together["forces"], forces, atol=EXACT, rtol=0)


def test_float32_model_agrees_with_float64(potential, molecule):
    reference = predict(potential, molecule)
    single = make_potential().float()
    outputs = single(Batch.from_data_list([structure_to_graph(molecule, CUTOFF, dtype=torch.float32)]))
    assert outputs["energy"].dtype == torch.float32
    relative = (outputs["energy"].double() - reference["energy"]).abs() / reference["energy"].abs()
    assert relative.item() < 1e-5
    assert torch.allclose(outputs["forces"].double(), reference["forces"], atol=1e-4)


def test_scalar_input_message_path_equals_the_general_gaunt_product(molecule):
    """The first layer skips the per-edge matrix product because its input has only l = 0:
    its messages must equal the general path's on the same weights (for lmax 1 and 2)."""
    for lmax in (1, 2):
        torch.manual_seed(lmax)
        arguments = (lmax, 5, CUTOFF, 6, 10 * lmax + 1, "lebedev", 0.8, 2, 3.0)
        fast, general = FacetInteraction(*arguments, scalar_input=True), FacetInteraction(*arguments)
        general.load_state_dict(fast.state_dict())
        batch = graph(molecule)
        vectors = batch.pos[batch.edge_index[1]] - batch.pos[batch.edge_index[0]]
        harmonics = o3.spherical_harmonics(list(range(lmax + 1)), vectors, True, "component")
        geometry = EdgeGeometry(harmonics, GauntEdgeMatrix(lmax)(harmonics), fast.radial.basis(vectors.norm(dim=-1)))
        features = torch.zeros(len(molecule.numbers), (lmax + 1) ** 2, 5)
        features[:, 0] = torch.randn(len(molecule.numbers), 5)
        expected = general.aggregate_messages(features, batch.edge_index, geometry)
        assert expected[:, 1:].abs().max() > 1e-3  # l > 0 messages are really produced
        assert torch.allclose(fast.aggregate_messages(features, batch.edge_index, geometry), expected, atol=1e-13, rtol=0)
