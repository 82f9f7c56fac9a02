"""A non-editable install trains: the configs and the sample data ship inside the package.

`pip install .` (from a copy of the source holding only what the build needs) into a fresh venv
that sees this interpreter's packages (``--system-site-packages``, ``--no-deps
--no-build-isolation``: nothing is downloaded), then `mlip-train experiment=sample` for three
steps in another empty folder, with neither the checkout nor MLIP_CONFIG_DIR in reach.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    finished = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert finished.returncode == 0, f"{' '.join(command)} failed:\n{finished.stdout[-3000:]}\n{finished.stderr[-6000:]}"
    return finished


def test_non_editable_install_trains_the_sample_experiment(tmp_path):
    started = time.perf_counter()
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "mlip", source / "mlip", ignore=shutil.ignore_patterns("__pycache__", ".mlip_cache", "*.mlip-tmp"))

    env = {key: value for key, value in os.environ.items() if key not in ("MLIP_CONFIG_DIR", "PYTHONPATH", "MLIP_SAMPLE_DATA_DIR")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path, env, 120)
    python = venv / "bin" / "python"
    # the venv has no pip of its own: the system pip (seen through --system-site-packages) run by
    # the venv's python installs into the venv
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(source)],
         tmp_path, env, 300)

    work = tmp_path / "work"
    work.mkdir()
    where = _run([str(python), "-c", "import mlip; print(mlip.__file__)"], work, env, 60).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), f"mlip imported from {where}, not the venv"
    installed = Path(where).parent
    assert (installed / "configs" / "train.yaml").is_file() and (installed / "sample_data" / "molecules.h5").is_file()

    overrides = [
        "experiment=sample", "name=tiny", f"runs_dir={work / 'runs'}", "trainer.max_steps=3", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", "trainer.log_every_n_steps=1",
        "progress_bar=none", "logger=none", "data.statistics_cache=false", "scheduler.warmup_steps=1",
        "model.backbone.num_channels=8", "model.readout_hidden=[8]",
    ]
    script = venv / "bin" / "mlip-train"
    assert script.is_file(), "the mlip-train console script was not installed"
    _run([str(python), str(script), *overrides], work, env, 400)
    assert (work / "runs" / "tiny" / "best_model.pt").is_file()
    assert not (REPO_ROOT / "build").exists() or (REPO_ROOT / "build").stat().st_mtime < started  # built in the copy
    print(f"install + 3 training steps: {time.perf_counter() - started:.1f} s")
