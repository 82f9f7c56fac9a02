"""Backbones side by side on identical data and an identical wall-time budget.

For every backbone (mlip's `mace`, `facet`, `transip`, and mace-torch when a Python with it
installed is given) this trains on the training split of the shipped sample data for the same
number of seconds, then reports on the same test split:

* parameters, training structures/s (structures per second spent in training steps),
* test energy MAE (meV/atom, overall and per subset) and force MAE (meV/Å),
* MD speed (atom-steps/s, velocity Verlet on a 9-atom molecule, ethanol),
* peak resident memory of the run (MB).

Each contender runs in its own subprocess, one after another, so memory is its own and the
CPU is shared with nothing else in this script. mace-torch runs in its own virtual
environment (it pins e3nn 0.4.4) through scripts/mace_torch_baseline.py, with the same split,
loss weights, optimiser, learning rate, batch size and budget.

    python scripts/bench_models.py --seconds 300 --backbones mace facet \
        --mace-torch-python ../mace-venv/bin/python

Prints a Markdown table and writes it (plus JSON) to --out-dir.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = [REPO / "mlip" / "sample_data" / "molecules.h5", REPO / "mlip" / "sample_data" / "crystals.h5"]
CUTOFF = 5.0
SPLIT = {"val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 0}

# Matched sizes: 32 channels, 2 layers, 5 Å; lmax 1 and correlation 3 for the MACE models.
BACKBONE_OVERRIDES = {
    "mace": ["model/backbone=mace", "model.backbone.num_channels=32", "model.backbone.lmax=1",
             "model.backbone.correlation=3", "model.backbone.num_layers=2"],
    "facet": ["model/backbone=facet", "model.backbone.num_channels=32", "model.backbone.lmax=1",
              "model.backbone.num_layers=2"],
    "transip": ["model/backbone=transip"],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="training wall-time budget per model")
    parser.add_argument("--backbones", nargs="*", default=["mace", "facet"], help="mlip backbones (none: only mace-torch)")
    parser.add_argument("--extra", nargs="*", default=[], help="extra Hydra overrides for every mlip run")
    parser.add_argument("--mace-torch-python", default=None, help="python of a venv with mace-torch installed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--md-steps", type=int, default=200)
    parser.add_argument("--out-dir", default="bench_models_out")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one mlip backbone
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------- the split
def data_split():
    """Train and test structures of the split every mlip run draws (the data module's)."""
    from mlip.data.dataset import HDF5Dataset

    dataset = HDF5Dataset([str(p) for p in DATA])
    train, _, test = dataset.split(SPLIT["val_fraction"], test_fraction=SPLIT["test_fraction"], seed=SPLIT["split_seed"])
    return train, test


def write_extxyz(structures, path):
    """Labelled extxyz in MACE's key convention (REF_energy / REF_forces / REF_stress)."""
    import ase.io

    frames = []
    for structure in structures:
        atoms = structure.to_atoms()
        atoms.calc = None
        atoms.info["subset"] = structure.subset
        if structure.energy is not None:
            atoms.info["REF_energy"] = structure.energy
        if structure.forces is not None:
            atoms.arrays["REF_forces"] = structure.forces
        if structure.stress is not None:
            atoms.info["REF_stress"] = structure.stress.reshape(-1)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


# ------------------------------------------------------------------------------- mlip worker
def md_atom_steps_per_second(model_path, n_steps):
    from ase import units
    from ase.build import molecule
    from ase.md.verlet import VelocityVerlet

    from mlip.calculator import MLIPCalculator

    atoms = molecule("CH3CH2OH")
    atoms.info.update(charge=0, spin=1)
    atoms.calc = MLIPCalculator(model_path, dtype="float32")
    dynamics = VelocityVerlet(atoms, 0.5 * units.fs)
    dynamics.run(5)
    start = time.perf_counter()
    dynamics.run(n_steps)
    return len(atoms) * n_steps / (time.perf_counter() - start)


def training_throughput_callback():
    """A Lightning callback counting structures per second spent inside training steps."""
    import lightning.pytorch as pl

    class TrainingThroughput(pl.Callback):
        """Structures per second spent inside training steps (forward, losses, backward, optimiser)."""

        def __init__(self):
            self.seconds, self.structures, self._start = 0.0, 0, None

        def on_train_batch_start(self, trainer, module, batch, batch_index):
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):
            self.seconds += time.perf_counter() - self._start
            self.structures += batch.num_graphs

    return TrainingThroughput()


def run_mlip_worker(args):
    """Train one mlip backbone in this process and print its metrics as JSON (last line)."""
    import torch
    from hydra import compose, initialize_config_dir

    from mlip.calculator import MLIPCalculator
    from mlip.evaluation import evaluate
    from mlip.train.build import config_dir, register_resolvers, train

    name = args.worker
    run_dir = Path(args.out_dir).resolve() / f"run_{name}"
    max_time = time.strftime("00:%H:%M:%S", time.gmtime(args.seconds))
    overrides = [
        "experiment=sample", *BACKBONE_OVERRIDES[name], f"name=bench_{name}", f"runs_dir={run_dir.parent}",
        f"trainer.max_time={max_time}", "trainer.max_epochs=100000", f"num_threads={args.threads}",
        f"data.batch_size={args.batch_size}", f"optimizer.lr={args.lr}", "logger=csv", "progress_bar=none",
        "test_after_fit=false", "resume=never",
        f"data.val_fraction={SPLIT['val_fraction']}", f"data.test_fraction={SPLIT['test_fraction']}",
        f"data.split_seed={SPLIT['split_seed']}", *args.extra,
    ]
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        config = compose(config_name="train", overrides=overrides)
    throughput = training_throughput_callback()
    start = time.perf_counter()
    results = train(config, run_dir.parent / f"bench_{name}", extra_callbacks=[throughput])
    train_seconds = time.perf_counter() - start

    torch.set_num_threads(args.threads)
    calculator = MLIPCalculator(results["best_model"], dtype="float32")
    _, test = data_split()
    structures = test.get_structures(range(len(test)))
    evaluation = evaluate(calculator, structures, name)
    rows = {row["subset"]: row for row in evaluation.rows()}
    metrics = {
        "model": f"mlip {name}",
        "parameters": sum(p.numel() for p in calculator.model.parameters()),
        "train_seconds": train_seconds,
        "steps": results["global_step"],
        "train_structures_per_s": throughput.structures / max(throughput.seconds, 1e-9),
        "energy_mae_mev_per_atom": rows["all"]["energy_mae"],
        "force_mae_mev_per_A": rows["all"]["forces_mae"],
        "energy_mae_mev_per_atom_by_subset": {k: v["energy_mae"] for k, v in rows.items() if k != "all"},
        "md_atom_steps_per_s": md_atom_steps_per_second(results["best_model"], args.md_steps),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(metrics))


# ----------------------------------------------------------------------------------- driver
def last_json_line(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON result in output")


def markdown(results, seconds):
    subsets = sorted({s for r in results for s in r["energy_mae_mev_per_atom_by_subset"]})
    molecule_subsets = [s for s in subsets if s in ("neutral", "cation", "anion", "radical")]
    header = ["model", "params", "train struct/s", "E MAE (meV/atom)", "F MAE (meV/Å)"]
    header += [f"E MAE {s}" for s in molecule_subsets] + ["MD atom-steps/s", "peak RSS (MB)"]
    lines = [f"Training budget: {seconds:.0f} s per model.", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        by_subset = r["energy_mae_mev_per_atom_by_subset"]
        cells = [r["model"], f"{r['parameters']:,}", f"{r['train_structures_per_s']:.1f}",
                 f"{r['energy_mae_mev_per_atom']:.1f}", f"{r['force_mae_mev_per_A']:.1f}"]
        cells += [f"{by_subset.get(s, float('nan')):.1f}" for s in molecule_subsets]
        cells += [f"{r['md_atom_steps_per_s']:.0f}", f"{r['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        run_mlip_worker(args)
        return
    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.backbones:
        command = [sys.executable, __file__, "--worker", name, "--seconds", str(args.seconds), "--threads", str(args.threads),
                   "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--md-steps", str(args.md_steps),
                   "--out-dir", str(out_dir), "--extra", *args.extra]
        print(f"training mlip {name} for {args.seconds:.0f} s ...", flush=True)
        completed = subprocess.run(command, check=False, capture_output=True, text=True)
        (out_dir / f"{name}.log").write_text(completed.stderr)
        if completed.returncode != 0:
            raise SystemExit(f"mlip {name} failed; see {out_dir / f'{name}.log'}")
        results.append(last_json_line(completed.stdout))
    if args.mace_torch_python:
        train, test = data_split()
        with tempfile.TemporaryDirectory() as tmp:
            write_extxyz(train.get_structures(range(len(train))), f"{tmp}/train.xyz")
            write_extxyz(test.get_structures(range(len(test))), f"{tmp}/test.xyz")
            command = [args.mace_torch_python, str(REPO / "scripts" / "mace_torch_baseline.py"),
                       "--train", f"{tmp}/train.xyz", "--test", f"{tmp}/test.xyz", "--seconds", str(args.seconds),
                       "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                       "--cutoff", str(CUTOFF), "--md-steps", str(args.md_steps)]
            print(f"training mace-torch for {args.seconds:.0f} s ...", flush=True)
            completed = subprocess.run(command, check=False, capture_output=True, text=True)
            (out_dir / "mace-torch.log").write_text(completed.stderr)
            if completed.returncode != 0:
                raise SystemExit(f"mace-torch failed; see {out_dir / 'mace-torch.log'}")
            results.append(last_json_line(completed.stdout))
    table = markdown(results, args.seconds)
    print(table)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
