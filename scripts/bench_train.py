"""Train for a fixed wall time and report test errors, throughput and peak memory.

    python scripts/bench_train.py --minutes 3                       # experiment=sample, MACE
    python scripts/bench_train.py --minutes 3 model/backbone=facet  # any mlip-train overrides

Reports (and writes to <run dir>/bench.json): test energy MAE (meV/atom) and force MAE (meV/Å) of
the best EMA checkpoint, training throughput in structures/s (training batches only, timed from
the first to the last training batch, validation excluded), optimiser steps, and the peak
resident memory of the process (MiB, `ru_maxrss`). Machine load changes the timings: compare
contenders run one after the other on the same machine state, and report the load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import lightning.pytorch as pl

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from mlip.train.build import config_dir, register_resolvers, train


class TrainingThroughput(pl.Callback):
    """Counts training structures and the time spent between training batch starts and ends."""

    def __init__(self) -> None:
        self.structures = 0
        self.seconds = 0.0
        self._started = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seconds += time.perf_counter() - self._started
        self.structures += batch.num_graphs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall time (the test runs after it)")
    parser.add_argument("--experiment", default="sample")
    parser.add_argument("--run-dir", default="runs/bench_train")
    parser.add_argument("overrides", nargs="*", help="mlip-train overrides, e.g. model/backbone=facet")
    arguments = parser.parse_args()

    from hydra import compose, initialize_config_dir

    register_resolvers()
    seconds = int(arguments.minutes * 60)
    max_time = f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"  # DD:HH:MM:SS
    overrides = [
        f"experiment={arguments.experiment}",
        f"trainer.max_time={max_time}",
        "trainer.max_epochs=100000",
        "scheduler=constant",  # a cosine schedule needs a known number of steps; max_time gives none
        "resume=never",
        "progress_bar=none",
        *arguments.overrides,
    ]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        config = compose("train", overrides=overrides)
    throughput = TrainingThroughput()
    started = time.perf_counter()
    results = train(config, arguments.run_dir, extra_callbacks=[throughput])
    wall = time.perf_counter() - started

    test = results.get("test", {})
    report = {
        "backbone": config.model.backbone._target_.rsplit(".", 1)[-1],
        "overrides": overrides,
        "train_minutes": arguments.minutes,
        "wall_seconds_total": round(wall, 1),
        "optimizer_steps": results["global_step"],
        "epochs": results["epoch"],
        "train_structures_per_second": round(throughput.structures / max(throughput.seconds, 1e-9), 1),
        "test_energy_mae_mev_per_atom": test.get("test/energy_mae"),
        "test_forces_mae_mev_per_angstrom": test.get("test/forces_mae"),
        "test_stress_mae_mev_per_cubic_angstrom": test.get("test/stress_mae"),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    (Path(arguments.run_dir) / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
