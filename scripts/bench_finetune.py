"""Fine-tuning benchmark (issue 12, part b): xTB-pretrained model -> ethanol PBE/def2-SVP.

Pretrains mlip's MACE-like model on the shipped GFN2-xTB molecules (mlip/sample_data/molecules.h5),
then, for N training configurations of data/benchmarks/ethanol_pbe/train.xyz, trains a model
fine-tuned from it (``init_from``) and one from scratch (the ethanol recipe,
mlip/configs/experiment/ethanol_pbe.yaml) for the same wall time, the two runs of a pair side by
side (one thread each), and tests both on test_MD.xyz: energy MAE (meV per structure) and force
MAE (meV/Å over components), the units of the rMD17 tables.

Data: the training subsets are bench_dft.py's (the first N of a seed-0 permutation of the 1000
configurations of train.xyz); the validation set is the last 20 of that permutation, in no
subset, so the largest subset is N = 980 (the whole file less the validation frames).

Four steps, each resumable (a finished run is skipped; everything lives under ``--out``, outside
the repository)::

    python scripts/bench_finetune.py pretrain --out ../ft_runs --minutes 10
    python scripts/bench_finetune.py recipe --out ../ft_runs --minutes 3     # N = 50, paired variants
    python scripts/bench_finetune.py curve --out ../ft_runs --minutes 5 --recipe <variant>
    python scripts/bench_finetune.py report --out ../ft_runs --results docs/benchmarks/finetune \\
        --figures docs/figures/finetune

Results are one JSON per run (``<out>/<tag>/result.json``; ``report --results`` copies them into
the repository with portable paths, and reads the stored ones back, so later sessions add rows).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dft  # noqa: E402  (the data subsets, the batched test_MD evaluation, the timer, portable paths)

REPO = bench_dft.REPO
DATA = bench_dft.DATA
N_VALIDATION = 20            # the last N_VALIDATION frames of the seed-0 permutation: the validation set
N_ALL = 1000 - N_VALIDATION  # the largest training subset
CURVE_N = (10, 50, 250, N_ALL)
RECIPE_N = 50
STEPS_BETWEEN_VALIDATIONS = 50  # about: check_val_every_n_epoch = ceil(50 / steps per epoch)

# Fine-tuning variants measured at N = 50 (`recipe`): overrides on top of the ethanol recipe
# (lr 0.01, ema 0.99, stage two from 80 % of the time with lr 1e-3). "base" refits the reference
# energies by least squares (average); "isolated" takes PBE isolated atoms instead (shift 0), which
# measured far worse (docs/training.md, "Fine-tuning benchmark"), so the other variants start from base.
VARIANTS = {
    "base": ["finetune.atomic_energies=average"],
    "isolated": ["finetune.atomic_energies=isolated"],
    "lr1e-3": ["finetune.atomic_energies=average", "optimizer.lr=0.001"],
    "lr5e-3": ["finetune.atomic_energies=average", "optimizer.lr=0.005"],
    "ema0.999": ["finetune.atomic_energies=average", "ema_decay=0.999"],
    "freeze_embedding": ["finetune.atomic_energies=average", "finetune.freeze=[backbone.embedding.*]"],
    "no_stage_two": ["finetune.atomic_energies=average", "stage_two=null"],
}


def budget(minutes: float) -> str:
    hours, rest = divmod(round(minutes * 60), 3600)
    return f"00:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def write_json(value, path: Path) -> None:
    bench_dft.write_json(value, path)


# ----------------------------------------------------------------------------------- data
def permutation() -> np.ndarray:
    return np.random.default_rng(0).permutation(1000)  # bench_dft.training_subset's


def prepare(out: Path, n_train: int) -> tuple[Path, Path]:
    """The training subset of ``n_train`` frames and the validation set, as HDF5 under ``out/data``."""
    import ase.io

    if n_train > N_ALL:
        raise SystemExit(f"--n up to {N_ALL}: the last {N_VALIDATION} frames of the permutation are the validation set")
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    frames = ase.io.read(DATA / "train.xyz", ":")
    order = permutation()
    if set(order[:n_train]) & set(order[N_ALL:]):
        raise AssertionError("training subset overlaps the validation set")
    jobs = {
        data / f"train_{n_train}": bench_dft.training_subset(n_train),  # sorted order[:n_train]
        data / "val": [frames[i] for i in sorted(order[N_ALL:])],
    }
    for stem, subset in jobs.items():
        if not stem.with_suffix(".h5").exists():
            temporary = stem.with_suffix(".tmp.xyz")
            ase.io.write(temporary, subset, format="extxyz")
            subprocess.run(["mlip-convert", str(temporary), "-o", str(stem.with_suffix(".h5")), "-q"], check=True)
            temporary.unlink()
    return data / f"train_{n_train}.h5", data / "val.h5"


# ----------------------------------------------------------------------------------- commands
def pretrain_command(out: Path, minutes: float) -> list[str]:
    return [
        "mlip-train", "experiment=sample", "data=molecules", "model.cutoff=5.0", "dtype=float64", "num_threads=1",
        "trainer.max_epochs=40", f"trainer.max_time={budget(minutes)}", f"runs_dir={out}", "name=pretrain",
        "progress_bar=none",
    ]


def pretrained_model(out: Path) -> Path:
    path = out / "pretrain" / "best_model.pt"
    if not (out / "pretrain" / "result.json").exists():
        raise SystemExit(f"no finished pretraining in {out / 'pretrain'}: run `pretrain` first")
    return path


def ethanol_command(out: Path, tag: str, n_train: int, minutes: float, finetune: list[str] | None) -> list[str]:
    """mlip-train on ``n_train`` ethanol frames for ``minutes``: from scratch (``finetune=None``) or
    fine-tuned from the pretrained model with the variant overrides ``finetune``."""
    train, val = prepare(out, n_train)
    every = max(1, math.ceil(STEPS_BETWEEN_VALIDATIONS / math.ceil(n_train / 5)))  # batch size 5
    command = [
        "mlip-train", "experiment=ethanol_pbe", f"runs_dir={out}", f"name={tag}", "progress_bar=none",
        f"data.paths=[{train}]", f"data.val_paths=[{val}]",
        "trainer.max_epochs=100000", f"trainer.max_time={budget(minutes)}",
        f"trainer.check_val_every_n_epoch={every}", f"++scheduler.frequency={every}",  # plateau steps on validations
    ]
    extra = list(finetune or [])
    if "stage_two=null" not in extra:
        command += ["stage_two.start=null", "++stage_two.start_time=0.8"]  # stage two from 80 % of the time
    if finetune is None:
        command += ["model.atomic_energies=isolated", f"model.isolated_atoms={DATA / 'isolated_atoms.xyz'}"]
        return command + extra
    command.append(f"init_from={pretrained_model(out)}")
    if "finetune.atomic_energies=isolated" in extra:
        command.append(f"model.isolated_atoms={isolated_atoms_for_finetuning(out)}")
    return command + extra


def isolated_atoms_for_finetuning(out: Path) -> Path:
    """isolated_atoms.xyz (PBE H, C, N, O) plus, for the elements of the pretrained model that it
    lacks (F, S, Cl of the xTB molecules, none of them in ethanol), the pretrained reference
    energies: ``finetune.atomic_energies=isolated`` needs a value for every element of the model,
    also those absent from the new data. They do not change any ethanol prediction."""
    import ase.io
    import torch
    from ase import Atoms

    from mlip.train.finetune import read_pretrained

    path = out / "data" / "isolated_atoms_finetune.xyz"
    if path.exists():
        return path
    frames = ase.io.read(DATA / "isolated_atoms.xyz", ":")
    known = {int(atoms.numbers[0]) for atoms in frames}
    source = read_pretrained(pretrained_model(out)).potential(torch.float64)
    for z, energy in zip(source.elements, source.atomic_energies.tolist()):
        if int(z) not in known:
            atoms = Atoms(numbers=[int(z)], positions=[[0.0, 0.0, 0.0]], pbc=False)
            atoms.info.update(config_type="isolated_atom", energy=float(energy), source="pretrained reference (xTB)")
            frames.append(atoms)
    temporary = path.with_suffix(".tmp.xyz")
    ase.io.write(temporary, frames, format="extxyz")
    os.replace(temporary, path)
    return path


# ----------------------------------------------------------------------------------- running
def run_dir_result(out: Path, tag: str, command: list[str], kind: str, n_train: int, minutes: float,
                   variant: str | None) -> dict:
    run_dir = out / tag
    results = json.loads((run_dir / "results.json").read_text())
    started = time.time()
    energy_mae, forces_mae = bench_dft.mlip_test_md(run_dir / "best_model.pt")
    result = {
        "tag": tag, "kind": kind, "n_train": n_train, "minutes": minutes, "variant": variant,
        "steps": results["global_step"], "epochs": results["epoch"],
        "fit_seconds": bench_dft.mlip_fit_seconds(run_dir),
        "val_forces_mae_meV_per_A": results["fit"].get("val/forces_mae", float("nan")),  # mlip logs meV
        "val_energy_mae_meV_per_atom": results["fit"].get("val/energy_mae", float("nan")),
        "energy_mae_meV": energy_mae, "forces_mae_meV_per_A": forces_mae,
        "eval_seconds": time.time() - started, "code": bench_dft.mlip_commit(), "command": command,
        "n_validation": N_VALIDATION, "subset_seed": 0,
        "seed": int(next((part.split("=", 1)[1] for part in command if part.startswith("seed=")), 0)),
    }
    write_json(result, run_dir / "result.json")
    return result


def run_together(out: Path, jobs: list[tuple[str, list[str], str, int, float, str | None]]) -> list[dict]:
    """Trains the (at most two) jobs side by side, one thread each, then tests each on test_MD."""
    if len(jobs) > 2:
        raise ValueError("two runs at a time at most on 2 cores")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = []
    for tag, command, *_ in jobs:
        run_dir = out / tag
        if (run_dir / "results.json").exists():
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        log = open(run_dir.parent / f"{tag}.log", "w")
        print(f"start {tag}: {' '.join(command)}", flush=True)
        processes.append((tag, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for tag, process, log in processes:
        if process.wait() != 0:
            failed.append(f"{tag} failed (rc {process.returncode}); see {out / (tag + '.log')}")
            for _, other, _ in processes:  # the partner run: no point in finishing it alone
                if other.poll() is None:
                    other.terminate()
        log.close()
    if failed:
        raise SystemExit("; ".join(failed))
    results = []
    for tag, command, kind, n_train, minutes, variant in jobs:
        path = out / tag / "result.json"
        if not path.exists():
            run_dir_result(out, tag, command, kind, n_train, minutes, variant)
            result = json.loads(path.read_text())
            result["ran_with"] = [other[0] for other in jobs if other[0] != tag]  # the run that shared the CPU
            write_json(result, path)
        result = json.loads(path.read_text())
        print(f"{tag}: {result['steps']} steps, test_MD E {result['energy_mae_meV']:.2f} meV, "
              f"F {result['forces_mae_meV_per_A']:.1f} meV/Å", flush=True)
        results.append(result)
    return results


def _seeded(tag: str, command: list[str], seed: int) -> tuple[str, list[str]]:
    """A repeat with another training seed (weights of new rows, shuffling): ``_seed<S>`` in the tag."""
    if seed == 0:
        return tag, command
    tag = f"{tag}_seed{seed}"
    return tag, [f"name={tag}" if part.startswith("name=") else part for part in command] + [f"seed={seed}"]


def finetune_job(out: Path, variant: str, n_train: int, minutes: float, seed: int = 0):
    tag, command = _seeded(f"ft_{variant}_n{n_train}_{minutes:g}min",
                           ethanol_command(out, f"ft_{variant}_n{n_train}_{minutes:g}min", n_train, minutes,
                                           VARIANTS[variant]), seed)
    return tag, command, "finetuned", n_train, minutes, variant


def scratch_job(out: Path, n_train: int, minutes: float, seed: int = 0):
    tag, command = _seeded(f"scratch_n{n_train}_{minutes:g}min",
                           ethanol_command(out, f"scratch_n{n_train}_{minutes:g}min", n_train, minutes, None), seed)
    return tag, command, "scratch", n_train, minutes, None


def zero_shot_test_md(model_path: Path) -> tuple[float, float]:
    """bench_dft.mlip_test_md for the pretrained model, which was trained on charged structures and
    so needs the charge (0) and multiplicity (1) of the neutral singlet ethanols said explicitly."""
    import ase.io
    import torch

    from mlip.calculator import MLIPCalculator

    torch.set_num_threads(1)
    frames = ase.io.read(DATA / "test_MD.xyz", ":")
    calculator = MLIPCalculator(str(model_path), default_charge=0, default_spin=1)
    predictions = calculator.predict_batch([atoms.copy() for atoms in frames], max_atoms_per_batch=2000)
    energy = [p["energy"] - atoms.get_potential_energy() for atoms, p in zip(frames, predictions)]
    forces = np.concatenate([(p["forces"] - atoms.get_forces()).ravel() for atoms, p in zip(frames, predictions)])
    return 1000 * float(np.mean(np.abs(energy))), 1000 * float(np.mean(np.abs(forces)))


def pretrain(args) -> None:
    out, tag = args.out, "pretrain"
    command = pretrain_command(out, args.minutes)
    run_dir = out / tag
    if not (run_dir / "results.json").exists():
        started = time.time()
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.time() - started
    else:
        wall = None
    results = json.loads((run_dir / "results.json").read_text())
    previous = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists() else {}
    result = {
        "tag": tag, "kind": "pretrain", "minutes": args.minutes, "steps": results["global_step"],
        "epochs": results["epoch"], "fit_seconds": bench_dft.mlip_fit_seconds(run_dir),
        "wall_seconds": wall or previous.get("wall_seconds"),
        "test": {key: value for key, value in results.get("test", {}).items()},
        "code": bench_dft.mlip_commit(), "command": command,
    }
    if wall is None and "wall_seconds_note" in previous:
        result["wall_seconds_note"] = previous["wall_seconds_note"]
    # the pretrained model as it is (xTB reference energies, finetune.atomic_energies=keep before any step) on test_MD
    energy_mae, forces_mae = zero_shot_test_md(run_dir / "best_model.pt")
    result["zero_shot_test_md"] = {"energy_mae_meV": energy_mae, "forces_mae_meV_per_A": forces_mae}
    write_json(result, run_dir / "result.json")
    print(json.dumps(result, indent=1))


def recipe(args) -> None:
    variants = args.variants or list(VARIANTS)
    jobs = [finetune_job(args.out, variant, RECIPE_N, args.minutes, args.seed) for variant in variants]
    if args.scratch:
        jobs.append(scratch_job(args.out, RECIPE_N, args.minutes, args.seed))
    for i in range(0, len(jobs), 2):
        run_together(args.out, jobs[i:i + 2])


def curve(args) -> None:
    for n_train in args.n:
        run_together(args.out, [finetune_job(args.out, args.recipe, n_train, args.minutes, args.seed),
                                scratch_job(args.out, n_train, args.minutes, args.seed)])


# ----------------------------------------------------------------------------------- report
def portable(value, out: Path):
    return bench_dft.portable(value, out)


def load_results(out: Path, stored: Path | None) -> list[dict]:
    results = {}
    if stored is not None and stored.is_dir():
        for path in sorted(stored.glob("*.json")):
            result = json.loads(path.read_text())
            results[result["tag"]] = result
    for path in sorted(out.glob("*/result.json")):
        result = portable(json.loads(path.read_text()), out)
        results[result["tag"]] = result
        if stored is not None:
            stored.mkdir(parents=True, exist_ok=True)
            write_json(result, stored / f"{result['tag']}.json")
    return list(results.values())


def _f(value, digits=1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def recipe_table(results: list[dict]) -> str:
    rows = [r for r in results if r["kind"] in ("finetuned", "scratch") and r["n_train"] == RECIPE_N]
    minutes = sorted({r["minutes"] for r in rows})
    lines = ["| N | budget (min) | run | seed | overrides | ran side by side with | steps | val F MAE (meV/Å) | "
             "test_MD E MAE (meV) | test_MD F MAE (meV/Å) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for budget_minutes in minutes:
        for r in sorted((r for r in rows if r["minutes"] == budget_minutes),
                        key=lambda r: (r["kind"] != "finetuned", r["forces_mae_meV_per_A"])):
            name = "from scratch" if r["kind"] == "scratch" else f"fine-tuned: {r['variant']}"
            overrides = " ".join(f"`{o}`" for o in VARIANTS.get(r["variant"], [])) if r["kind"] == "finetuned" else ""
            lines.append(f"| {r['n_train']} | {budget_minutes:g} | {name} | {r.get('seed', 0)} | {overrides or '–'} | "
                         f"{', '.join(r.get('ran_with') or []) or '–'} | "
                         f"{r['steps']:,} | "
                         f"{_f(r.get('val_forces_mae_meV_per_A'))} | {_f(r['energy_mae_meV'], 2)} | "
                         f"{_f(r['forces_mae_meV_per_A'])} |")
    return "\n".join(lines)


def curve_pairs(results: list[dict], minutes: float, variant: str) -> list[tuple[dict, dict]]:
    first = [r for r in results if r.get("seed", 0) == 0]  # repeats with other seeds are in the recipe table
    finetuned = {r["n_train"]: r for r in first
                 if r["kind"] == "finetuned" and r["minutes"] == minutes and r["variant"] == variant}
    scratch = {r["n_train"]: r for r in first if r["kind"] == "scratch" and r["minutes"] == minutes}
    return [(finetuned[n], scratch[n]) for n in sorted(set(finetuned) & set(scratch))]


def curve_table(pairs: list[tuple[dict, dict]]) -> str:
    lines = ["| N | fine-tuned F MAE (meV/Å) | fine-tuned E MAE (meV) | fine-tuned steps | scratch F MAE (meV/Å) | "
             "scratch E MAE (meV) | scratch steps | F improvement | E improvement |",
             "|---|---|---|---|---|---|---|---|---|"]
    for ft, sc in pairs:
        f_gain = 100 * (1 - ft["forces_mae_meV_per_A"] / sc["forces_mae_meV_per_A"])
        e_gain = 100 * (1 - ft["energy_mae_meV"] / sc["energy_mae_meV"])
        lines.append(f"| {ft['n_train']} | {ft['forces_mae_meV_per_A']:.1f} | {ft['energy_mae_meV']:.2f} | {ft['steps']:,} | "
                     f"{sc['forces_mae_meV_per_A']:.1f} | {sc['energy_mae_meV']:.2f} | {sc['steps']:,} | "
                     f"{f_gain:+.0f} % | {e_gain:+.0f} % |")
    return "\n".join(lines)


def plot_curve(pairs: list[tuple[dict, dict]], path: Path, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.2, 3.8))
    n = [ft["n_train"] for ft, _ in pairs]
    axis.plot(n, [ft["forces_mae_meV_per_A"] for ft, _ in pairs], "o-", label="fine-tuned from xTB molecules")
    axis.plot(n, [sc["forces_mae_meV_per_A"] for _, sc in pairs], "s--", label="from scratch")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("ethanol training configurations N")
    axis.set_ylabel("test_MD force MAE (meV/Å)")
    axis.set_title(f"ethanol PBE, {minutes:g} min each (2 runs side by side, 1 thread)", fontsize=9)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    temporary = path.with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


def report(args) -> None:
    results = load_results(args.out, args.results)
    if not results:
        raise SystemExit(f"no finished runs under {args.out}" + (f" or in {args.results}" if args.results else ""))
    for r in results:
        if r["kind"] == "pretrain":
            test = r.get("test", {})
            print(f"pretraining (xTB molecules): {r['steps']:,} steps, {_f(r.get('fit_seconds'), 0)} s of fitting, "
                  f"test split E MAE {_f(test.get('test/energy_mae', float('nan')), 1)} meV/atom, "
                  f"F MAE {_f(test.get('test/forces_mae', float('nan')), 1)} meV/Å")
            zero = r.get("zero_shot_test_md")
            if zero:
                print(f"the pretrained model on ethanol test_MD before fine-tuning (xTB references): "
                      f"E MAE {zero['energy_mae_meV']:.0f} meV, F MAE {zero['forces_mae_meV_per_A']:.1f} meV/Å")
            print()
    print("Recipe (N = 50):\n")
    print(recipe_table(results))
    pairs = curve_pairs(results, args.minutes, args.recipe)
    if pairs:
        print(f"\nLearning curve ({args.minutes:g} min each, fine-tuning variant {args.recipe}):\n")
        print(curve_table(pairs))
        # every pair at N = 50 with the curve's budget and recipe: the curve's (seed 0) and repeats (--seed)
        repeats = []
        for seed in sorted({r.get("seed", 0) for r in results if r["kind"] != "pretrain"}):
            seeded = [r for r in results if r["kind"] != "pretrain" and r.get("seed", 0) == seed
                      and r["n_train"] == RECIPE_N and r["minutes"] == args.minutes]
            ft = [r for r in seeded if r["kind"] == "finetuned" and r["variant"] == args.recipe]
            sc = [r for r in seeded if r["kind"] == "scratch"]
            if ft and sc:
                repeats.append((seed, ft[0], sc[0]))
        if repeats:
            print("\nTarget (N = 50, fine-tuning beats from-scratch force MAE by >= 30 % at equal wall time):")
            gains = []
            for seed, ft, sc in repeats:
                gain = 100 * (1 - ft["forces_mae_meV_per_A"] / sc["forces_mae_meV_per_A"])
                gains.append(gain)
                print(f"- seed {seed}: {gain:.0f} % ({ft['forces_mae_meV_per_A']:.1f} against "
                      f"{sc['forces_mae_meV_per_A']:.1f} meV/Å; {ft['steps']:,} and {sc['steps']:,} steps)")
            print(f"- {'met' if min(gains) >= 30 else 'not met'} "
                  f"(mean {np.mean(gains):.0f} % over {len(gains)} pair{'s' if len(gains) > 1 else ''})")
        if args.figures:
            args.figures.mkdir(parents=True, exist_ok=True)
            plot_curve(pairs, args.figures / "learning_curve.png", args.minutes)
            print(f"\nplot: {args.figures / 'learning_curve.png'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("pretrain", "recipe", "curve", "report"):
        sub = commands.add_parser(name)
        sub.add_argument("--out", type=Path, required=True, help="work folder (outside the repository)")
        if name != "report":
            sub.add_argument("--minutes", type=float, required=True, help="wall-time training budget per run")
            sub.add_argument("--seed", type=int, default=0, help="training seed (a repeat: _seed<S> in the tags)")
        if name == "recipe":
            sub.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), default=None,
                             help=f"fine-tuning variants (default: all): {', '.join(VARIANTS)}")
            sub.add_argument("--scratch", action="store_true", help="also a from-scratch run at N = 50")
        if name in ("curve", "report"):
            sub.add_argument("--recipe", default="base", choices=sorted(VARIANTS), help="the fine-tuning variant")
        if name == "curve":
            sub.add_argument("--n", type=int, nargs="+", default=list(CURVE_N), help="training-set sizes")
        if name == "report":
            sub.add_argument("--minutes", type=float, default=5.0, help="the curve's budget")
            sub.add_argument("--figures", type=Path, default=None, help="folder for the PNG plot")
            sub.add_argument("--results", type=Path, default=None,
                             help="folder of stored result JSONs (the repository's copy; new runs are added to it)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    {"pretrain": pretrain, "recipe": recipe, "curve": curve, "report": report}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
