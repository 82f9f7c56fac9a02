"""Spherical-grid projections of irreps features, Facet's grid MLP and exact grid (Gaunt) products.

Conventions
-----------
A node feature with `C` channels and degrees l = 0..lmax is stored as coefficients of shape
(..., K, C), K = (lmax + 1)^2, in e3nn's order (l, m) = (0,0), (1,-1), (1,0), (1,1), (2,-2), ...
The coefficients multiply e3nn's real spherical harmonics `o3.spherical_harmonics(l, x,
normalize=True, normalization="component")` (the same functions e3nn's `o3.SphericalHarmonics`
gives for edge features), so degree l has parity (-1)^l: irreps "0e + 1o + 2e + 3o + ...", and the
l = 1 block is an ordinary Cartesian vector (x, y, z). Each coefficient vector is a function on
the unit sphere, f(x) = Σ_k c_k Y_k(x).

With "component" normalisation the spherical average of Y_k Y_k' is δ_kk'. The grid below
carries quadrature weights w_g that sum to one, so projection back to coefficients is
c_k = Σ_g w_g f(x_g) Y_k(x_g).

The grids
---------
A grid is a set of unit vectors x_g with weights w_g (summing to one) that integrates every
polynomial in (x, y, z) of total degree <= D exactly; D is the grid's `degree`. Two rules:

* "lebedev" (FacetBackbone's grid for lmax >= 2): Lebedev-Laikov rules with octahedral symmetry, taken
  from `scipy.integrate.lebedev_rule`; the fewest points for a given degree (50 points for
  D = 11, 170 for D = 21, 350 for D = 31). Only some odd degrees exist; a request is rounded up
  to the next available rule.
* "gauss_legendre": Gauss-Legendre nodes in z = cos β (n_β of them) times n_α = 2 n_β equally
  spaced azimuths α, with n_β = ceil((D + 1) / 2), i.e. G = 2 n_β^2 points (72 for D = 11). The α
  sum is exact for |m| < n_α, the Gauss-Legendre sum for degree < 2 n_β in z.

A product of band-limited functions of degrees l1, l2, l3 is a polynomial of degree
D = l1 + l2 + l3, so
* the round trip coefficients -> grid -> coefficients is the identity once D >= 2 lmax;
* the product of two band-limited signals, projected onto degree <= lmax_out, is exact once
  D >= lmax_1 + lmax_2 + lmax_out (`exact_product_degree`).
Both rules are symmetric under inversion x -> -x, so pointwise operations commute exactly with
inversion; only proper rotations are approximate for non-polynomial pointwise functions
(aliasing, see `GridMLP`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from e3nn import o3


def num_coefficients(lmax: int) -> int:
    """K = (lmax + 1)^2 coefficients for degrees 0..lmax."""
    return (lmax + 1) ** 2


def degree_of_coefficient(lmax: int) -> torch.Tensor:
    """(K,) long: the degree l of every coefficient index k (e3nn order)."""
    return torch.cat([torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(lmax + 1)])


def exact_product_degree(lmax_1: int, lmax_2: int, lmax_out: int) -> int:
    """Smallest grid degree D that integrates Y_l1 · Y_l2 · Y_l3 exactly (all l <= the given maxima)."""
    return lmax_1 + lmax_2 + lmax_out


def real_spherical_harmonics(lmax: int, directions: torch.Tensor) -> torch.Tensor:
    """directions (..., 3) -> (..., K): e3nn's component-normalised real spherical harmonics."""
    return o3.spherical_harmonics(list(range(lmax + 1)), directions, normalize=True, normalization="component")


def spherical_signal_irreps(lmax: int) -> o3.Irreps:
    """Irreps of one channel of a spherical signal: 0e + 1o + 2e + ... (degree l has parity (-1)^l)."""
    return o3.Irreps.spherical_harmonics(lmax)


def gauss_legendre_grid(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (G, 3) on the unit sphere and weights (G,) summing to one; G = 2 resolution^2 (float64)."""
    if resolution < 1:
        raise ValueError(f"gauss_legendre_grid: resolution (number of polar nodes) must be >= 1, got {resolution}")
    z_nodes, z_weights = np.polynomial.legendre.leggauss(resolution)  # weights sum to 2
    num_azimuths = 2 * resolution
    azimuths = 2.0 * np.pi * np.arange(num_azimuths) / num_azimuths
    z = np.repeat(z_nodes, num_azimuths)
    rho = np.sqrt(np.clip(1.0 - z**2, 0.0, None))
    alpha = np.tile(azimuths, resolution)
    points = np.stack([rho * np.cos(alpha), rho * np.sin(alpha), z], axis=-1)
    weights = np.repeat(z_weights / 2.0, num_azimuths) / num_azimuths
    return torch.from_numpy(points), torch.from_numpy(weights)


LARGEST_LEBEDEV_DEGREE = 131  # scipy.integrate.lebedev_rule has odd degrees 3 .. 31, then 35, 41, ..., 131


def lebedev_grid(degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (G, 3) and weights (G,) summing to one of the smallest Lebedev rule exact to degree >= `degree` (float64)."""
    from scipy.integrate import lebedev_rule

    if degree > LARGEST_LEBEDEV_DEGREE:
        raise ValueError(
            f"lebedev_grid: no Lebedev rule of degree >= {degree} (largest: {LARGEST_LEBEDEV_DEGREE}); use 'gauss_legendre'"
        )
    for rule_degree in range(max(3, degree | 1), LARGEST_LEBEDEV_DEGREE + 1, 2):  # odd degrees from `degree` up
        try:
            points, weights = lebedev_rule(rule_degree)  # (3, G), weights sum to 4 pi
        except (ValueError, NotImplementedError):  # no rule of this degree
            continue
        return torch.from_numpy(np.ascontiguousarray(points.T)), torch.from_numpy(weights / weights.sum())
    raise ValueError(f"lebedev_grid: scipy has no Lebedev rule of degree >= {degree}")


GRID_QUADRATURES = ("lebedev", "gauss_legendre")


def quadrature_grid(degree: int, quadrature: str = "lebedev") -> tuple[torch.Tensor, torch.Tensor]:
    """Points (G, 3) and weights (G,) of a grid exact for polynomials of degree <= `degree`."""
    if degree < 0:
        raise ValueError(f"quadrature_grid: degree must be >= 0, got {degree}")
    if quadrature == "lebedev":
        return lebedev_grid(degree)
    if quadrature == "gauss_legendre":
        return gauss_legendre_grid(max(1, math.ceil((degree + 1) / 2)))
    raise ValueError(f"quadrature_grid: unknown quadrature {quadrature!r}; choose from {GRID_QUADRATURES}")


class Float64Buffers(torch.nn.Module):
    """Module whose buffers named in `float64_buffers` stay float64 under .float()/.double()/.to(dtype).

    Quadrature tables lose their 1e-16 accuracy if rounded to float32 once; users cast them to the
    input dtype at use instead.
    """

    float64_buffers: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        originals = {name: getattr(self, name) for name in self.float64_buffers}
        result = super()._apply(fn, recurse)
        for name, original in originals.items():
            converted = getattr(self, name)
            if converted.dtype != torch.float64:  # undo the dtype change, keep any device move
                setattr(self, name, original.to(device=converted.device))
        return result


class SphericalGrid(Float64Buffers):
    """Maps coefficients (..., K, C) to grid values (..., G, C) and back.

    Args:
        lmax: largest degree of the coefficients.
        degree: polynomial degree D the grid integrates exactly (see the module docstring). Must be
            >= 2 lmax so that the round trip is exact.
        quadrature: "lebedev" or "gauss_legendre".

    The projection matrices are kept in float64 and cast to the input dtype on use, so a model
    built in float32 and converted with `.double()` keeps full precision.
    """

    float64_buffers = ("points", "weights", "to_grid_matrix", "from_grid_matrix")

    def __init__(self, lmax: int, degree: int, quadrature: str = "lebedev"):
        super().__init__()
        if degree < 2 * lmax:
            raise ValueError(
                f"SphericalGrid: degree {degree} is too coarse for lmax={lmax}; need >= {2 * lmax} "
                "for an exact round trip"
            )
        self.lmax = int(lmax)
        self.degree = int(degree)
        self.quadrature = quadrature
        points, weights = quadrature_grid(degree, quadrature)
        harmonics = real_spherical_harmonics(lmax, points)  # (G, K) float64
        self.register_buffer("points", points, persistent=False)
        self.register_buffer("weights", weights, persistent=False)
        self.register_buffer("to_grid_matrix", harmonics, persistent=False)  # (G, K)
        self.register_buffer("from_grid_matrix", (harmonics * weights[:, None]).T.contiguous(), persistent=False)

    @property
    def num_points(self) -> int:
        return self.points.shape[0]

    def to_grid(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(..., K, C) -> (..., G, C): f(x_g) = Σ_k c_k Y_k(x_g)."""
        return torch.matmul(self.to_grid_matrix.to(coefficients.dtype), coefficients)

    def from_grid(self, values: torch.Tensor) -> torch.Tensor:
        """(..., G, C) -> (..., K, C): c_k = Σ_g w_g f(x_g) Y_k(x_g) (exact for band-limited integrands)."""
        return torch.matmul(self.from_grid_matrix.to(values.dtype), values)

    def extra_repr(self) -> str:
        return f"lmax={self.lmax}, degree={self.degree}, quadrature={self.quadrature}, num_points={self.num_points}"


def bound_anisotropy(anisotropic: torch.Tensor, bound: float | None) -> torch.Tensor:
    """Scale l > 0 coefficients (N, K - 1, H) of each hidden channel by 1 / sqrt(1 + ρ² / bound²).

    ρ² = Σ_k (l > 0) c_k² is the spherical mean square of the channel's anisotropic part (a
    rotation invariant), so the result is equivariant and its ρ stays below `bound`; None
    returns the input unchanged.
    """
    if bound is None:
        return anisotropic
    mean_square = anisotropic.square().sum(dim=1, keepdim=True)  # (N, 1, H)
    return anisotropic * torch.rsqrt(1.0 + mean_square / bound**2)


class SphericalMLP(torch.nn.Module):
    """Linear(C, H) -> SiLU -> Linear(H, C_out) applied at every direction of coefficient signals
    (..., K, C), projected back onto the same degrees: the shared part of the grid MLPs.

    Both Linears act on channels and commute with projections on directions, so they run on the
    K coefficients; the biases are constant functions on the sphere, i.e. l = 0 coefficients.
    Subclasses supply `project_silu`, the projection of SiLU of the hidden signal onto degrees
    <= lmax. Optionally the l > 0 part of every hidden channel is bounded first (`bound_anisotropy`).
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, anisotropy_bound: float | None):
        super().__init__()
        if anisotropy_bound is not None and anisotropy_bound <= 0:
            raise ValueError(f"{type(self).__name__}: anisotropy_bound must be positive or None, got {anisotropy_bound}")
        self.anisotropy_bound = anisotropy_bound
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(in_channels, hidden_channels),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden_channels, out_channels),
        )

    def project_silu(self, level: torch.Tensor, anisotropic: torch.Tensor) -> torch.Tensor:
        """level (N, H) l = 0 and anisotropic (N, K - 1, H) l > 0 hidden coefficients -> projection of SiLU (N, K, H)."""
        raise NotImplementedError

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(..., K, C) -> (..., K, C_out)."""
        first, last = self.mlp[0], self.mlp[2]
        leading, size = coefficients.shape[:-2], coefficients.shape[-2]
        hidden = coefficients.reshape(-1, size, coefficients.shape[-1]) @ first.weight.T  # (N, K, H)
        level = hidden[:, 0] + first.bias  # (N, H): bias = constant function
        anisotropic = bound_anisotropy(hidden[:, 1:], self.anisotropy_bound)  # (N, K - 1, H)
        output = self.project_silu(level, anisotropic) @ last.weight.T  # (N, K, C_out)
        output = torch.cat([output[:, :1] + last.bias, output[:, 1:]], dim=1)
        return output.reshape(*leading, size, output.shape[-1])


class GridMLP(SphericalMLP):
    """Facet's equivariant node layer: coefficients -> grid -> pointwise MLP over channels -> coefficients.

    At every grid point the C channel values f_c(x_g) go through Linear(C, H) -> SiLU ->
    Linear(H, C_out). The MLP acts identically at every direction, so the layer commutes with
    rotations up to aliasing: SiLU of a band-limited signal is not band-limited, and the
    discarded (and aliased) high degrees make the equivariance approximate. The error falls
    quickly with the grid degree (scripts/equivariance_vs_grid.py, docs/facet.md). Inversion
    commutes exactly (the grid is inversion symmetric).

    Evaluation order: both Linears act on channels and the projections act on directions, so they
    commute. The first Linear is applied to the K coefficients before `to_grid` and the second
    after `from_grid`, so the channel GEMMs run on K rows per node instead of G (G is several
    times K). The biases are constant functions on the sphere, i.e. the l = 0
    coefficient (Y_00 = 1 with component normalisation); `from_grid` maps a constant exactly to
    the l = 0 slot, so this is the same function as MLP-on-every-grid-point, up to rounding.
    Only SiLU touches the (…, G, H) grid values.

    Bounded aliasing (`anisotropy_bound`): the aliasing error of SiLU(h) depends on how strongly
    the pre-activation h(x) varies over the sphere, i.e. on the size of its l > 0 part, and grows
    without limit as training enlarges the first Linear's weights (measured on trained models in
    docs/facet.md). With
    a bound b, every hidden channel's l > 0 coefficients are scaled by 1 / sqrt(1 + ρ² / b²),
    ρ² = Σ_{k: l >= 1} h_k² (the spherical mean square of the anisotropic part, a rotation
    invariant), so ρ stays below b whatever the weights, and with it the aliasing error. The
    l = 0 part (the isotropic level of the activation) is left free: it does not limit the
    error. The scaling is smooth (forces, second derivatives) and exactly equivariant.

    Args:
        lmax: degrees of input and output coefficients.
        in_channels, hidden_channels, out_channels: MLP widths C, H, C_out.
        degree, quadrature: the grid (see `SphericalGrid`); the default rule of FacetBackbone is
            `default_grid_degree(lmax)`.
        anisotropy_bound: b above (spherical RMS of a hidden channel's l > 0 part); None = no bound.
    """

    def __init__(
        self,
        lmax: int,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        degree: int,
        quadrature: str = "lebedev",
        anisotropy_bound: float | None = None,
    ):
        super().__init__(in_channels, hidden_channels, out_channels, anisotropy_bound)
        self.grid = SphericalGrid(lmax, degree, quadrature)

    def project_silu(self, level: torch.Tensor, anisotropic: torch.Tensor) -> torch.Tensor:
        hidden = torch.cat([level.unsqueeze(1), anisotropic], dim=1)  # (N, K, H)
        size, dtype = hidden.shape[1], hidden.dtype
        # directions as the fast axis: one GEMM each way, (N·H, K) @ (K, G) and (N·H, G) @ (G, K)
        rows = hidden.transpose(1, 2).reshape(-1, size)  # (N·H, K)
        on_grid = torch.nn.functional.silu(rows @ self.grid.to_grid_matrix.to(dtype).T)  # (N·H, G)
        projected = (on_grid @ self.grid.from_grid_matrix.to(dtype).T).view(hidden.shape[0], -1, size)  # (N, H, K)
        return projected.transpose(1, 2)  # (N, K, H)


class AxialGridMLP(SphericalMLP):
    """The grid MLP for lmax = 1, exactly equivariant: each hidden channel on its own axial grid.

    Same function as `GridMLP` (Linear(C, H) -> SiLU -> Linear(H, C_out) at every direction,
    projected onto l <= 1), same parameters (`mlp`), but evaluated without aliasing. At lmax 1 a
    hidden channel's pre-activation is h(x) = a + b·x (a = its l = 0 coefficient, b = √3 times
    its l = 1 coefficients c), which is constant on circles around the axis b̂. With t = b̂·x
    (uniformly distributed on [-1, 1] for uniform x) the projections are one-dimensional:

        l = 0:   ½ ∫ SiLU(a + |b| t) dt
        l = 1:   √3 b̂ · ½ ∫ SiLU(a + |b| t) t dt  =  3 c · (½ ∫ SiLU(a + |b| t) t dt) / |b|

    evaluated by Gauss-Legendre quadrature in t with n = ceil((degree + 1) / 2) nodes. The result
    depends on c only through c times invariants, so it is rotation and inversion equivariant
    to rounding for any weights, with no bound on the anisotropy; the quadrature only sets how
    accurately the integrals (an invariant function of a and |b|) are computed. Cost: n SiLU
    evaluations per hidden channel instead of G grid points.

    Args:
        lmax: must be 1.
        in_channels, hidden_channels, out_channels: MLP widths C, H, C_out.
        degree: the 1D rule integrates polynomials in t of degree <= `degree` exactly.
        anisotropy_bound: as in `GridMLP` (not needed for symmetry here; None = no bound).
    """

    def __init__(
        self,
        lmax: int,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        degree: int,
        anisotropy_bound: float | None = None,
    ):
        if lmax != 1:
            raise ValueError(f"AxialGridMLP: only lmax = 1 signals are axially symmetric per channel, got lmax={lmax}")
        if degree < 1:
            raise ValueError(f"AxialGridMLP: degree must be >= 1, got {degree}")
        super().__init__(in_channels, hidden_channels, out_channels, anisotropy_bound)
        self.degree = int(degree)
        nodes, weights = np.polynomial.legendre.leggauss(max(1, math.ceil((degree + 1) / 2)))
        self.register_buffer("nodes", torch.from_numpy(nodes), persistent=False)  # (n,) t in [-1, 1]
        self.register_buffer("weights", torch.from_numpy(weights / 2.0), persistent=False)  # (n,) sum to 1

    def project_silu(self, level: torch.Tensor, anisotropic: torch.Tensor) -> torch.Tensor:
        vector = anisotropic  # (N, 3, H): c
        # |b| = √3 |c|, floored at 1e-6 (before the square root, so that its derivatives stay finite at c = 0)
        slope = torch.sqrt((3.0 * vector.square().sum(dim=1)).clamp(min=1e-12))  # (N, H)
        nodes, weights = self.nodes.to(level.dtype), self.weights.to(level.dtype)
        values = torch.nn.functional.silu(level.unsqueeze(-1) + slope.unsqueeze(-1) * nodes)  # (N, H, n)
        mean = values @ weights  # (N, H): l = 0 projection
        first_moment = values @ (weights * nodes)  # (N, H): ½ ∫ SiLU(a + |b| t) t dt
        projected_vector = vector * (3.0 * first_moment / slope).unsqueeze(1)  # (N, 3, H)
        return torch.cat([mean.unsqueeze(1), projected_vector], dim=1)  # (N, 4, H)


def gaunt_tensor(lmax_1: int, lmax_2: int, lmax_out: int) -> torch.Tensor:
    """(K_1, K_2, K_out) float64: G[a, b, c] = spherical mean of Y_a Y_b Y_c, by exact quadrature.

    The product of signals f = Σ_a f_a Y_a and g = Σ_b g_b Y_b, projected onto degrees <= lmax_out,
    has coefficients (f g)_c = Σ_ab f_a g_b G[a, b, c]. Each (l1, l2, l3) block is proportional to
    e3nn's `o3.wigner_3j(l1, l2, l3)`; it vanishes unless l1 + l2 + l3 is even and the triangle
    rule holds.
    """
    points, weights = quadrature_grid(exact_product_degree(lmax_1, lmax_2, lmax_out), "gauss_legendre")
    y_1 = real_spherical_harmonics(lmax_1, points)
    y_2 = real_spherical_harmonics(lmax_2, points)
    y_out = real_spherical_harmonics(lmax_out, points)
    tensor = torch.einsum("g,ga,gb,gc->abc", weights, y_1, y_2, y_out)
    tensor[tensor.abs() < 1e-13] = 0.0  # exact zeros where selection rules forbid a coupling
    return tensor
