"""A MACE-like equivariant message-passing backbone built on e3nn.

One layer t turns node features h^t into h^(t+1) (see docs/models.md for the equations):

1. message:  A_i = 1/avg_num_neighbors · Σ_j  R(r_ij) · (W h_j ⊗ Y(r̂_ij))      (two-body, equivariant)
2. product:  B_i = Σ_ν  w_ν(Z_i) · Sym[A_i^⊗ν]   ν = 1..correlation          (up to (ν+1)-body)
3. update:   h_i^(t+1) = W' B_i  (+ W''(Z_i) h_i^t from the second layer on)

The backbone returns the invariant (l=0) channels of every layer, concatenated, and the l=1
channels of the last layer as Cartesian vectors for a direct-force head. An atom without
neighbours has A = 0 and therefore exactly zero features.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence

import torch
from e3nn import o3

from mlip.models.backbones.base import Backbone, BackboneInputs, NodeEmbedding, NodeFeatures
from mlip.nn.mlp import MLP
from mlip.nn.radial import RadialEmbedding
from mlip.nn.spline import SplineBasis, SplineRadial


def channelwise_irreps(num_channels: int, lmax: int) -> o3.Irreps:
    """num_channels × (0e + 1o + 2e + ...) up to lmax: the natural-parity irreps of each channel."""
    return o3.Irreps([(num_channels, (l, (-1) ** l)) for l in range(lmax + 1)])


def to_channels(features: torch.Tensor, irreps: o3.Irreps) -> torch.Tensor:
    """e3nn layout (n, Σ mul·(2l+1)), all muls equal to C -> (n, C, Σ (2l+1))."""
    blocks = [features[:, slice_].reshape(features.shape[0], mul, ir.dim) for (mul, ir), slice_ in zip(irreps, irreps.slices())]
    return torch.cat(blocks, dim=-1)


@functools.cache
def symmetric_power_basis(channel_irreps: str, correlation: int) -> tuple[o3.Irreps, torch.Tensor]:
    """Irreps and change of basis (dim_out, d, ..., d) of the symmetric `correlation`-th power.

    Computed once per (irreps, power) in float64 and cached (e3nn's reduction is slow; docs/models.md).
    """
    formulas = {1: "i", 2: "ij=ji", 3: "ijk=jik=ikj"}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        products = o3.ReducedTensorProducts(formulas[correlation], i=o3.Irreps(channel_irreps))
        return products.irreps_out, products.change_of_basis.detach().clone()
    finally:
        torch.set_default_dtype(previous)


def from_channels(features: torch.Tensor) -> torch.Tensor:
    """(n, C, m) for one irrep -> e3nn layout (n, C·m)."""
    return features.reshape(features.shape[0], -1)


class SymmetricContraction(torch.nn.Module):
    """Higher body-order product basis, channel by channel and with element-dependent weights.

    For each channel c the atomic basis A_c (irreps `channel_irreps`, dimension d) is raised to
    the powers ν = 1..correlation. `o3.ReducedTensorProducts` gives the change of basis Q_ν from
    the fully symmetric part of A_c^⊗ν to irreps; we keep the paths whose irrep is in
    `target_irreps` and sum them with weights w[Z_i, path, c]:

        B_c^(L) = Σ_ν Σ_paths w_ν,L[Z, path, c] · Q_ν,L,path · (A_c ⊗ ... ⊗ A_c)     (ν factors)

    ν = 1 is two-body (the message itself); ν = 3 is four-body (the energy of atom i then depends
    on up to three neighbours jointly). Equivariance holds because each Q is.
    """

    def __init__(
        self,
        channel_irreps: o3.Irreps,
        target_irreps: o3.Irreps,
        num_channels: int,
        num_elements: int,
        correlation: int,
    ):
        super().__init__()
        if not 1 <= correlation <= 3:
            raise ValueError(f"SymmetricContraction: correlation must be 1, 2 or 3, got {correlation}")
        self.channel_irreps = o3.Irreps(channel_irreps)
        self.target_irreps = o3.Irreps(target_irreps)  # one copy per channel, e.g. 0e+1o
        self.correlation = int(correlation)
        self.num_channels = int(num_channels)
        # buffer basis_{nu}_{k}: (paths, 2l+1, d, ..., d) maps A^⊗nu to the paths of target irrep k
        for nu in range(1, self.correlation + 1):
            irreps_out, change_of_basis = symmetric_power_basis(str(self.channel_irreps), nu)
            change_of_basis = change_of_basis.to(torch.get_default_dtype())
            for k, (_, target_ir) in enumerate(self.target_irreps):
                rows = [
                    change_of_basis[slice_].reshape(mul, ir.dim, *change_of_basis.shape[1:])
                    for (mul, ir), slice_ in zip(irreps_out, irreps_out.slices())
                    if ir == target_ir
                ]
                if not rows:
                    continue
                basis = torch.cat(rows, dim=0)
                self.register_buffer(f"basis_{nu}_{k}", basis, persistent=False)  # derived, rebuilt exactly
                weights = torch.randn(num_elements, basis.shape[0], num_channels) / basis.shape[0] ** 0.5
                self.register_parameter(f"weights_{nu}_{k}", torch.nn.Parameter(weights / nu))

    def forward(self, atomic_basis: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """atomic_basis (n, C, d), species (n,) element indices -> (n, target dim · C) e3nn layout.

        Atoms are processed element by element; per element the weights are first folded into
        the bases and the polynomial is evaluated Horner-style,
            B = (((W3 Q3) · A + W2 Q2) · A + W1 Q1) · A,
        so no (n, C, paths, ...) tensor of all symmetric powers is ever formed.
        """
        elements = torch.unique(species).tolist()
        if len(elements) == 1:  # e.g. an elemental crystal: no gather/scatter needed
            products = self._element_product(atomic_basis, elements[0])
        else:
            products = atomic_basis.new_zeros(atomic_basis.shape[0], self.num_channels, self.target_irreps.dim)
            for element in elements:
                atoms = torch.nonzero(species == element).squeeze(1)
                products[atoms] = self._element_product(atomic_basis[atoms], element)
        blocks = products.split([ir.dim for _, ir in self.target_irreps], dim=-1)
        return torch.cat([from_channels(block) for block in blocks], dim=-1)

    def _element_product(self, atomic_basis: torch.Tensor, element: int) -> torch.Tensor:
        """atomic_basis (n_e, C, d) of atoms of one element -> (n_e, C, target dim)."""
        num_atoms, num_channels, d = atomic_basis.shape
        outputs = []
        for k, (_, target_ir) in enumerate(self.target_irreps):
            partial = None  # (1 or n_e, C, m · d^(ν-1)) after folding in the order-ν term
            for nu in range(self.correlation, 0, -1):
                basis = getattr(self, f"basis_{nu}_{k}", None)
                if basis is not None:  # (paths, m, d^ν) · w (paths, C) -> (C, m · d^ν)
                    weights = getattr(self, f"weights_{nu}_{k}")[element]
                    folded = torch.einsum("px,pc->cx", basis.reshape(basis.shape[0], -1), weights)
                    partial = folded.unsqueeze(0) if partial is None else partial + folded
                if partial is not None:  # contract one index with A: d^ν -> d^(ν-1)
                    partial = self._contract_last_index(partial.reshape(partial.shape[0], num_channels, -1, d), atomic_basis)
            if partial is None:  # no power of A contains this irrep
                partial = atomic_basis.new_zeros(num_atoms, num_channels, target_ir.dim)
            outputs.append(partial.reshape(num_atoms, num_channels, target_ir.dim))
        return torch.cat(outputs, dim=-1)

    @staticmethod
    def _contract_last_index(tensor: torch.Tensor, atomic_basis: torch.Tensor) -> torch.Tensor:
        """tensor (1 or n, C, M, d), atomic_basis (n, C, d) -> (n, C, M): Σ_i tensor[..., i] A[..., i]."""
        if tensor.shape[0] == 1:  # shared by all atoms: one batched matmul per channel
            return torch.bmm(atomic_basis.transpose(0, 1), tensor[0].transpose(1, 2)).transpose(0, 1)
        return torch.matmul(tensor, atomic_basis.unsqueeze(-1)).squeeze(-1)


class MACEInteraction(torch.nn.Module):
    """One message-passing layer: two-body message A, product basis B, residual update."""

    def __init__(
        self,
        irreps_in: o3.Irreps,
        hidden_irreps: o3.Irreps,
        edge_irreps: o3.Irreps,
        num_elements: int,
        num_radial_basis: int,
        radial_mlp: Sequence[int],
        correlation: int,
        avg_num_neighbors: float,
        residual: bool,
        radial_spline: SplineRadial | None = None,
        normalized_radial_mlp: bool = False,
    ):
        super().__init__()
        num_channels = hidden_irreps[0].mul
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.message_irreps = channelwise_irreps(num_channels, edge_irreps.lmax)  # A: C × (0e+1o+...)
        element_irreps = o3.Irreps(f"{num_elements}x0e")

        self.linear_up = o3.Linear(irreps_in, irreps_in)
        tp_irreps, instructions = self._message_paths(irreps_in, edge_irreps, self.message_irreps)
        self.edge_tensor_product = o3.TensorProduct(
            irreps_in, edge_irreps, tp_irreps, instructions, shared_weights=False, internal_weights=False
        )
        # radial functions -> tensor-product weights: a radial MLP of the Bessel basis, or splines
        if radial_spline is None:
            self.radial_mlp = MLP(
                num_radial_basis, radial_mlp, self.edge_tensor_product.weight_numel, bias=False, normalized=normalized_radial_mlp
            )
        else:
            self.radial_spline = radial_spline
            if radial_spline.num_outputs != self.edge_tensor_product.weight_numel:
                raise ValueError(
                    f"MACEInteraction: radial_spline has {radial_spline.num_outputs} outputs, the tensor product needs "
                    f"{self.edge_tensor_product.weight_numel}"
                )
        self.linear_message = o3.Linear(tp_irreps, self.message_irreps)
        self.product = SymmetricContraction(
            edge_irreps, o3.Irreps([ir for _, ir in hidden_irreps]), num_channels, num_elements, correlation
        )
        self.linear_out = o3.Linear(hidden_irreps, hidden_irreps)
        self.self_connection = (
            o3.FullyConnectedTensorProduct(irreps_in, element_irreps, hidden_irreps) if residual else None
        )

    @staticmethod
    def _message_paths(irreps_in: o3.Irreps, edge_irreps: o3.Irreps, target: o3.Irreps):
        """Channel-wise ('uvu') paths h ⊗ Y -> irreps present in `target`."""
        tp_irreps, instructions = [], []
        for i, (mul, ir_node) in enumerate(irreps_in):
            for j, (_, ir_edge) in enumerate(edge_irreps):
                for ir_out in ir_node * ir_edge:
                    if ir_out in target:
                        instructions.append((i, j, len(tp_irreps), "uvu", True))
                        tp_irreps.append((mul, ir_out))
        return o3.Irreps(tp_irreps), instructions

    def forward(
        self,
        node_features: torch.Tensor,  # (n, irreps_in.dim)
        species: torch.Tensor,  # (n,) element indices
        species_one_hot: torch.Tensor,  # (n, num_elements)
        edge_index: torch.Tensor,  # (2, E)
        edge_harmonics: torch.Tensor,  # (E, edge_irreps.dim)
        edge_radial: torch.Tensor,  # (E, num_radial_basis) Bessel basis, or (E, M + 3) spline basis; zero beyond the cutoff
    ) -> torch.Tensor:
        sender, receiver = edge_index[0], edge_index[1]
        up = self.linear_up(node_features)
        if hasattr(self, "radial_spline"):
            weights = edge_radial @ self.radial_spline.full_coefficients()
        else:
            weights = self.radial_mlp(edge_radial)
        messages = self.edge_tensor_product(up[sender], edge_harmonics, weights)
        summed = messages.new_zeros(node_features.shape[0], messages.shape[1]).index_add_(0, receiver, messages)
        atomic_basis = self.linear_message(summed / self.avg_num_neighbors)
        product = self.product(to_channels(atomic_basis, self.message_irreps), species)
        updated = self.linear_out(product)
        if self.self_connection is not None:
            updated = updated + self.self_connection(node_features, species_one_hot)
        return updated


class MACEBackbone(Backbone):
    """MACE-like backbone: Bessel radial basis, e3nn spherical harmonics, symmetric contraction.

    Args:
        num_elements: size of the model's element list (species are indices into it).
        cutoff: radial cutoff, Å.
        condition_dim: width of the charge/spin `node_condition` (0: no conditioning input).
        num_channels: channels C of every hidden irrep (ignored if `hidden_irreps` is given).
        lmax: max l of the edge spherical harmonics (and so of the atomic basis A); also of the
            hidden features unless `hidden_irreps` sets fewer (MACE's usual choice is lmax=3
            with hidden "Cx0e+Cx1o").
        correlation: body order of the product basis minus one (1..3).
        num_layers: message-passing layers.
        num_radial_basis: Bessel functions.
        radial_polynomial_p: order of the polynomial cutoff envelope.
        radial_mlp: hidden widths of the MLP mapping radial basis -> tensor-product weights.
        normalized_radial_mlp: that MLP in e3nn's parameterisation (N(0, 1) weights divided by
            sqrt(fan-in), unit-second-moment SiLU; `mlip.nn.mlp`), as MACE's radial MLP.
        radial: "bessel_mlp" (MACE's Bessel basis × polynomial envelope -> radial MLP) or
            "spline" (one learnable cubic B-spline per tensor-product weight, Facet's radial
            functions from mlip.nn.spline; `num_radial_basis`, `radial_polynomial_p` and
            `radial_mlp` are then unused). For comparing the two radial designs on one architecture.
        num_spline_knots: knot intervals of each spline on [0, cutoff] (radial="spline").
        avg_num_neighbors: divides the neighbour sum (take it from dataset statistics).
        hidden_irreps: e.g. "32x0e+32x1o"; one multiplicity, natural parity, contains 0e, l <= lmax.
    """

    supports_edge_weights = True  # BackboneInputs.edge_weights scale each edge's messages

    def __init__(
        self,
        num_elements: int,
        cutoff: float,
        condition_dim: int = 0,
        num_channels: int = 32,
        lmax: int = 1,
        correlation: int = 3,
        num_layers: int = 2,
        num_radial_basis: int = 8,
        radial_polynomial_p: int = 5,
        radial_mlp: Sequence[int] = (64, 64),
        avg_num_neighbors: float = 1.0,
        hidden_irreps: str | None = None,
        radial: str = "bessel_mlp",
        num_spline_knots: int = 16,
        scalar_last_layer: bool = False,
        normalized_radial_mlp: bool = False,
    ):
        super().__init__()
        hidden = o3.Irreps(hidden_irreps) if hidden_irreps else channelwise_irreps(num_channels, lmax)
        hidden = hidden.sort().irreps.simplify()
        self._check_hidden_irreps(hidden, lmax)
        num_channels = hidden[0].mul
        if num_layers < 1:
            raise ValueError(f"MACEBackbone: num_layers must be >= 1, got {num_layers}")
        if avg_num_neighbors <= 0:
            raise ValueError(f"MACEBackbone: avg_num_neighbors must be positive, got {avg_num_neighbors}")
        if radial not in ("bessel_mlp", "spline"):
            raise ValueError(f"MACEBackbone: radial must be 'bessel_mlp' or 'spline', got {radial!r}")
        self.hidden_irreps = hidden
        self.num_channels = num_channels
        edge_irreps = o3.Irreps.spherical_harmonics(lmax)

        self.embedding = NodeEmbedding(num_elements, num_channels, condition_dim)
        self.radial = radial
        # the backbone's radial basis, evaluated once per forward pass for all layers
        self.radial_embedding = RadialEmbedding(cutoff, num_radial_basis, radial_polynomial_p) if radial == "bessel_mlp" else None
        self.spline_basis = SplineBasis(cutoff, num_spline_knots) if radial == "spline" else None
        self.spherical_harmonics = o3.SphericalHarmonics(edge_irreps, normalize=True, normalization="component")
        # Only the scalars of the last layer are read out (energy), so with `scalar_last_layer` it
        # computes its product basis and update for 0e alone, as MACE does: about a third less work
        # per step for lmax 1. The vector features (direct-force head) then come from the layer before.
        self.scalar_last_layer = bool(scalar_last_layer)
        scalars = o3.Irreps(f"{num_channels}x0e")
        self.layers = torch.nn.ModuleList(
            MACEInteraction(
                irreps_in=scalars if index == 0 else hidden,
                hidden_irreps=scalars if self.scalar_last_layer and index == num_layers - 1 else hidden,
                edge_irreps=edge_irreps,
                num_elements=num_elements,
                num_radial_basis=num_radial_basis,
                radial_mlp=radial_mlp,
                correlation=correlation,
                avg_num_neighbors=avg_num_neighbors,
                residual=index > 0,
                radial_spline=self._tensor_product_splines(index, hidden, edge_irreps, cutoff, num_spline_knots),
                normalized_radial_mlp=normalized_radial_mlp,
            )
            for index in range(num_layers)
        )
        self.num_scalar_features = num_layers * num_channels
        has_vectors = o3.Irrep("1o") in hidden and not (self.scalar_last_layer and num_layers == 1)
        self.num_vector_features = num_channels if has_vectors else 0

    def resolved_hyperparameters(self) -> dict:
        return {"num_channels": self.num_channels, "hidden_irreps": str(self.hidden_irreps)}

    def element_axes(self) -> dict[str, int]:
        """The shared embedding table plus every product-basis weight w[Z, path, channel] (axis 0)."""
        axes = super().element_axes()
        axes.update({name: 0 for name, _ in self.named_parameters() if re.fullmatch(r"layers\.\d+\.product\.weights_\d+_\d+", name)})
        return axes

    def expand_element_tensor(self, name, source_tensor, initial, source):
        """Also the residual self-connections, an e3nn tensor product of the features with the
        one-hot species (flat weights, one (C_in, num_elements, C_out) block per path).

        e3nn multiplies each path by a normalisation 1/sqrt(fan-in) that grows with the number of
        elements; the known elements' weights are rescaled by old/new coefficient, so the layer's
        output for them is unchanged (up to one rounding)."""
        match = re.fullmatch(r"layers\.(\d+)\.self_connection\.weight", name)
        if match is None:
            return super().expand_element_tensor(name, source_tensor, initial, source)
        layer = int(match.group(1))
        target_product = self.layers[layer].self_connection
        source_product = source.layers[layer].self_connection
        blocks, source_offset, target_offset = [], 0, 0
        for target_path, source_path in zip(target_product.instructions, source_product.instructions, strict=True):
            if not target_path.has_weight:
                continue
            source_size, target_size = math.prod(source_path.path_shape), math.prod(target_path.path_shape)
            block = initial[target_offset : target_offset + target_size].detach().clone().view(target_path.path_shape)
            known = source_tensor[source_offset : source_offset + source_size].view(source_path.path_shape)
            block[:, : known.shape[1], :] = known * (source_path.path_weight / target_path.path_weight)
            blocks.append(block.reshape(-1))
            source_offset, target_offset = source_offset + source_size, target_offset + target_size
        return torch.cat(blocks)

    def _tensor_product_splines(self, index, hidden, edge_irreps, cutoff, num_spline_knots) -> SplineRadial | None:
        """Layer `index`'s splines (one per tensor-product weight) when radial="spline", else None."""
        if self.radial != "spline":
            return None
        irreps_in = o3.Irreps(f"{self.num_channels}x0e") if index == 0 else hidden
        target = channelwise_irreps(self.num_channels, edge_irreps.lmax)
        _, instructions = MACEInteraction._message_paths(irreps_in, edge_irreps, target)
        weight_numel = sum(irreps_in[i].mul for i, *_ in instructions)  # 'uvu': C weights per path
        return SplineRadial(cutoff, weight_numel, num_spline_knots)

    @staticmethod
    def _check_hidden_irreps(hidden: o3.Irreps, lmax: int) -> None:
        if len({mul for mul, _ in hidden}) != 1:
            raise ValueError(f"MACEBackbone: hidden_irreps {hidden} must have one multiplicity for all irreps")
        if hidden[0].ir != o3.Irrep("0e"):
            raise ValueError(f"MACEBackbone: hidden_irreps {hidden} must contain scalars 0e")
        if hidden.lmax > lmax:
            raise ValueError(f"MACEBackbone: hidden_irreps {hidden} have l > lmax={lmax}")
        if any(ir.p != (-1) ** ir.l for _, ir in hidden):
            raise ValueError(f"MACEBackbone: hidden_irreps {hidden} must have natural parity (0e, 1o, 2e, ...)")

    def forward(self, inputs: BackboneInputs) -> NodeFeatures:
        species_one_hot = torch.nn.functional.one_hot(inputs.species, self.num_elements).to(inputs.edge_vectors.dtype)
        node_features = self.embedding(inputs.species, inputs.node_condition)  # (n, C): l=0 only

        distances = inputs.edge_vectors.norm(dim=-1)  # (E,) Å
        if self.radial_embedding is not None:
            edge_radial = self.radial_embedding(distances)  # (E, num_radial_basis)
        else:  # all layers' splines share the backbone's knots: one basis matrix (E, M + 3)
            edge_radial = self.spline_basis(distances)
        edge_harmonics = self.spherical_harmonics(inputs.edge_vectors)  # (E, edge_irreps.dim)
        if inputs.edge_weights is not None:  # messages are linear in Y: an edge of weight 0 sends nothing
            edge_harmonics = edge_harmonics * inputs.edge_weights[:, None]

        layer_scalars = []
        with_vectors = None  # the output of the last layer that has the hidden irreps' vectors
        for index, layer in enumerate(self.layers):
            node_features = layer(
                node_features, inputs.species, species_one_hot, inputs.edge_index, edge_harmonics, edge_radial
            )
            layer_scalars.append(node_features[:, : self.num_channels])  # 0e block comes first
            if not (self.scalar_last_layer and index == len(self.layers) - 1):
                with_vectors = node_features
        vectors = None if with_vectors is None or self.num_vector_features == 0 else self._vectors(with_vectors)
        return NodeFeatures(scalars=torch.cat(layer_scalars, dim=-1), vectors=vectors)

    def _vectors(self, node_features: torch.Tensor) -> torch.Tensor | None:
        """The 1o block of `node_features` (hidden irreps) as (n, C, 3) Cartesian vectors (e3nn's l=1 basis is x, y, z)."""
        for (mul, ir), slice_ in zip(self.hidden_irreps, self.hidden_irreps.slices()):
            if ir == o3.Irrep("1o"):
                return node_features[:, slice_].reshape(-1, mul, 3)
        return None
