"""Facet-style backbone: spline radial functions, Gaunt (grid-product) messages and grid-MLP node layers.

After Facet (2025, arXiv:2509.08418), whose two published ideas are (i) learnable splines of the
interatomic distance in place of radial MLPs and (ii) an equivariant node layer that projects
features onto a spherical grid and applies an ordinary MLP there. The public abstract does not
fix every detail; the layer below is our own reading, documented in docs/facet.md.

Node features h_i are C channels of spherical signals of degree <= lmax, stored as
coefficients (n, K, C), K = (lmax + 1)^2, irreps 0e + 1o + 2e + ... per channel
(see mlip.nn.spherical_grid). One interaction layer t:

    edge matrix      T_ij[a, b] = Σ_c G[a, b, c] Y_c(r̂_ij)             (E, K, K), shared by all channels
    radial weights   w_in, w_out = spline_t(r_ij)                        (E, lmax+1, C) each
    message          m_ij = w_out[l(a)] ⊙ Σ_b T_ij[a, b] (w_in[l(b)] ⊙ W_up h_j)[b]
    aggregation      M_i = Σ_j m_ij / avg_num_neighbors
    node update      a_i = W_msg M_i + W_self h_i  (channel mixing per degree l)
                     h_i <- h_i + GridMLP(a_i / sqrt(1 + |a_i|^2 / C))

G is the Gaunt tensor, i.e. the exact grid product of the neighbour's signal with the edge
direction's spherical harmonics (the channel-wise tensor product restricted to the couplings a
product of functions on the sphere has), T_ij costs O(K^3) per edge independent of C, and
the per-channel work is one batched (K x K) @ (K x C) product. The soft normalisation keeps the
grid amplitude O(1), which bounds the aliasing error of the grid MLP (docs/facet.md).

The first layer's input is the species (and charge/spin) embedding, which has only l = 0
coefficients; there T_ij @ x reduces to Y(r̂_ij) x_0, so that layer skips the gather of the zero
l > 0 coefficients and the per-edge matrix product (`FacetInteraction.scalar_input_messages`,
the same numbers as the general path).

Outputs: scalars = the l = 0 coefficients of every layer, concatenated (n, C · num_layers);
vectors = the l = 1 coefficients of the last layer (n, C, 3), Cartesian (x, y, z).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from e3nn import o3

from mlip.models.backbones.base import Backbone, BackboneInputs, NodeEmbedding, NodeFeatures
from mlip.nn.spherical_grid import (
    GRID_QUADRATURES,
    AxialGridMLP,
    Float64Buffers,
    GridMLP,
    degree_of_coefficient,
    gaunt_tensor,
    num_coefficients,
)
from mlip.nn.spline import SplineBasis, SplineRadial


def default_grid_degree(lmax: int) -> int:
    """Polynomial degree D of the grid MLP's quadrature: 10 lmax + 1 (11, 21, 31 for lmax 1-3).

    The smallest simple rule whose grid-MLP rotation error stays below 1e-6 relative at unit
    amplitude for lmax 1-3, with either quadrature (scripts/equivariance_vs_grid.py, tables in
    docs/facet.md). With Lebedev rules that is 50, 170 and 350 points; the
    Gauss-Legendre product grids of the same degree have 72, 242 and 512.
    """
    return 10 * lmax + 1


# Spherical RMS of a grid-MLP pre-activation's l > 0 part is kept below this (GridMLP). At lmax 1 it
# caps the pre-activation's variation b·x over the sphere at |b| = sqrt(3) * 0.8 = 1.39, where one
# SiLU channel's aliasing error on the default grid is small for any isotropic level (measured in
# docs/facet.md, "grid_anisotropy_bound").
DEFAULT_GRID_ANISOTROPY_BOUND = 0.8


# grids of the grid MLP: the two spherical quadratures, and the exact per-channel axial rule (lmax 1)
GRID_MLP_QUADRATURES = (*GRID_QUADRATURES, "axial")


def resolve_grid_options(lmax: int, quadrature: str | None, anisotropy_bound: float | str | None):
    """Defaults of the grid MLP: the exact axial rule at lmax 1 (no bound needed), else a Lebedev
    grid with the anisotropy bound that keeps trained models' aliasing below 1e-6 (docs/facet.md)."""
    if quadrature is None:
        quadrature = "axial" if lmax == 1 else "lebedev"
    if anisotropy_bound == "auto":
        anisotropy_bound = None if quadrature == "axial" else DEFAULT_GRID_ANISOTROPY_BOUND
    return quadrature, anisotropy_bound


class DegreeWiseLinear(torch.nn.Module):
    """Channel mixing with one (C_in, C_out) matrix per degree l: (n, K, C_in) -> (n, K, C_out). Equivariant."""

    def __init__(self, lmax: int, in_channels: int, out_channels: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(lmax + 1, in_channels, out_channels) / in_channels**0.5)
        self.register_buffer("degree", degree_of_coefficient(lmax), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nkc,kcd->nkd", features, self.weight[self.degree])


class GauntEdgeMatrix(Float64Buffers):
    """Edge harmonics (E, K) -> edge matrices T_ij[a, b] = Σ_c G[a, b, c] Y_c(r̂_ij), (E, K, K).

    T_ij @ x is the Gaunt (exact grid) product of a signal x with the edge direction's harmonics.
    It depends only on the geometry, so the backbone builds it once and every layer reuses it.
    """

    float64_buffers = ("gaunt",)

    def __init__(self, lmax: int):
        super().__init__()
        self.size = num_coefficients(lmax)
        # Gaunt tensor (fully symmetric) flattened to (K_edge, K_out * K_in)
        self.register_buffer("gaunt", gaunt_tensor(lmax, lmax, lmax).reshape(self.size, -1), persistent=False)

    def forward(self, edge_harmonics: torch.Tensor) -> torch.Tensor:
        return (edge_harmonics @ self.gaunt.to(edge_harmonics.dtype)).view(-1, self.size, self.size)


class EdgeGeometry(NamedTuple):
    """Per-edge terms every layer shares, computed once per forward pass."""

    harmonics: torch.Tensor  # (E, K) Y(r̂_ij), component normalised
    matrix: torch.Tensor | None  # (E, K, K) Gaunt edge matrices T_ij; None when only the scalar-input layer runs
    spline_basis: torch.Tensor  # (E, M + 3) cubic B-spline basis of r_ij (all layers' splines share knots)


class FacetInteraction(torch.nn.Module):
    """One message-passing layer followed by a residual grid-MLP node update (see module docstring)."""

    def __init__(
        self,
        lmax: int,
        num_channels: int,
        cutoff: float,
        num_spline_knots: int,
        grid_degree: int,
        grid_quadrature: str,
        grid_anisotropy_bound: float | None,
        mlp_hidden_factor: int,
        avg_num_neighbors: float,
        scalar_input: bool = False,
    ):
        super().__init__()
        self.lmax = lmax
        self.num_channels = num_channels
        self.size = num_coefficients(lmax)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.scalar_input = bool(scalar_input)
        # one spline per (in/out, degree l, channel); spline output (role * (lmax+1) + l) * C + c
        self.radial = SplineRadial(cutoff, 2 * (lmax + 1) * num_channels, num_spline_knots)
        # Columns of the spline table that give w_in and w_out with each degree's spline repeated
        # over its 2l + 1 coefficients: (K_in C,) and (K C,), flattened (coefficient k, channel c).
        # A scalar-input layer reads only the l = 0 coefficient of its input (K_in = 1).
        degree = degree_of_coefficient(lmax)
        input_degree = degree[:1] if self.scalar_input else degree
        channel = torch.arange(num_channels)
        in_columns = input_degree[:, None] * num_channels + channel
        out_columns = ((lmax + 1) + degree[:, None]) * num_channels + channel
        self.register_buffer("radial_columns_in", in_columns.reshape(-1), persistent=False)
        self.register_buffer("radial_columns_out", out_columns.reshape(-1), persistent=False)
        self.linear_up = DegreeWiseLinear(lmax, num_channels, num_channels)
        # [M_i, h_i] -> W_msg M_i + W_self h_i in one per-degree GEMM
        self.linear_update = DegreeWiseLinear(lmax, 2 * num_channels, num_channels)
        hidden_channels = mlp_hidden_factor * num_channels
        if grid_quadrature == "axial":
            self.node_mlp = AxialGridMLP(
                lmax, num_channels, hidden_channels, num_channels, grid_degree, anisotropy_bound=grid_anisotropy_bound
            )
        else:
            self.node_mlp = GridMLP(
                lmax, num_channels, hidden_channels, num_channels, grid_degree, grid_quadrature,
                anisotropy_bound=grid_anisotropy_bound,
            )

    def forward(self, features: torch.Tensor, edge_index: torch.Tensor, geometry: EdgeGeometry) -> torch.Tensor:
        """features (n, K, C) -> updated features (n, K, C)."""
        aggregated = self.aggregate_messages(features, edge_index, geometry)
        update = self.linear_update(torch.cat([aggregated, features], dim=-1))
        return features + self.node_update(update)

    def radial_weights(self, spline_basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E, M + 3) -> w_in (E, K_in, C) and w_out (E, K, C): each degree's spline repeated over its 2l + 1 coefficients.

        The repetition is done on the (M + 3, ·) coefficient table, so each weight set is one GEMM
        in the layout the message needs (no per-edge gather). Two GEMMs rather than one split in
        two: the split's backward would stack two (E, K, C) gradients into a new tensor."""
        coefficients = self.radial.full_coefficients()  # (M + 3, 2 (lmax + 1) C)
        num_edges = spline_basis.shape[0]
        weights_in = spline_basis @ coefficients[:, self.radial_columns_in]  # (E, K_in C)
        weights_out = spline_basis @ coefficients[:, self.radial_columns_out]  # (E, K C)
        input_size = 1 if self.scalar_input else self.size  # explicit: a graph may have no edges
        return (weights_in.view(num_edges, input_size, self.num_channels),
                weights_out.view(num_edges, self.size, self.num_channels))

    def aggregate_messages(self, features: torch.Tensor, edge_index: torch.Tensor, geometry: EdgeGeometry) -> torch.Tensor:
        """M_i = Σ_j m_ij / avg_num_neighbors, (n, K, C): Gaunt product of W_up h_j with Y(r̂_ij), spline-weighted."""
        sender, receiver = edge_index[0], edge_index[1]
        weights_in, weights_out = self.radial_weights(geometry.spline_basis)
        if self.scalar_input:
            messages = self.scalar_input_messages(features, sender, geometry.harmonics, weights_in, weights_out)
        else:
            neighbour = self.linear_up(features).index_select(0, sender) * weights_in  # (E, K, C)
            messages = torch.bmm(geometry.matrix, neighbour) * weights_out  # (E, K, C)
        return torch.zeros_like(features).index_add_(0, receiver, messages) / self.avg_num_neighbors

    def scalar_input_messages(
        self,
        features: torch.Tensor,
        sender: torch.Tensor,
        edge_harmonics: torch.Tensor,
        weights_in: torch.Tensor,
        weights_out: torch.Tensor,
    ) -> torch.Tensor:
        """Messages (E, K, C) of a layer whose input has only l = 0 coefficients (the first layer).

        The Gaunt product of a constant with Y(r̂) is Y(r̂) itself (T_ij[a, 0] = Y_a(r̂_ij), since
        G[a, 0, c] = δ_ac), so m_ij[a] = w_out[l(a)] ⊙ Y_a(r̂_ij) (w_in[0] ⊙ (W_up h_j)[0]): the
        same message as the general path, without gathering the zero l > 0 coefficients and
        without the per-edge matrix product."""
        scalars = features[:, 0] @ self.linear_up.weight[0]  # (n, C): the l = 0 block of W_up
        neighbour = scalars.index_select(0, sender) * weights_in[:, 0]  # (E, C)
        return weights_out * (edge_harmonics.unsqueeze(-1) * neighbour.unsqueeze(1))  # (E, K, C)

    def node_update(self, update: torch.Tensor) -> torch.Tensor:
        """Grid MLP of the softly normalised update (n, K, C).

        With ms = mean over channels of the spherical mean square (rotation invariant), the update is
        scaled by 1 / sqrt(1 + ms), so its ms becomes ms / (1 + ms) < 1: the grid amplitude stays in
        the range where the grid MLP's aliasing error is documented (docs/facet.md)."""
        mean_square = update.square().sum(dim=1).mean(dim=1)[:, None, None]  # (n, 1, 1)
        return self.node_mlp(update * torch.rsqrt(1.0 + mean_square))


class FacetBackbone(Backbone):
    """Facet-style equivariant backbone (see module docstring and docs/facet.md).

    Args:
        num_elements: size of the model's element list (species index range).
        cutoff: radial cutoff in Å; splines vanish with two derivatives there.
        condition_dim: width of `node_condition` (charge/spin embedding); 0 = none.
        num_channels: C, channels of every degree.
        lmax: largest degree of node features and edge spherical harmonics.
        num_layers: interaction layers.
        num_spline_knots: knot intervals of each spline on [0, cutoff].
        grid_quadrature: "axial" (lmax 1 only: every hidden channel integrated along its own axis,
            exactly equivariant, `AxialGridMLP`), "lebedev" (fewest points) or "gauss_legendre"
            (product grid); None = "axial" at lmax 1, else "lebedev".
        grid_degree: polynomial degree the grid MLP's quadrature integrates exactly; None =
            `default_grid_degree(lmax)` (rotation error < 1e-6, docs/facet.md).
        grid_anisotropy_bound: bound on the spherical RMS of the l > 0 part of every grid-MLP
            pre-activation (`GridMLP`), which keeps the aliasing error bounded for any trained
            weights; None = unbounded (on a spherical grid the error then grows as training
            enlarges the weights); "auto" = None for "axial" (exact anyway), else 0.8.
        mlp_hidden_factor: hidden width of the grid MLP = factor x C.
        avg_num_neighbors: normalisation of the neighbour sum (dataset statistic).
    """

    supports_edge_weights = True  # BackboneInputs.edge_weights scale each edge's messages

    def __init__(
        self,
        num_elements: int,
        cutoff: float,
        condition_dim: int = 0,
        num_channels: int = 32,
        lmax: int = 1,
        num_layers: int = 2,
        num_spline_knots: int = 16,
        grid_quadrature: str | None = None,
        grid_degree: int | None = None,
        grid_anisotropy_bound: float | str | None = "auto",
        mlp_hidden_factor: int = 2,
        avg_num_neighbors: float = 1.0,
    ):
        super().__init__()
        if lmax < 1:
            raise ValueError(f"FacetBackbone: lmax must be >= 1 (vector features need l = 1), got {lmax}")
        if num_layers < 1 or num_channels < 1:
            raise ValueError(f"FacetBackbone: num_layers and num_channels must be >= 1, got {num_layers}, {num_channels}")
        if avg_num_neighbors <= 0:
            raise ValueError(f"FacetBackbone: avg_num_neighbors must be positive, got {avg_num_neighbors}")
        grid_quadrature, grid_anisotropy_bound = resolve_grid_options(lmax, grid_quadrature, grid_anisotropy_bound)
        if grid_quadrature not in GRID_MLP_QUADRATURES:
            raise ValueError(f"FacetBackbone: grid_quadrature must be one of {GRID_MLP_QUADRATURES}, got {grid_quadrature!r}")
        if grid_quadrature == "axial" and lmax != 1:
            raise ValueError(f"FacetBackbone: grid_quadrature='axial' is exact for lmax = 1 only, got lmax={lmax}")
        self.grid_degree = int(grid_degree) if grid_degree is not None else default_grid_degree(lmax)
        self.grid_quadrature = str(grid_quadrature)
        self.grid_anisotropy_bound = None if grid_anisotropy_bound is None else float(grid_anisotropy_bound)
        self.lmax = int(lmax)
        self.num_channels = int(num_channels)
        self.num_scalar_features = self.num_channels * int(num_layers)
        self.num_vector_features = self.num_channels
        self.embedding = NodeEmbedding(num_elements, num_channels, condition_dim)
        # the backbone's radial basis: every layer's splines use these knots
        self.spline_basis = SplineBasis(cutoff, num_spline_knots)
        self.edge_harmonics = o3.SphericalHarmonics(
            o3.Irreps.spherical_harmonics(lmax), normalize=True, normalization="component"
        )
        self.edge_matrix = GauntEdgeMatrix(self.lmax)
        # the first layer's input is the l = 0 embedding only: it takes the scalar-input message path
        self.layers = torch.nn.ModuleList(
            FacetInteraction(
                self.lmax, self.num_channels, float(cutoff), num_spline_knots, self.grid_degree, grid_quadrature,
                grid_anisotropy_bound, mlp_hidden_factor, avg_num_neighbors, scalar_input=(index == 0),
            )
            for index in range(num_layers)
        )

    def resolved_hyperparameters(self) -> dict:
        return {"grid_quadrature": self.grid_quadrature, "grid_degree": self.grid_degree,
                "grid_anisotropy_bound": self.grid_anisotropy_bound}

    def initial_features(self, species: torch.Tensor, node_condition: torch.Tensor | None) -> torch.Tensor:
        """(n, K, C): species embedding (+ linear map of the condition) in the l = 0 slot, zeros elsewhere."""
        scalars = self.embedding(species, node_condition)  # (n, C)
        features = scalars.new_zeros(species.shape[0], num_coefficients(self.lmax), self.num_channels)
        features[:, 0] = scalars
        return features

    def forward(self, inputs: BackboneInputs) -> NodeFeatures:
        # geometry terms shared by all layers
        edge_lengths = inputs.edge_vectors.norm(dim=-1)  # (E,) Å
        harmonics = self.edge_harmonics(inputs.edge_vectors)  # (E, K)
        if inputs.edge_weights is not None:  # messages are linear in Y: an edge of weight 0 sends nothing
            harmonics = harmonics * inputs.edge_weights[:, None]
        geometry = EdgeGeometry(
            harmonics=harmonics,
            matrix=self.edge_matrix(harmonics) if len(self.layers) > 1 else None,
            spline_basis=self.spline_basis(edge_lengths),
        )
        features = self.initial_features(inputs.species, inputs.node_condition)
        scalars = []
        for layer in self.layers:
            features = layer(features, inputs.edge_index, geometry)
            scalars.append(features[:, 0])
        vectors = features[:, 1:4].transpose(1, 2)  # (n, C, 3): e3nn's l = 1 block is (x, y, z)
        return NodeFeatures(scalars=torch.cat(scalars, dim=-1), vectors=vectors)
