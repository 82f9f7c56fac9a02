"""TransIP-style backbone: a plain (non-equivariant) transformer over atom tokens.

After Elhag et al., "Learning Inter-Atomic Potentials without Explicit Equivariance" (2025): the
architecture does *not* build in rotational symmetry; it is learned instead, through a loss on
the embeddings (`mlip.train.symmetry.LearnedEquivarianceLoss`), by augmentation, or restored at
inference by group averaging (`mlip.evaluation_equivariance.GroupAveragedPotential`).
See docs/transip.md.

Tokens and geometry:

    x_i   = E[Z_i] + W_c c_i + W_n Σ_j u(r_ij) fourier(r_ij)                      (local environment)
            [+ W_p fourier(r_i - mean_g r), molecules only, if use_positions]     (centred positions)
    e_ij  = [ radial(|r_ij|) ; u(r_ij) · fourier(r_ij) ]                            (edge features)

`fourier(v) = [sin 2π vB ; cos 2π vB]` with a fixed random frequency matrix B (3, num_fourier):
it sees Cartesian directions, so it is *not* rotation invariant; u is the cutoff envelope.
Everything uses relative vectors or per-structure centred positions, so the model is exactly
translation invariant. The centred-position term is off by default: it makes the energy
non-local (atoms beyond the cutoff shift each other's tokens through the mean, so two distant
fragments do not add up) and is skipped for periodic structures (non-zero cell), where wrapped
positions are not a translation-invariant input.

Each block is pre-norm:  x <- x + Attention(LN x);  x <- x + MLP(LN x).  Attention is sparse
over each centre's incoming graph edges plus the centre itself:

    l_ij = q_i·k_j / √d + W_b e_ij + W_v r_ij          (W_v r_ij: raw edge vector -> heads)
    a_ij = u(r_ij) exp(l_ij) / (exp(l_ii) + Σ_k u(r_ik) exp(l_ik))
    out_i = a_ii v_i + Σ_j a_ij (v_j + W_e e_ij)

with the cutoff envelope u, so an atom entering or leaving the cutoff sphere changes the
attention smoothly (forces stay continuous). An atom without neighbours attends only to itself.
"""

from __future__ import annotations

import math

import torch
from mlip.models.backbones.base import Backbone, BackboneInputs, NodeEmbedding, NodeFeatures
from mlip.nn.radial import PolynomialEnvelope, RadialEmbedding

def scatter_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Σ of the rows of ``values`` (E, ...) with the same ``index`` (E,) -> (size, ...); zeros where none."""
    return values.new_zeros(size, *values.shape[1:]).index_add(0, index, values)


def scatter_max(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Max of the rows of ``values`` (E, H) with the same ``index`` -> (size, H); -inf where none."""
    empty = values.new_full((size, *values.shape[1:]), float("-inf"))
    return empty.scatter_reduce(0, index[:, None].expand_as(values), values, reduce="amax", include_self=True)


FOURIER_SEED = 1729  # frequencies are a buffer (saved with the weights); the seed makes rebuilds identical


class FourierFeatures(torch.nn.Module):
    """Random Fourier features of Cartesian vectors (Å): (..., 3) -> (..., 2 · num_fourier).

    Frequencies ~ N(0, 1/length²) (1/Å), fixed at construction.
    """

    def __init__(self, num_fourier: int, length: float):
        super().__init__()
        generator = torch.Generator().manual_seed(FOURIER_SEED)
        frequencies = torch.randn(3, num_fourier, generator=generator, dtype=torch.float64) / length
        self.register_buffer("frequencies", frequencies.to(torch.get_default_dtype()))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        phases = 2 * math.pi * vectors @ self.frequencies  # (..., num_fourier)
        return torch.cat([torch.sin(phases), torch.cos(phases)], dim=-1)


class EdgeAttention(torch.nn.Module):
    """Multi-head attention of each centre over itself and its incoming edges (see module doc)."""

    def __init__(self, dim: int, heads: int, edge_dim: int):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"TransIPBackbone: dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.query_key_value = torch.nn.Linear(dim, 3 * dim)
        self.edge_bias = torch.nn.Linear(edge_dim, heads, bias=False)
        self.direction_bias = torch.nn.Linear(3, heads, bias=False)  # non-equivariant on purpose
        self.edge_value = torch.nn.Linear(edge_dim, dim, bias=False)
        self.output = torch.nn.Linear(dim, dim)

    def forward(self, tokens, edge_index, edge_features, edge_vectors, edge_envelope) -> torch.Tensor:
        num_atoms = tokens.shape[0]
        neighbour, centre = edge_index[0], edge_index[1]
        query, key, value = self.query_key_value(tokens).view(num_atoms, 3, self.heads, self.head_dim).unbind(1)
        scale = 1.0 / math.sqrt(self.head_dim)

        self_logits = (query * key).sum(-1) * scale  # (n, H)
        edge_logits = (query[centre] * key[neighbour]).sum(-1) * scale  # (E, H)
        edge_logits = edge_logits + self.edge_bias(edge_features) + self.direction_bias(edge_vectors)

        # Subtracting a per-centre constant leaves the weights unchanged; it only avoids overflow.
        largest = torch.maximum(self_logits, scatter_max(edge_logits, centre, num_atoms)).detach()
        self_weights = torch.exp(self_logits - largest)  # (n, H)
        edge_weights = edge_envelope[:, None] * torch.exp(edge_logits - largest[centre])  # (E, H)
        normaliser = self_weights + scatter_sum(edge_weights, centre, num_atoms)

        edge_values = value[neighbour] + self.edge_value(edge_features).view(-1, self.heads, self.head_dim)
        messages = scatter_sum(edge_weights[..., None] * edge_values, centre, num_atoms)
        attended = (self_weights[..., None] * value + messages) / normaliser[..., None]  # (n, H, d)
        return self.output(attended.reshape(num_atoms, -1))


class TransformerBlock(torch.nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, edge_dim: int):
        super().__init__()
        self.attention_norm = torch.nn.LayerNorm(dim)
        self.attention = EdgeAttention(dim, heads, edge_dim)
        self.mlp_norm = torch.nn.LayerNorm(dim)
        hidden = round(dim * mlp_ratio)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, dim))

    def forward(self, tokens, edge_index, edge_features, edge_vectors, edge_envelope) -> torch.Tensor:
        tokens = tokens + self.attention(self.attention_norm(tokens), edge_index, edge_features, edge_vectors, edge_envelope)
        return tokens + self.mlp(self.mlp_norm(tokens))


class TransIPBackbone(Backbone):
    """Non-equivariant transformer backbone; returns per-atom embeddings (n, dim) and no vectors.

    Args:
        num_elements: size of the model's element list.
        cutoff: Å, radius of the attention neighbourhood (the graph cutoff).
        condition_dim: width of the charge/spin `node_condition` (0: none).
        dim: token width (= `num_scalar_features`).
        depth: transformer blocks.
        heads: attention heads (must divide dim).
        mlp_ratio: hidden width of each block's MLP, relative to dim.
        num_fourier: random Fourier frequencies for positions and edge vectors (and radial basis size).
        avg_num_neighbors: accepted for interface compatibility; attention is normalised, so unused.
        use_positions: add Fourier features of centred positions to the tokens of molecules
            (non-local; see the module docstring).
        position_length: Å, length scale of those position features.
    """

    supports_edge_weights = True  # BackboneInputs.edge_weights scale each edge's messages

    def __init__(
        self,
        num_elements: int,
        cutoff: float,
        condition_dim: int = 0,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        num_fourier: int = 16,
        avg_num_neighbors: float | None = None,
        use_positions: bool = False,
        position_length: float = 4.0,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"TransIPBackbone: depth must be >= 1, got {depth}")
        self.num_scalar_features = int(dim)
        self.num_vector_features = 0
        self.use_positions = bool(use_positions)

        self.embedding = NodeEmbedding(num_elements, dim, condition_dim)
        self.radial = RadialEmbedding(cutoff, num_basis=num_fourier)
        self.envelope = PolynomialEnvelope(cutoff)
        self.edge_fourier = FourierFeatures(num_fourier, cutoff)
        self.environment_projection = torch.nn.Linear(2 * num_fourier, dim, bias=False)
        if self.use_positions:
            self.position_fourier = FourierFeatures(num_fourier, position_length)
            self.position_projection = torch.nn.Linear(2 * num_fourier, dim, bias=False)
        edge_dim = 3 * num_fourier
        self.blocks = torch.nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, edge_dim) for _ in range(depth))
        self.final_norm = torch.nn.LayerNorm(dim)

    def forward(self, inputs: BackboneInputs) -> NodeFeatures:
        return NodeFeatures(scalars=self.embed(inputs), vectors=None)

    def embed(self, inputs: BackboneInputs) -> torch.Tensor:
        """Per-atom embeddings (n, dim): what the energy readout and the equivariance loss see."""
        distances = inputs.edge_vectors.norm(dim=-1)  # (E,) Å
        envelope = self.envelope(distances)  # (E,)
        radial = self.radial(distances)  # (E, num_fourier), zero at the cutoff
        if inputs.edge_weights is not None:  # every edge term carries the envelope: weight 0 = no edge
            envelope = envelope * inputs.edge_weights
            radial = radial * inputs.edge_weights[:, None]
        directional = envelope[:, None] * self.edge_fourier(inputs.edge_vectors)  # (E, 2 · num_fourier)
        edge_features = torch.cat([radial, directional], dim=-1)  # (E, 3 · num_fourier)
        environment = scatter_sum(directional, inputs.edge_index[1], inputs.species.shape[0])
        tokens = self.initial_tokens(inputs) + self.environment_projection(environment)
        for block in self.blocks:
            tokens = block(tokens, inputs.edge_index, edge_features, inputs.edge_vectors, envelope)
        return self.final_norm(tokens)

    def initial_tokens(self, inputs: BackboneInputs) -> torch.Tensor:
        tokens = self.embedding(inputs.species, inputs.node_condition)  # (n, dim)
        if self.use_positions and inputs.pos is not None:
            tokens = tokens + self.position_projection(self.position_fourier(self.centred_positions(inputs)))
        return tokens

    @staticmethod
    def centred_positions(inputs: BackboneInputs) -> torch.Tensor:
        """pos - per-structure mean (n, 3) Å; zero for atoms of structures with a non-zero cell."""
        pos, batch, num_graphs = inputs.pos, inputs.batch, inputs.num_graphs
        counts = scatter_sum(torch.ones_like(pos[:, 0]), batch, num_graphs)
        means = scatter_sum(pos, batch, num_graphs) / counts.clamp(min=1)[:, None]
        centred = pos - means[batch]
        if inputs.cell is None:
            return centred
        has_cell = inputs.cell.reshape(-1, 3, 3).abs().amax(dim=(1, 2)) > 0  # (G,)
        return torch.where(has_cell[batch][:, None], torch.zeros_like(centred), centred)
