"""Group averaging: a potential averaged over a fixed set of rotations at inference.

`GroupAveragedPotential(potential, n_rotations)`: E(x) = mean_k E(R_k x),
F(x) = mean_k R_kᵀ F(R_k x), σ = mean_k R_kᵀ σ(R_k x) R_k. Forces stay the exact negative
gradient of the averaged energy. This reduces (but over a finite set does not remove) the
symmetry error of a model that is not equivariant by construction (e.g. TransIP), at
n_rotations times the cost. `mlip.evaluation_equivariance` measures that error.
"""

from __future__ import annotations

import torch

from mlip.geometry import random_rotations, rotate_batch

__all__ = ["GroupAveragedPotential"]


class GroupAveragedPotential(torch.nn.Module):
    """A potential averaged over a fixed set of `n_rotations` rotations (see module doc).

    The rotations are uniform random (seeded) and stored as a buffer; `include_identity` makes
    the first one the identity. `forward(batch, compute_forces, compute_stress, training)`
    returns `energy`, `node_energy` and, on request, `forces`, `stress` and `virials`, averaged
    and rotated back into the frame of the input.
    """

    def __init__(self, potential: torch.nn.Module, n_rotations: int = 8, seed: int = 0, include_identity: bool = True):
        super().__init__()
        if n_rotations < 1:
            raise ValueError(f"GroupAveragedPotential: n_rotations must be >= 1, got {n_rotations}")
        self.potential = potential
        generator = torch.Generator().manual_seed(seed)
        rotations = random_rotations(n_rotations, torch.float64, generator=generator)
        if include_identity:
            rotations[0] = torch.eye(3, dtype=torch.float64)
        self.register_buffer("rotations", rotations)  # (K, 3, 3)

    def forward(self, batch, compute_forces: bool = True, compute_stress: bool = False, training: bool = False):
        count = batch.cell.reshape(-1, 3, 3).shape[0]
        node_batch = getattr(batch, "batch", None)
        node_batch = node_batch if node_batch is not None else torch.zeros(batch.pos.shape[0], dtype=torch.long, device=batch.pos.device)
        totals: dict[str, torch.Tensor] = {}
        for rotation in self.rotations.to(batch.pos.dtype):
            rotated = rotate_batch(batch, rotation.expand(count, 3, 3))
            outputs = self.potential(rotated, compute_forces=compute_forces, compute_stress=compute_stress, training=training)
            for name, value in self._rotated_back(outputs, rotation).items():
                totals[name] = totals[name] + value if name in totals else value
        return {name: value / len(self.rotations) for name, value in totals.items()}

    @staticmethod
    def _rotated_back(outputs: dict[str, torch.Tensor], rotation: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs computed on R x, expressed in the frame of x: vectors v -> Rᵀ v, tensors Rᵀ σ R."""
        back = {}
        for name, value in outputs.items():
            if name in ("forces", "direct_forces"):
                back[name] = value @ rotation.to(value.dtype)  # rows: (Rᵀ f)ᵀ = fᵀ R
            elif name in ("stress", "virials"):
                matrix = rotation.to(value.dtype)
                back[name] = matrix.T @ value @ matrix
            else:
                back[name] = value
        return back
