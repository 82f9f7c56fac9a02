"""TransIP's ways of handling rotational symmetry, side by side with equivariant backbones.

On the shipped sample data (same validation and test split for every run), for each
training-set size (a fraction of the training split; the smaller sets are nested in the larger
ones) this trains, for the same wall-time budget each:

* `transip_none`     TransIP, no symmetry treatment,
* `transip_aug`      TransIP + random rotation of every training structure,
* `transip_learned`  TransIP + the learned-equivariance loss (weight 3, level atom),
* `transip_learned_aug`  both (the `experiment=sample_transip` recipe),
* `transip_gradpen`  TransIP + the energy-gradient rotation penalty,
* `mace` (and `facet` on request), equivariant by construction, as references,

and reports on the test split:

* test energy MAE (meV/atom) and force MAE (meV/Å),
* rotational error on test structures (float64): energy standard deviation over random
  rotations (meV/atom) and force equivariance error RMS |F(Rx) - R F(x)| averaged over angles
  (meV/Å), from `mlip.evaluation_equivariance`,
* training structures/s (inside training steps), test-set prediction structures/s and MD speed
  (atom-steps/s, velocity Verlet on ethanol),

plus one NERO-style plot per training-set size (error vs rotation angle, every model).

Each run is its own subprocess (its own peak memory), one after another, with one torch thread.

    python scripts/bench_transip.py --seconds 90 --train-fractions 0.25 1.0

Prints a Markdown table and writes results.md, results.json and nero_<fraction>.png to --out-dir.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import (
    BACKBONE_OVERRIDES,
    SPLIT,
    data_split,
    last_json_line,
    md_atom_steps_per_second,
    training_throughput_callback,
)

from mlip.train.datamodule import PotentialDataModule

TRANSIP = ["model/backbone=transip"]
LEARNED = ["symmetry.equivariance_loss={weight:3.0,level:atom}"]
AUGMENTATION = ["symmetry.rotation_augmentation=true"]
VARIANTS = {
    "transip_none": TRANSIP,
    "transip_aug": TRANSIP + AUGMENTATION,
    "transip_learned": TRANSIP + LEARNED,
    "transip_learned_aug": TRANSIP + LEARNED + AUGMENTATION,
    "transip_gradpen": TRANSIP + ["symmetry.rotation_gradient_penalty=1.0"],
    "mace": BACKBONE_OVERRIDES["mace"],
    "facet": BACKBONE_OVERRIDES["facet"],
}
DEFAULT_VARIANTS = ["transip_none", "transip_aug", "transip_learned", "transip_learned_aug", "transip_gradpen", "mace"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90.0, help="training wall-time budget per run")
    parser.add_argument("--train-fractions", type=float, nargs="+", default=[0.25, 1.0],
                        help="fractions of the training split to train on (nested subsets)")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=sorted(VARIANTS))
    parser.add_argument("--extra", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--seed", type=int, default=0, help="training seed (weights, shuffling, rotations)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--rotation-structures", type=int, default=16, help="test structures for the rotational error")
    parser.add_argument("--md-steps", type=int, default=200)
    parser.add_argument("--out-dir", default="bench_transip_out")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one variant
    parser.add_argument("--fraction", type=float, default=1.0, help=argparse.SUPPRESS)  # internal
    return parser.parse_args(argv)


# ------------------------------------------------------------------------ training-set size
class TrainSubsetDataModule(PotentialDataModule):
    """`PotentialDataModule` whose training split is cut to `train_fraction` of itself.

    The kept structures are the first ones of a permutation fixed by `subset_seed`, so a smaller
    fraction is a subset of a larger one; validation and test splits are untouched.
    """

    def __init__(self, *args, train_fraction: float = 1.0, subset_seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        self.train_fraction = float(train_fraction)
        self.subset_seed = int(subset_seed)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        super().setup(stage)
        full = len(self.train_set)
        keep = max(1, round(self.train_fraction * full))
        order = np.random.default_rng(self.subset_seed).permutation(full)[:keep]
        self.train_set = self.train_set.subset(np.sort(order))


# ------------------------------------------------------------------------------ the worker
def train_variant(args, run_dir: Path):
    """Train `args.worker` on `args.fraction` of the training split for `args.seconds`."""
    from hydra import compose, initialize_config_dir

    from mlip.train.build import config_dir, register_resolvers, train

    max_time = time.strftime("00:%H:%M:%S", time.gmtime(args.seconds))
    overrides = [
        "experiment=sample", *VARIANTS[args.worker], f"name={run_dir.name}", f"runs_dir={run_dir.parent}",
        f"trainer.max_time={max_time}", "trainer.max_epochs=100000", f"num_threads={args.threads}", f"seed={args.seed}",
        f"data.batch_size={args.batch_size}", f"optimizer.lr={args.lr}", "scheduler=constant",
        "logger=csv", "progress_bar=none", "test_after_fit=false", "resume=never",
        f"data.val_fraction={SPLIT['val_fraction']}", f"data.test_fraction={SPLIT['test_fraction']}",
        f"data.split_seed={SPLIT['split_seed']}",
        f"data._target_={__name__}.TrainSubsetDataModule", f"+data.train_fraction={args.fraction}",
        *args.extra,
    ]
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        config = compose(config_name="train", overrides=overrides)
    throughput = training_throughput_callback()
    results = train(config, run_dir, extra_callbacks=[throughput])
    return results, throughput


def rotational_errors(model_path, structures):
    """Energy std over 16 random rotations (meV/atom) and NERO curves, float64, for `structures`."""
    import torch

    import mlip
    from mlip.data.graph import structure_to_graph
    from mlip.evaluation_equivariance import equivariance_errors, orbit_energy_std

    potential = mlip.load(model_path).double()
    graphs = [structure_to_graph(s, potential.cutoff, torch.float64) for s in structures]
    energy_std = [orbit_energy_std(potential, [graph], num_rotations=16) / graph.pos.shape[0] for graph in graphs]
    curves = equivariance_errors(potential, graphs, num_angles=13, num_axes=3)
    return 1000.0 * float(np.mean(energy_std)), curves


def run_worker(args):
    """Train one variant, evaluate it, print its metrics as JSON (last line)."""
    import torch

    from mlip.calculator import MLIPCalculator
    from mlip.evaluation import evaluate

    out_dir = Path(args.out_dir).resolve()
    run_dir = out_dir / f"run_{args.worker}_{args.fraction:g}_seed{args.seed}"
    start = time.perf_counter()
    results, throughput = train_variant(args, run_dir)
    train_seconds = time.perf_counter() - start

    torch.set_num_threads(args.threads)
    calculator = MLIPCalculator(results["best_model"], dtype="float32")
    train_split, test = data_split()
    structures = test.get_structures(range(len(test)))
    overall = evaluate(calculator, structures, args.worker).rows()[0]
    chosen = np.linspace(0, len(structures) - 1, min(args.rotation_structures, len(structures))).round().astype(int)
    energy_std, curves = rotational_errors(results["best_model"], [structures[i] for i in chosen])
    metrics = {
        "variant": args.worker,
        "train_fraction": args.fraction,
        "seed": args.seed,
        "train_structures": max(1, round(args.fraction * len(train_split))),
        "parameters": sum(p.numel() for p in calculator.model.parameters()),
        "train_seconds": train_seconds,
        "steps": results["global_step"],
        "train_structures_per_s": throughput.structures / max(throughput.seconds, 1e-9),
        "energy_mae_mev_per_atom": overall["energy_mae"],
        "force_mae_mev_per_A": overall["forces_mae"],
        "predict_structures_per_s": overall["structures_per_s"],
        "rotation_energy_std_mev_per_atom": energy_std,
        "rotation_force_error_mev_per_A": 1000.0 * float(curves.force_error[1:].mean()),
        "nero": {"angles": curves.angles.tolist(), "energy_error": curves.energy_error.tolist(),
                 "energy_error_per_atom": curves.energy_error_per_atom.tolist(), "force_error": curves.force_error.tolist()},
        "md_atom_steps_per_s": md_atom_steps_per_second(results["best_model"], args.md_steps),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(metrics))


# ------------------------------------------------------------------------------ the driver
def markdown(results, seconds):
    header = ["train structures", "model", "steps", "train struct/s", "E MAE (meV/atom)", "F MAE (meV/Å)",
              "rot. E std (meV/atom)", "rot. F error (meV/Å)", "predict struct/s", "MD atom-steps/s"]
    lines = [f"Training budget: {seconds:.0f} s per run, one torch thread, training seed {results[0]['seed']}.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [str(r["train_structures"]), r["variant"], str(r["steps"]), f"{r['train_structures_per_s']:.1f}",
                 f"{r['energy_mae_mev_per_atom']:.1f}", f"{r['force_mae_mev_per_A']:.1f}",
                 f"{r['rotation_energy_std_mev_per_atom']:.3g}", f"{r['rotation_force_error_mev_per_A']:.3g}",
                 f"{r['predict_structures_per_s']:.1f}", f"{r['md_atom_steps_per_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def errors_relative_to_augmentation(results):
    """Test MAE of each other TransIP variant divided by that of `transip_aug`, per training-set size."""
    lines = ["Test MAE relative to transip_aug (a 40-60% improvement over augmentation would be 0.4-0.6):", ""]
    for fraction in sorted({r["train_fraction"] for r in results}):
        runs = {r["variant"]: r for r in results if r["train_fraction"] == fraction}
        if "transip_aug" not in runs:
            continue
        base = runs["transip_aug"]
        for name, run in runs.items():
            if name.startswith("transip") and name != "transip_aug":
                energy = run["energy_mae_mev_per_atom"] / base["energy_mae_mev_per_atom"]
                forces = run["force_mae_mev_per_A"] / base["force_mae_mev_per_A"]
                lines.append(
                    f"- {base['train_structures']} structures, {name} / transip_aug test MAE: "
                    f"energy {energy:.2f}, forces {forces:.2f}"
                )
    return "\n".join(lines)


def plot_nero(results, out_dir: Path):
    from mlip.evaluation_equivariance import (
        EquivarianceErrors,
        plot_equivariance_errors,
    )

    for fraction in sorted({r["train_fraction"] for r in results}):
        curves = {
            r["variant"]: EquivarianceErrors(**{key: np.asarray(value) for key, value in r["nero"].items()})
            for r in results if r["train_fraction"] == fraction
        }
        plot_equivariance_errors(curves, out_dir / f"nero_{fraction:g}.png")


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for fraction in args.train_fractions:
        for name in args.variants:
            command = [sys.executable, __file__, "--worker", name, "--fraction", str(fraction),
                       "--seconds", str(args.seconds), "--seed", str(args.seed), "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                       "--lr", str(args.lr), "--rotation-structures", str(args.rotation_structures),
                       "--md-steps", str(args.md_steps), "--out-dir", str(out_dir), "--extra", *args.extra]
            print(f"{time.strftime('%H:%M:%S')} training {name} on {fraction:g} of the training split "
                  f"for {args.seconds:.0f} s ...", flush=True)
            completed = subprocess.run(command, check=False, capture_output=True, text=True)
            log = out_dir / f"{name}_{fraction:g}_seed{args.seed}.log"
            log.write_text(completed.stderr)
            if completed.returncode != 0:
                raise SystemExit(f"{name} failed; see {log}")
            results.append(last_json_line(completed.stdout))
            (out_dir / "results.json").write_text(json.dumps(results, indent=2))  # partial results survive a crash
    plot_nero(results, out_dir)
    report = markdown(results, args.seconds) + "\n\n" + errors_relative_to_augmentation(results)
    print(report)
    (out_dir / "results.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
