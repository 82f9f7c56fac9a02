"""A plain multilayer perceptron with a configurable activation, in two parameterisations.

``normalized=False`` (the default) is torch's: `torch.nn.Linear` layers with their default init,
whose weights already hold the 1/sqrt(fan-in) factor.

``normalized=True`` is e3nn's (and MACE's and NequIP's): every weight is drawn from N(0, 1) and
the layer divides by sqrt(fan-in) in its forward pass (`NormalizedLinear`), and every activation
is rescaled to unit second moment under a standard normal input (`NormalizedActivation`). The
function the network computes at initialisation keeps unit variance through any depth, and —
what matters for training — an optimiser step of a given size changes every layer's output by
the same relative amount whatever its width: with Adam at MACE's learning rate (0.01) a torch
`Linear` of fan-in 64 moves about 8× faster, relative to its weights, than a normalised one.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

ACTIVATIONS = {
    "silu": torch.nn.SiLU,
    "tanh": torch.nn.Tanh,
    "gelu": torch.nn.GELU,
    "relu": torch.nn.ReLU,
}


@functools.cache
def second_moment_scale(activation: str) -> float:
    """1 / sqrt(E[f(z)²]) for z ~ N(0, 1), by 100-point Gauss–Hermite quadrature (exact to ~1e-12
    for these smooth activations; ReLU's kink costs a few 1e-4)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(100)  # ∫ g(z) exp(-z²/2) dz ≈ Σ w g(z)
    values = ACTIVATIONS[activation]()(torch.as_tensor(nodes, dtype=torch.float64)).numpy()
    second_moment = float(np.sum(weights * values**2) / math.sqrt(2.0 * math.pi))
    return 1.0 / math.sqrt(second_moment)


class NormalizedActivation(torch.nn.Module):
    """f(x) · c with c = `second_moment_scale(name)`, so that E[(c f(z))²] = 1 for z ~ N(0, 1)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.function = ACTIVATIONS[name]()
        self.scale = second_moment_scale(name)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.function(inputs) * self.scale

    def extra_repr(self) -> str:
        return f"{self.name}, scale={self.scale:.6f}"


class NormalizedLinear(torch.nn.Module):
    """y = x Wᵀ / sqrt(in_features) (+ b), with W ~ N(0, 1) (out_features, in_features) and b = 0.

    The parameter is called ``weight`` and has `torch.nn.Linear`'s shape, so code that addresses
    weights by name and shape (fine-tuning, heads) treats both layers alike."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = torch.nn.Parameter(torch.randn(self.out_features, self.in_features))
        self.bias = torch.nn.Parameter(torch.zeros(self.out_features)) if bias else None
        self.fan_in_scale = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(inputs, self.weight * self.fan_in_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def linear_layer(in_features: int, out_features: int, bias: bool, normalized: bool) -> torch.nn.Module:
    """`NormalizedLinear` or `torch.nn.Linear`."""
    layer = NormalizedLinear if normalized else torch.nn.Linear
    return layer(int(in_features), int(out_features), bias=bias)


class MLP(torch.nn.Sequential):
    """Linear -> activation -> ... -> Linear, with widths in_features, *hidden, out_features.

    `bias=False` makes MLP(0) = 0 exactly (needed where inputs vanish at the cutoff or for
    atoms without neighbours, e.g. radial MLPs and energy readouts). `normalized=True` uses the
    e3nn parameterisation of the module docstring.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "silu",
        bias: bool = True,
        normalized: bool = False,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        widths = [int(in_features), *[int(h) for h in hidden], int(out_features)]
        layers: list[torch.nn.Module] = []
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            layers.append(linear_layer(width_in, width_out, bias, normalized))
            if index < len(widths) - 2:
                layers.append(NormalizedActivation(activation) if normalized else ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.in_features = widths[0]
        self.out_features = widths[-1]
