"""Spherical grids: exact round trips, exact (Gaunt) products, and the grid MLP's bounded aliasing."""

import math

import pytest
import torch
from e3nn import o3

from mlip.models.backbones.facet import default_grid_degree
from mlip.models.build import default_dtype
from mlip.nn.spherical_grid import (
    GridMLP,
    SphericalGrid,
    gaunt_tensor,
    gauss_legendre_grid,
    lebedev_grid,
    num_coefficients,
    quadrature_grid,
    spherical_signal_irreps,
)

# documented bounds (docs/facet.md): relative rotation error of the grid MLP at unit grid
# amplitude, at the default degree 10 lmax + 1 (both quadratures) and on a finer grid
GRID_MLP_EQUIVARIANCE_BOUND_DEFAULT = 1e-6
GRID_MLP_EQUIVARIANCE_BOUND_FINE = 1e-6


@pytest.fixture(autouse=True)
def float64():
    with default_dtype(torch.float64):
        yield


def rotate(coefficients, wigner):
    """Apply the block-diagonal Wigner matrix (K, K) to coefficients (n, K, C)."""
    return torch.einsum("ij,njc->nic", wigner, coefficients)


@pytest.mark.parametrize(("grid", "num_points"), [(lambda: gauss_legendre_grid(5), 50), (lambda: lebedev_grid(11), 50)])
def test_quadrature_weights_and_points(grid, num_points):
    points, weights = grid()
    assert points.shape == (num_points, 3) and weights.shape == (num_points,)
    assert torch.allclose(points.norm(dim=-1), torch.ones(num_points))
    assert abs(weights.sum().item() - 1.0) < 1e-14
    # the grid is inversion symmetric: every -x is also a grid point
    distances = (points[:, None, :] + points[None, :, :]).norm(dim=-1)  # |x_g - (-x_h)|
    assert distances.min(dim=1).values.max() < 1e-12


@pytest.mark.parametrize("quadrature", ["lebedev", "gauss_legendre"])
@pytest.mark.parametrize("degree", [3, 7, 11])
def test_grid_integrates_polynomials_up_to_its_degree(quadrature, degree):
    """Spherical mean of Y_a Y_b (degree la + lb <= D) is δ_ab; the next degree up is not integrated exactly."""
    points, weights = quadrature_grid(degree, quadrature)
    harmonics = o3.spherical_harmonics(list(range(degree // 2 + 1)), points, True, "component")  # up to l = D // 2
    gram = torch.einsum("g,ga,gb->ab", weights, harmonics, harmonics)
    assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-12)
    # one degree further (Y_a Y_b with la + lb = D + 1) the rule is no longer exact: the test can fail
    harmonics = o3.spherical_harmonics(list(range((degree + 1) // 2 + 1)), points, True, "component")
    gram = torch.einsum("g,ga,gb->ab", weights, harmonics, harmonics)
    assert (gram - torch.eye(gram.shape[0])).abs().max() > 1e-3


def test_lebedev_degree_is_rounded_up_and_bounded():
    assert lebedev_grid(12)[0].shape[0] == lebedev_grid(13)[0].shape[0]  # no degree-12 rule: the degree-13 one
    with pytest.raises(ValueError, match="no Lebedev rule"):
        lebedev_grid(1000)
    with pytest.raises(ValueError, match="unknown quadrature"):
        quadrature_grid(5, "monte_carlo")


@pytest.mark.parametrize("quadrature", ["lebedev", "gauss_legendre"])
@pytest.mark.parametrize("lmax", [1, 2, 3])
def test_round_trip_is_identity_at_default_degree(lmax, quadrature):
    grid = SphericalGrid(lmax, default_grid_degree(lmax), quadrature)
    coefficients = torch.randn(4, num_coefficients(lmax), 5)
    assert torch.allclose(grid.from_grid(grid.to_grid(coefficients)), coefficients, atol=1e-10, rtol=0)
    # and at the coarsest allowed degree
    coarse = SphericalGrid(lmax, 2 * lmax, quadrature)
    assert torch.allclose(coarse.from_grid(coarse.to_grid(coefficients)), coefficients, atol=1e-10, rtol=0)


def test_too_coarse_grid_is_rejected():
    with pytest.raises(ValueError, match="too coarse"):
        SphericalGrid(3, 5)


def test_to_grid_evaluates_e3nn_spherical_harmonics():
    lmax = 2
    grid = SphericalGrid(lmax, 7)
    coefficients = torch.randn(num_coefficients(lmax), 1)
    harmonics = o3.SphericalHarmonics(spherical_signal_irreps(lmax), normalize=True, normalization="component")
    expected = harmonics(grid.points) @ coefficients
    assert torch.allclose(grid.to_grid(coefficients), expected, atol=1e-12)


def wigner_3j_000(l1, l2, l3):
    """(l1 l2 l3; 0 0 0) by the closed formula."""
    total = l1 + l2 + l3
    if total % 2:
        return 0.0
    g = total // 2
    f = math.factorial
    return (-1) ** g * math.sqrt(f(total - 2 * l1) * f(total - 2 * l2) * f(total - 2 * l3) / f(total + 1)) * f(g) / (
        f(g - l1) * f(g - l2) * f(g - l3)
    )


def test_gaunt_blocks_are_e3nn_wigner_3j_times_known_constant():
    lmax = 3
    gaunt = gaunt_tensor(lmax, lmax, lmax)
    start = [l * l for l in range(lmax + 2)]
    for l1 in range(lmax + 1):
        for l2 in range(lmax + 1):
            for l3 in range(lmax + 1):
                block = gaunt[start[l1] : start[l1 + 1], start[l2] : start[l2 + 1], start[l3] : start[l3 + 1]]
                if abs(l1 - l2) <= l3 <= l1 + l2:
                    expected_norm = math.sqrt((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1)) * abs(wigner_3j_000(l1, l2, l3))
                    w3j = o3.wigner_3j(l1, l2, l3)  # Frobenius norm one
                    constant = (block * w3j).sum()
                    assert torch.allclose(block, constant * w3j, atol=1e-12)
                    assert abs(abs(constant.item()) - expected_norm) < 1e-12
                else:
                    assert torch.all(block == 0)


def test_gaunt_contraction_is_the_pointwise_product_and_exactly_equivariant():
    """What FacetBackbone's edge matrices use: (fg)_c = Σ_ab f_a g_b G[a, b, c]."""
    lmax = 2
    gaunt = gaunt_tensor(lmax, lmax, 2 * lmax)

    def product(first, second):
        return torch.einsum("nac,nbc,abk->nkc", first, second, gaunt)

    first = torch.randn(3, num_coefficients(lmax), 4)
    second = torch.randn(3, num_coefficients(lmax), 4)
    result = product(first, second)
    # the product of two signals, evaluated anywhere, is the product of their values
    direction = torch.randn(7, 3)
    sh = lambda lmax_: o3.spherical_harmonics(list(range(lmax_ + 1)), direction, True, "component")
    values = torch.einsum("pa,nac->npc", sh(lmax), first) * torch.einsum("pb,nbc->npc", sh(lmax), second)
    assert torch.allclose(torch.einsum("pk,nkc->npc", sh(2 * lmax), result), values, atol=1e-11)
    for rotation in (o3.rand_matrix(), -o3.rand_matrix()):  # proper and improper
        wigner_in = spherical_signal_irreps(lmax).D_from_matrix(rotation)
        wigner_out = spherical_signal_irreps(2 * lmax).D_from_matrix(rotation)
        rotated = product(rotate(first, wigner_in), rotate(second, wigner_in))
        assert torch.allclose(rotated, rotate(result, wigner_out), atol=1e-12)


def grid_mlp_equivariance_error(lmax, degree, rotation, quadrature="lebedev", seed=0):
    torch.manual_seed(seed)
    layer = GridMLP(lmax, 16, 32, 16, degree, quadrature)
    # unit grid amplitude: spherical RMS of every channel ~ 1
    coefficients = torch.randn(8, num_coefficients(lmax), 16) / math.sqrt(num_coefficients(lmax))
    wigner = spherical_signal_irreps(lmax).D_from_matrix(rotation)
    reference = rotate(layer(coefficients), wigner)
    return ((layer(rotate(coefficients, wigner)) - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("quadrature", ["lebedev", "gauss_legendre"])
@pytest.mark.parametrize("lmax", [1, 2, 3])
def test_grid_mlp_equivariance_error_below_documented_bound(lmax, quadrature):
    torch.manual_seed(1)
    rotation = o3.rand_matrix()
    default_error = grid_mlp_equivariance_error(lmax, default_grid_degree(lmax), rotation, quadrature)
    assert default_error < GRID_MLP_EQUIVARIANCE_BOUND_DEFAULT
    assert grid_mlp_equivariance_error(lmax, 6 * lmax + 11, rotation, quadrature) < GRID_MLP_EQUIVARIANCE_BOUND_FINE
    # the error is real aliasing, visible on a coarse grid: the test can fail
    assert grid_mlp_equivariance_error(lmax, 2 * lmax + 1, rotation, quadrature) > 1e-3


@pytest.mark.parametrize("lmax", [1, 2])
def test_grid_mlp_equals_the_mlp_applied_at_every_grid_point(lmax):
    """The fused evaluation (Linears on coefficients, SiLU on the grid) is the textbook layer."""
    torch.manual_seed(2)
    layer = GridMLP(lmax, 5, 7, 3, degree=2 * lmax + 3)
    coefficients = torch.randn(2, 4, num_coefficients(lmax), 5)  # two leading batch dimensions
    textbook = layer.grid.from_grid(layer.mlp(layer.grid.to_grid(coefficients)))
    assert layer(coefficients).shape == (2, 4, num_coefficients(lmax), 3)
    assert torch.allclose(layer(coefficients), textbook, atol=1e-12, rtol=0)


def test_grid_mlp_commutes_exactly_with_inversion():
    lmax = 2
    inversion = -torch.eye(3)
    for quadrature in ("lebedev", "gauss_legendre"):
        assert grid_mlp_equivariance_error(lmax, 2 * lmax + 3, inversion, quadrature) < 1e-13


def test_float64_tables_survive_dtype_round_trips():
    grid = SphericalGrid(2, 7).float().double()
    coefficients = torch.randn(2, 9, 3)
    assert torch.allclose(grid.from_grid(grid.to_grid(coefficients)), coefficients, atol=1e-12, rtol=0)


@pytest.mark.parametrize("lmax", [1, 2])
def test_anisotropy_bound_keeps_aliasing_small_for_large_trained_weights(lmax):
    """Training enlarges the grid MLP's first Linear; without the bound the aliasing error grows with
    it, with the bound it stays below 1e-6 on the default grid whatever the weights."""
    from mlip.models.backbones.facet import DEFAULT_GRID_ANISOTROPY_BOUND

    torch.manual_seed(3)
    rotation = o3.rand_matrix()
    wigner = spherical_signal_irreps(lmax).D_from_matrix(rotation)
    coefficients = torch.randn(8, num_coefficients(lmax), 16) / math.sqrt(num_coefficients(lmax))
    errors = {}
    for bound in (None, DEFAULT_GRID_ANISOTROPY_BOUND):
        layer = GridMLP(lmax, 16, 32, 16, default_grid_degree(lmax), anisotropy_bound=bound)
        with torch.no_grad():
            layer.mlp[0].weight.mul_(20.0)  # weights as large as training makes them
        reference = rotate(layer(coefficients), wigner)
        errors[bound] = ((layer(rotate(coefficients, wigner)) - reference).norm() / reference.norm()).item()
    assert errors[None] > 1e-4
    assert errors[DEFAULT_GRID_ANISOTROPY_BOUND] < GRID_MLP_EQUIVARIANCE_BOUND_DEFAULT


def test_anisotropy_bound_scales_only_the_l_above_0_part_of_the_pre_activation():
    torch.manual_seed(4)
    layer = GridMLP(1, 3, 5, 2, degree=7, anisotropy_bound=0.5)
    unbounded = GridMLP(1, 3, 5, 2, degree=7)
    unbounded.load_state_dict(layer.state_dict())
    isotropic = torch.zeros(4, 4, 3)
    isotropic[:, 0] = torch.randn(4, 3)  # l = 0 only: nothing to bound
    assert torch.allclose(layer(isotropic), unbounded(isotropic), atol=1e-14, rtol=0)
    anisotropic = torch.randn(4, 4, 3)
    assert not torch.allclose(layer(anisotropic), unbounded(anisotropic), atol=1e-6)
    with pytest.raises(ValueError, match="anisotropy_bound"):
        GridMLP(1, 3, 5, 2, degree=7, anisotropy_bound=0.0)


def test_axial_grid_mlp_is_the_continuous_grid_mlp_and_exactly_equivariant():
    """lmax 1: each hidden channel a + b·x integrated along its own axis b̂ equals the grid MLP on a
    very fine grid (the continuous layer), and is equivariant to rounding even for large weights."""
    from mlip.nn.spherical_grid import AxialGridMLP

    torch.manual_seed(5)
    axial = AxialGridMLP(1, 8, 16, 8, degree=41)
    fine = GridMLP(1, 8, 16, 8, degree=101)  # 1202-point Lebedev rule
    fine.load_state_dict(axial.state_dict())  # same parameters
    coefficients = torch.randn(6, 4, 8) / 2.0
    assert torch.allclose(axial(coefficients), fine(coefficients), atol=1e-13, rtol=0)
    with torch.no_grad():
        axial.mlp[0].weight.mul_(20.0)  # weights as large as training makes them
    for rotation in (o3.rand_matrix(), -o3.rand_matrix()):
        wigner = spherical_signal_irreps(1).D_from_matrix(rotation)
        reference = rotate(axial(coefficients), wigner)
        assert ((axial(rotate(coefficients, wigner)) - reference).norm() / reference.norm()) < 1e-13


def test_axial_grid_mlp_derivatives_are_finite_for_isotropic_input():
    """An isolated atom has no l = 1 part: forces and force-training second derivatives must stay finite."""
    from mlip.nn.spherical_grid import AxialGridMLP

    torch.manual_seed(6)
    layer = AxialGridMLP(1, 5, 7, 3, degree=11)
    isotropic = torch.zeros(3, 4, 5)
    isotropic[:, 0] = torch.randn(3, 5)
    isotropic.requires_grad_(True)
    (gradient,) = torch.autograd.grad(layer(isotropic).sum(), isotropic, create_graph=True)
    (second,) = torch.autograd.grad(gradient.square().sum(), layer.mlp[0].weight)
    assert torch.isfinite(gradient).all() and torch.isfinite(second).all()
    general = torch.randn(2, 4, 5, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (general,))
    assert torch.autograd.gradgradcheck(layer, (general,))
    with pytest.raises(ValueError, match="lmax = 1"):
        AxialGridMLP(2, 5, 7, 3, degree=11)
