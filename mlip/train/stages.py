"""Two-stage training (MACE's "stage two", formerly "swa"): from a configured point on, train with
other loss weights (typically a much higher energy weight) and a lower learning rate.

The training config's ``stage_two`` section (null: off, the default)::

    stage_two:
      start: 0.8                 # fraction of the run's optimiser steps (trainer.estimated_stepping_batches,
                                 # i.e. of max_steps or of max_epochs x steps per epoch, whichever ends first)
      # or start_epoch: 80       # the first epoch (0-based, Lightning's current_epoch) of stage two
      # or start_step: 4000      # the first optimiser step (0-based global step) of stage two
      # or start_time: 0.8       # fraction of trainer.max_time (wall clock of fitting, over resumes)
      loss_weights: {energy: 1000.0, forces: 100.0}   # replaces these weights; the others keep stage one's
      lr: 1.0e-3                 # learning rate from the switch on (null: keep the current one)
      # or lr_factor: 0.4        # the learning rate at the switch times this factor

`StageTwo` is the Lightning callback that does the switch (`mlip.train.build.build_callbacks`
adds it). Optimiser step ``k`` (0-based, the global step before it) trains in stage two when
``k >= start_step`` (``start_step = round(start * total_steps)``), or when the current epoch is
``>= start_epoch``, or once Lightning's fit timer (`lightning.pytorch.callbacks.Timer`, which
``trainer.max_time`` sets up and which keeps counting over a resume) has run ``start_time`` of
``max_time``: a budget in wall time, not in epochs (under DDP rank 0's clock decides, broadcast
to every rank, so all switch at the same step). At the switch, before that step's forward pass:

* the loss weights of ``loss_weights`` replace those of stage one (validation, ``val/loss`` and
  testing use them from then on too);
* every parameter group's learning rate is set to ``lr`` (or multiplied by ``lr_factor``, which
  scales with wherever a schedule has brought it by then, e.g. for runs of different lengths). A ``ReduceLROnPlateau`` continues from
  it with its patience and best value reset (the loss it follows changed scale); a schedule with
  base learning rates (LambdaLR: ``scheduler=cosine``/``constant``, StepLR, ...) has them
  rescaled by ``lr / current lr``, so it keeps its shape from ``lr`` on (cosine: the decay continues,
  ``constant``: stays at ``lr``);
* the best-model trackers restart: ``best_model.pt`` of stage one is kept as
  ``best_model_stage1.pt``, and ``best.ckpt`` / ``best_model.pt`` then follow the best stage-two
  validation (whose ``val/loss`` is not comparable with stage one's). The export's
  ``training_info`` records ``stage`` (1 or 2) and ``stage_two_start_step``.

Resume: the step at which stage two began is part of the checkpoint (the callback's state: plain
ints, loadable with ``weights_only=True``), and the stage is monotone: a run resumed after the
switch is in stage two whatever the new ``max_steps``/``max_epochs`` make of ``start``. The
learning rate and schedule state come back with the optimiser and scheduler state; the loss
weights are re-applied from the config. ``train/stage`` and ``train/loss_weight_<name>`` are
logged at every logging step (``trainer.log_every_n_steps``).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from mlip.train.losses import LossWeights

START_KEYS = ("start", "start_epoch", "start_step", "start_time")
STAGE_TWO_KEYS = (*START_KEYS, "loss_weights", "lr", "lr_factor")
STAGE_ONE_EXPORT_SUFFIX = "_stage1"  # best_model.pt -> best_model_stage1.pt at the switch


@dataclasses.dataclass(frozen=True)
class StageTwoConfig:
    """The validated ``stage_two`` section: exactly one of ``start``/``start_epoch``/``start_step``/``start_time``."""

    start: float | None = None
    start_epoch: int | None = None
    start_step: int | None = None
    start_time: float | None = None
    loss_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    lr: float | None = None
    lr_factor: float | None = None

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> StageTwoConfig | None:
        """None for a null/empty section; ValueError naming the key for anything malformed."""
        if not section:
            return None
        section = dict(section)
        unknown = sorted(set(section) - set(STAGE_TWO_KEYS))
        if unknown:
            raise ValueError(f"stage_two: unknown keys {unknown}; expected some of {list(STAGE_TWO_KEYS)}")
        given = [key for key in START_KEYS if section.get(key) is not None]
        if len(given) != 1:
            raise ValueError(
                f"stage_two: set exactly one of {list(START_KEYS)} (got {given or 'none'}), e.g. "
                "'stage_two={start:0.8,loss_weights:{energy:1000.0,forces:100.0},lr:1.0e-3}'"
            )
        start = section.get("start")
        if start is not None and not (isinstance(start, (int, float)) and 0.0 < float(start) < 1.0):
            raise ValueError(
                f"stage_two.start must be a fraction of the run's steps in (0, 1), got {start!r} "
                "(an epoch or step number goes into stage_two.start_epoch / stage_two.start_step)"
            )
        start_time = section.get("start_time")
        if start_time is not None and not (
            isinstance(start_time, (int, float)) and not isinstance(start_time, bool) and 0.0 < float(start_time) < 1.0
        ):
            raise ValueError(f"stage_two.start_time must be a fraction of trainer.max_time in (0, 1), got {start_time!r}")
        for key in ("start_epoch", "start_step"):
            value = section.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"stage_two.{key} must be an integer >= 0, got {value!r}")
        weights = dict(section.get("loss_weights") or {})
        names = {field.name for field in dataclasses.fields(LossWeights)}
        unknown = sorted(set(weights) - names)
        if unknown:
            raise ValueError(f"stage_two.loss_weights: unknown {unknown}; the loss weights are {sorted(names)}")
        for name, value in weights.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"stage_two.loss_weights.{name} must be a finite number >= 0, got {value!r}")
        lr = section.get("lr")
        if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0 or not math.isfinite(lr)):
            raise ValueError(f"stage_two.lr must be a positive number or null, got {lr!r}")
        factor = section.get("lr_factor")
        if factor is not None and (
            not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor > 0 or not math.isfinite(factor)
        ):
            raise ValueError(f"stage_two.lr_factor must be a positive number or null, got {factor!r}")
        if lr is not None and factor is not None:
            raise ValueError(f"stage_two: set lr ({lr}) or lr_factor ({factor}), not both")
        if not weights and lr is None and factor is None:
            raise ValueError("stage_two: neither loss_weights nor lr/lr_factor is set, so stage two would change nothing")
        return cls(
            start=None if start is None else float(start),
            start_epoch=section.get("start_epoch"),
            start_step=section.get("start_step"),
            start_time=None if start_time is None else float(start_time),
            loss_weights={name: float(value) for name, value in weights.items()},
            lr=None if lr is None else float(lr),
            lr_factor=None if factor is None else float(factor),
        )

    def start_step_of(self, total_steps: float | None) -> int | None:
        """The first optimiser step of stage two (None: it starts by epoch, see `start_epoch`)."""
        if self.start_step is not None:
            return int(self.start_step)
        if self.start is None:
            return None
        if total_steps is None or not math.isfinite(float(total_steps)) or total_steps <= 0:
            raise ValueError(
                f"stage_two.start={self.start} is a fraction of the run's optimiser steps, but the run has no "
                f"finite length ({total_steps}); set trainer.max_epochs or trainer.max_steps, or use stage_two.start_epoch"
            )
        return round(self.start * float(total_steps))


def fit_timer(trainer: pl.Trainer) -> Timer | None:
    """Lightning's `Timer` callback of ``trainer`` (present when ``trainer.max_time`` is set)."""
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, Timer) and callback.time_remaining("train") is not None:
            return callback
    return None


def current_stage(trainer: pl.Trainer | None) -> int:
    """1 or 2: the training stage of ``trainer`` (1 when it has no `StageTwo` callback)."""
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, StageTwo):
            return callback.stage
    return 1


class StageTwo(pl.Callback):
    """Switches the module to stage two (see the module docstring); state: the step it began at.

    Args:
        config: the ``stage_two`` section (a dict or `StageTwoConfig`).
        export_path: the best-model export (``<run dir>/best_model.pt``); at the switch it is
            copied to ``best_model_stage1.pt``. None: no copy.
    """

    def __init__(self, config: dict[str, Any] | StageTwoConfig, export_path: str | Path | None = None):
        super().__init__()
        self.config = config if isinstance(config, StageTwoConfig) else StageTwoConfig.from_config(config)
        if self.config is None:
            raise ValueError("StageTwo: an empty stage_two config (leave the callback out to train in one stage)")
        self.export_path = Path(export_path) if export_path is not None else None
        self.started_at_step = -1  # global step of the first stage-two optimiser step; -1: still stage one
        self.start_step: int | None = None  # resolved at on_train_start
        self._stage_one_weights: LossWeights | None = None

    @property
    def stage(self) -> int:
        return 2 if self.started_at_step >= 0 else 1

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer, pl_module) -> None:
        if self._stage_one_weights is None:  # the config's weights (this callback only ever changes them to stage two's)
            self._stage_one_weights = dataclasses.replace(pl_module.loss_fn.weights)

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = self.config.start_step_of(trainer.estimated_stepping_batches)
        if self.config.start_time is not None and fit_timer(trainer) is None:
            raise ValueError(
                f"stage_two.start_time={self.config.start_time} is a fraction of trainer.max_time, but max_time is not set "
                "(e.g. trainer.max_time=00:01:00:00 for one hour); or use stage_two.start / start_epoch / start_step"
            )
        if self.stage == 2:  # resumed after the switch: optimiser and schedule state came with the checkpoint
            self._apply_weights(pl_module)
            rank_zero_info(f"mlip-train: resumed in training stage two (it began at global step {self.started_at_step})")

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.stage == 2:  # e.g. a finished run validated again after a resume: stage-two val/loss
            self._apply_weights(pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        if self.stage == 2:
            self._apply_weights(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.stage == 1 and self._due(trainer):
            self._switch(trainer, pl_module)
        if not pl_module._logs_this_step():  # a step metric logged between logging steps is dropped
            return
        weights = pl_module.loss_fn.weights
        pl_module.log("train/stage", float(self.stage), on_step=True, on_epoch=False, batch_size=1)
        for field in dataclasses.fields(weights):
            value = float(getattr(weights, field.name))
            pl_module.log(f"train/loss_weight_{field.name}", value, on_step=True, on_epoch=False, batch_size=1)

    # ------------------------------------------------------------------ the switch
    def _due(self, trainer) -> bool:
        if self.config.start_time is not None:
            timer = fit_timer(trainer)
            elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
            due = elapsed >= self.config.start_time * (elapsed + remaining)
            return bool(trainer.strategy.broadcast(due, src=0))  # every DDP rank switches at the same step
        if self.config.start_epoch is not None:
            return trainer.current_epoch >= self.config.start_epoch
        if self.start_step is None:  # on_train_start did not run (not expected)
            self.start_step = self.config.start_step_of(trainer.estimated_stepping_batches)
        return trainer.global_step >= self.start_step

    def _apply_weights(self, pl_module) -> None:
        base = self._stage_one_weights or pl_module.loss_fn.weights
        pl_module.loss_fn.weights = dataclasses.replace(base, **self.config.loss_weights)

    def _switch(self, trainer, pl_module) -> None:
        self.started_at_step = int(trainer.global_step)
        self._apply_weights(pl_module)
        if self.config.lr is not None:
            set_learning_rate(trainer, self.config.lr)
        elif self.config.lr_factor is not None:
            set_learning_rate(trainer, self.config.lr_factor * trainer.optimizers[0].param_groups[0]["lr"])
        self._restart_best(trainer)
        rank_zero_info(
            f"mlip-train: training stage two from global step {self.started_at_step} (epoch {trainer.current_epoch}): "
            f"loss weights {dataclasses.asdict(pl_module.loss_fn.weights)}, lr "
            f"{trainer.optimizers[0].param_groups[0]['lr']:g}"
        )

    def _restart_best(self, trainer) -> None:
        """best.ckpt and best_model.pt follow stage two from now on; stage one's export is kept aside."""
        from mlip.train.callbacks import BestModelExport

        self._keep_stage_one_export()
        for callback in trainer.callbacks:
            if isinstance(callback, BestModelExport):
                callback.restart()
            elif isinstance(callback, ModelCheckpoint) and callback.monitor is not None:
                callback.best_k_models = {}
                callback.kth_best_model_path = ""
                callback.kth_value = torch.tensor(math.inf if callback.mode == "min" else -math.inf)
                callback.best_model_score = None
                # best_model_path stays until a stage-two validation replaces best.ckpt (same file name)

    @rank_zero_only
    def _keep_stage_one_export(self) -> None:
        if self.export_path is not None and self.export_path.is_file():
            target = self.export_path.with_name(self.export_path.stem + STAGE_ONE_EXPORT_SUFFIX + self.export_path.suffix)
            temporary = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(self.export_path, temporary)
            temporary.replace(target)

    # ------------------------------------------------------------------ checkpoint state (plain ints)
    def state_dict(self) -> dict[str, Any]:
        return {"started_at_step": int(self.started_at_step), "stage": int(self.stage)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.started_at_step = int(state_dict.get("started_at_step", -1))


def set_learning_rate(trainer: pl.Trainer, lr: float) -> None:
    """Every parameter group's learning rate becomes ``lr``; the schedules continue from it.

    ReduceLROnPlateau: its best value, patience and cooldown counters are reset. Other schedules
    with ``base_lrs``: those are scaled by ``lr / current lr`` (so LambdaLR keeps its shape).
    """
    for optimizer in trainer.optimizers:
        scale = [lr / group["lr"] if group["lr"] > 0 else None for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = lr
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if scheduler.optimizer is not optimizer:
                continue
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler._reset()
            elif hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [
                    base * factor if factor is not None else lr for base, factor in zip(scheduler.base_lrs, scale)
                ]
            if hasattr(scheduler, "_last_lr"):
                scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
