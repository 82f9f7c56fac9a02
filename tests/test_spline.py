"""SplineRadial: a uniform cubic B-spline that is C2 and vanishes smoothly at the cutoff."""

import numpy as np
import pytest
import torch

from mlip.models.build import default_dtype
from mlip.nn.spline import SplineRadial

CUTOFF = 5.0  # Å


def make_spline(num_outputs=3, num_intervals=8, seed=0):
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        return SplineRadial(CUTOFF, num_outputs, num_intervals)


def test_matches_scipy_bspline():
    interpolate = pytest.importorskip("scipy.interpolate")
    spline = make_spline()
    h = spline.interval_width
    num_coefficients = spline.num_intervals + 3
    knots = (np.arange(num_coefficients + 4) - 3) * h
    r = torch.linspace(0.0, CUTOFF - 1e-9, 301, dtype=torch.float64)
    ours = spline(r).detach().numpy()
    coefficients = spline.full_coefficients().detach().numpy()
    for output in range(spline.num_outputs):
        reference = interpolate.BSpline(knots, coefficients[:, output], 3, extrapolate=False)(r.numpy())
        np.testing.assert_allclose(ours[:, output], reference, atol=1e-12)


def test_gemm_and_gather_evaluations_agree():
    spline = make_spline(num_outputs=4)
    r = torch.linspace(0.0, CUTOFF + 1.0, 257, dtype=torch.float64)
    assert torch.allclose(spline(r), spline.forward_by_gather(r), atol=1e-13, rtol=0)


def derivatives(spline, r):
    """Value, first and second derivative of output 0 at distances r, by autograd."""
    r = r.clone().requires_grad_(True)
    value = spline(r)[:, 0]
    (first,) = torch.autograd.grad(value.sum(), r, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), r)
    return value.detach(), first.detach(), second.detach()


def test_c2_continuity_at_knots():
    spline = make_spline()
    h = spline.interval_width
    knots = torch.arange(1, spline.num_intervals, dtype=torch.float64) * h
    eps = 1e-7
    below = derivatives(spline, knots - eps)
    above = derivatives(spline, knots + eps)
    for order, (lo, hi) in enumerate(zip(below, above)):
        # a jump in the order-th derivative would show up as an O(1) difference
        assert torch.allclose(lo, hi, atol=1e-4), f"derivative {order} jumps at a knot"
    # the third derivative is piecewise constant and does jump, so the test can tell a C2 from a C3 jump:
    r = torch.stack([knots[2] - 0.25 * h, knots[2] + 0.25 * h]).requires_grad_(True)
    value = spline(r)[:, 0]
    (d1,) = torch.autograd.grad(value.sum(), r, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), r, create_graph=True)
    (d3,) = torch.autograd.grad(d2.sum(), r)
    assert not torch.allclose(d3[0], d3[1])


def test_zero_at_and_beyond_cutoff_with_zero_derivatives():
    spline = make_spline()
    at_cutoff = derivatives(spline, torch.tensor([CUTOFF, CUTOFF + 0.3, 7.0], dtype=torch.float64))
    for quantity in at_cutoff:
        assert torch.all(quantity == 0.0)
    just_inside = derivatives(spline, torch.tensor([CUTOFF - 1e-4], dtype=torch.float64))
    value, first, second = just_inside
    assert abs(value.item()) < 1e-10 and abs(first.item()) < 1e-6 and abs(second.item()) < 1e-2
    # and it is not identically zero inside
    assert spline(torch.tensor([1.0, 2.0], dtype=torch.float64)).abs().max() > 1e-3


def test_gradcheck_and_double_backward_float64():
    spline = make_spline(num_outputs=2, num_intervals=5)
    r = torch.tensor([0.1, 0.77, 1.9, 2.6, 3.3, 4.2, 4.95], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d: spline(d), (r,))
    assert torch.autograd.gradgradcheck(lambda d: spline(d), (r,))
    assert torch.autograd.gradgradcheck(lambda d: spline.forward_by_gather(d), (r,))
    # gradients with respect to the coefficients, too
    coefficients = spline.coefficients.detach().clone().requires_grad_(True)
    evaluate = lambda c: torch.func.functional_call(spline, {"coefficients": c}, (r.detach(),))
    assert torch.autograd.gradcheck(evaluate, (coefficients,))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="cutoff"):
        SplineRadial(0.0, 4)
    with pytest.raises(ValueError, match="num_intervals"):
        SplineRadial(5.0, 4, num_intervals=0)


def test_a_shared_basis_gives_every_spline_with_the_same_knots():
    """Backbones evaluate one `SplineBasis` per forward pass and contract it with each layer's coefficients."""
    from mlip.nn.spline import SplineBasis

    first, second = make_spline(num_outputs=3), make_spline(num_outputs=5)
    with default_dtype(torch.float64):
        basis = SplineBasis(CUTOFF, first.num_intervals)
    r = torch.linspace(0.0, CUTOFF + 0.5, 41, dtype=torch.float64)
    for spline in (first, second):
        assert torch.equal(basis(r) @ spline.full_coefficients(), spline(r))
    assert basis(torch.tensor([CUTOFF + 0.1], dtype=torch.float64)).abs().max() == 0
