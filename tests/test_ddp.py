"""DDP on CPU: two gloo processes train on disjoint shards and finish together."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import defaultdict

from test_resume import subprocess_environment
from train_helpers import REPO_ROOT, tiny_overrides, write_emt_data

EPOCHS = 2
BATCH_SIZE = 4


def test_ddp_two_cpu_processes_see_disjoint_data(tmp_path):
    paths = write_emt_data(tmp_path / "data", n_clusters=10, n_crystals=10)  # 20 - 2 val - 2 test = 16 train
    run_dir = tmp_path / "runs" / "ddp"
    probe_dir = tmp_path / "seen"
    probe_dir.mkdir()
    overrides = tiny_overrides(
        paths,
        run_dir,
        **{
            "trainer": "ddp_cpu",
            "trainer.max_epochs": EPOCHS,
            "data.batch_size": BATCH_SIZE,
            "data.test_fraction": 0.1,  # test after fit under DDP too
            "progress_bar": "tqdm",  # rank 0's progress bar syncs metrics at epoch end: a deadlock trap
            "callbacks": f"[{{_target_:train_helpers.RecordStructureIds,directory:'{probe_dir}'}}]",
        },
    )
    command = [sys.executable, "-m", "mlip.cli.train", *overrides]
    finished = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_environment(),
                              capture_output=True, text=True, timeout=180, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]

    n_train = 20 - 2 * round(0.1 * 20)
    seen = {rank: defaultdict(list) for rank in (0, 1)}  # rank -> epoch -> structure ids
    for rank in (0, 1):
        for line in (probe_dir / f"rank{rank}.txt").read_text().splitlines():
            epoch, structure_id = line.split()
            seen[rank][int(epoch)].append(structure_id)
    for epoch in range(EPOCHS):
        rank0, rank1 = seen[0][epoch], seen[1][epoch]
        assert len(rank0) == len(rank1) == n_train // 2
        assert not set(rank0) & set(rank1), f"epoch {epoch}: both ranks trained on {set(rank0) & set(rank1)}"
        assert len(set(rank0) | set(rank1)) == n_train  # together they cover the training split once
    assert seen[0][0] != seen[0][1]  # reshuffled between epochs (DistributedSampler.set_epoch)

    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == EPOCHS * math.ceil(n_train / 2 / BATCH_SIZE)
    assert "test/forces_mae" in results["test"]
    assert (run_dir / "best_model.pt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_ddp_multi_head_run_with_head_weights(tmp_path):
    """Two gloo processes, two weighted heads: Lightning shards the weighted sampler, every rank
    draws its half of the epoch, and the per-head test sets and the two-head export come out."""
    clusters, crystals = write_emt_data(tmp_path / "data", n_clusters=10, n_crystals=10)
    run_dir = tmp_path / "runs" / "ddp_heads"
    probe_dir = tmp_path / "seen"
    probe_dir.mkdir()
    overrides = tiny_overrides(
        [clusters, crystals],
        run_dir,
        **{
            "data.paths": "null",
            "data.heads": f"{{clusters:{{paths:[{clusters}],weight:3.0}},crystals:{{paths:[{crystals}],weight:1.0}}}}",
            "trainer": "ddp_cpu",
            "trainer.max_epochs": 1,
            "data.batch_size": BATCH_SIZE,
            "data.test_fraction": 0.1,
            "callbacks": f"[{{_target_:train_helpers.RecordStructureIds,directory:'{probe_dir}'}}]",
        },
    )
    command = [sys.executable, "-m", "mlip.cli.train", *overrides]
    finished = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_environment(),
                              capture_output=True, text=True, timeout=180, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    n_train = 20 - 2 * round(0.1 * 20)
    for rank in (0, 1):
        assert len((probe_dir / f"rank{rank}.txt").read_text().splitlines()) == n_train // 2
    results = json.loads((run_dir / "results.json").read_text())
    tested = {key.split("/")[1] for key in results["test"]}  # one test set per head that has test structures
    assert tested and tested <= {"clusters", "crystals"} and all(f"test/{head}/forces_mae" in results["test"] for head in tested)
    import mlip

    assert mlip.load(run_dir / "best_model.pt").heads == ["clusters", "crystals"]
