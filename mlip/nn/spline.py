"""Learnable cubic B-spline radial functions (Facet's replacement for radial MLPs).

A radial function f(r) on [0, r_c] (Å) is a uniform cubic B-spline with `num_intervals`
knot intervals of width h = r_c / num_intervals:

    f(r) = Σ_k c_k B_3(r / h - k + 1)  ,  k = 0 .. num_intervals + 2,

where B_3 is the cardinal cubic B-spline. Inside knot interval s (s h <= r < (s+1) h, local
coordinate u = r / h - s in [0, 1)) only four coefficients contribute:

    f(r) = [c_s (1-u)^3 + c_{s+1} (3u^3 - 6u^2 + 4) + c_{s+2} (-3u^3 + 3u^2 + 3u + 1) + c_{s+3} u^3] / 6.

The last three coefficients are fixed at zero, so f, f' and f'' all vanish at r = r_c and the
function continues as exactly zero beyond the cutoff: f is C2 everywhere, including at r_c.

Evaluation is a lookup: each edge finds its interval s and the four local basis values b_k(u)
(a fixed cubic in u), O(1) per edge. They are contracted with the coefficients either by one
thin GEMM against a (E, num_intervals + 3) basis matrix with four non-zeros per row (`forward`,
the fast path) or by gathering the interval's row of a per-interval polynomial table and
applying Horner's rule (`forward_by_gather`, the textbook form, kept as the reference of the tests
and of the timing script). No radial
MLP. The result is an ordinary piecewise polynomial of r, so autograd gives dE/dr and second
derivatives (double backward) for force training.
"""

from __future__ import annotations

import torch

# Rows: coefficient index offset k = 0..3 within the interval; columns: power of u (1, u, u^2, u^3).
# b_k(u) = Σ_p _BSPLINE_POWER_MATRIX[k, p] u^p / 6.
_BSPLINE_POWER_MATRIX = [
    [1.0, -3.0, 3.0, -1.0],  # (1-u)^3
    [4.0, 0.0, -6.0, 3.0],  # 3u^3 - 6u^2 + 4
    [1.0, 3.0, 3.0, -3.0],  # -3u^3 + 3u^2 + 3u + 1
    [0.0, 0.0, 0.0, 1.0],  # u^3
]


class SplineBasis(torch.nn.Module):
    """The uniform cubic B-spline basis on [0, r_c] with `num_intervals` knot intervals (no parameters).

    `forward(r)` (E,) Å -> (E, num_intervals + 3), four non-zeros per row, zero rows beyond r_c.
    Every spline with the same knots is `SplineBasis(r) @ coefficients`, so a backbone builds one
    basis (its own module) and evaluates it once per forward pass for all of its layers.
    """

    def __init__(self, cutoff: float, num_intervals: int = 16):
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"SplineBasis: cutoff must be positive, got {cutoff} Å")
        if num_intervals < 1:
            raise ValueError(f"SplineBasis: num_intervals must be >= 1, got {num_intervals}")
        self.cutoff = float(cutoff)
        self.num_intervals = int(num_intervals)
        self.interval_width = self.cutoff / self.num_intervals  # Å
        self.register_buffer(
            "power_matrix", torch.tensor(_BSPLINE_POWER_MATRIX, dtype=torch.get_default_dtype()), persistent=False
        )

    @property
    def size(self) -> int:
        """Columns of the basis matrix: num_intervals + 3."""
        return self.num_intervals + 3

    def locate(self, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Knot interval s (E,) long, local coordinate u (E,) in [0, 1), and the inside-cutoff mask (E,)."""
        scaled = distances / self.interval_width
        interval = scaled.detach().floor().clamp(0, self.num_intervals - 1).long()
        u = scaled - interval.to(scaled.dtype)  # differentiable in r
        return interval, u, distances < self.cutoff

    def local_basis(self, u: torch.Tensor) -> torch.Tensor:
        """u (E,) -> (E, 4): the four non-zero B-spline values b_k(u) of the interval."""
        powers = torch.stack([torch.ones_like(u), u, u * u, u * u * u], dim=-1)  # (E, 4)
        return powers @ (self.power_matrix.to(u.dtype) / 6.0).T

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        """distances (E,) Å -> (E, num_intervals + 3) basis matrix (zero row beyond r_c)."""
        interval, u, inside = self.locate(distances)
        columns = interval.unsqueeze(-1) + torch.arange(4, device=interval.device)  # (E, 4)
        local = self.local_basis(u) * inside.unsqueeze(-1).to(u.dtype)  # zero beyond the cutoff
        return u.new_zeros(u.shape[0], self.size).scatter(1, columns, local)  # (E, M + 3)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, num_intervals={self.num_intervals}"


class SplineRadial(torch.nn.Module):
    """`num_outputs` learnable radial functions r (Å) -> (E, num_outputs), zero for r >= cutoff.

    Args:
        cutoff: r_c in Å.
        num_outputs: number of independent radial functions (e.g. channels x weight paths).
        num_intervals: knot intervals on [0, r_c]; the learnable coefficients number
            `num_intervals` per output (three more are pinned to zero at the cutoff).
        init_std: standard deviation of the initial coefficients. Because the B-spline basis is
            a partition of unity, f(r) stays within the range of the coefficients.

    Inside a backbone, layers hold a `SplineRadial` for its coefficients and receive the basis
    matrix of the backbone's own `SplineBasis` (same knots); `forward` is the standalone form.
    """

    def __init__(self, cutoff: float, num_outputs: int, num_intervals: int = 16, init_std: float = 1.0):
        super().__init__()
        self.knots = SplineBasis(cutoff, num_intervals)
        self.cutoff = self.knots.cutoff
        self.num_outputs = int(num_outputs)
        self.num_intervals = self.knots.num_intervals
        self.interval_width = self.knots.interval_width  # Å
        # coefficients[k] multiplies B_3 centred at knot (k - 1) h; (num_intervals, num_outputs)
        self.coefficients = torch.nn.Parameter(torch.randn(self.num_intervals, self.num_outputs) * init_std)

    def full_coefficients(self) -> torch.Tensor:
        """(num_intervals + 3, num_outputs): learnable coefficients followed by the three zeros."""
        zeros = self.coefficients.new_zeros(3, self.num_outputs)
        return torch.cat([self.coefficients, zeros], dim=0)

    def polynomial_table(self) -> torch.Tensor:
        """(num_intervals, 4, num_outputs): per interval, coefficients of 1, u, u^2, u^3 (for `forward_by_gather`)."""
        coefficients = self.full_coefficients()
        # windows[s, k, o] = c_{s+k, o}
        windows = coefficients.unfold(0, 4, 1).transpose(1, 2)[: self.num_intervals]
        power_matrix = self.knots.power_matrix.to(coefficients.dtype) / 6.0  # entries are small integers: exact
        return torch.einsum("kp,sko->spo", power_matrix, windows)

    def basis(self, distances: torch.Tensor) -> torch.Tensor:
        """distances (E,) Å -> (E, num_intervals + 3) basis matrix (`SplineBasis`)."""
        return self.knots(distances)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        """distances (E,) Å -> (E, num_outputs).

        The four basis values of each edge's interval are written into a sparse-by-construction
        (E, num_intervals + 3) basis matrix (`SplineBasis`), which one GEMM contracts with the
        coefficients. This is the same O(1)-per-edge evaluation as `forward_by_gather` (bit-for-bit
        the same sum), but the contraction and its backward are dense matrix products instead of
        gathers and scatter-adds into a table of a few rows, which is several times faster on CPU
        (docs/facet.md).
        """
        return self.knots(distances) @ self.full_coefficients()

    def forward_by_gather(self, distances: torch.Tensor) -> torch.Tensor:
        """Reference evaluation: gather each edge's row of `polynomial_table` and apply Horner's rule.

        No backbone uses it. Its users: tests/test_spline.py (the textbook form the fast path is
        checked against) and scripts/equivariance_vs_grid.py (the timing table in docs/facet.md).
        """
        interval, u, inside = self.knots.locate(distances)
        rows = self.polynomial_table().index_select(0, interval)  # (E, 4, num_outputs)
        u = u.unsqueeze(-1)
        value = rows[:, 3]
        for power in (2, 1, 0):
            value = value * u + rows[:, power]
        return torch.where(inside.unsqueeze(-1), value, torch.zeros_like(value))

    def extra_repr(self) -> str:
        return f"num_outputs={self.num_outputs}"
