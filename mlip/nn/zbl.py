"""ZBL short-range repulsion: a fixed physical pair prior added to a learned potential.

The Ziegler-Biersack-Littmark universal screened nuclear repulsion between atoms i and j at
distance r (Å) is

    E_ZBL(r) = k_e Z_i Z_j / r · φ(r / a),     a = 0.8854 a_0 / (Z_i^0.23 + Z_j^0.23)
    φ(x) = 0.18175 e^(-3.19980 x) + 0.50986 e^(-0.94229 x) + 0.28022 e^(-0.40290 x)
           + 0.02817 e^(-0.20162 x)

with k_e = e² / (4π ε_0) = 14.399645 eV·Å and a_0 the Bohr radius. At bonding distances
E_ZBL is still several eV, which the learned part would have to cancel; so the term is
switched off smoothly at a pair cutoff r_c = radius_scale · (R_cov,i + R_cov,j) (ASE's covalent
radii, never beyond the model cutoff) by the polynomial envelope of `mlip.nn.radial`, which
vanishes at r_c with its first and second derivatives. Below ~0.5 Å the term dominates, so the
energy rises steeply however the learned part extrapolates. With `Potential`'s inner cutoff, a
pair's r_c is at least its inner cutoff r_in, so the repulsion still acts where the learned
model no longer sees the pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ase.data import covalent_radii

from mlip.nn.radial import polynomial_envelope

COULOMB_CONSTANT = 14.399645  # e² / (4π ε_0) in eV·Å
BOHR_RADIUS = 0.52917721  # Å
SCREENING_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
SCREENING_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)


def zbl_pair_energy(distance: torch.Tensor, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
    """Unscreened-by-cutoff ZBL energy (eV) of pairs at ``distance`` (Å); all tensors (E,)."""
    screening_length = 0.8854 * BOHR_RADIUS / (z_i**0.23 + z_j**0.23)  # (E,) Å
    x = distance / screening_length
    screening = sum(c * torch.exp(-b * x) for c, b in zip(SCREENING_COEFFICIENTS, SCREENING_EXPONENTS))
    return COULOMB_CONSTANT * z_i * z_j / distance * screening


class ZBLRepulsion(torch.nn.Module):
    """Per-atom ZBL energies (eV) from a neighbour graph; no trainable parameters.

    Args:
        elements: atomic numbers of the model's species (species index = position).
        cutoff: the model's cutoff, Å; no pair cutoff exceeds it.
        radius_scale: pair cutoff = radius_scale × sum of covalent radii.
        envelope_p: order of the polynomial envelope.
        minimum_pair_cutoffs: optional (S, S) Å, a lower bound of each species pair's cutoff
            (`Potential`'s inner cutoffs).
    """

    def __init__(self, elements: Sequence[int], cutoff: float, radius_scale: float = 1.0, envelope_p: int = 6,
                 minimum_pair_cutoffs: torch.Tensor | None = None):
        super().__init__()
        if radius_scale <= 0:
            raise ValueError(f"ZBLRepulsion: radius_scale must be positive, got {radius_scale}")
        self.cutoff = float(cutoff)
        self.radius_scale = float(radius_scale)
        self.envelope_p = int(envelope_p)
        elements = [int(z) for z in elements]
        self.register_buffer("atomic_numbers", torch.tensor(elements, dtype=torch.get_default_dtype()), persistent=False)
        radii = torch.tensor([covalent_radii[z] for z in elements], dtype=torch.get_default_dtype())
        self.register_buffer("covalent_radii", radii, persistent=False)  # (S,) Å
        if minimum_pair_cutoffs is None:
            minimum_pair_cutoffs = torch.zeros(len(elements), len(elements))
        self.register_buffer("minimum_pair_cutoffs", minimum_pair_cutoffs.clone(), persistent=False)  # (S, S) Å

    def pair_cutoffs(self, species_i: torch.Tensor, species_j: torch.Tensor) -> torch.Tensor:
        """(E,) Å: where the repulsion of each pair has vanished."""
        summed = self.covalent_radii[species_i] + self.covalent_radii[species_j]
        reach = torch.maximum(self.radius_scale * summed, self.minimum_pair_cutoffs[species_i, species_j])
        return reach.clamp(max=self.cutoff)

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        """species (n,), edge_index (2, E) [sender j, receiver i], edge_vectors (E, 3) Å -> (n,) eV.

        Each pair appears as two directed edges; each gives half the pair energy to its receiver.
        """
        sender, receiver = edge_index
        distance = torch.linalg.norm(edge_vectors, dim=-1)  # (E,) Å
        z_j = self.atomic_numbers[species[sender]].to(distance.dtype)
        z_i = self.atomic_numbers[species[receiver]].to(distance.dtype)
        pair_cutoff = self.pair_cutoffs(species[receiver], species[sender]).to(distance.dtype)
        inside = distance < pair_cutoff
        safe_distance = torch.where(inside, distance, pair_cutoff)  # no 1/r of far pairs in the graph
        energy = zbl_pair_energy(safe_distance, z_i, z_j) * polynomial_envelope(safe_distance / pair_cutoff, self.envelope_p)
        energy = torch.where(inside, energy, torch.zeros_like(energy))
        return distance.new_zeros(species.shape[0]).index_add(0, receiver, 0.5 * energy)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, radius_scale={self.radius_scale}, envelope_p={self.envelope_p}"
