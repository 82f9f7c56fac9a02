"""Radial functions of the interatomic distance: a Bessel basis and a smooth cutoff envelope.

Both take distances in Å. The product `RadialEmbedding` = Bessel(r) · envelope(r) goes to zero at
the cutoff together with its first and second derivatives, so energies, forces and their
derivatives stay continuous when a neighbour enters or leaves the cutoff sphere.
"""

from __future__ import annotations

import math

import torch


class BesselBasis(torch.nn.Module):
    """b_n(r) = sqrt(2 / r_c) · sin(n π r / r_c) / r,  n = 1..num_basis  (r, r_c in Å).

    The frequencies n π / r_c are trainable when `trainable=True` (as in DimeNet / NequIP).
    """

    def __init__(self, cutoff: float, num_basis: int = 8, trainable: bool = False):
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"BesselBasis: cutoff must be positive, got {cutoff} Å")
        self.cutoff = float(cutoff)
        self.num_basis = int(num_basis)
        frequencies = math.pi / self.cutoff * torch.arange(1, self.num_basis + 1, dtype=torch.get_default_dtype())
        if trainable:
            self.frequencies = torch.nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)
        self.prefactor = math.sqrt(2.0 / self.cutoff)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        """distances (E,) Å -> (E, num_basis)."""
        r = distances.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies * r) / r

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, num_basis={self.num_basis}"


def polynomial_envelope(reduced_distance: torch.Tensor, p: int) -> torch.Tensor:
    """The envelope u(d) of `PolynomialEnvelope` at reduced distances d = r / r_c (any shape)."""
    d = reduced_distance
    envelope = 1.0 - (p + 1) * (p + 2) / 2 * d**p + p * (p + 2) * d ** (p + 1) - p * (p + 1) / 2 * d ** (p + 2)
    return torch.where(d < 1.0, envelope, torch.zeros_like(envelope))


class PolynomialEnvelope(torch.nn.Module):
    """Smooth cutoff u(d), d = r / r_c (DimeNet's polynomial envelope of order p):

        u(d) = 1 - (p+1)(p+2)/2 · d^p + p(p+2) · d^(p+1) - p(p+1)/2 · d^(p+2)   for d < 1,
        u(d) = 0                                                                  for d >= 1.

    u(1) = u'(1) = u''(1) = 0, and u(0) = 1.
    """

    def __init__(self, cutoff: float, p: int = 5):
        super().__init__()
        if p < 2:
            raise ValueError(f"PolynomialEnvelope: p must be >= 2, got {p}")
        self.cutoff = float(cutoff)
        self.p = int(p)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        """distances (E,) Å -> (E,) envelope in [0, 1]."""
        return polynomial_envelope(distances / self.cutoff, self.p)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, p={self.p}"


class RadialEmbedding(torch.nn.Module):
    """Bessel basis times the polynomial envelope: distances (E,) Å -> (E, num_basis)."""

    def __init__(self, cutoff: float, num_basis: int = 8, polynomial_p: int = 5, trainable: bool = False):
        super().__init__()
        self.bessel = BesselBasis(cutoff, num_basis, trainable=trainable)
        self.envelope = PolynomialEnvelope(cutoff, polynomial_p)
        self.num_basis = int(num_basis)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        return self.bessel(distances) * self.envelope(distances).unsqueeze(-1)


def inner_switch(distances: torch.Tensor, inner_cutoffs: torch.Tensor, width: float) -> torch.Tensor:
    """Weight s(r) in [0, 1] of each pair for the learned model below its inner cutoff.

    s = 1 at and above the inner cutoff r_in (Å), s = 0 at and below r_in - width, and in between
    the quintic smoothstep s = t³ (6t² - 15t + 10), t = (r - r_in + width) / width, whose first and
    second derivatives vanish at both ends (energies, forces and their derivatives stay
    continuous). ``distances`` and ``inner_cutoffs`` (E,) Å; a pair with r_in = 0 is never switched.
    """
    if not width > 0:
        raise ValueError(f"inner_switch: width must be positive, got {width} Å")
    t = ((distances - inner_cutoffs + width) / width).clamp(0.0, 1.0)
    return t * t * t * (t * (6.0 * t - 15.0) + 10.0)
