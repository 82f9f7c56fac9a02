"""The fair test of TransIP's learned equivariance (issue 15): molecules only, equal optimiser steps.

Every *cell* (split, training-set size, variant, seed) trains one model for the same number of
optimiser steps (cosine schedule, batch 16, one torch thread) in its own subprocess, evaluates it
and writes ``<out>/cells/<cell>.json``; a cell whose JSON exists is skipped, so an interrupted
benchmark continues where it stopped (a cell killed mid-training resumes from its
``last.ckpt``). ``--jobs 2`` runs two cells at a time.

Data: the shipped OMol25-style molecules (`mlip/sample_data/molecules.h5`, 1584 frames, no
crystals). Two splits, both with fixed validation and test sets for every cell:

* ``species``: whole molecular species (same composition) are held out for validation and test,
  so the test molecules were never seen in any orientation; only species whose elements stay in
  the training pool are held out.
* ``random``: the in-distribution split by frame.

The training sets (``--sizes``, default 250 / 500 / 1000) are nested random subsets of the
training pool, the first frames chosen so that every element of the pool is present.

Variants (``--variants``; ``{w}`` is each weight of ``--weights``):

* ``transip_none``, ``transip_aug`` (random rotation of every training structure),
* ``transip_learned_w{w}``: augmentation + the learned-equivariance loss (feature mean, weight
  warmed up over the first 10 % of the steps, the main pass reused: one extra forward pass),
* ``transip_nce_w{w}``: the same + per-structure InfoNCE (``--nce-weight``, other structures of the
  batch as negatives); ``transip_nceatom_w{w}``: atom-level InfoNCE,
* ``transip_gradpen``: the energy-gradient rotation penalty (``--gradpen-weight``),
* ``mace``, ``facet``: equivariant references (32 channels, 2 layers).

For the learned variants the weight is chosen on the rotated *validation* set (lowest mean force
MAE over seeds, per split and size) and only that weight's test numbers enter the ratio.

Metrics per cell: force MAE (meV/Å) and energy MAE (meV/atom) on a randomly rotated copy of the
test set (headline) and on the test set as stored, the same on the rotated validation set,
rotational error on ``--rotation-structures`` test molecules in float64 (energy std over 16
rotations, force equivariance error averaged over angles: the NERO curve), optimiser steps and
wall time. The report (``<out>/results.md``, ``<out>/nero_<split>_<size>.png``) gives mean ± std
over seeds and the ratio learned / augmentation of the rotated-test force MAE per seed, with its
spread.

    python scripts/bench_transip.py --out /tmp/transip_fair --jobs 2            # the full test (hours)
    python scripts/bench_transip.py --out /tmp/transip_smoke --smoke            # end to end in ~1-2 min
    python scripts/bench_transip.py --out /tmp/transip_fair --report-only       # table from finished cells
    python scripts/bench_transip.py --out /tmp/transip_report --report-only \
        --results docs/benchmarks/transip_fair/cells --figures docs/figures/transip    # from the shipped cells
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
from bench_models import BACKBONE_OVERRIDES, last_json_line, md_atom_steps_per_second, training_throughput_callback

from mlip.train.datamodule import PotentialDataModule

REPO = Path(__file__).resolve().parents[1]
MOLECULES = REPO / "mlip" / "sample_data" / "molecules.h5"
AUGMENTATION = ["symmetry.rotation_augmentation=true"]
DEFAULT_VARIANTS = ["transip_none", "transip_aug", "transip_learned_w{w}", "transip_nce_w{w}", "transip_gradpen",
                    "mace", "facet"]
SPLITS = ("species", "random")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (outside the repository): cells/, runs/, results.md")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000], help="training structures")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3],
                        help="symmetry-loss weights tried for the learned variants (chosen on validation)")
    parser.add_argument("--nce-weight", type=float, default=0.1, help="contrastive_weight of the InfoNCE variants")
    parser.add_argument("--gradpen-weight", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=4000, help="optimiser steps per cell")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--warmup-steps", type=int, default=100, help="learning-rate warm-up of the cosine schedule")
    parser.add_argument("--val-every", type=int, default=200, help="validate about every this many optimiser steps")
    parser.add_argument("--transip", nargs="*", default=["model.backbone.dim=64", "model.backbone.depth=4"],
                        help="TransIP backbone overrides")
    parser.add_argument("--extra", nargs="*", default=[], help="extra Hydra overrides for every cell")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at the same time")
    parser.add_argument("--rotation-structures", type=int, default=16, help="test molecules for the NERO curve")
    parser.add_argument("--md-steps", type=int, default=0, help="MD speed check (atom-steps/s) per cell; 0: off")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny end-to-end check: 6 steps, 40 structures, one seed, one weight, few variants")
    parser.add_argument("--report-only", action="store_true", help="only write the report from the finished cells")
    parser.add_argument("--results", default=None,
                        help="also read finished cell JSONs from this folder (e.g. docs/benchmarks/transip_fair/cells)")
    parser.add_argument("--figures", default=None, help="folder for the NERO plots (default: --out)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one cell (its JSON key)
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.seeds, args.weights, args.steps = [40], [0], [0.1], 6
        args.val_every, args.warmup_steps, args.rotation_structures = 3, 2, 2
        args.transip = ["model.backbone.dim=16", "model.backbone.depth=1", "model.backbone.heads=2"]
        if args.variants == DEFAULT_VARIANTS:
            args.variants = ["transip_none", "transip_aug", "transip_learned_w{w}", "transip_nce_w{w}", "transip_gradpen"]
    return args


def out_folder(path: str) -> Path:
    out = Path(path).resolve()
    if out == REPO or REPO in out.parents:
        raise SystemExit(f"--out {out} is inside the repository {REPO}; give a folder outside it")
    return out


# ------------------------------------------------------------------------------ the splits
def species_key(numbers) -> str:
    """The composition of a molecule as a formula-like key, e.g. 'C2H6O'."""
    from ase.symbols import Symbols

    return Symbols(np.asarray(numbers)).get_chemical_formula()


def fair_split(numbers_per_structure, kind: str, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.15):
    """(train pool, val, test) index arrays of the molecules.

    ``species``: whole species, in a random order, go to test (until ``test_fraction`` of the
    frames) then to validation, skipping a species that would take the last frames of one of its
    elements out of the training pool. ``random``: a random split by frame.
    """
    count = len(numbers_per_structure)
    rng = np.random.default_rng(seed)
    if kind == "random":
        order = rng.permutation(count)
        n_val, n_test = round(val_fraction * count), round(test_fraction * count)
        return np.sort(order[n_val + n_test:]), np.sort(order[:n_val]), np.sort(order[n_val:n_val + n_test])
    if kind != "species":
        raise ValueError(f"split must be 'species' or 'random', got {kind!r}")
    keys = np.array([species_key(numbers) for numbers in numbers_per_structure])
    species = sorted(set(keys))
    members = {key: np.flatnonzero(keys == key) for key in species}
    element_frames = {}  # element -> frames left in the training pool
    for numbers in numbers_per_structure:
        for z in set(int(z) for z in numbers):
            element_frames[z] = element_frames.get(z, 0) + 1
    held = {"test": [], "val": []}
    targets = {"test": test_fraction * count, "val": val_fraction * count}
    part = "test"
    for index in rng.permutation(len(species)):
        key = species[index]
        frames = members[key]
        elements = set(int(z) for z in numbers_per_structure[frames[0]])
        if any(element_frames[z] - len(frames) < 1 for z in elements):
            continue  # would remove an element from training
        held[part].extend(frames.tolist())
        for z in elements:
            element_frames[z] -= len(frames)
        if len(held[part]) >= targets[part]:
            if part == "val":
                break
            part = "val"
    used = set(held["test"]) | set(held["val"])
    pool = np.array([i for i in range(count) if i not in used])
    return pool, np.sort(held["val"]), np.sort(held["test"])


def nested_order(numbers_per_structure, pool: np.ndarray, seed: int) -> np.ndarray:
    """The training pool in a fixed random order whose first frames contain every element of the pool."""
    order = list(np.random.default_rng(seed).permutation(pool))
    front, seen = [], set()
    for i in order:
        new = set(int(z) for z in numbers_per_structure[i]) - seen
        if new:
            front.append(i)
            seen |= new
    rest = [i for i in order if i not in set(front)]
    return np.asarray(front + rest, dtype=np.int64)


class FairSplitDataModule(PotentialDataModule):
    """`PotentialDataModule` over the molecules with the ``species`` or ``random`` split of
    `fair_split` and a training set of the first ``train_size`` frames of `nested_order`."""

    def __init__(self, *args, split_kind: str = "species", train_size: int = 250, **kwargs):
        super().__init__(*args, **kwargs)
        self.split_kind = split_kind
        self.train_size = int(train_size)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        dataset = self._open(self.paths)
        train, val, test = split_indices(dataset, self.split_kind, self.split_seed, self.train_size)
        self.train_set, self.val_set = dataset.subset(train), dataset.subset(val)
        self.test_set = dataset.subset(test)
        self.test_sets = {None: self.test_set}
        self._statistics_set = self.train_set
        self.dataset = dataset


def split_indices(dataset, kind: str, seed: int, train_size: int):
    numbers = [s.numbers for s in dataset.get_structures(range(len(dataset)))]
    pool, val, test = fair_split(numbers, kind, seed)
    if train_size > len(pool):
        raise ValueError(f"training size {train_size} > the {len(pool)} frames of the {kind} training pool")
    train = np.sort(nested_order(numbers, pool, seed)[:train_size])
    return train, val, test


def rotated(structures, seed: int):
    """Copies of `structures`, each rotated by its own uniform random rotation (forces with it)."""
    import copy

    import torch

    from mlip.geometry import random_rotations

    rotations = random_rotations(len(structures), torch.float64, generator=torch.Generator().manual_seed(seed)).numpy()
    copies = []
    for structure, rotation in zip(structures, rotations):
        new = copy.copy(structure)
        new.positions = structure.positions @ rotation.T
        new.forces = None if structure.forces is None else structure.forces @ rotation.T
        copies.append(new)
    return copies


# ------------------------------------------------------------------------------ the cells
def cell_key(split: str, size: int, variant: str, seed: int) -> str:
    return f"{split}_{size}_{variant}_seed{seed}"


def parse_key(key: str):
    split, size, rest = key.split("_", 2)
    variant, seed = rest.rsplit("_seed", 1)
    return split, int(size), variant, int(seed)


def expand_variants(variants, weights) -> list[str]:
    names = []
    for variant in variants:
        names += [variant.format(w=f"{w:g}") for w in weights] if "{w}" in variant else [variant]
    return names


def variant_overrides(variant: str, args) -> list[str]:
    transip = ["model/backbone=transip", *args.transip]
    if variant in ("mace", "facet"):
        return BACKBONE_OVERRIDES[variant]
    if variant == "transip_none":
        return transip
    if variant == "transip_aug":
        return transip + AUGMENTATION
    if variant == "transip_gradpen":
        return transip + [f"symmetry.rotation_gradient_penalty={args.gradpen_weight}"]
    for prefix, extra in (("transip_learned_w", ""),
                          ("transip_nce_w", f",contrastive_weight:{args.nce_weight},contrastive_level:structure"),
                          ("transip_nceatom_w", f",contrastive_weight:{args.nce_weight},contrastive_level:atom")):
        if variant.startswith(prefix):
            weight = float(variant[len(prefix):])
            loss = f"symmetry.equivariance_loss={{weight:{weight},level:atom,reduction:mean,warmup_fraction:0.1,reuse_main_pass:true{extra}}}"
            return transip + AUGMENTATION + [loss]
    raise SystemExit(f"unknown variant {variant!r}")


def train_cell(args, split: str, size: int, variant: str, seed: int, run_dir: Path):
    from hydra import compose, initialize_config_dir

    from mlip.train.build import config_dir, register_resolvers, train

    steps_per_epoch = max(1, size // args.batch_size)  # drop_last or not: about this many
    overrides = [
        "experiment=sample", "data=molecules", *variant_overrides(variant, args),
        f"name={run_dir.name}", f"runs_dir={run_dir.parent}", "resume=auto",
        f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1",
        f"trainer.check_val_every_n_epoch={max(1, round(args.val_every / steps_per_epoch))}",
        f"num_threads={args.threads}", f"seed={seed}", f"data.batch_size={args.batch_size}",
        f"optimizer.lr={args.lr}", "scheduler=cosine", f"scheduler.warmup_steps={args.warmup_steps}",
        "checkpoint.every_n_train_steps=500", "logger=csv", "progress_bar=none", "test_after_fit=false",
        f"data.split_seed={args.split_seed}", f"data._target_={__name__}.FairSplitDataModule",
        f"+data.split_kind={split}", f"+data.train_size={size}",
        *args.extra,
    ]
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        config = compose(config_name="train", overrides=overrides)
    throughput = training_throughput_callback()
    return train(config, run_dir, extra_callbacks=[throughput]), throughput


def rotational_errors(model_path, structures):
    """Energy std over 16 random rotations (meV/atom) and NERO curves, float64."""
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
    """Train and evaluate one cell; print its metrics as JSON (last line)."""
    import torch

    from mlip.calculator import MLIPCalculator
    from mlip.data.dataset import HDF5Dataset
    from mlip.evaluation import evaluate

    split, size, variant, seed = parse_key(args.worker)
    out = out_folder(args.out)
    run_dir = out / "runs" / args.worker
    start = time.perf_counter()
    results, throughput = train_cell(args, split, size, variant, seed, run_dir)
    train_seconds = time.perf_counter() - start

    torch.set_num_threads(args.threads)
    dataset = HDF5Dataset([str(MOLECULES)])
    _, val, test = split_indices(dataset, split, args.split_seed, size)
    val_structures, test_structures = dataset.get_structures(val), dataset.get_structures(test)
    calculator = MLIPCalculator(results["best_model"], dtype="float32")
    metrics = {"cell": args.worker, "split": split, "train_structures": size, "variant": variant, "seed": seed,
               "val_structures": len(val), "test_structures": len(test)}
    for name, structures in (("test", test_structures), ("test_rotated", rotated(test_structures, 1000 + seed)),
                             ("val_rotated", rotated(val_structures, 2000 + seed))):
        row = evaluate(calculator, structures, variant).rows()[0]
        metrics[f"{name}_energy_mae_mev_per_atom"] = row["energy_mae"]
        metrics[f"{name}_force_mae_mev_per_A"] = row["forces_mae"]
    chosen = np.linspace(0, len(test_structures) - 1, min(args.rotation_structures, len(test_structures))).round().astype(int)
    energy_std, curves = rotational_errors(results["best_model"], [test_structures[i] for i in chosen])
    metrics.update({
        "parameters": sum(p.numel() for p in calculator.model.parameters()),
        "steps": results["global_step"],
        "train_seconds": train_seconds,
        "train_structures_per_s": throughput.structures / max(throughput.seconds, 1e-9),
        "rotation_energy_std_mev_per_atom": energy_std,
        "rotation_force_error_mev_per_A": 1000.0 * float(curves.force_error[1:].mean()),
        "nero": {"angles": curves.angles.tolist(), "energy_error": curves.energy_error.tolist(),
                 "energy_error_per_atom": curves.energy_error_per_atom.tolist(), "force_error": curves.force_error.tolist()},
        "md_atom_steps_per_s": md_atom_steps_per_second(results["best_model"], args.md_steps) if args.md_steps else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "overrides": variant_overrides(variant, args) + args.extra,
    })
    print(json.dumps(metrics))


# ------------------------------------------------------------------------------ the driver
def worker_command(args, key: str) -> list[str]:
    command = [sys.executable, __file__, "--worker", key, "--out", args.out, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup-steps", str(args.warmup_steps),
               "--val-every", str(args.val_every), "--threads", str(args.threads), "--nce-weight", str(args.nce_weight),
               "--gradpen-weight", str(args.gradpen_weight), "--rotation-structures", str(args.rotation_structures),
               "--md-steps", str(args.md_steps), "--split-seed", str(args.split_seed)]
    return command + ["--transip", *args.transip] + ["--extra", *args.extra]


def run_cells(args, out: Path, keys: list[str]) -> None:
    """Run the cells without a JSON result, ``args.jobs`` at a time; a failed cell is reported, not fatal."""
    cells, logs = out / "cells", out / "logs"
    cells.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    todo = [key for key in keys if not (cells / f"{key}.json").exists()]
    print(f"{len(keys) - len(todo)} of {len(keys)} cells done already; running {len(todo)}", flush=True)
    running: list[tuple[str, subprocess.Popen, object]] = []
    failed = []
    while todo or running:
        while todo and len(running) < args.jobs:
            key = todo.pop(0)
            print(f"{time.strftime('%H:%M:%S')} start {key}", flush=True)
            stderr = open(logs / f"{key}.log", "w")
            running.append((key, subprocess.Popen(worker_command(args, key), stdout=subprocess.PIPE, stderr=stderr, text=True), stderr))
        time.sleep(0.5)
        for entry in list(running):
            key, process, stderr = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            stdout = process.stdout.read()
            stderr.close()
            if process.returncode != 0:
                failed.append(key)
                print(f"{time.strftime('%H:%M:%S')} FAILED {key}; see {logs / (key + '.log')}", flush=True)
                continue
            result = last_json_line(stdout)
            temporary = cells / f"{key}.json.tmp"
            temporary.write_text(json.dumps(result, indent=1))
            temporary.replace(cells / f"{key}.json")  # atomic: a cell is either done or not
            print(f"{time.strftime('%H:%M:%S')} done {key}: rotated test F MAE "
                  f"{result['test_rotated_force_mae_mev_per_A']:.1f} meV/Å, {result['steps']} steps, "
                  f"{result['train_seconds']:.0f} s", flush=True)
    if failed:
        print(f"{len(failed)} cells failed: {', '.join(failed)}", flush=True)


def mean_std(values, fmt: str = ".1f") -> str:
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return "–"
    if values.size == 1:
        return f"{values[0]:{fmt}}"
    return f"{values.mean():{fmt}} ± {values.std(ddof=1):{fmt}}"


def learned_family(variant: str) -> str | None:
    for prefix in ("transip_learned_w", "transip_nce_w", "transip_nceatom_w"):
        if variant.startswith(prefix):
            return prefix[:-2]
    return None


def report(results: list[dict], args) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["split"], r["train_structures"], r["variant"]), []).append(r)
    header = ["split", "train", "variant", "seeds", "steps", "wall s", "F MAE rotated test", "E MAE rotated test",
              "F MAE test", "F MAE rotated val", "rot. E std (meV/atom)", "rot. F error"]
    lines = [f"Equal optimiser steps ({args.steps}, cosine, batch {args.batch_size}); MAE in meV/Å (forces) and "
             "meV/atom (energy); mean ± std over seeds.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (split, size, variant), runs in sorted(groups.items()):
        cells = [split, str(size), variant, str(len(runs)), mean_std([r["steps"] for r in runs], ".0f"),
                 mean_std([r["train_seconds"] for r in runs], ".0f"),
                 mean_std([r["test_rotated_force_mae_mev_per_A"] for r in runs]),
                 mean_std([r["test_rotated_energy_mae_mev_per_atom"] for r in runs]),
                 mean_std([r["test_force_mae_mev_per_A"] for r in runs]),
                 mean_std([r["val_rotated_force_mae_mev_per_A"] for r in runs]),
                 mean_std([r["rotation_energy_std_mev_per_atom"] for r in runs], ".3g"),
                 mean_std([r["rotation_force_error_mev_per_A"] for r in runs], ".3g")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Rotated-test force MAE of each learned variant (weight chosen on the rotated validation set) "
              "divided by that of transip_aug, seed by seed (a 40-60 % improvement would be 0.4-0.6):", ""]
    for split, size in sorted({(s, n) for s, n, _ in groups}):
        base = {r["seed"]: r for r in groups.get((split, size, "transip_aug"), [])}
        if not base:
            continue
        families: dict[str, list[str]] = {}
        for _, _, variant in [k for k in groups if k[:2] == (split, size)]:
            family = learned_family(variant)
            if family:
                families.setdefault(family, []).append(variant)
        for family, variants in sorted(families.items()):
            best = min(variants, key=lambda v: np.mean([r["val_rotated_force_mae_mev_per_A"] for r in groups[split, size, v]]))
            ratios = [r["test_rotated_force_mae_mev_per_A"] / base[r["seed"]]["test_rotated_force_mae_mev_per_A"]
                      for r in groups[split, size, best] if r["seed"] in base]
            if not ratios:
                continue
            spread = f" ± {np.std(ratios, ddof=1):.2f} (seeds {len(ratios)})" if len(ratios) > 1 else " (one seed)"
            lines.append(f"- {split}, {size} structures, {family} (chosen: {best}): "
                         f"{np.mean(ratios):.2f}{spread}; per seed {', '.join(f'{x:.2f}' for x in ratios)}")
    return "\n".join(lines)


def plot_nero(results, out: Path):
    from mlip.evaluation_equivariance import EquivarianceErrors, plot_equivariance_errors

    for split, size in sorted({(r["split"], r["train_structures"]) for r in results}):
        first_seed = min(r["seed"] for r in results if (r["split"], r["train_structures"]) == (split, size))
        curves = {r["variant"]: EquivarianceErrors(**{key: np.asarray(value) for key, value in r["nero"].items()})
                  for r in results if (r["split"], r["train_structures"], r["seed"]) == (split, size, first_seed)}
        plot_equivariance_errors(curves, out / f"nero_{split}_{size}.png")


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    out = out_folder(args.out)
    keys = [cell_key(split, size, variant, seed) for split in args.splits for size in args.sizes
            for variant in expand_variants(args.variants, args.weights) for seed in args.seeds]
    if not args.report_only:
        start = time.perf_counter()
        run_cells(args, out, keys)
        print(f"cells finished in {time.perf_counter() - start:.0f} s", flush=True)
    results = {}  # cell -> metrics; a cell under --out replaces the same cell of --results
    for folder in ([Path(args.results)] if args.results else []) + [out / "cells"]:
        for path in sorted(folder.glob("*.json")):
            result = json.loads(path.read_text())
            results[result["cell"]] = result
    results = [results[key] for key in keys if key in results]
    if not results:
        raise SystemExit(f"no finished cells under {out / 'cells'}" + (f" or in {args.results}" if args.results else ""))
    figures = Path(args.figures) if args.figures else out
    figures.mkdir(parents=True, exist_ok=True)
    plot_nero(results, figures)
    text = report(results, args)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
