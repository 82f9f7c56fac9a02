"""Facet-specific tests (float64): grid-MLP rotation errors and their bounds, the axial rule, lmax 2,
second derivatives through the splines, the scalar-input message path, float32 vs float64, config.
The physics contract of every backbone is tests/test_backbone_contract.py."""

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
from mlip.models.build import build_potential, default_dtype
from mlip.models.potential import Potential
from tests.conftest import random_molecule

CUTOFF = 3.0  # Å
ELEMENTS = [1, 6, 8, 14]
CONDITION_DIM = 4
# relative rotation error of energies and forces allowed: the documented whole-model aliasing
# bounds (docs/facet.md) at the default grid degree 10 lmax + 1 and on a fine grid
ROTATION_TOLERANCE = 1e-6
ROTATION_TOLERANCE_FINE_GRID = 1e-9
EXACT = 1e-10


@pytest.fixture(autouse=True)
def float64():
    with default_dtype(torch.float64):  # build (and make inputs) in float64
        yield


def make_potential(seed: int = 0, dtype=torch.float64, **backbone_options) -> Potential:
    torch.manual_seed(seed)
    options = {"num_channels": 4, "lmax": 1, "num_layers": 2, "num_spline_knots": 6, "avg_num_neighbors": 3.0}
    options.update(backbone_options)
    with default_dtype(dtype):
        backbone = FacetBackbone(num_elements=len(ELEMENTS), cutoff=CUTOFF, condition_dim=CONDITION_DIM, **options)
        return Potential(backbone, ELEMENTS, [0.0] * len(ELEMENTS), cutoff=CUTOFF, condition_dim=CONDITION_DIM)


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
    path = Path(__file__).resolve().parents[1] / "mlip" / "configs" / "model" / "backbone" / "facet.yaml"
    backbone_config = omegaconf.OmegaConf.to_container(omegaconf.OmegaConf.load(path))
    backbone_config.update(num_channels=4, num_layers=1)  # keep the test small
    config = {"backbone": backbone_config, "cutoff": CUTOFF, "elements": ELEMENTS, "atomic_energies": [0.0] * 4}
    potential = build_potential(config, statistics={"avg_num_neighbors": 4.5}, dtype=torch.float64)
    assert potential.backbone.config["avg_num_neighbors"] == 4.5
    assert potential.backbone.config["grid_degree"] == 10 * backbone_config["lmax"] + 1
    assert potential.backbone.config["grid_quadrature"] == "axial"  # the exact rule at lmax 1
    assert potential.backbone.config["grid_anisotropy_bound"] is None
    assert torch.isfinite(predict(potential, molecule)["forces"]).all()
    rebuilt = Potential.from_config(potential.config, dtype=torch.float64)
    assert isinstance(rebuilt.backbone, FacetBackbone)


def test_float32_model_agrees_with_float64(potential, molecule):
    reference = predict(potential, molecule)
    single = make_potential(dtype=torch.float32)  # built in float32, then the float64 weights loaded
    single.load_state_dict(potential.state_dict())
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
