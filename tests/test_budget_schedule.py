"""`scheduler=budget_cosine` (`mlip.train.schedules.BudgetCosine`): the learning rate decays along a
cosine over the run's budget, in optimiser steps or in wall time (``trainer.max_time``), whichever
ends first; its progress survives a checkpoint (read with ``weights_only=True``) and a stage-two
switch rescales it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from train_helpers import compose_config, tiny_overrides, write_emt_data

from mlip.train.build import train
from mlip.train.checkpoint import load_checkpoint_file
from mlip.train.schedules import BudgetCosine, cosine_factor, run_progress
from mlip.train.stages import set_learning_rate

LR = 0.005  # the tiny runs' optimiser lr (mlip's default config)
WARMUP = 5  # tiny_overrides' scheduler.warmup_steps


class RecordLearningRate(pl.Callback):
    """The learning rate each optimiser step trains with."""

    def __init__(self):
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.fixture(scope="module")
def emt_files(tmp_path_factory) -> list[str]:
    return write_emt_data(tmp_path_factory.mktemp("emt"), n_clusters=8, n_crystals=8)


class StopAfterEpoch(pl.Callback):
    """Ends fitting after epoch ``last`` (0-based), as a killed run that saved its epoch-end checkpoint."""

    def __init__(self, last: int):
        self.last = last

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch >= self.last:
            trainer.should_stop = True


def budget_run(paths, run_dir, callbacks=(), **extra) -> list[float]:
    settings = {"data.val_fraction": 0.2, "data.test_fraction": 0.0, "test_after_fit": False,
                "scheduler": "budget_cosine", "optimizer.lr": LR, **extra}
    recorder = RecordLearningRate()
    train(compose_config(tiny_overrides(paths, run_dir, **settings)), run_dir, extra_callbacks=[recorder, *callbacks])
    return recorder.rates


def test_the_factor_warms_up_then_follows_the_cosine_of_progress():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = BudgetCosine(optimizer, warmup_steps=4, min_factor=0.1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)  # step 0 of the warm-up
    for progress in (0.0, 0.0, 0.0):
        schedule.progress = progress
        optimizer.step()
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)  # warm-up done, no progress yet
    for progress, expected in ((0.5, 0.55), (1.0, 0.1), (1.7, 0.1)):
        schedule.progress = progress
        optimizer.step()
        schedule.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert cosine_factor(0.25, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="min_factor"):
        BudgetCosine(optimizer, min_factor=1.5)


def test_progress_is_the_larger_of_the_step_and_the_time_fractions():
    trainer = SimpleNamespace(
        estimated_stepping_batches=200, global_step=50, callbacks=[],
        strategy=SimpleNamespace(broadcast=lambda value, src=0: value),
    )
    assert run_progress(trainer) == pytest.approx(0.25)  # no time budget
    trainer.estimated_stepping_batches = float("inf")
    assert run_progress(trainer) == 0.0  # no finite length and no time budget: no decay

    from lightning.pytorch.callbacks import Timer

    timer = Timer(duration={"seconds": 100})
    timer.time_elapsed = lambda stage: 60.0
    timer.time_remaining = lambda stage: 40.0
    trainer.callbacks = [timer]
    assert run_progress(trainer) == pytest.approx(0.6)
    trainer.estimated_stepping_batches, trainer.global_step = 100, 90
    assert run_progress(trainer) == pytest.approx(0.9)  # the steps run out first


def test_a_step_budget_decays_to_the_minimum_at_the_last_step(emt_files, tmp_path):
    rates = budget_run(emt_files, tmp_path / "runs" / "steps", **{"trainer.max_epochs": 6})
    total = len(rates)
    # step k trains with the factor for progress k / total (the schedule steps after each optimiser step)
    expected = [LR * min(1.0, (step + 1) / WARMUP) * cosine_factor(step / total, 0.01) for step in range(total)]
    assert rates == pytest.approx(expected)
    decay = rates[WARMUP:]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(decay, decay[1:]))  # monotone
    assert rates[-1] < 0.02 * LR


def test_a_time_budget_decays_over_the_wall_time(emt_files, tmp_path):
    """``trainer.max_time`` of 6 s and no usable step limit: the rate falls from lr to near
    ``min_factor · lr`` as the budget runs out, whatever the number of steps."""
    run_dir = tmp_path / "runs" / "time"
    rates = budget_run(emt_files, run_dir, **{"trainer.max_epochs": 100000, "trainer.max_time": "00:00:00:06"})
    assert len(rates) > 3 * WARMUP
    decay = rates[WARMUP:]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(decay, decay[1:]))
    assert decay[0] > 0.9 * LR
    assert rates[-1] < 0.15 * LR  # the last steps are near the end of the budget
    state = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["lr_schedulers"][0]
    assert 0.8 < state["progress"] <= 1.0 and state["min_factor"] == 0.01


def test_a_resumed_step_budget_continues_the_curve(emt_files, tmp_path):
    """Stopped after 3 of 6 epochs and resumed: the second half trains with exactly the rates of
    an uninterrupted 6-epoch run."""
    whole = budget_run(emt_files, tmp_path / "runs" / "whole", **{"trainer.max_epochs": 6})
    run_dir = tmp_path / "runs" / "halves"
    first = budget_run(emt_files, run_dir, callbacks=[StopAfterEpoch(2)], **{"trainer.max_epochs": 6})
    second = budget_run(emt_files, run_dir, **{"trainer.max_epochs": 6})  # resume: auto, from last.ckpt
    assert len(first) == len(whole) // 2 and len(first) + len(second) == len(whole)
    assert first + second == pytest.approx(whole)


def test_a_stage_two_switch_rescales_the_curve():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.01)
    schedule = BudgetCosine(optimizer, warmup_steps=0, min_factor=0.01)
    schedule.progress = 0.5
    optimizer.step()
    schedule.step()
    set_learning_rate(SimpleNamespace(optimizers=[optimizer], lr_scheduler_configs=[SimpleNamespace(scheduler=schedule)]),
                      0.4 * optimizer.param_groups[0]["lr"])
    schedule.progress = 0.75
    optimizer.step()
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.4 * 0.01 * cosine_factor(0.75, 0.01))
