"""MACE-like backbone and its parts: radial functions, symmetric contraction, body order, equivariance."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from mlip.models.backbones import BACKBONES, BackboneInputs, MACEBackbone
from mlip.models.backbones.mace import (
    SymmetricContraction,
    channelwise_irreps,
    to_channels,
)
from mlip.models.build import default_dtype
from mlip.nn.radial import BesselBasis, PolynomialEnvelope, RadialEmbedding

CUTOFF = 3.0


@pytest.fixture(autouse=True)
def float64_and_seed():
    """Build and run in float64 (e3nn bakes its Clebsch-Gordan constants in the default dtype)."""
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        yield


def tiny_backbone(**overrides) -> MACEBackbone:
    kwargs = {"num_elements": 3, "cutoff": CUTOFF, "condition_dim": 0, "num_channels": 8, "lmax": 1,
              "correlation": 3, "num_layers": 2, "radial_mlp": [16], "avg_num_neighbors": 3.0}
    kwargs.update(overrides)
    return MACEBackbone(**kwargs)


def random_inputs(num_atoms: int = 6, num_elements: int = 3, node_condition=None) -> BackboneInputs:
    positions = torch.randn(num_atoms, 3) * 1.2
    pairs = [(j, i) for i in range(num_atoms) for j in range(num_atoms) if i != j]
    edge_index = torch.tensor(pairs).T
    return BackboneInputs(
        species=torch.randint(0, num_elements, (num_atoms,)),
        edge_index=edge_index,
        edge_vectors=positions[edge_index[0]] - positions[edge_index[1]],
        batch=torch.zeros(num_atoms, dtype=torch.long),
        num_graphs=1,
        node_condition=node_condition,
    )


def with_vectors(inputs: BackboneInputs, vectors: torch.Tensor) -> BackboneInputs:
    return BackboneInputs(inputs.species, inputs.edge_index, vectors, inputs.batch, inputs.num_graphs,
                          inputs.node_condition)


# ------------------------------------------------------------------------------ radial parts
def test_envelope_and_its_first_two_derivatives_vanish_at_the_cutoff():
    envelope = PolynomialEnvelope(CUTOFF, p=5)
    r = torch.tensor([CUTOFF - 1e-9], requires_grad=True)
    value = envelope(r)
    (first,) = torch.autograd.grad(value.sum(), r, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), r)
    assert abs(float(value.detach())) < 1e-12 and abs(float(first.detach())) < 1e-12 and abs(float(second)) < 1e-6
    assert float(envelope(torch.tensor([0.0]))) == 1.0
    assert float(envelope(torch.tensor([CUTOFF * 1.5]))) == 0.0
    inside = envelope(torch.linspace(0, CUTOFF, 50))
    assert bool(((inside >= 0) & (inside <= 1)).all()) and bool((inside[1:] <= inside[:-1] + 1e-15).all())


def test_bessel_basis_matches_its_formula():
    bessel = BesselBasis(CUTOFF, num_basis=4)
    r = torch.tensor([0.7, 2.1])
    n = torch.arange(1, 5)
    expected = (2 / CUTOFF) ** 0.5 * torch.sin(n * torch.pi * r[:, None] / CUTOFF) / r[:, None]
    torch.testing.assert_close(bessel(r), expected)
    assert RadialEmbedding(CUTOFF, 4)(torch.tensor([CUTOFF, 4.0])).abs().max() == 0


# ----------------------------------------------------------------------- symmetric contraction
@pytest.mark.parametrize("correlation", [1, 2, 3])
def test_symmetric_contraction_is_equivariant(correlation):
    channel_irreps = o3.Irreps("0e+1o+2e") if correlation < 3 else o3.Irreps("0e+1o")  # (lmax 2, ν=3 is slow)
    target = channel_irreps
    contraction = SymmetricContraction(channel_irreps, target, num_channels=4, num_elements=2, correlation=correlation)
    atomic_basis = torch.randn(5, 4, channel_irreps.dim)
    species = torch.tensor([0, 1, 1, 0, 1])
    rotation = o3.rand_matrix() * -1.0  # rotation composed with inversion
    d_in = channel_irreps.D_from_matrix(rotation)
    d_out = o3.Irreps([(4, ir) for _, ir in target]).D_from_matrix(rotation)  # output: 4 channels per irrep
    rotated_output = contraction(atomic_basis @ d_in.T, species)
    torch.testing.assert_close(rotated_output, contraction(atomic_basis, species) @ d_out.T, atol=1e-10, rtol=0)


def test_symmetric_contraction_equals_explicit_weighted_powers():
    """The Horner evaluation equals Σ_ν Σ_p w[Z, p, c] Q_p · A^⊗ν written out with einsum."""
    channel_irreps, target = o3.Irreps("0e+1o"), o3.Irreps("0e+1o")
    contraction = SymmetricContraction(channel_irreps, target, num_channels=3, num_elements=2, correlation=3)
    atomic_basis = torch.randn(4, 3, channel_irreps.dim)
    species = torch.tensor([1, 0, 1, 1])
    formulas = {1: "pmi,nci->ncpm", 2: "pmij,nci,ncj->ncpm", 3: "pmijk,nci,ncj,nck->ncpm"}
    blocks = []
    for k, (_, ir) in enumerate(target):
        block = torch.zeros(4, 3, ir.dim)
        for nu in (1, 2, 3):
            basis = getattr(contraction, f"basis_{nu}_{k}")
            weights = getattr(contraction, f"weights_{nu}_{k}")[species]  # (n, paths, C)
            powers = torch.einsum(formulas[nu], basis, *([atomic_basis] * nu))  # (n, C, paths, m)
            block = block + torch.einsum("ncpm,npc->ncm", powers, weights)
        blocks.append(block.reshape(4, -1))
    torch.testing.assert_close(contraction(atomic_basis, species), torch.cat(blocks, dim=-1), atol=1e-12, rtol=0)


def test_body_order_rises_with_correlation():
    """One layer, centre 0 with neighbours 1 and 2: correlation 1 is a sum of pair terms, 3 is not."""
    vectors = torch.tensor([[1.1, 0.2, -0.3], [-0.4, 1.3, 0.5]])  # r_1 - r_0, r_2 - r_0 (Å)
    species = torch.tensor([0, 1, 2])

    def centre_features(backbone, neighbours):
        edge_index = torch.tensor([[j for j in neighbours], [0] * len(neighbours)], dtype=torch.long)
        edge_vectors = vectors[[j - 1 for j in neighbours]].reshape(-1, 3)
        inputs = BackboneInputs(species, edge_index, edge_vectors, torch.zeros(3, dtype=torch.long), 1)
        return backbone(inputs).scalars[0]

    for correlation, additive in [(1, True), (3, False)]:
        backbone = tiny_backbone(num_layers=1, correlation=correlation)
        both = centre_features(backbone, [1, 2])
        pair_sum = centre_features(backbone, [1]) + centre_features(backbone, [2])
        assert float(centre_features(backbone, []).detach().abs().max()) == 0.0
        difference = float((both - pair_sum).detach().abs().max())
        assert (difference < 1e-12) if additive else (difference > 1e-4), (correlation, difference)


# -------------------------------------------------------------------------------- backbone
@pytest.mark.parametrize(
    "lmax,correlation,hidden_irreps,radial",
    [(1, 3, None, "bessel_mlp"), (2, 2, None, "bessel_mlp"), (2, 3, "8x0e+8x1o", "bessel_mlp"), (2, 3, None, "spline")],
)
def test_backbone_scalars_invariant_and_vectors_equivariant(lmax, correlation, hidden_irreps, radial):
    backbone = tiny_backbone(lmax=lmax, correlation=correlation, hidden_irreps=hidden_irreps, radial=radial)
    inputs = random_inputs()
    features = backbone(inputs)
    assert features.scalars.shape == (6, 2 * 8) and features.vectors.shape == (6, 8, 3)
    for rotation in (o3.rand_matrix(), -o3.rand_matrix()):
        moved = backbone(with_vectors(inputs, inputs.edge_vectors @ rotation.T))
        torch.testing.assert_close(moved.scalars, features.scalars, atol=1e-10, rtol=0)
        torch.testing.assert_close(moved.vectors, features.vectors @ rotation.T, atol=1e-10, rtol=0)
    assert float(features.vectors.detach().abs().max()) > 1e-6


def test_node_condition_enters_the_features():
    backbone = tiny_backbone(condition_dim=4)
    inputs = random_inputs(node_condition=torch.zeros(6, 4))
    plain = backbone(inputs).scalars
    inputs.node_condition = torch.ones(6, 4)
    conditioned = backbone(inputs).scalars
    assert float((plain - conditioned).detach().abs().max()) > 1e-6
    with pytest.raises(ValueError, match="condition_dim=0"):
        tiny_backbone(condition_dim=0)(inputs)


def test_channel_layout_round_trip():
    irreps = channelwise_irreps(3, 2)
    assert str(irreps) == "3x0e+3x1o+3x2e"
    features = torch.arange(irreps.dim, dtype=torch.float64).reshape(1, -1)
    channels = to_channels(features, irreps)  # (1, 3, 9)
    assert channels.shape == (1, 3, 9)
    assert channels[0, 1].tolist()[:4] == [1.0, 6.0, 7.0, 8.0]  # channel 1: its 0e then its 1o block


def test_invalid_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="correlation"):
        tiny_backbone(correlation=4)
    with pytest.raises(ValueError, match="one multiplicity"):
        tiny_backbone(hidden_irreps="8x0e+4x1o")
    with pytest.raises(ValueError, match="lmax"):
        tiny_backbone(lmax=1, hidden_irreps="8x0e+8x1o+8x2e")
    with pytest.raises(ValueError, match="natural parity"):
        tiny_backbone(lmax=1, hidden_irreps="8x0e+8x1e")


def test_registry_and_config_rebuild_the_same_backbone():
    backbone = tiny_backbone()
    assert BACKBONES["mace"] is MACEBackbone
    config = {key: value for key, value in backbone.config.items() if key != "_target_"}
    rebuilt = MACEBackbone(**config)
    rebuilt.load_state_dict(backbone.state_dict())
    inputs = random_inputs()
    torch.testing.assert_close(rebuilt(inputs).scalars, backbone(inputs).scalars)


def test_scalar_only_backbone_has_no_vectors():
    backbone = tiny_backbone(lmax=0, correlation=2)
    inputs = random_inputs()
    features = backbone(inputs)
    assert backbone.num_vector_features == 0 and features.vectors is None
    rotation = -o3.rand_matrix()
    moved = backbone(with_vectors(inputs, inputs.edge_vectors @ rotation.T))
    torch.testing.assert_close(moved.scalars, features.scalars, atol=1e-10, rtol=0)


def test_spline_radial_variant_is_smooth_at_the_cutoff_and_differentiable():
    """radial="spline" replaces Bessel basis + radial MLP by one cubic spline per tensor-product weight."""
    backbone = tiny_backbone(radial="spline", num_spline_knots=6)
    assert not hasattr(backbone.layers[0], "radial_mlp") and backbone.radial_embedding is None
    assert backbone.spline_basis.num_intervals == 6  # the backbone's own basis, shared by the layers' splines
    inputs = random_inputs()

    def energy(vectors):
        return backbone(with_vectors(inputs, vectors)).scalars.sum()

    vectors = inputs.edge_vectors.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(energy(vectors), vectors)
    step = 1e-6
    for edge in (0, 7):
        displaced = inputs.edge_vectors.clone()
        displaced[edge, 0] += step
        plus = energy(displaced)
        displaced[edge, 0] -= 2 * step
        assert abs((plus - energy(displaced)).item() / (2 * step) - gradient[edge, 0].item()) < 1e-6
    # an edge just beyond the cutoff contributes nothing; just inside, almost nothing (C2 spline)
    far = inputs.edge_vectors.clone()
    far[0] = far[0] / far[0].norm() * (CUTOFF + 1e-3)
    near = far.clone()
    near[0] = near[0] / near[0].norm() * (CUTOFF - 1e-3)
    removed = far.clone()
    removed[0] = removed[0] / removed[0].norm() * (CUTOFF + 1.0)
    assert abs((energy(far) - energy(removed)).item()) < 1e-12
    assert abs((energy(near) - energy(far)).item()) < 1e-6


@pytest.mark.parametrize("radial", ["bessel_mlp", "spline"])
def test_scalar_last_layer_is_invariant_smaller_and_keeps_the_earlier_vectors(radial):
    """MACE's last layer computes only the scalars that are read out: fewer weights, the same
    symmetry, and the vector features (direct-force head) from the layer before."""
    full = tiny_backbone(radial=radial, num_layers=3)
    torch.manual_seed(0)
    lean = tiny_backbone(radial=radial, num_layers=3, scalar_last_layer=True)
    assert sum(p.numel() for p in lean.parameters()) < sum(p.numel() for p in full.parameters())
    assert [str(layer.linear_out.irreps_out) for layer in lean.layers] == ["8x0e+8x1o", "8x0e+8x1o", "8x0e"]
    inputs = random_inputs()
    features = lean(inputs)
    assert features.scalars.shape == (6, 3 * 8) and lean.num_vector_features == 8
    # the vectors are the second layer's: the same as a two-layer backbone with these weights
    two_layers = tiny_backbone(radial=radial, num_layers=2)
    two_layers.load_state_dict({k: v for k, v in lean.state_dict().items() if not k.startswith("layers.2.")})
    torch.testing.assert_close(features.vectors, two_layers(inputs).vectors)
    for rotation in (o3.rand_matrix(), -o3.rand_matrix()):
        moved = lean(with_vectors(inputs, inputs.edge_vectors @ rotation.T))
        torch.testing.assert_close(moved.scalars, features.scalars, atol=1e-10, rtol=0)
        torch.testing.assert_close(moved.vectors, features.vectors @ rotation.T, atol=1e-10, rtol=0)
    assert float(features.scalars[:, 16:].detach().abs().max()) > 1e-6  # the last layer's scalars are not dead
    single = tiny_backbone(num_layers=1, scalar_last_layer=True)
    assert single.num_vector_features == 0 and single(inputs).vectors is None
    config = {key: value for key, value in lean.config.items() if key != "_target_"}
    assert config["scalar_last_layer"] is True
    rebuilt = MACEBackbone(**config)
    rebuilt.load_state_dict(lean.state_dict())
    torch.testing.assert_close(rebuilt(inputs).scalars, features.scalars)
