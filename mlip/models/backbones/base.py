"""The interface between `Potential` and every backbone.

A backbone turns a batch of neighbour graphs into per-atom features. It knows nothing about
energies, forces, units or reference energies: those live in `mlip.models.potential.Potential`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BackboneInputs:
    species: torch.Tensor  # (n_atoms,) long, index into the model's element list
    edge_index: torch.Tensor  # (2, n_edges) long: [0] = neighbour j (sender), [1] = centre i (receiver)
    edge_vectors: torch.Tensor  # (n_edges, 3) Å, r_j - r_i (+ periodic shift); differentiable
    batch: torch.Tensor  # (n_atoms,) long, graph index of each atom
    num_graphs: int
    node_condition: torch.Tensor | None = None  # (n_atoms, condition_dim) charge/spin embedding
    pos: torch.Tensor | None = None  # (n_atoms, 3) Å (strained when stress is computed)
    cell: torch.Tensor | None = None  # (n_graphs, 3, 3) Å (strained when stress is computed)
    shifts: torch.Tensor | None = None  # (n_edges, 3) integer cell-image multiples


@dataclass
class NodeFeatures:
    scalars: torch.Tensor  # (n_atoms, num_scalar_features), rotation invariant
    vectors: torch.Tensor | None = None  # (n_atoms, num_vector_features, 3), rotate with the structure


class Backbone(torch.nn.Module):
    """Base class: subclasses set `num_scalar_features` / `num_vector_features` and implement forward."""

    num_scalar_features: int
    num_vector_features: int = 0

    def forward(self, inputs: BackboneInputs) -> NodeFeatures:  # pragma: no cover - interface
        raise NotImplementedError
