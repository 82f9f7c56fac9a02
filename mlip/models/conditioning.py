"""Learned embedding of a structure's total charge and spin multiplicity.

Each graph gets one vector c_g (condition_dim,), broadcast to its atoms as `node_condition`
(n_atoms, condition_dim); backbones add a linear map of it to their initial node features.

    c_g = MLP([ e_q(Q_g) ; e_s(M_g) ])
    e_q(Q) = Embedding(clip(Q, -max_charge, max_charge)) + (Q - clip(Q)) · w_q
    e_s(M) = Embedding(clip(M, 1, max_multiplicity))      + (M - clip(M)) · w_s

Charges outside [-max_charge, max_charge] (and multiplicities above max_multiplicity) are not
an error: they reuse the embedding of the nearest in-range value plus a learned linear term in the excess.
"""

from __future__ import annotations

import torch

from mlip.nn.mlp import MLP


class ChargeSpinEmbedding(torch.nn.Module):
    def __init__(self, condition_dim: int = 16, max_charge: int = 4, max_multiplicity: int = 6):
        super().__init__()
        if condition_dim < 1:
            raise ValueError(f"ChargeSpinEmbedding: condition_dim must be >= 1, got {condition_dim}")
        self.condition_dim = int(condition_dim)
        self.max_charge = int(max_charge)
        self.max_multiplicity = int(max_multiplicity)
        self.charge_embedding = torch.nn.Embedding(2 * self.max_charge + 1, condition_dim)
        self.spin_embedding = torch.nn.Embedding(self.max_multiplicity, condition_dim)
        self.charge_slope = torch.nn.Parameter(torch.randn(condition_dim) / condition_dim**0.5)
        self.spin_slope = torch.nn.Parameter(torch.randn(condition_dim) / condition_dim**0.5)
        self.mix = MLP(2 * condition_dim, [condition_dim], condition_dim)

    def forward(self, charge: torch.Tensor, spin: torch.Tensor) -> torch.Tensor:
        """charge (G,) e, spin (G,) multiplicity 2S+1 (integers) -> (G, condition_dim)."""
        charge = charge.reshape(-1).long()
        spin = spin.reshape(-1).long()
        if bool((spin < 1).any()):
            raise ValueError(f"ChargeSpinEmbedding: spin multiplicity must be >= 1, got {spin.tolist()}")
        dtype = self.charge_slope.dtype
        clipped_charge = charge.clamp(-self.max_charge, self.max_charge)
        clipped_spin = spin.clamp(1, self.max_multiplicity)
        charge_vector = self.charge_embedding(clipped_charge + self.max_charge) + (
            (charge - clipped_charge).to(dtype).unsqueeze(-1) * self.charge_slope
        )
        spin_vector = self.spin_embedding(clipped_spin - 1) + (
            (spin - clipped_spin).to(dtype).unsqueeze(-1) * self.spin_slope
        )
        return self.mix(torch.cat([charge_vector, spin_vector], dim=-1))
