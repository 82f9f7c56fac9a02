"""A plain multilayer perceptron with a configurable activation."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

ACTIVATIONS = {
    "silu": torch.nn.SiLU,
    "tanh": torch.nn.Tanh,
    "gelu": torch.nn.GELU,
    "relu": torch.nn.ReLU,
}


class MLP(torch.nn.Sequential):
    """Linear -> activation -> ... -> Linear, with widths in_features, *hidden, out_features.

    `bias=False` makes MLP(0) = 0 exactly (needed where inputs vanish at the cutoff or for
    atoms without neighbours, e.g. radial MLPs and energy readouts).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "silu",
        bias: bool = True,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        widths = [int(in_features), *[int(h) for h in hidden], int(out_features)]
        layers: list[torch.nn.Module] = []
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            layers.append(torch.nn.Linear(width_in, width_out, bias=bias))
            if index < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.in_features = widths[0]
        self.out_features = widths[-1]
