"""Optimisers and learning-rate schedules, built from the training config by ``_target_``.

The ``optimizer`` and ``scheduler`` sections of the training config name what to build, as
NequIP does::

    optimizer: {_target_: torch.optim.AdamW, lr: 0.005, amsgrad: true}
    scheduler: {_target_: mlip.train.schedules.warmup_cosine, warmup_steps: 20, min_factor: 0.01}

`build_optimizer` calls the optimizer's ``_target_`` with the trainable parameters first;
`build_scheduler` calls the scheduler's ``_target_`` with the optimiser first, plus
``total_steps`` (the run's optimiser steps, from the trainer) when the target takes a
``total_steps`` argument that the config leaves unset. Three keys of the scheduler section are
Lightning's, not the scheduler's: ``interval`` ("step" or "epoch"; default "step", "epoch" for
ReduceLROnPlateau), ``frequency`` and ``monitor`` (a ReduceLROnPlateau needs one; default
``val/loss``).

Trust: these ``_target_``s come only from the user's training config, which may import any
class of their code. Model files and checkpoints never name one that is built: checkpoints
hold tensors and plain containers (read with ``weights_only=True``) and a resumed run rebuilds
its optimiser and schedule from the current config, then loads only their state into them.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch

LIGHTNING_KEYS = ("interval", "frequency", "monitor")  # keys of Lightning's lr_scheduler dict
DEFAULT_MONITOR = "val/loss"


def cosine_factor(progress: float, min_factor: float) -> float:
    """Cosine from 1 at ``progress`` 0 to ``min_factor`` at ``progress`` 1 (clamped to [0, 1])."""
    progress = min(1.0, max(0.0, float(progress)))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """LR factor: linear warm-up over ``warmup_steps``, then cosine decay to ``min_factor`` at ``total_steps``."""

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float = 0.01):
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(self.warmup_steps + 1, int(total_steps))
        self.min_factor = min_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return cosine_factor((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), self.min_factor)


class LinearWarmup:
    """LR factor: linear warm-up over ``warmup_steps``, then constant 1."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = max(0, int(warmup_steps))

    def __call__(self, step: int) -> float:
        return (step + 1) / self.warmup_steps if step < self.warmup_steps else 1.0


class BudgetCosine(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_factor · lr`` at the end of the run's budget.

    The decay follows ``progress`` (0 at the start, 1 when the budget is spent), which the
    training module sets before every step from the trainer (`run_progress`): the larger of the
    fraction of optimiser steps done and the fraction of ``trainer.max_time`` used, so a run with
    a wall-time budget decays over its time and a run with a step budget over its steps. The
    progress is part of the scheduler state, so a resumed run continues the curve where it was.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int = 0, min_factor: float = 0.01):
        if not 0.0 <= min_factor <= 1.0:
            raise ValueError(f"scheduler.min_factor must be in [0, 1], got {min_factor!r}")
        self.warmup_steps = max(0, int(warmup_steps))
        self.min_factor = float(min_factor)
        self.progress = 0.0
        super().__init__(optimizer)

    def factor(self) -> float:
        """The learning rate over the base rate for the next step."""
        step = self.last_epoch  # the number of steps taken (LRScheduler counts calls of step())
        warmup = (step + 1) / self.warmup_steps if step < self.warmup_steps else 1.0
        return warmup * cosine_factor(self.progress, self.min_factor)

    def get_lr(self) -> list[float]:
        factor = self.factor()
        return [base * factor for base in self.base_lrs]


def run_progress(trainer: Any) -> float:
    """The fraction (0 to 1) of ``trainer``'s budget spent: the larger of its optimiser steps done
    out of ``estimated_stepping_batches`` and its fit time out of ``max_time`` (Lightning's
    `Timer`, which counts over a resume). Under DDP rank 0's clock decides (broadcast), so that
    every rank uses the same learning rate.
    """
    from mlip.train.stages import fit_timer

    fractions = [0.0]
    total_steps = float(trainer.estimated_stepping_batches)
    if math.isfinite(total_steps) and total_steps > 0:
        fractions.append(trainer.global_step / total_steps)
    timer = fit_timer(trainer)
    if timer is not None:
        elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
        budget = elapsed + remaining
        time_fraction = elapsed / budget if budget > 0 else 1.0
        fractions.append(float(trainer.strategy.broadcast(time_fraction, src=0)))
    return min(1.0, max(fractions))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, cosine decay to ``min_factor · lr`` at ``total_steps`` (per step).

    ``total_steps`` is filled in from the trainer (`build_scheduler`). A resumed run keeps the
    schedule's stored length (it is part of the scheduler state).
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_factor))


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then the constant ``lr`` (for open-ended training)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LinearWarmup(warmup_steps))


def reduce_on_plateau(
    optimizer: torch.optim.Optimizer,
    factor: float = 0.5,
    patience: int = 5,
    min_lr: float = 0.0,
    warmup_steps: int | None = None,
    **keywords: Any,
) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """`torch.optim.lr_scheduler.ReduceLROnPlateau` (``patience`` in validation epochs).

    It has no warm-up: a ``warmup_steps`` (e.g. set by an experiment for the default cosine
    schedule) is ignored with a warning, so that ``scheduler=plateau`` composes with any experiment.
    """
    if warmup_steps:
        warnings.warn(f"scheduler: ReduceLROnPlateau has no warm-up; warmup_steps={warmup_steps} is ignored", stacklevel=2)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=factor, patience=patience, min_lr=min_lr, **keywords)


def _partial(config: dict[str, Any], section: str, default_target: str | None = None):
    """``config`` (a plain dict with ``_target_``) as a partial call of its target (nothing called yet)."""
    from hydra.utils import instantiate

    config = dict(config)
    if "name" in config and "_target_" not in config:
        raise ValueError(
            f"{section}: `name: {config['name']}` was replaced by `_target_`; choose a schedule with "
            "scheduler=cosine|plateau|constant or name a class, e.g. scheduler._target_=torch.optim.lr_scheduler.StepLR"
        )
    config.setdefault("_target_", default_target)
    if not config["_target_"]:
        raise ValueError(f"{section}: no `_target_` (the class or function to build)")
    factory = instantiate(config, _partial_=True, _convert_="all")
    unknown = _unknown_keywords(factory.func, factory.keywords)
    if unknown:
        removals = " ".join(f"'~{section}.{key}'" for key in unknown)
        raise ValueError(
            f"{section}: {config['_target_']} takes no {unknown} (settings of another {section}, e.g. from an "
            f"experiment, after {section}=... chose this one?); remove them with {removals}"
        )
    return factory


def _unknown_keywords(function, keywords: dict[str, Any]) -> list[str]:
    """The keys of ``keywords`` that ``function`` does not accept (none if it takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return []
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return []
    return sorted(key for key in keywords if key not in parameters)


def build_optimizer(config: dict[str, Any] | None, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser of ``config`` (``_target_`` and its keywords) over ``parameters``.

    A config without ``_target_`` (e.g. ``{"lr": 1e-3}`` from Python) builds `torch.optim.AdamW`.
    """
    factory = _partial(config or {"lr": 1e-3}, "optimizer", default_target="torch.optim.AdamW")
    if "betas" in factory.keywords:  # YAML gives a list
        factory.keywords["betas"] = tuple(factory.keywords["betas"])
    return factory(list(parameters))


def _takes(function, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def build_scheduler(
    config: dict[str, Any] | None, optimizer: torch.optim.Optimizer, total_steps: int | None = None
) -> dict[str, Any] | None:
    """Lightning's ``lr_scheduler`` dict for the schedule of ``config``, or None (constant lr).

    ``total_steps``: the run's optimiser steps, passed to a target that takes ``total_steps``
    when the config does not set it.
    """
    if not config:
        return None
    config = dict(config)
    lightning = {key: config.pop(key) for key in LIGHTNING_KEYS if key in config}
    lightning = {key: value for key, value in lightning.items() if value is not None}
    factory = _partial(config, "scheduler")
    extra = {}
    if _takes(factory.func, "total_steps") and "total_steps" not in factory.keywords:
        if total_steps is None:
            raise ValueError(f"scheduler: {config['_target_']} needs total_steps, and the trainer gives none")
        extra["total_steps"] = int(total_steps)
    scheduler = factory(optimizer, **extra)
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        lightning.setdefault("monitor", DEFAULT_MONITOR)
        lightning.setdefault("interval", "epoch")
    else:
        lightning.pop("monitor", None)  # only ReduceLROnPlateau reads a metric
        lightning.setdefault("interval", "step")
    return {"scheduler": scheduler, **lightning}
