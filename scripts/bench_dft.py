"""Real-DFT benchmark: ethanol at PBE/def2-SVP (data/benchmarks/ethanol_pbe/, rMD17 configurations).

Trains mlip's backbones and mace-torch on ``train.xyz`` for equal wall-time budgets on this machine
(one thread each), then reports on ``test_MD.xyz`` the energy MAE (meV per structure) and force MAE
(meV/Å), the units of the published rMD17 tables, the energy RMSE (meV/atom) on the energy-only
extrapolation sets, and plots: test/validation force MAE against wall time, the six dimer curves
and the H-removal curve (DFT against every model).

Three steps, each resumable (a finished run is skipped; everything lives under ``--out``, outside
the repository)::

    python scripts/bench_dft.py prepare --out ../bench_dft
    python scripts/bench_dft.py run --out ../bench_dft --model mlip-mace --minutes 60
    python scripts/bench_dft.py run --out ../bench_dft --model mace-torch --minutes 60 \\
        --mace-python ../mace-venv/bin/python
    python scripts/bench_dft.py report --out ../bench_dft --figures docs/figures/ethanol_pbe \\
        --results docs/benchmarks/ethanol_pbe

Models: ``mlip-mace``, ``mlip-facet``, ``mlip-transip`` (``mlip-train experiment=ethanol_pbe`` with
that backbone, isolated-atom reference energies, the ZBL prior with the inner cutoff (``model.inner_cutoff=auto``)
unless ``--no-zbl``, stage two from
80 % of the time budget; TransIP with random rotations of the training structures) and ``mace-torch`` (scripts/mace_torch_baseline.py in its own venv, the
same loss weights, batch size and learning rate, the same model size as mlip's MACE-like: 32
channels, L=1, correlation 3, 2 layers). ``--n-train 50|250`` trains on a random subset of
``train.xyz`` (seed 0) for the data learning curve; ``--seed N`` sets either program's training seed
(initial weights, batch order) to repeat a comparison. Run two at a time at most on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mlip.files import atomic_path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "benchmarks" / "ethanol_pbe"
TEST_SETS = {  # name in mlip's metrics -> file in DATA
    "md": "test_MD.xyz",
    "h_removal": "test_H_removal.xyz",
    "dimers": "test_dimers.xyz",
    "normal_mode_874": "test_norm_mode_874.xyz",
    "normal_mode_3005": "test_norm_mode_3005.xyz",
}
EXTRAPOLATION = ("h_removal", "dimers", "normal_mode_874", "normal_mode_3005")
MLIP_BACKBONES = {"mlip-mace": "mace", "mlip-facet": "facet", "mlip-transip": "transip"}
PUBLISHED = [  # rMD17 ethanol, 1000 training configurations, MAE (E meV, F meV/Å); arXiv 2206.07697
    ("MACE", 0.4, 2.1), ("Allegro", 0.4, 2.1), ("NequIP", 0.4, 2.8), ("BOTNet", 0.4, 3.2),
    ("GemNet", None, 3.6), ("ACE", 1.2, 7.3), ("PaiNN", 2.7, 10.0),
]


# ----------------------------------------------------------------------------------- prepare
def training_subset(n_train: int | None) -> list:
    """The first ``n_train`` structures of a seed-0 permutation of train.xyz (all: None)."""
    import ase.io

    frames = ase.io.read(DATA / "train.xyz", ":")
    if n_train is None or n_train >= len(frames):
        return frames
    order = np.random.default_rng(0).permutation(len(frames))[:n_train]
    return [frames[i] for i in sorted(order)]


def write_reference_keys(frames, path: Path) -> None:
    """extxyz with the labels as ``REF_energy`` (info) and ``REF_forces`` (arrays), for mace-torch."""
    import ase.io

    copies = []
    for atoms in frames:
        copy = atoms.copy()
        copy.calc = None
        copy.info["REF_energy"] = float(atoms.get_potential_energy())
        copy.arrays["REF_forces"] = np.asarray(atoms.get_forces())
        copies.append(copy)
    with atomic_path(path) as temporary:  # a temporary of its own: two runs may prepare at once
        ase.io.write(temporary, copies, format="extxyz")


def prepare(out: Path, n_train: int | None) -> Path:
    """Converts the training subset and every test set; returns the data folder."""
    import ase.io

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    suffix = "" if n_train is None else f"_{n_train}"
    train_xyz = data / f"train{suffix}.xyz"
    if not train_xyz.exists():
        frames = training_subset(n_train)
        with atomic_path(train_xyz) as temporary:
            ase.io.write(temporary, frames, format="extxyz")
        write_reference_keys(frames, data / f"train{suffix}_ref.xyz")
    jobs = [(train_xyz, data / f"train{suffix}.h5")]
    jobs += [(DATA / name, data / f"{Path(name).stem}.h5") for name in TEST_SETS.values()]
    for source, target in jobs:
        if not target.exists():
            subprocess.run(["mlip-convert", str(source), "-o", str(target), "-q"], check=True)
    if not (data / "test_MD_ref.xyz").exists():
        write_reference_keys(ase.io.read(DATA / "test_MD.xyz", ":"), data / "test_MD_ref.xyz")
    return data


# ----------------------------------------------------------------------------------- run
def run_tag(model: str, minutes: float, n_train: int | None, zbl: bool, variant: str | None = None, seed: int = 0) -> str:
    tag = f"{model}_{minutes:g}min"
    if n_train is not None:
        tag += f"_n{n_train}"
    if model.startswith("mlip") and not zbl:
        tag += "_nozbl"
    if variant:
        tag += f"_{variant}"
    if seed:
        tag += f"_seed{seed}"
    return tag


def mlip_command(backbone: str, data: Path, run_root: Path, tag: str, minutes: float, n_train, zbl: bool, extra,
                 seed: int = 0) -> list[str]:
    suffix = "" if n_train is None else f"_{n_train}"
    tests = ",".join(f"{name}:{data / (Path(file).stem + '.h5')}" for name, file in TEST_SETS.items())
    hours, rest = divmod(round(minutes * 60), 3600)
    budget = f"00:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    command = [
        "mlip-train", "experiment=ethanol_pbe", f"model/backbone={backbone}",
        f"runs_dir={run_root}", f"name={tag}", "progress_bar=none",
        f"data.paths=[{data / f'train{suffix}.h5'}]", f"data.test_paths={{{tests}}}",
        "model.atomic_energies=isolated", f"model.isolated_atoms={DATA / 'isolated_atoms.xyz'}",
        f"model.pair_repulsion={'zbl' if zbl else 'null'}",
        # with ZBL, the learned model stops seeing a pair below 0.75 x its shortest training distance
        f"model.inner_cutoff={'auto' if zbl else 'null'}",
        "trainer.max_epochs=100000", f"trainer.max_time={budget}",
        "stage_two.start=null", "++stage_two.start_time=0.8",  # stage two from 80 % of the time budget
        f"seed={seed}",  # initial weights and batch order (the validation split has its own data.split_seed)
    ]
    if backbone == "transip":  # its best symmetry treatment on the sample data (docs/transip.md)
        command.append("symmetry.rotation_augmentation=true")
    return command + list(extra)


def mace_torch_command(python: str, data: Path, run_dir: Path, minutes: float, n_train, seed: int = 0) -> list[str]:
    suffix = "" if n_train is None else f"_{n_train}"
    command = [
        python, str(REPO / "scripts" / "mace_torch_baseline.py"),
        "--train", str(data / f"train{suffix}_ref.xyz"), "--test", str(data / "test_MD_ref.xyz"),
        "--seconds", str(minutes * 60), "--threads", "1", "--batch-size", "5", "--lr", "0.01",
        "--energy-weight", "1", "--forces-weight", "1000", "--stress-weight", "0", "--warmup-steps", "0",
        "--curve-every", str(max(60.0, minutes * 60 / 12)), "--out", str(run_dir / "mace_torch.json"),
        "--seed", str(seed),
        "--checkpoint", str(run_dir / "mace_torch_checkpoint.pt"),  # a killed run resumes with its clock
    ]
    for name in EXTRAPOLATION:
        command += ["--predict", f"{name}={DATA / TEST_SETS[name]}"]
    return command


def run(args) -> None:
    data = prepare(args.out, args.n_train)
    if args.override and not args.variant:
        raise SystemExit("overrides change the recipe: name the run with --variant NAME (e.g. --variant float32)")
    tag = run_tag(args.model, args.minutes, args.n_train, not args.no_zbl, args.variant, args.seed)
    run_root = args.out / "runs"
    run_dir = run_root / tag
    if (run_dir / "result.json").exists():
        print(f"{tag}: done already ({run_dir / 'result.json'})")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    code = mlip_commit()  # at the start: the code the run trains with
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if args.model in MLIP_BACKBONES:
        command = mlip_command(MLIP_BACKBONES[args.model], data, run_root, tag, args.minutes, args.n_train,
                               not args.no_zbl, args.override, args.seed)
        if not (run_dir / "results.json").exists():  # a killed run resumes from its last.ckpt
            subprocess.run(command, check=True, env=env)
        result = mlip_result(run_dir, args.minutes * 60)
        overrides = run_dir / ".hydra" / "overrides.yaml"
        if overrides.exists():  # the overrides the run was made with
            import yaml

            command = ["mlip-train", *yaml.safe_load(overrides.read_text())]
    elif args.model == "mace-torch":
        if not args.mace_python:
            raise SystemExit("--mace-python: the python of a venv with mace-torch (see scripts/mace_torch_baseline.py)")
        command = mace_torch_command(args.mace_python, data, run_dir, args.minutes, args.n_train, args.seed)
        for override in args.override:  # key=value -> --key value of mace_torch_baseline.py (e.g. stage_two_start=0.8)
            key, _, value = override.partition("=")
            command += [f"--{key.replace('_', '-')}", value]
        if not (run_dir / "mace_torch.json").exists():  # a killed run resumes from its checkpoint
            subprocess.run(command, check=True, env=env)
        result = mace_torch_result(run_dir, command)
    else:
        raise SystemExit(f"unknown model {args.model!r}; choose from {sorted(MLIP_BACKBONES) + ['mace-torch']}")
    result.update(code=code, model=args.model, minutes=args.minutes, n_train=args.n_train or 1000, variant=args.variant,
                  seed=args.seed,
                  zbl=(not args.no_zbl) if args.model.startswith("mlip") else False, command=command)
    write_json(result, run_dir / "result.json")
    print(json.dumps({key: value for key, value in result.items() if key not in ("predictions", "curve")}, indent=1))


def mlip_commit() -> str:
    """The repository commit the run trained with (``+dirty`` with uncommitted changes to mlip/)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "mlip"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def write_json(value, path: Path) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(value, indent=1))


# ----------------------------------------------------------------------------------- results
@functools.cache  # read once per report, not once per run and table cell
def reference_energies(name: str) -> np.ndarray:
    import ase.io

    return np.array([atoms.get_potential_energy() for atoms in ase.io.read(DATA / TEST_SETS[name], ":")])


@functools.cache  # read once per report, not once per run and table cell
def atom_counts(name: str) -> np.ndarray:
    import ase.io

    return np.array([len(atoms) for atoms in ase.io.read(DATA / TEST_SETS[name], ":")])


def _mlip_batch_predictions(model_path: Path, name: str) -> tuple[list, list[dict]]:
    """The frames of test set ``name`` and the exported model's predictions for them (batched)."""
    import ase.io
    import torch

    from mlip.calculator import MLIPCalculator

    torch.set_num_threads(1)  # two runs share the 2 cores
    frames = ase.io.read(DATA / TEST_SETS[name], ":")
    unlabelled = [atoms.copy() for atoms in frames]  # copy() drops the reference calculator
    return frames, MLIPCalculator(str(model_path)).predict_batch(unlabelled, max_atoms_per_batch=2000)


def mlip_predictions(model_path: Path) -> dict[str, list[float]]:
    """Energies (eV) of the exported model for every structure of the extrapolation sets."""
    return {name: [float(p["energy"]) for p in _mlip_batch_predictions(model_path, name)[1]] for name in EXTRAPOLATION}


def mlip_test_md(model_path: Path) -> tuple[float, float]:
    """Energy MAE (meV per structure) and force MAE (meV/Å, over components) on test_MD.xyz."""
    frames, predictions = _mlip_batch_predictions(model_path, "md")
    energy_errors = [p["energy"] - atoms.get_potential_energy() for atoms, p in zip(frames, predictions)]
    force_errors = [(p["forces"] - atoms.get_forces()).ravel() for atoms, p in zip(frames, predictions)]
    return 1000 * float(np.mean(np.abs(energy_errors))), 1000 * float(np.mean(np.abs(np.concatenate(force_errors))))


def mlip_curve(run_dir: Path, budget_seconds: float) -> list[dict]:
    """Validation force MAE (meV/Å) against fitting seconds (``time/fit_seconds``) per validation.

    Runs from before mlip logged ``time/fit_seconds`` get times proportional to the epoch (every
    epoch is the same 950 structures), marked ``"set": "val, time ∝ epoch"``.
    """
    with open(run_dir / "logs" / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/forces_mae")]
    if rows and all(row.get("time/fit_seconds") for row in rows):
        return [{"seconds": float(row["time/fit_seconds"]), "steps": int(row["step"]) + 1,
                 "forces_mae": float(row["val/forces_mae"]), "set": "val"} for row in rows]
    epochs = [int(row["epoch"]) + 1 for row in rows]
    return [{"seconds": budget_seconds * epoch / max(epochs), "forces_mae": float(row["val/forces_mae"]),
             "set": "val, time ∝ epoch"} for epoch, row in zip(epochs, rows)]


def mlip_fit_seconds(run_dir: Path) -> float | None:
    """Seconds the fit ran, from Lightning's timer state in ``last.ckpt`` (None without ``max_time``)."""
    from mlip.train.checkpoint import load_checkpoint_file

    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    timer = checkpoint.get("callbacks", {}).get("Timer")
    return None if timer is None else float(timer["time_elapsed"]["train"])


def mlip_result(run_dir: Path, budget_seconds: float) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    fit_seconds = mlip_fit_seconds(run_dir)
    budget_seconds = fit_seconds or budget_seconds
    model_path = run_dir / "best_model.pt"
    energy_mae, forces_mae = mlip_test_md(model_path)
    return {
        "steps": results["global_step"],
        "epochs": results["epoch"],
        "fit_seconds": fit_seconds,
        "energy_mae_meV": energy_mae,
        "forces_mae_meV_per_A": forces_mae,
        "curve": mlip_curve(run_dir, budget_seconds),
        "predictions": mlip_predictions(model_path),
    }


def mace_torch_result(run_dir: Path, command: list[str]) -> dict:
    raw = json.loads((run_dir / "mace_torch.json").read_text())
    atoms_per_structure = atom_counts("md")
    if len(set(atoms_per_structure)) != 1:
        raise ValueError("test_MD.xyz: structures of different sizes; per-structure MAE needs the errors themselves")
    n_atoms = int(atoms_per_structure[0])
    every = float(command[command.index("--curve-every") + 1]) if "--curve-every" in command else 0.0
    curve = [  # wall seconds of training (evaluation excluded); older outputs: when the point was due
        {"seconds": point.get("wall_seconds", every * (k + 1)), "steps": point.get("steps"),
         "forces_mae": point["force_mae_mev_per_A"], "set": "test"}
        for k, point in enumerate(raw.get("curve", []))
    ]
    return {
        "steps": raw["steps"],
        "fit_seconds": raw["train_seconds"],
        "energy_mae_meV": raw["energy_mae_mev_per_atom"] * n_atoms,
        "forces_mae_meV_per_A": raw["force_mae_mev_per_A"],
        "curve": curve,
        "predictions": raw.get("predictions", {}),  # older outputs: no extrapolation predictions
    }


def extrapolation_rmse(predictions: dict[str, list[float]]) -> dict[str, float]:
    """Energy RMSE in meV/atom on each energy-only set."""
    errors = {}
    for name in EXTRAPOLATION:
        if name in predictions:
            difference = (np.asarray(predictions[name]) - reference_energies(name)) / atom_counts(name)
            errors[name] = 1000 * float(np.sqrt(np.mean(difference**2)))
    return errors


def repulsive_pairs(predictions: dict[str, list[float]]) -> tuple[int, int]:
    """How many of the six dimer curves rise monotonically as the pair approaches below the DFT
    equilibrium distance (energy strictly decreasing with distance there), and of how many."""
    import ase.io

    frames = ase.io.read(DATA / TEST_SETS["dimers"], ":")
    pairs = np.array([atoms.info["config_type"] for atoms in frames])
    distances = np.array([atoms.info["distance"] for atoms in frames])
    reference, predicted = reference_energies("dimers"), np.asarray(predictions["dimers"])
    monotone = 0
    for pair in sorted(set(pairs)):
        mask = pairs == pair
        order = np.argsort(distances[mask])
        r, e_dft, e_model = distances[mask][order], reference[mask][order], predicted[mask][order]
        inside = r <= r[np.argmin(e_dft)]
        monotone += bool(np.all(np.diff(e_model[inside]) < 0))
    return monotone, len(set(pairs))


# ----------------------------------------------------------------------------------- report
def result_tag(result: dict) -> str:
    return run_tag(result["model"], result["minutes"], None if result["n_train"] == 1000 else result["n_train"],
                   bool(result.get("zbl")), result.get("variant"), result.get("seed", 0))


def portable(value, out: Path):
    """``value`` with this machine's paths written relative: ``<out>`` for the work folder, ``.`` for
    the repository and ``..`` for its folder (so a stored command runs on any checkout)."""
    if isinstance(value, str):
        return value.replace(str(out), "<out>").replace(str(REPO), ".").replace(str(REPO.parent), "..")
    if isinstance(value, list):
        return [portable(item, out) for item in value]
    if isinstance(value, dict):
        return {key: portable(item, out) for key, item in value.items()}
    return value


def load_results(out: Path, stored: Path | None) -> list[dict]:
    """Every finished run: those under ``out/runs`` and those stored in ``stored`` (the repository's
    copy, so runs of earlier sessions on other machines stay in the report). A run in both is
    taken from ``out`` and its stored copy is refreshed."""
    results = {}
    if stored is not None and stored.is_dir():
        for path in sorted(stored.glob("*.json")):
            result = json.loads(path.read_text())
            results[result_tag(result)] = result
    for path in sorted((out / "runs").glob("*/result.json")):
        result = portable(json.loads(path.read_text()), out)
        results[result_tag(result)] = result
        if stored is not None:
            stored.mkdir(parents=True, exist_ok=True)
            write_json(result, stored / f"{result_tag(result)}.json")
    return sorted(results.values(), key=lambda r: (r["n_train"], r["minutes"], r["model"], not r.get("zbl")))


def label(result: dict) -> str:
    text = result["model"]
    if result["model"].startswith("mlip") and not result.get("zbl"):
        text += " (no ZBL)"
    if result.get("variant"):
        text += f" [{result['variant']}]"
    if result.get("seed"):
        text += f" seed {result['seed']}"
    return text


def table(results: list[dict]) -> str:
    header = ("| model | budget (min) | trained (min) | N train | steps | test_MD E MAE (meV) | test_MD F MAE (meV/Å) | "
              "H-removal | dimers | normal mode 874 | normal mode 3005 | repulsive dimers |")
    lines = [
        header,
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        rmse = extrapolation_rmse(result["predictions"])
        trained = f"{result['fit_seconds'] / 60:.1f}" if result.get("fit_seconds") else "–"
        cells = [label(result), f"{result['minutes']:g}", trained, str(result["n_train"]), f"{result['steps']:,}",
                 f"{result['energy_mae_meV']:.2f}", f"{result['forces_mae_meV_per_A']:.1f}"]
        cells += [f"{rmse[name]:.1f}" if name in rmse else "–" for name in EXTRAPOLATION]
        if "dimers" in result["predictions"]:
            monotone, total = repulsive_pairs(result["predictions"])
            cells.append(f"{monotone}/{total}")
        else:
            cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Extrapolation columns: energy RMSE in meV/atom (energy-only sets). Repulsive dimers: curves whose "
                 "energy rises monotonically as the pair approaches below the DFT equilibrium distance.")
    lines.append("Published (1000 configurations, GPU): " + ", ".join(
        f"{name} {'–' if e is None else e} / {f}" for name, e, f in PUBLISHED) + " (E meV / F meV/Å).")
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish_plot(figure, axis, path: Path, xlabel: str, ylabel: str, log_x: bool = False, log_y: bool = False,
                dpi: int = 110) -> None:
    """Label, log-scale and legend one axis; write the figure to `path` and close it."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    if log_x:
        axis.set_xscale("log")
    if log_y:
        axis.set_yscale("log")
    axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)


def plot_learning_curves(results: list[dict], path: Path) -> None:
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(6, 4))
    for result in [r for r in results if r["n_train"] == 1000]:
        curve = result.get("curve") or []
        name = f"{label(result)}, {result['minutes']:g} min"
        color = None
        if curve:
            kind = curve[0]["set"]
            (line,) = axis.plot([p["seconds"] / 60 for p in curve], [p["forces_mae"] for p in curve],
                                label=f"{name} ({kind})", alpha=0.8)
            color = line.get_color()
        end = (result.get("fit_seconds") or result["minutes"] * 60) / 60
        axis.scatter([end], [result["forces_mae_meV_per_A"]], marker="o", s=25, zorder=3, color=color,
                     label=None if curve else f"{name} (test_MD at the end)")
    axis.axhline(4.2, color="grey", linestyle=":", label="target 4.2 meV/Å")
    axis.set_title("ethanol PBE: force MAE against wall time (dots: test_MD at the end)", fontsize=8)
    finish_plot(figure, axis, path, "wall time (min, 1 CPU thread)", "force MAE (meV/Å)", log_y=True)


def plot_step_curves(results: list[dict], path: Path) -> None:
    """Force MAE against optimiser steps (runs whose curve records steps): learning per step,
    apart from the speed of a step."""
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(6, 4))
    for result in results:
        curve = [point for point in result.get("curve") or [] if point.get("steps")]
        if result["n_train"] != 1000 or not curve:
            continue
        axis.plot([p["steps"] for p in curve], [p["forces_mae"] for p in curve], alpha=0.8,
                  label=f"{label(result)}, {result['minutes']:g} min ({curve[0]['set']})")
    axis.set_title("ethanol PBE: force MAE against optimiser steps", fontsize=8)
    finish_plot(figure, axis, path, "optimiser steps (batches of 5)", "force MAE (meV/Å)", log_x=True, log_y=True)


def plot_dimers(results: list[dict], path: Path) -> None:
    import ase.io

    plt = pyplot()

    frames = ase.io.read(DATA / TEST_SETS["dimers"], ":")
    pairs = [atoms.info["config_type"] for atoms in frames]
    distances = np.array([atoms.info["distance"] for atoms in frames])
    reference = reference_energies("dimers")
    figure, axes = plt.subplots(2, 3, figsize=(10, 6))
    for axis, pair in zip(axes.ravel(), sorted(set(pairs))):
        mask = np.array([p == pair for p in pairs])
        order = np.argsort(distances[mask])
        shift = reference[mask][order][-1]  # energies relative to the longest distance
        axis.plot(distances[mask][order], reference[mask][order] - shift, "k-", lw=2, label="DFT (PBE)")
        for result in results:
            if result["n_train"] != 1000 or "dimers" not in result["predictions"]:
                continue
            predicted = np.asarray(result["predictions"]["dimers"])[mask][order]
            axis.plot(distances[mask][order], predicted - predicted[-1], label=f"{label(result)}, {result['minutes']:g} min")
        axis.set_title(pair)
        axis.set_xlabel("distance (Å)")
        axis.set_ylabel("E − E(r_max) (eV)")
        axis.set_ylim(-15, 40)
    axes.ravel()[0].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_h_removal(results: list[dict], path: Path) -> None:
    import ase.io

    plt = pyplot()

    frames = ase.io.read(DATA / TEST_SETS["h_removal"], ":")
    distances = np.array([atoms.info["OH_dist"] for atoms in frames])
    order = np.argsort(distances)
    reference = reference_energies("h_removal")[order]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(distances[order], reference - reference.min(), "k-", lw=2, label="DFT (PBE)")
    for result in results:
        if result["n_train"] != 1000 or "h_removal" not in result["predictions"]:
            continue
        predicted = np.asarray(result["predictions"]["h_removal"])[order]
        axis.plot(distances[order], predicted - reference.min(), label=f"{label(result)}, {result['minutes']:g} min")
    finish_plot(figure, axis, path, "O–H distance (Å)", "E − min E(DFT) (eV)")


def plot_data_curve(results: list[dict], path: Path) -> None:
    """Test force MAE against the number of training configurations, one line per model and budget."""
    plt = pyplot()

    lines: dict[str, list[tuple[int, float]]] = {}
    for result in results:
        if result["model"].startswith("mlip") and not result.get("zbl"):
            continue
        lines.setdefault(f"{label(result)}, {result['minutes']:g} min", []).append(
            (result["n_train"], result["forces_mae_meV_per_A"]))
    figure, axis = plt.subplots(figsize=(5, 4))
    for name, points in sorted(lines.items()):
        if len({n for n, _ in points}) < 2:
            continue
        points.sort()
        axis.plot([n for n, _ in points], [f for _, f in points], "o-", label=name)
    axis.plot([50, 1000], [32.6, 2.1], "k:", marker="x", label="MACE, published (GPU)")
    finish_plot(figure, axis, path, "training configurations", "test_MD force MAE (meV/Å)", log_x=True, log_y=True)


def report(args) -> None:
    results = load_results(args.out, args.results)
    if not results:
        raise SystemExit(f"no finished runs under {args.out / 'runs'}" + (f" or in {args.results}" if args.results else ""))
    print(table(results))
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        plot_learning_curves(results, args.figures / "learning_curves.png")
        plot_step_curves(results, args.figures / "step_curves.png")
        plot_dimers(results, args.figures / "dimers.png")
        plot_h_removal(results, args.figures / "h_removal.png")
        plot_data_curve(results, args.figures / "data_curve.png")
        print(f"plots in {args.figures}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "run", "report"):
        sub = commands.add_parser(name)
        sub.add_argument("--out", type=Path, required=True, help="work folder (outside the repository)")
        if name in ("prepare", "run"):
            sub.add_argument("--n-train", type=int, default=None, help="random subset of train.xyz (default: all 1000)")
        if name == "run":
            sub.add_argument("--model", required=True, choices=sorted(MLIP_BACKBONES) + ["mace-torch"])
            sub.add_argument("--minutes", type=float, required=True, help="wall-time training budget")
            sub.add_argument("--no-zbl", action="store_true", help="mlip without the ZBL pair prior")
            sub.add_argument("--mace-python", default=None, help="python of the mace-torch venv")
            sub.add_argument("--seed", type=int, default=0,
                             help="training seed of either program: initial weights and batch order (default 0)")
            sub.add_argument("--variant", default=None,
                             help="name of a recipe variant made by the overrides (added to the run's tag and label)")
            sub.add_argument("override", nargs="*", help="extra overrides (key=value): mlip-train overrides, or for mace-torch options of scripts/mace_torch_baseline.py (stage_two_start=0.8 -> --stage-two-start 0.8)")
        if name == "report":
            sub.add_argument("--figures", type=Path, default=None, help="folder for the PNG plots")
            sub.add_argument("--results", type=Path, default=None,
                             help="folder of stored result JSONs (the repository's copy; new runs are added to it)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    {"prepare": lambda: prepare(args.out, args.n_train), "run": lambda: run(args), "report": lambda: report(args)}[args.command]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
