"""Exponential moving average (EMA) of a model's weights.

The averaged copy is what validation, the best-model checkpoint and the export use: it is
smoother than the raw weights and usually a few per cent more accurate.
"""

from __future__ import annotations

import torch


class ExponentialMovingAverage(torch.nn.Module):
    """Holds ``averaged``, a frozen copy of a model whose weights track the model's as an EMA.

    After every optimiser step call ``update(model)``:
    ``w_avg <- decay_t · w_avg + (1 - decay_t) · w`` with ``decay_t = min(decay, (1 + t) / (10 + t))``
    so that early, far-from-converged weights are forgotten quickly. Buffers are copied.
    Frozen parameters (``requires_grad=False`` in the model, e.g. ``finetune.freeze``) are left as
    they are.
    Being an ``nn.Module``, its state (weights and update count) is part of ``state_dict``.
    The copy is `mlip.models.independent_copy`'s: a `Potential` rebuilt from its config, so that
    it has exactly the model's parameters and buffers (and its export loads into a fresh model).
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.99):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        from mlip.models.build import independent_copy

        self.averaged = independent_copy(model).requires_grad_(False).eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        step = int(self.num_updates)
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        weight_of_new = 1.0 - self.current_decay()
        averaged_weights, current_weights = [], []
        for averaged, current in zip(self.averaged.parameters(), model.parameters(), strict=True):
            if current.requires_grad:
                averaged_weights.append(averaged)
                current_weights.append(current.detach())
        averaged_named, current_named = list(self.averaged.named_buffers()), list(model.named_buffers())
        averaged_names, current_names = [name for name, _ in averaged_named], [name for name, _ in current_named]
        averaged_buffers, current_buffers = [buffer for _, buffer in averaged_named], [buffer for _, buffer in current_named]
        if averaged_names != current_names:
            only_model = sorted(set(current_names) - set(averaged_names))
            only_copy = sorted(set(averaged_names) - set(current_names))
            raise ValueError(
                f"EMA: the model's buffers differ from its averaged copy's (only in the model: {only_model[:5]}, "
                f"only in the copy: {only_copy[:5]})"
            )
        # one fused kernel per list instead of one per tensor (the step's overhead on small models)
        if averaged_weights:
            torch._foreach_lerp_(averaged_weights, current_weights, weight_of_new)
        if averaged_buffers:
            torch._foreach_copy_(averaged_buffers, current_buffers)
        self.num_updates += 1

    def train(self, mode: bool = True):
        """The averaged copy always stays in eval mode."""
        super().train(mode)
        self.averaged.eval()
        return self
