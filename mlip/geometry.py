"""Geometry shared by every layer: edge vectors, rotations and rotated batches (torch only).

The lowest layer of mlip: models, data, training and evaluation import from here, and this
module imports nothing from mlip.

- `edge_vectors`: the only place edge vectors are computed from (pos, cell, shifts), so that
  forces (d/dpos) and stress (a strain applied to pos and cell) flow through one function.
- `random_rotations`, `axis_angle_rotations`, `quaternion_to_matrix`, `so3_generators`:
  rotation matrices acting on column vectors (r' = R r); row-vector arrays are multiplied by Rᵀ.
- `rotate_batch`: a rotated copy of a graph batch with its labels rotated consistently.
"""

from __future__ import annotations

import torch


# ------------------------------------------------------------------------------ edge vectors
def edge_vectors(
    pos: torch.Tensor,
    cell: torch.Tensor,
    edge_index: torch.Tensor,
    shifts: torch.Tensor,
    batch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Edge vectors pos[j] - pos[i] + shifts @ cell[graph of i], Å; shape (E, 3).

    Args:
        pos: (n, 3) positions of all atoms in the batch.
        cell: (G, 3, 3) cells (rows = lattice vectors) of the G graphs, or (3, 3) for one graph.
        edge_index: (2, E), row 0 = neighbour j, row 1 = centre i (indices into the batch).
        shifts: (E, 3) integer cell-image multiples (any dtype; cast to pos.dtype).
        batch: (n,) graph index of every atom; None means a single graph.

    Differentiable with respect to both `pos` and `cell`.
    """
    neighbour, centre = edge_index[0], edge_index[1]
    vectors = pos[neighbour] - pos[centre]  # (E, 3)
    if shifts.shape[0] == 0:
        return vectors
    cell = cell.reshape(-1, 3, 3)
    if batch is None:
        edge_cells = cell.expand(shifts.shape[0], 3, 3)  # (E, 3, 3)
    else:
        edge_cells = cell[batch[centre]]  # (E, 3, 3)
    periodic_offsets = torch.einsum("ek,ekc->ec", shifts.to(pos.dtype), edge_cells)
    return vectors + periodic_offsets


# so(3) generators: (G_k)_{ij} = -ε_kij, i.e. G_k v = e_k × v (rotation about axis k).
_GENERATORS = torch.tensor(
    [
        [[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
        [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]],
        [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ]
)


# ------------------------------------------------------------------------------------ rotations
def random_rotations(
    n: int, dtype: torch.dtype = torch.float32, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """n rotation matrices (n, 3, 3), uniform (Haar) on SO(3): normalised Gaussian quaternions."""
    quaternions = torch.randn(n, 4, dtype=torch.float64, generator=generator)
    quaternions = quaternions / quaternions.norm(dim=-1, keepdim=True)
    return quaternion_to_matrix(quaternions).to(dtype=dtype, device=device)


def quaternion_to_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4) as (w, x, y, z) -> rotation matrices (..., 3, 3)."""
    w, x, y, z = quaternions.unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def axis_angle_rotations(axes: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotations (..., 3, 3) by `angles` (...,) radians about `axes` (..., 3) (normalised here)."""
    axes = axes / axes.norm(dim=-1, keepdim=True)
    generators = torch.einsum("...k,kij->...ij", axes, _GENERATORS.to(axes))
    return torch.linalg.matrix_exp(angles[..., None, None] * generators)


def so3_generators(dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The three infinitesimal rotations (3, 3, 3) about x, y and z."""
    return _GENERATORS.to(dtype=dtype, device=device)


# ------------------------------------------------------------------------------------ batches
def graph_index(batch) -> torch.Tensor:
    """(n,) graph index of every atom; zeros for a single `Data`."""
    index = getattr(batch, "batch", None)
    return index if index is not None else torch.zeros(batch.pos.shape[0], dtype=torch.long, device=batch.pos.device)


def num_graphs(batch) -> int:
    return int(batch.cell.reshape(-1, 3, 3).shape[0])


def rotate_batch(batch, rotations: torch.Tensor):
    """A copy of `batch` with structure g rotated by rotations[g] (G, 3, 3).

    Rotates positions, cells (lattice vectors are rows), force labels and stress labels
    (σ' = R σ Rᵀ); integer cell shifts, energies and masks are unchanged. NaN labels stay NaN.
    Differentiable with respect to `rotations`.
    """
    count = num_graphs(batch)
    if rotations.shape != (count, 3, 3):
        raise ValueError(f"rotate_batch: need rotations of shape ({count}, 3, 3), got {tuple(rotations.shape)}")
    rotated = batch.clone()
    atom_rotations = rotations[graph_index(batch)]  # (n, 3, 3)
    rotated.pos = torch.einsum("nij,nj->ni", atom_rotations.to(batch.pos.dtype), batch.pos)
    rotated.cell = torch.einsum("gij,gaj->gai", rotations.to(batch.cell.dtype), batch.cell.reshape(-1, 3, 3))
    if getattr(batch, "forces", None) is not None:
        rotated.forces = torch.einsum("nij,nj->ni", atom_rotations.to(batch.forces.dtype), batch.forces)
    if getattr(batch, "stress", None) is not None:
        matrices = rotations.to(batch.stress.dtype)
        rotated.stress = matrices @ batch.stress.reshape(-1, 3, 3) @ matrices.transpose(-1, -2)
    return rotated
