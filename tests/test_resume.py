"""Hard-kill resume: `mlip-train` killed with SIGKILL mid-epoch continues from `last.ckpt` with nothing lost
(training state and the metrics logged before the kill), also when killed in training stage two."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import REPO_ROOT, read_metrics, tiny_overrides, write_emt_data

from mlip.export import read_export

MAX_EPOCHS = 3
BATCH_SIZE = 2


def training_command(paths: list[str], run_dir: Path, **extra) -> list[str]:
    overrides = tiny_overrides(
        paths,
        run_dir,
        **{
            "trainer.max_epochs": MAX_EPOCHS,
            "data.batch_size": BATCH_SIZE,
            "data.test_fraction": 0.0,
            "checkpoint.every_n_train_steps": 4,
            "test_after_fit": False,
            **extra,
        },
    )
    return [sys.executable, "-m", "mlip.cli.train", *overrides]


def subprocess_environment() -> dict[str, str]:
    environment = dict(os.environ)
    extra = [str(REPO_ROOT), str(REPO_ROOT / "tests")]
    environment["PYTHONPATH"] = os.pathsep.join(extra + [environment.get("PYTHONPATH", "")])
    return environment


def wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"training exited (code {process.returncode}) before writing {path}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)


def test_resume_after_kill_9_mid_epoch(tmp_path):
    paths = write_emt_data(tmp_path / "data", n_clusters=16, n_crystals=16)
    run_dir = tmp_path / "runs" / "killed"
    command = training_command(paths, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"

    first = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(last, first, timeout=120)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait()
    assert first.returncode == -signal.SIGKILL

    saved = torch.load(last, map_location="cpu", weights_only=False)  # atomic: always a whole file
    saved_step = saved["global_step"]
    n_train = 32 - round(0.1 * 32)
    steps_per_epoch = math.ceil(n_train / BATCH_SIZE)
    total_steps = MAX_EPOCHS * steps_per_epoch
    assert 0 < saved_step < total_steps and saved_step % steps_per_epoch != 0  # killed mid-epoch
    before_kill = read_metrics(run_dir)  # the loggers are flushed before every checkpoint
    assert before_kill and all(row["step"] <= saved_step for row in before_kill)

    resumed = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_environment(),
                             capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last}" in resumed.stdout + resumed.stderr

    after = read_metrics(run_dir)
    assert after[: len(before_kill)] == before_kill  # appended to, not overwritten
    assert any("val/loss" in row for row in after)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["resumed_from"] == str(last)
    assert "val/loss" in results["fit"]
    assert results["global_step"] == total_steps  # finished the schedule, no step lost or repeated

    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["global_step"] == total_steps and final["epoch"] == MAX_EPOCHS - 1
    # every counter continued from the checkpoint instead of restarting from zero
    assert int(final["state_dict"]["ema.num_updates"]) == total_steps
    assert final["lr_schedulers"][0]["last_epoch"] == total_steps
    adam_steps = {float(state["step"]) for state in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {float(total_steps)}
    assert "rng_states" in final

    # the fit clock carried over the kill: wall seconds only grow along the logged rows
    clock = [row["time/fit_seconds"] for row in after if "time/fit_seconds" in row]
    assert len(clock) >= 2 and all(later > earlier for earlier, later in zip(clock, clock[1:]))
    clock_state = {key: state for key, state in final["callbacks"].items() if key.startswith("TrainingClock")}
    saved_clock = {key: state for key, state in saved["callbacks"].items() if key.startswith("TrainingClock")}
    assert next(iter(clock_state.values()))["seconds"] > next(iter(saved_clock.values()))["seconds"] > 0


def stage_of(checkpoint: dict) -> int:
    """The training stage stored by `mlip.train.stages.StageTwo` in a checkpoint (1 without one)."""
    states = [state for key, state in checkpoint.get("callbacks", {}).items() if key.startswith("StageTwo")]
    return states[0]["stage"] if states else 1


def test_killed_in_stage_two_it_resumes_in_stage_two(tmp_path):
    paths = write_emt_data(tmp_path / "data", n_clusters=16, n_crystals=16)
    run_dir = tmp_path / "runs" / "stage_two"
    start_step, stage_lr = 5, 1.0e-3
    command = training_command(
        paths, run_dir, scheduler="constant",  # warm-up over 5 steps, then constant: stage two is at stage_lr
        stage_two=f"{{start_step:{start_step},loss_weights:{{energy:1000.0,forces:100.0}},lr:{stage_lr}}}",
    )
    last = run_dir / "checkpoints" / "last.ckpt"

    first = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (last.exists() and stage_of(torch.load(last, map_location="cpu", weights_only=True)) == 2):
            assert first.poll() is None, f"training exited (code {first.returncode}) before a stage-two checkpoint"
            assert time.monotonic() < deadline, "no stage-two last.ckpt after 120 s"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait()
    saved = torch.load(last, map_location="cpu", weights_only=True)  # plain types only
    saved_step = saved["global_step"]
    total_steps = MAX_EPOCHS * math.ceil((32 - round(0.1 * 32)) / BATCH_SIZE)
    assert start_step < saved_step < total_steps

    resumed = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_environment(),
                             capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed in training stage two" in resumed.stdout + resumed.stderr

    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] == total_steps and stage_of(final) == 2
    assert [state["started_at_step"] for key, state in final["callbacks"].items() if key.startswith("StageTwo")] == [
        start_step
    ]
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(stage_lr)
    rows = [row for row in read_metrics(run_dir) if "train/stage" in row]
    assert {row["train/stage"] for row in rows if row["step"] < start_step} == {1.0}
    after = [row for row in rows if row["step"] > saved_step]
    assert after and all(row["train/stage"] == 2.0 and row["train/loss_weight_energy"] == 1000.0 for row in after)
    assert all(row["lr"] == pytest.approx(stage_lr) for row in after if "lr" in row)
    training = read_export(run_dir / "best_model.pt")["training"]
    assert training["stage"] == 2 and training["stage_two_start_step"] == start_step
