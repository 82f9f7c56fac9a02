"""How far a potential is from rotational symmetry, and group averaging to bring it closer.

For any `Potential`-like model (called as `model(batch, compute_forces=True)` and returning
`energy` (G,) eV and `forces` (n, 3) eV/Å), over orbits of rotations R(θ, axis):

    energy error(θ) = |E(R x) - E(x)|                         eV per structure
    force error(θ)  = RMS_i |F_i(R x) - R F_i(x)|              eV/Å over the atoms of a structure

as a function of the rotation angle θ about random axes (a NERO-style plot: an exactly
invariant model gives a flat zero line; `plot_equivariance_errors` writes it as a PNG), and the
energy standard deviation over uniformly random rotations.

`GroupAveragedPotential` (averaging a model over a fixed set of rotations at inference, to bring
it closer to symmetry) lives beside the models, in `mlip.models.group_average`, and is
re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from mlip.files import atomic_path
from mlip.geometry import axis_angle_rotations, random_rotations, rotate_batch
from mlip.models.group_average import GroupAveragedPotential

__all__ = [
    "EquivarianceErrors",
    "GroupAveragedPotential",
    "equivariance_errors",
    "orbit_energy_std",
    "plot_equivariance_errors",
]


@dataclass
class EquivarianceErrors:
    """Errors vs rotation angle, averaged over structures and random axes.

    angles: (A,) radians. energy_error: (A,) mean |ΔE| eV. force_error: (A,) mean of the
    per-structure force RMS error, eV/Å. energy_error_per_atom: (A,) mean |ΔE|/n_atoms eV/atom.
    """

    angles: np.ndarray
    energy_error: np.ndarray
    energy_error_per_atom: np.ndarray
    force_error: np.ndarray

    @property
    def max_energy_error(self) -> float:
        return float(self.energy_error.max())

    @property
    def max_force_error(self) -> float:
        return float(self.force_error.max())


def _predict(model: torch.nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        outputs = model(batch, compute_forces=True, compute_stress=False)
    return outputs["energy"].detach(), outputs["forces"].detach()


def equivariance_errors(
    model: torch.nn.Module,
    graphs: Sequence,
    num_angles: int = 13,
    num_axes: int = 4,
    seed: int = 0,
) -> EquivarianceErrors:
    """Energy and force symmetry errors of `model` over rotations about `num_axes` random axes.

    `graphs`: torch_geometric `Data` objects (fields of docs/design.md, labels not needed) in the
    model's dtype. Angles are evenly spaced in [0, π] (θ = 0 is the reference: error 0).
    Each (structure, axis) orbit is evaluated as one batch of `num_angles` rotated copies.
    """
    if not graphs:
        raise ValueError("equivariance_errors: no structures given")
    generator = torch.Generator().manual_seed(seed)
    angles = torch.linspace(0.0, math.pi, num_angles, dtype=torch.float64)
    energy_errors, per_atom_errors, force_errors = [], [], []
    for graph in graphs:
        dtype = graph.pos.dtype
        num_atoms = graph.pos.shape[0]
        orbit = Batch.from_data_list([graph] * num_angles)
        for _ in range(num_axes):
            axis = torch.randn(3, dtype=torch.float64, generator=generator)
            rotations = axis_angle_rotations(axis.expand(num_angles, 3), angles).to(dtype=dtype, device=graph.pos.device)
            energies, forces = _predict(model, rotate_batch(orbit, rotations))
            forces = forces.reshape(num_angles, num_atoms, 3)
            reference_forces = torch.einsum("aij,nj->ani", rotations, forces[0])  # R F(x), from θ = 0
            energy_error = (energies - energies[0]).abs().double()
            energy_errors.append(energy_error)
            per_atom_errors.append(energy_error / max(num_atoms, 1))
            force_errors.append((forces - reference_forces).pow(2).sum(-1).mean(-1).sqrt().double())
    return EquivarianceErrors(
        angles=angles.numpy(),
        energy_error=torch.stack(energy_errors).mean(0).cpu().numpy(),
        energy_error_per_atom=torch.stack(per_atom_errors).mean(0).cpu().numpy(),
        force_error=torch.stack(force_errors).mean(0).cpu().numpy(),
    )


def orbit_energy_std(model: torch.nn.Module, graphs: Sequence, num_rotations: int = 16, seed: int = 0) -> float:
    """Mean over structures of the energy standard deviation (eV) over uniform random rotations."""
    generator = torch.Generator().manual_seed(seed)
    deviations = []
    for graph in graphs:
        orbit = Batch.from_data_list([graph] * num_rotations)
        rotations = random_rotations(num_rotations, graph.pos.dtype, graph.pos.device, generator)
        with torch.no_grad():
            energies = model(rotate_batch(orbit, rotations), compute_forces=False)["energy"]
        deviations.append(float(energies.double().std()))
    return float(np.mean(deviations))


def plot_equivariance_errors(results: Mapping[str, EquivarianceErrors], path: str | Path) -> Path:
    """PNG with energy and force error vs rotation angle for each named model; returns the path.

    Written to a temporary file and renamed, so a reader never sees a half-written image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    figure, (energy_axes, force_axes) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, errors in results.items():
        degrees = np.degrees(errors.angles)
        energy_axes.plot(degrees, errors.energy_error_per_atom * 1000, marker="o", markersize=3, label=name)
        force_axes.plot(degrees, errors.force_error * 1000, marker="o", markersize=3, label=name)
    energy_axes.set(xlabel="rotation angle (deg)", ylabel="|E(Rx) - E(x)| (meV/atom)", title="energy invariance")
    force_axes.set(xlabel="rotation angle (deg)", ylabel="RMS |F(Rx) - R F(x)| (meV/Å)", title="force equivariance")
    for axes in (energy_axes, force_axes):
        axes.set_yscale("symlog", linthresh=1e-6)
        axes.grid(alpha=0.3)
    force_axes.legend(fontsize=8)
    figure.tight_layout()
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=120)
    finally:
        plt.close(figure)
    return path
