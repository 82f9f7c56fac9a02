"""`PotentialModule`: the LightningModule that trains a `Potential`.

One training step: predict energy, forces (and stress where labelled) with ``training=True``
(forces are taken with ``create_graph`` so the force loss can be back-propagated), compute the
masked weighted loss, step the optimiser (named by ``_target_`` in the config, AdamW by default;
`mlip.train.schedules`). After every optimiser step the EMA copy of the weights is updated;
validation and testing run on the EMA copy. Metrics (MAE/RMSE in meV units, per split and per
subset) are reduced over DDP ranks in the step of each epoch's last batch.

Non-finite numbers never train silently (``nonfinite``): a NaN/inf training loss or gradient
raises `NonFiniteTrainingError` naming the batch's structure ids (and which predictions or
labels are not finite), or, with ``nonfinite="skip"``, skips that optimiser step with a warning.
The weights (raw and EMA) are checked every ``check_weights_every_n_steps`` steps, before every
validation (so before every export), before every checkpoint is written and when training ends.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from mlip.train.ema import ExponentialMovingAverage
from mlip.train.losses import PotentialLoss, nonfinite_structures
from mlip.train.metrics import ErrorAccumulator
from mlip.train.schedules import (  # noqa: F401 (LinearWarmup, WarmupCosine re-exported)
    BudgetCosine,
    LinearWarmup,
    WarmupCosine,
    build_optimizer,
    build_scheduler,
    run_progress,
)
from mlip.train.symmetry import LearnedEquivarianceLoss, capture_embeddings, energy_gradient_rotation_penalty, rotation_augmentation


NONFINITE_MODES = ("raise", "skip")


class NonFiniteTrainingError(FloatingPointError):
    """A training loss, gradient or weight that is NaN or infinite (the message says where)."""


def structure_names(batch, indices) -> str:
    """``'id-a', 'id-b'`` for graph ``indices`` of ``batch`` (``#k`` where a structure has no id)."""
    ids = getattr(batch, "structure_id", None)
    ids = [ids] if isinstance(ids, str) else list(ids or [])
    return ", ".join(repr(ids[k]) if k < len(ids) and ids[k] else f"#{k}" for k in indices)


def nonfinite_tensors(named_tensors) -> list[str]:
    """Names of the floating-point tensors of ``(name, tensor)`` pairs holding a NaN or inf.

    One fused norm over all tensors decides (cheap, one device sync); only if it is not finite
    are the tensors checked one by one (a finite but overflowing norm names nothing).
    """
    named = [(name, tensor.detach()) for name, tensor in named_tensors if tensor is not None and tensor.is_floating_point()]
    if not named or torch.isfinite(torch.nn.utils.get_total_norm([tensor for _, tensor in named])):
        return []
    return [name for name, tensor in named if not bool(torch.isfinite(tensor).all())]


def _listed(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class PotentialModule(pl.LightningModule):
    """Trains ``potential`` (a `mlip.models.potential.Potential`).

    Args:
        potential: the model.
        loss: keywords of `PotentialLoss` (``weights`` dict, ``kind`` "mse"/"huber", ``huber_delta``).
        optimizer: ``{"_target_": "torch.optim.AdamW", "lr": ..., ...}``: the optimiser class and its
            keywords (`mlip.train.schedules.build_optimizer`; without ``_target_``: AdamW).
        scheduler: ``{"_target_": ..., <its keywords>, "interval", "frequency", "monitor"}``: the
            learning-rate schedule, called with the optimiser (and ``total_steps`` if it takes it;
            `mlip.train.schedules.build_scheduler`), e.g. ``mlip.train.schedules.warmup_cosine``.
            None: constant learning rate. Both come from the user's training config only.
        ema_decay: EMA decay per optimiser step; None or 0 disables the EMA.
        compute_stress: "auto" (when the batch has any stress label), True or False.
        rotation_augmentation: rotate every training structure by a random rotation (labels
            rotated with it); for backbones that are not equivariant by construction.
        equivariance_loss: keywords of `mlip.train.symmetry.LearnedEquivarianceLoss` (e.g.
            ``{"weight": 0.1, "level": "atom", "warmup_fraction": 0.1, "reuse_main_pass": True}``)
            to add the TransIP learned-equivariance loss; its map T is trained with the potential,
            its weight is warmed up over the optimiser steps (``global_step``). None: off.
        rotation_gradient_penalty: weight of `mlip.train.symmetry.energy_gradient_rotation_penalty`
            (the mean squared energy derivative with respect to infinitesimal rotations, eV²/rad²;
            costs one more forward and double backward per step). None or 0: off.
        nonfinite: what a NaN or infinite training loss or gradient does. "raise" (default):
            stop with `NonFiniteTrainingError`, naming the batch's structure ids. "skip": warn and
            skip that optimiser step (no weight, moment or EMA change from that batch); in
            validation/testing the batch is left out of the metrics. Non-finite *weights* always raise.
        check_weights_every_n_steps: how often (optimiser steps) the raw and EMA weights are
            checked for NaN/inf between the checks before every validation, checkpoint and at the end.
    """

    def __init__(
        self,
        potential: torch.nn.Module,
        loss: dict | None = None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        ema_decay: float | None = 0.99,
        compute_stress: str | bool = "auto",
        rotation_augmentation: bool = False,
        equivariance_loss: dict | None = None,
        rotation_gradient_penalty: float | None = None,
        nonfinite: str = "raise",
        check_weights_every_n_steps: int = 100,
    ):
        super().__init__()
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
        if int(check_weights_every_n_steps) < 1:
            raise ValueError(f"check_weights_every_n_steps must be >= 1, got {check_weights_every_n_steps}")
        self.potential = potential
        self.loss_fn = PotentialLoss(**(loss or {}))
        self.optimizer_config = dict(optimizer or {"lr": 1e-3})
        self.scheduler_config = dict(scheduler) if scheduler else None
        self.ema = ExponentialMovingAverage(potential, ema_decay) if ema_decay else None
        self.compute_stress = compute_stress
        self.rotation_augmentation = bool(rotation_augmentation)
        self.equivariance_loss = (
            LearnedEquivarianceLoss(potential.backbone.num_scalar_features, **equivariance_loss)
            if equivariance_loss
            else None
        )
        self.rotation_gradient_penalty = float(rotation_gradient_penalty or 0.0)
        self.head_names = getattr(potential, "heads", None)  # multi-head: metrics per head as well
        self.accumulators = {split: ErrorAccumulator(self.head_names) for split in ("train", "val", "test")}
        self.nonfinite = nonfinite
        self.check_weights_every_n_steps = int(check_weights_every_n_steps)
        self.skipped_batches = 0  # batches skipped for a non-finite loss or gradient (nonfinite="skip")
        self._skip_step = False  # the current training batch's loss was not finite: skip its optimiser step
        self._total_steps_cache = None  # the run's optimiser steps (warmup_fraction of the symmetry loss)
        self._named_parameters_cache = None  # (name, parameter) pairs, walked once per fit (gradient check)
        self._current_batch = None  # (batch_idx, batch) of the training step, for the gradient check's message
        self._epoch_sums: dict[str, tuple] = {}  # {term: (sum of value x structures, structures)} this epoch

    # ----------------------------------------------------------------------------- prediction
    def evaluation_model(self) -> torch.nn.Module:
        """The weights used for validation, testing and export: the EMA copy when enabled."""
        return self.ema.averaged if self.ema is not None else self.potential

    def _wants_stress(self, batch) -> bool:
        if self.compute_stress == "auto":
            return bool(batch.stress_mask.any())
        return bool(self.compute_stress)

    def predict_batch(self, model: torch.nn.Module, batch, training: bool) -> dict[str, torch.Tensor]:
        with torch.enable_grad():  # forces are -dE/dr even during validation
            return model(batch, compute_forces=True, compute_stress=self._wants_stress(batch), training=training)

    # ----------------------------------------------------------------------------- steps
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        batch, predictions, loss, terms = self.training_loss(batch)
        self._current_batch = (batch_idx, batch)
        self._skip_step = self._nonfinite_loss("training", loss, predictions, batch, batch_idx) or self._skip_step
        if not self._skip_step:
            self.accumulators["train"].update(predictions, batch)
        if self._is_last_batch("train", batch_idx):
            self._log_epoch_metrics("train")
        if self._skip_step:  # a loss with zero gradients keeps DDP's backward in step; the step itself is skipped
            if self._is_last_batch("train", batch_idx):
                self._log_epoch_means()
            return sum((parameter * 0.0).sum() for parameter in self.trainable_parameters())
        batch_size = batch.num_graphs
        symmetry_weight = terms.pop("equivariance_weight", None)  # the warmed-up weight, not a loss term
        self._add_to_epoch_means({"loss": loss.detach(), **{f"{name}_loss": term for name, term in terms.items()}},
                                 batch_size)
        # Lightning writes step metrics every `log_every_n_steps` only, and each `self.log` costs
        # about a millisecond: log step values on those steps, and epoch means once per epoch.
        if self._logs_this_step():
            self.log("train/loss_step", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)
            if symmetry_weight is not None:
                self.log("train/equivariance_weight", symmetry_weight, on_step=True, on_epoch=False, batch_size=batch_size)
            self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=batch_size)
        if self._is_last_batch("train", batch_idx):
            self._log_epoch_means()
        return loss

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes step metrics after this training step (every
        ``trainer.log_every_n_steps``); a step metric logged on other steps is dropped."""
        trainer = self.trainer
        connector = getattr(trainer, "_logger_connector", None)
        return connector is None or bool(connector.should_update_logs) or bool(trainer.fast_dev_run)

    def _add_to_epoch_means(self, values: dict[str, torch.Tensor], batch_size: int) -> None:
        """Accumulate this batch's loss terms (weighted by its structures) for the epoch means."""
        for name, value in values.items():
            total, count = self._epoch_sums.get(name, (0.0, 0))
            self._epoch_sums[name] = (total + value.detach() * batch_size, count + batch_size)

    def _log_epoch_means(self) -> None:
        """``train/loss_epoch`` (mean over DDP ranks) and ``train/<term>_loss`` (this rank's).

        A term exists only for batches with that label (no stress term without a crystal), so
        under DDP one rank may never have a term in an epoch that the other has: a synced metric
        would then wait forever for the other rank. The terms are per-rank diagnostics.
        """
        for name, (total, count) in self._epoch_sums.items():
            mean = total / count
            if name == "loss":
                self.log("train/loss_epoch", mean, on_step=False, on_epoch=True, batch_size=1, sync_dist=True)
            else:
                self.log(f"train/{name}", mean, on_step=False, on_epoch=True, batch_size=1, sync_dist=False)
        self._epoch_sums = {}

    def training_loss(self, batch):
        """(batch as trained on, predictions, loss, detached terms) of one training step.

        Augmentation rotates the batch first (R1 x); the learned-equivariance loss then compares
        copies of that rotated batch. With its ``reuse_main_pass`` the main pass's embeddings of
        R1 x are copy 1 and a single extra pass embeds copy 2 = R2 R1 x (T sees R2).
        """
        if self.rotation_augmentation:
            batch = rotation_augmentation(batch)
        reuse = self.equivariance_loss is not None and self.equivariance_loss.reuse_main_pass
        if reuse:
            with capture_embeddings(self.potential) as captured:
                predictions = self.predict_batch(self.potential, batch, training=True)
        else:
            predictions = self.predict_batch(self.potential, batch, training=True)
        loss, terms = self.loss_fn(predictions, batch)
        if self.equivariance_loss is not None:
            symmetry_loss, symmetry_terms = self.equivariance_loss(
                self.potential,
                batch,
                step=self.global_step,
                total_steps=self._total_steps() if self.equivariance_loss.warmup_fraction else None,
                main_embeddings=captured.embeddings[-1] if reuse else None,
            )
            loss = loss + symmetry_loss
            terms.update(symmetry_terms)
        if self.rotation_gradient_penalty:
            penalty = energy_gradient_rotation_penalty(self.potential, batch)
            loss = loss + self.rotation_gradient_penalty * penalty
            terms["rotation_gradient_penalty"] = penalty.detach()
        return batch, predictions, loss, terms

    def _total_steps(self) -> int:
        """The run's optimiser steps (for a warm-up given as a fraction of it)."""
        if self._trainer is None:
            raise ValueError("symmetry.equivariance_loss.warmup_fraction needs a Trainer (total steps); use warmup_steps")
        if self._total_steps_cache is None:
            self._total_steps_cache = int(self.trainer.estimated_stepping_batches)
        return self._total_steps_cache

    def on_before_optimizer_step(self, optimizer) -> None:
        """Gradients (already summed over DDP ranks, so every rank decides alike) must be finite."""
        if not self._skip_step:
            if self._named_parameters_cache is None:
                self._named_parameters_cache = list(self.named_parameters())
            named = [(name, parameter.grad) for name, parameter in self._named_parameters_cache if parameter.grad is not None]
            bad = nonfinite_tensors(named)
            if bad:
                self._nonfinite_found(
                    f"non-finite gradient at {self._where(*self._current_batch)}: "
                    f"{len(bad)} of {len(named)} gradient tensors hold NaN/inf ({_listed(bad)})"
                )
                self._skip_step = True
        if self._skip_step:
            optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without a gradient untouched

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimiser step, then the EMA update (before any callback can checkpoint this step).

        A skipped batch (``nonfinite="skip"``) changes neither the weights nor the EMA.
        """
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None and not self._skip_step:
            self.ema.update(self.potential)
        self._skip_step = False
        if (self.global_step + 1) % self.check_weights_every_n_steps == 0:
            self.check_weights(f"after optimiser step {self.global_step + 1}")

    # ----------------------------------------------------------------------------- non-finite guards
    def _nonfinite_loss(self, split: str, loss: torch.Tensor, predictions: dict, batch, batch_idx: int) -> bool:
        """False if ``loss`` is finite on every DDP rank; else raise, or warn and return True (skip)."""
        local = not bool(torch.isfinite(loss.detach()))
        if not self.trainer.strategy.reduce_boolean_decision(local, all=False):  # any rank
            return False
        culprits = nonfinite_structures(predictions, batch) if local else {}
        if culprits:
            cause = "; ".join(f"structure {structure_names(batch, [k])}: {', '.join(what)}" for k, what in culprits.items())
        else:
            cause = "no prediction or label is NaN/inf (the loss overflowed)" if local else "on another DDP rank"
        self._nonfinite_found(f"non-finite {split} loss ({float(loss.detach())}) at {self._where(batch_idx, batch)}: {cause}")
        return True

    def _where(self, batch_idx: int, batch) -> str:
        """'global step s, epoch e, batch b (batch of structures ...)' for error messages."""
        return (
            f"global step {self.global_step}, epoch {self.current_epoch}, batch {batch_idx} "
            f"(batch of structures {structure_names(batch, range(batch.num_graphs))})"
        )

    def _nonfinite_found(self, message: str) -> None:
        """Raise `NonFiniteTrainingError` (nonfinite="raise") or warn that the batch is skipped."""
        if self.nonfinite == "raise":
            raise NonFiniteTrainingError(
                f"PotentialModule: {message}. Fix the data, or set nonfinite=skip to skip such batches with a warning."
            )
        self.skipped_batches += 1
        warnings.warn(f"PotentialModule: {message}; batch skipped ({self.skipped_batches} so far)", stacklevel=2)

    def check_weights(self, when: str) -> None:
        """Raise `NonFiniteTrainingError` if a raw or EMA weight (or buffer) is NaN/inf; ``when`` goes into the message."""
        bad = nonfinite_tensors([*self.named_parameters(), *self.named_buffers()])
        if bad:
            raise NonFiniteTrainingError(
                f"PotentialModule: non-finite weights {when} (global step {self.global_step}): "
                f"{len(bad)} tensors hold NaN/inf ({_listed(bad)}); not continuing, checkpointing or exporting them"
            )

    def on_validation_start(self) -> None:
        self.check_weights("before validation (and so before the export)")

    def on_train_end(self) -> None:
        self.check_weights("at the end of training")

    def _evaluation_step(self, split: str, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        predictions = self.predict_batch(self.evaluation_model(), batch, training=False)
        loss, _ = self.loss_fn(predictions, batch)
        if not self._nonfinite_loss(split, loss, predictions, batch, batch_idx):
            self.accumulators.setdefault(split, ErrorAccumulator(self.head_names)).update(predictions, batch)
            self.log(f"{split}/loss", loss.detach(), on_epoch=True, batch_size=batch.num_graphs, sync_dist=True,
                     add_dataloader_idx=False)  # a named test set carries its name in ``split``
        if self._is_last_batch(split, batch_idx, dataloader_idx):
            self._log_epoch_metrics(split)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluation_step("val", batch, batch_idx)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(self.test_split(dataloader_idx), batch, batch_idx, dataloader_idx)

    def test_split(self, dataloader_idx: int = 0) -> str:
        """Metric prefix of test dataloader ``dataloader_idx``: ``test/<name>`` for a named test set
        (the datamodule's ``test_names``, e.g. from ``data.test_paths``), else ``test``."""
        datamodule = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "test_names", None) or [None]
        name = names[dataloader_idx] if dataloader_idx < len(names) else f"dataloader_{dataloader_idx}"
        return "test" if name is None else f"test/{name}"

    # ----------------------------------------------------------------------------- epoch metrics
    # The epoch's error sums are reduced over DDP ranks inside the step of the epoch's last batch,
    # where every rank is in lockstep. Epoch-end hooks are not safe for collectives: rank 0's
    # progress bar computes Lightning's synced metrics there before the module hook runs, and the
    # ranks' collectives would interleave differently (a deadlock under DDP). Several test
    # dataloaders run one after the other, so each is reduced in the step of its own last batch.
    def _is_last_batch(self, split: str, batch_idx: int, dataloader_idx: int = 0) -> bool:
        trainer = self.trainer
        if split == "train":
            total = trainer.num_training_batches
        elif split == "val":
            total = (trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches)[0]
        else:
            total = trainer.num_test_batches[dataloader_idx]
        return batch_idx == total - 1

    def _log_epoch_metrics(self, split: str) -> None:
        accumulator = self.accumulators.setdefault(split, ErrorAccumulator(self.head_names))
        metrics = accumulator.compute(split)  # already summed over DDP ranks; labels absent: no metric
        accumulator.reset()
        for name, value in metrics.items():
            show = split == "val" and name == "val/forces_mae"
            self.log(name, value, prog_bar=show, on_step=False, on_epoch=True, sync_dist=False, batch_size=1,
                     add_dataloader_idx=False)

    def on_train_epoch_start(self) -> None:
        self.accumulators["train"].reset()
        self._epoch_sums = {}

    def on_validation_epoch_start(self) -> None:
        self.accumulators["val"].reset()

    def on_test_epoch_start(self) -> None:
        for split, accumulator in self.accumulators.items():  # "test" and every "test/<name>"
            if split == "test" or split.startswith("test/"):
                accumulator.reset()

    # ----------------------------------------------------------------------------- optimisation
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The potential's parameters plus those of the learned-equivariance map (not the EMA copy),
        without the frozen ones (``requires_grad=False``, e.g. ``finetune.freeze``)."""
        parameters = [parameter for parameter in self.potential.parameters() if parameter.requires_grad]
        if self.equivariance_loss is not None:
            parameters += list(self.equivariance_loss.parameters())
        return parameters

    def configure_optimizers(self):
        """The optimiser and schedule of the training config, by ``_target_`` (`mlip.train.schedules`)."""
        self._named_parameters_cache = None  # the parameters are fixed from here on
        optimizer = build_optimizer(self.optimizer_config, self.trainable_parameters())
        scheduler = build_scheduler(self.scheduler_config, optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Steps ``scheduler``; a `BudgetCosine` first learns how much of the run's budget is spent."""
        if isinstance(scheduler, BudgetCosine):
            scheduler.progress = run_progress(self.trainer)
        super().lr_scheduler_step(scheduler, metric)

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Random-number-generator states, so that a resumed run draws the same random numbers.

        Stored as tensors and built-in types only, so the checkpoint loads with ``weights_only=True``.
        Refuses (`NonFiniteTrainingError`) to write a checkpoint of non-finite weights.
        """
        self.check_weights("when saving a checkpoint")
        name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states is None:
            return
        torch.set_rng_state(states["torch"])
        name, keys, position, has_gauss, cached_gaussian = states["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        random.setstate(states["python"])
