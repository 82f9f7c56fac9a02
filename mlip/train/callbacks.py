"""Lightning callbacks of a training run: the rolling ``last.ckpt`` and the best-model export."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from mlip.train.checkpoint import LAST_CHECKPOINT


class LastCheckpoint(pl.Callback):
    """Rewrites ``<dirpath>/last.ckpt`` every ``every_n_train_steps`` optimiser steps and at every epoch end.

    Saving goes through the trainer (so all DDP ranks take part and rank 0 writes) and its
    checkpoint IO; with `AtomicCheckpointIO` a hard kill while saving keeps the previous file.
    A checkpoint saved mid-epoch resumes mid-epoch: Lightning restores the step and batch
    counters; the rest of that epoch is drawn from a fresh shuffle. The loggers are flushed
    before each save, so a resume after ``kill -9`` finds every row logged before the checkpoint.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 50):
        super().__init__()
        if every_n_train_steps < 1:
            raise ValueError(f"checkpoint.every_n_train_steps must be >= 1, got {every_n_train_steps}")
        self.path = Path(dirpath) / LAST_CHECKPOINT
        self.every_n_train_steps = int(every_n_train_steps)
        self._last_saved_step = -1

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.global_step == self._last_saved_step or trainer.sanity_checking:
            return
        self._last_saved_step = trainer.global_step
        for logger in trainer.loggers:  # the logged history reaches the disk before the checkpoint
            logger.save()
        trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step > 0 and trainer.global_step % self.every_n_train_steps == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer)


class BestModelExport(pl.Callback):
    """Exports the EMA weights to a self-contained file whenever ``monitor`` reaches a new best.

    The file is what `mlip.load` reads (see `mlip.export`); it is written on rank 0 only and
    atomically. The best value so far is part of the checkpoint, so a resumed run only
    overwrites the export with a truly better model. `validated_step` is the global step of the
    last validation of this process (-1: none yet); `export_current` writes the current EMA
    weights when no validation ever gave a finite value (see `mlip.train.build.train`).
    With two training stages (`mlip.train.stages`) the search for the best restarts at the switch
    (`restart`), and ``training_info`` of the export records the ``stage`` it came from.
    ``finetuned_from`` (fine-tuning runs, `mlip.train.finetune.finetune_provenance`) goes into
    ``training_info["finetuned_from"]``.
    """

    def __init__(
        self, path: str | Path, monitor: str, mode: str, config: dict, statistics: Any, finetuned_from: dict | None = None
    ):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"checkpoint.mode must be 'min' or 'max', got {mode!r}")
        self.path = Path(path)
        self.monitor = monitor
        self.mode = mode
        self.config = config
        self.statistics = statistics
        self.finetuned_from = finetuned_from
        self.best = math.inf if mode == "min" else -math.inf
        self.validated_step = -1

    def restart(self) -> None:
        """Forget the best value so far (the next finite validation is exported): training stage two began."""
        self.best = math.inf if self.mode == "min" else -math.inf

    def _improved(self, value: float) -> bool:
        return value < self.best if self.mode == "min" else value > self.best

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.validated_step = trainer.global_step
        if self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if not math.isfinite(value) or not self._improved(value):
            return
        self.best = value
        self._export(pl_module, trainer.global_step, value, trainer)

    def export_current(self, trainer: pl.Trainer, pl_module) -> None:
        """Export the current EMA weights if there is no export yet (e.g. every validation was NaN)."""
        if self.path.is_file():
            return
        value = float(trainer.callback_metrics.get(self.monitor, math.nan))
        step = trainer.global_step
        rank_zero_warn(f"{self.monitor} = {value} at step {step}: exporting the final EMA weights to {self.path}")
        self._export(pl_module, trainer.global_step, value, trainer)

    @rank_zero_only
    def _export(self, pl_module, step: int, value: float, trainer: pl.Trainer | None = None) -> None:
        from mlip.export import export_model
        from mlip.train.stages import StageTwo, current_stage

        info = {"global_step": int(step), "monitor": self.monitor, "value": value, "stage": current_stage(trainer)}
        stage_two = next((c for c in getattr(trainer, "callbacks", None) or [] if isinstance(c, StageTwo)), None)
        if stage_two is not None and stage_two.stage == 2:
            info["stage_two_start_step"] = int(stage_two.started_at_step)
        if self.finetuned_from is not None:
            info["finetuned_from"] = self.finetuned_from
        export_model(pl_module, self.path, self.config, self.statistics, training_info=info)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "monitor": self.monitor}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("monitor") == self.monitor:
            self.best = float(state_dict["best"])


class TrainingClock(pl.Callback):
    """Logs ``time/fit_seconds``: wall-clock seconds of fitting so far, at every validation.

    The count includes training and validation (everything between the start of fitting and the
    validation that logs it) and carries over a resume: the seconds of earlier runs are stored in
    the checkpoint. It is what a learning curve "validation error against wall time" plots.
    """

    def __init__(self):
        super().__init__()
        self.seconds_before_this_run = 0.0
        self._started_at: float | None = None

    def elapsed_seconds(self) -> float:
        running = 0.0 if self._started_at is None else time.perf_counter() - self._started_at
        return self.seconds_before_this_run + running

    def on_fit_start(self, trainer, pl_module) -> None:
        self._started_at = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        pl_module.log("time/fit_seconds", self.elapsed_seconds(), on_step=False, on_epoch=True, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.elapsed_seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds_before_this_run = float(state_dict.get("seconds", 0.0))
