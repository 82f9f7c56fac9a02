"""Training stage two (`mlip.train.stages`): it begins where configured (loss weights and learning
rate change at that step, not before), survives a resume, is off by default, and the ethanol
experiment that uses it composes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import lightning.pytorch as pl
import pytest
from train_helpers import (
    REPO_ROOT,
    compose_config,
    read_metrics,
    tiny_overrides,
    write_emt_data,
)

from mlip.export import read_export
from mlip.train.build import build_callbacks, train
from mlip.train.checkpoint import load_checkpoint_file
from mlip.train.schedules import WarmupCosine
from mlip.train.stages import StageTwo, StageTwoConfig

STEPS_PER_EPOCH = 4  # 16 structures, 3 for validation, 13 for training in batches of 4
STAGE_TWO = "{start:0.5,loss_weights:{energy:1000.0,forces:100.0},lr:1.0e-3}"


class RecordSteps(pl.Callback):
    """What each optimiser step trains with: (global step, stage, loss weights, learning rate),
    recorded at the start of the batch (after `StageTwo`, which comes earlier in the callbacks)."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        weights = dataclasses.asdict(pl_module.loss_fn.weights)
        stage = next((c.stage for c in trainer.callbacks if isinstance(c, StageTwo)), None)
        self.steps.append((trainer.global_step, stage, weights, trainer.optimizers[0].param_groups[0]["lr"]))


@pytest.fixture(scope="module")
def emt_files(tmp_path_factory) -> list[str]:
    return write_emt_data(tmp_path_factory.mktemp("emt"), n_clusters=8, n_crystals=8)


def stage_config(paths, run_dir, **extra):
    settings = {"data.val_fraction": 0.2, "data.test_fraction": 0.0, "test_after_fit": False, "trainer.max_epochs": 3}
    settings.update(extra)
    overrides = tiny_overrides(paths, run_dir, **settings)
    if settings.get("scheduler") == "plateau":  # it has no warm-up to shorten
        overrides = [entry for entry in overrides if not entry.startswith("scheduler.warmup_steps=")]
    return compose_config(overrides)


def run(config, run_dir) -> RecordSteps:
    recorder = RecordSteps()
    train(config, run_dir, extra_callbacks=[recorder])
    return recorder


BASE = {"energy": 1.0, "forces": 10.0, "stress": 100.0, "direct_forces": 10.0}  # LossWeights' defaults
STAGE_TWO_WEIGHTS = {**BASE, "energy": 1000.0, "forces": 100.0}


def test_stage_two_begins_at_the_configured_step_and_not_before(emt_files, tmp_path):
    run_dir = tmp_path / "runs" / "two"
    steps = run(stage_config(emt_files, run_dir, stage_two=STAGE_TWO), run_dir).steps
    total = 3 * STEPS_PER_EPOCH
    assert [step for step, *_ in steps] == list(range(total))
    start = total // 2  # start: 0.5 of 12 optimiser steps
    schedule = WarmupCosine(warmup_steps=5, total_steps=total, min_factor=0.01)
    for step, stage, weights, lr in steps:
        if step < start:
            assert stage == 1 and weights == BASE
            assert lr == pytest.approx(0.005 * schedule(step))  # stage one's cosine schedule, untouched
        else:
            assert stage == 2 and weights == STAGE_TWO_WEIGHTS
            # set to stage_two.lr at the switch; the cosine schedule keeps its shape from there
            assert lr == pytest.approx(1.0e-3 * schedule(step) / schedule(start))
    assert steps[start][3] == pytest.approx(1.0e-3)

    rows = read_metrics(run_dir)
    logged = {int(row["step"]): row for row in rows if "train/stage" in row}
    assert {row["train/stage"] for row in logged.values()} == {1.0, 2.0}
    assert {row["train/loss_weight_energy"] for row in logged.values()} == {1.0, 1000.0}
    # the export says which stage it came from; stage one's best is kept aside
    training = read_export(run_dir / "best_model.pt")["training"]
    assert training["stage"] == 2 and training["stage_two_start_step"] == start
    assert training["global_step"] > start
    assert read_export(run_dir / "best_model_stage1.pt")["training"]["stage"] == 1
    assert load_checkpoint_file(run_dir / "checkpoints" / "best.ckpt")["global_step"] > start  # best.ckpt restarted too
    state = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["callbacks"]  # weights_only=True
    assert {"started_at_step": start, "stage": 2} in state.values()


def test_resumed_in_stage_two_it_stays_in_stage_two_with_its_weights_and_lr(emt_files, tmp_path):
    run_dir = tmp_path / "runs" / "resumed"
    common = {"scheduler": "plateau", "stage_two": STAGE_TWO, "checkpoint.every_n_train_steps": 2, "trainer.max_epochs": 20}
    first = run(stage_config(emt_files, run_dir, **common, **{"trainer.max_steps": 6}), run_dir).steps
    assert [stage for _, stage, _, _ in first] == [1, 1, 1, 2, 2, 2]  # 0.5 of 6 steps
    assert first[3][3] == pytest.approx(1.0e-3) and first[2][3] == pytest.approx(0.005)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert load_checkpoint_file(last)["global_step"] == 6

    # resumed with 4x the steps, start: 0.5 would now mean step 12, but the run already is in stage two
    second = run(stage_config(emt_files, run_dir, **common, **{"trainer.max_steps": 24}), run_dir).steps
    assert second[0][0] == 6 and second[-1][0] == 23
    for step, stage, weights, lr in second:
        assert stage == 2 and weights == STAGE_TWO_WEIGHTS
    assert second[0][3] == pytest.approx(1.0e-3)  # the learning rate came back with the optimiser state
    assert all(lr <= 1.0e-3 * (1 + 1e-12) for *_, lr in second)  # the plateau schedule only lowers it
    results = json.loads((run_dir / "results.json").read_text())
    assert results["resumed_from"] == str(last) and results["global_step"] == 24
    assert read_export(run_dir / "best_model.pt")["training"]["stage"] == 2


def test_lr_factor_scales_the_learning_rate_the_schedule_reached(emt_files, tmp_path):
    run_dir = tmp_path / "runs" / "factor"
    stage_two = "{start:0.5,loss_weights:{energy:1000.0},lr_factor:0.25}"
    steps = run(stage_config(emt_files, run_dir, stage_two=stage_two), run_dir).steps
    total = 3 * STEPS_PER_EPOCH
    start = total // 2
    schedule = WarmupCosine(warmup_steps=5, total_steps=total, min_factor=0.01)
    for step, stage, weights, lr in steps:
        factor = 1.0 if step < start else 0.25  # a quarter of the cosine schedule from the switch on
        assert stage == (1 if step < start else 2)
        assert lr == pytest.approx(factor * 0.005 * schedule(step))


def test_stage_two_by_epoch(emt_files, tmp_path):
    run_dir = tmp_path / "runs" / "by_epoch"
    stage_two = "{start_epoch:2,loss_weights:{stress:1.0}}"  # lr: null keeps the schedule
    steps = run(stage_config(emt_files, run_dir, stage_two=stage_two, scheduler="constant"), run_dir).steps
    for step, stage, weights, lr in steps:
        assert stage == (2 if step >= 2 * STEPS_PER_EPOCH else 1)
        assert weights == ({**BASE, "stress": 1.0} if stage == 2 else BASE)
        assert lr == pytest.approx(0.005 * min(1.0, (step + 1) / 5))


def test_stage_two_by_wall_time_over_a_time_budget(emt_files, tmp_path):
    """``start_time: 0.5`` with ``trainer.max_time`` of 8 s and no epoch limit: the run trains in
    stage one, switches once, and stays in stage two until the budget ends it."""
    run_dir = tmp_path / "runs" / "by_time"
    stage_two = "{start_time:0.5,loss_weights:{energy:1000.0},lr:1.0e-3}"
    config = stage_config(emt_files, run_dir, stage_two=stage_two, scheduler="constant",
                          **{"trainer.max_epochs": 100000, "trainer.max_time": "00:00:00:08"})
    steps = run(config, run_dir).steps
    stages = [stage for _, stage, _, _ in steps]
    assert stages[0] == 1 and stages[-1] == 2
    switch = stages.index(2)
    assert all(stage == 2 for stage in stages[switch:])  # monotone: one switch
    assert all(weights == {**BASE, "energy": 1000.0} and lr == pytest.approx(1e-3) for _, _, weights, lr in steps[switch:])
    assert read_export(run_dir / "best_model.pt")["training"]["stage"] == 2


def test_a_time_fraction_needs_a_time_budget(emt_files, tmp_path):
    run_dir = tmp_path / "runs" / "no_budget"
    config = stage_config(emt_files, run_dir, stage_two="{start_time:0.5,lr:1.0e-3}")
    with pytest.raises(ValueError, match="max_time is not set"):
        run(config, run_dir)


def test_off_by_default_changes_nothing(emt_files, tmp_path):
    run_dir = tmp_path / "runs" / "one"
    config = stage_config(emt_files, run_dir)
    assert config.stage_two is None
    assert not any(isinstance(c, StageTwo) for c in build_callbacks(config, run_dir, statistics=None))
    steps = run(config, run_dir).steps
    schedule = WarmupCosine(warmup_steps=5, total_steps=3 * STEPS_PER_EPOCH, min_factor=0.01)
    for step, stage, weights, lr in steps:
        assert stage is None and weights == BASE and lr == pytest.approx(0.005 * schedule(step))
    assert not any("train/stage" in row for row in read_metrics(run_dir))
    assert read_export(run_dir / "best_model.pt")["training"]["stage"] == 1
    assert not (run_dir / "best_model_stage1.pt").exists()


@pytest.mark.parametrize(
    "section, message",
    [
        ({"loss_weights": {"energy": 10.0}}, "exactly one of"),
        ({"start": 0.5, "start_epoch": 3, "lr": 1e-3}, "exactly one of"),
        ({"start": 1.5, "lr": 1e-3}, "fraction"),
        ({"start": 0.5, "loss_weights": {"enrgy": 10.0}}, "unknown"),
        ({"start": 0.5, "loss_weights": {"energy": -1.0}}, ">= 0"),
        ({"start_epoch": 2.5, "lr": 1e-3}, "integer"),
        ({"start": 0.5, "lr": 0.0}, "positive"),
        ({"start": 0.5}, "change nothing"),
        ({"start": 0.5, "lr": 1e-3, "swa": True}, "unknown keys"),
        ({"start_time": 1.0, "lr": 1e-3}, "fraction of trainer.max_time"),
        ({"start_time": 0.5, "start": 0.5, "lr": 1e-3}, "exactly one of"),
        ({"start": 0.5, "lr": 1e-3, "lr_factor": 0.5}, "not both"),
        ({"start": 0.5, "lr_factor": 0.0}, "lr_factor must be a positive"),
        ({"start": 0.5, "lr_factor": True}, "lr_factor must be a positive"),
    ],
)
def test_malformed_stage_two_configs_are_refused(section, message):
    with pytest.raises(ValueError, match=message):
        StageTwoConfig.from_config(section)


def test_a_fraction_needs_a_run_of_finite_length():
    config = StageTwoConfig.from_config({"start": 0.8, "lr": 1e-3})
    assert config.start_step_of(100) == 80
    with pytest.raises(ValueError, match="finite length"):
        config.start_step_of(float("inf"))
    assert StageTwoConfig.from_config(None) is None


def test_the_ethanol_experiment_composes():
    config = compose_config(["experiment=ethanol_pbe"])
    assert config.dtype == "float64" and config.data.batch_size == 5
    # a cosine from lr 0.01 to 0.001 over the run's budget (epochs or trainer.max_time)
    assert config.scheduler._target_ == "mlip.train.schedules.BudgetCosine" and config.scheduler.min_factor == 0.1
    assert config.optimizer.lr == 0.01 and config.optimizer.amsgrad and config.ema_decay == 0.99
    assert config.loss.weights.energy == 1.0 and config.loss.weights.forces == 1000.0
    stage_two = StageTwoConfig.from_config(dict(config.stage_two))
    assert stage_two.start == 0.8 and stage_two.loss_weights["energy"] > config.loss.weights.energy
    # the force weight is kept (MACE lowers it to 100; measured worse for forces); the lr follows the cosine
    assert stage_two.loss_weights["forces"] == config.loss.weights.forces
    assert stage_two.lr is None and stage_two.lr_factor is None
    assert all(str(path).endswith(".h5") for path in config.data.paths)
    shown = subprocess.run(
        [sys.executable, "-m", "mlip.cli.train", "experiment=ethanol_pbe", "--cfg", "job"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "stage_two:" in shown.stdout and "ethanol_pbe" in shown.stdout


def test_the_switch_resets_a_plateau_schedule_and_rescales_a_lambda_schedule():
    from types import SimpleNamespace

    import torch

    from mlip.train.stages import set_learning_rate

    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([parameter], lr=0.01)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
    for value in (1.0, 2.0):  # one improvement, then one bad epoch
        plateau.step(value)
    assert plateau.best == 1.0 and plateau.num_bad_epochs == 1
    set_learning_rate(SimpleNamespace(optimizers=[optimizer], lr_scheduler_configs=[SimpleNamespace(scheduler=plateau)]), 1e-3)
    assert optimizer.param_groups[0]["lr"] == 1e-3 and plateau.num_bad_epochs == 0 and plateau.best == float("inf")
    plateau.step(500.0)  # a stage-two loss, on another scale: a new best, not a plateau
    assert optimizer.param_groups[0]["lr"] == 1e-3 and plateau.best == 500.0

    optimizer = torch.optim.Adam([parameter], lr=0.01)
    cosine = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(0, 10, 0.01))
    for _ in range(4):
        optimizer.step()
        cosine.step()
    set_learning_rate(SimpleNamespace(optimizers=[optimizer], lr_scheduler_configs=[SimpleNamespace(scheduler=cosine)]), 1e-3)
    optimizer.step()
    cosine.step()
    factor = WarmupCosine(0, 10, 0.01)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * factor(5) / factor(4))
