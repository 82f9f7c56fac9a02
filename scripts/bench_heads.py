"""Multi-head benchmarks (issue 12, parts a and c): one head against two on the sample data, and
forgetting after fine-tuning with and without replay.

``heads`` (a): ``mlip-train experiment=sample`` (one head: GFN2-xTB molecules and GFN1-xTB
crystals share the reference energies, scale and readout) against the same experiment with
``data=sample_heads`` (a ``gfn2`` and a ``gfn1`` head over one backbone), the same split, epochs
and seed, both runs at once (one thread each, so they see the same CPU). Reported: wall time
and, per subset, the energy MAE (meV/atom) and force MAE (meV/Å) on the training and test splits;
BN (the GFN1 crystals whose energies the shared references fit worst) in particular::

    python scripts/bench_heads.py heads --out ../bench_heads --results docs/benchmarks/heads

``replay`` (c): a model pretrained on the xTB molecules (``--pretrained``, a ``best_model.pt``
trained with ``data=molecules``: its random test split is rebuilt from the same split settings)
is fine-tuned on N ethanol PBE configurations (data/benchmarks/ethanol_pbe/train.xyz) for the same
wall time (a) without replay (one head) and (b) with replay: two heads, ``pbe`` for ethanol and
``xtb`` replaying the pretraining *training* split (never its test split) with sampling weight
``--replay-weight``. Reported: the force and energy MAE on the pretraining test split (the
pretrained model, then each fine-tuned model; the replay model with its ``xtb`` head) and on
ethanol's test_MD.xyz (``pbe`` head)::

    python scripts/bench_heads.py replay --out ../bench_heads --pretrained ../ft/pretrain/best_model.pt \\
        --n-train 250 --minutes 8 --results docs/benchmarks/heads

``report`` prints the stored tables and draws docs/figures/heads/*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dft  # noqa: E402  (the ethanol data preparation and its test files)

SAMPLE = REPO / "mlip" / "sample_data"
ETHANOL = REPO / "data" / "benchmarks" / "ethanol_pbe"


def write_json(value, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


def run_parallel(commands: dict[str, list[str]], logs: Path) -> dict[str, float]:
    """Run the commands at once (one thread each); wall seconds of each. A failure stops the script."""
    logs.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    started, processes = time.time(), {}
    for name, command in commands.items():
        handle = open(logs / f"{name}.log", "w")  # noqa: SIM115 (closed below)
        processes[name] = (subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment), handle)
    seconds = {}
    for name, (process, handle) in processes.items():
        if process.wait() != 0:
            raise SystemExit(f"bench_heads: {name} failed (rc {process.returncode}); see {logs / (name + '.log')}")
        handle.close()
        seconds[name] = time.time() - started
    return seconds


def fit_seconds(run_dir: Path) -> float:
    return float(json.loads((run_dir / "results.json").read_text())["fit"]["time/fit_seconds"])


# ----------------------------------------------------------------------------------- errors
def errors_by_subset(model_path: Path, structures, head_of=None) -> dict[str, dict[str, float]]:
    """{subset: {"energy_mae": meV/atom, "forces_mae": meV/Å, "n": structures}} (and "all") of the
    model on `mlip.data.structure.Structure`s; ``head_of(structure)`` names the head (multi-head)."""
    import torch

    from mlip.calculator import MLIPCalculator

    torch.set_num_threads(1)
    calculator = MLIPCalculator(str(model_path))
    atoms_list = []
    for structure in structures:
        atoms = structure.to_atoms()
        atoms.calc = None
        atoms.info.update(charge=int(structure.charge), spin=int(structure.spin))
        if head_of is not None:
            atoms.info["head"] = head_of(structure)
        atoms_list.append(atoms)
    predictions = calculator.predict_batch(atoms_list)
    groups: dict[str, dict[str, list]] = {}
    for structure, prediction in zip(structures, predictions):
        energy = 1000 * abs(prediction["energy"] - structure.energy) / len(structure.numbers)
        forces = 1000 * np.abs(prediction["forces"] - structure.forces).ravel()
        for group in ("all", structure.subset or ""):
            entry = groups.setdefault(group, {"energy": [], "forces": []})
            entry["energy"].append(energy)
            entry["forces"].append(forces)
    return {group: {"energy_mae": float(np.mean(v["energy"])), "forces_mae": float(np.mean(np.concatenate(v["forces"]))),
                    "n": len(v["energy"])} for group, v in groups.items()}


def sample_split(paths: list[Path], val_fraction=0.1, test_fraction=0.1, seed=0):
    """The (train, test) structures of ``mlip-train``'s random split of ``paths`` (data/sample.yaml's
    settings), each structure with ``source`` set to the name of its file."""
    from mlip.train.datamodule import PotentialDataModule

    data = PotentialDataModule([str(p) for p in paths], cutoff=5.0, val_fraction=val_fraction,
                               test_fraction=test_fraction, split_seed=seed, statistics_cache=False)
    data.setup()

    def read(dataset):
        structures = []
        for index in range(len(dataset)):
            structure = dataset.get_structure(index)
            structure.source = dataset.locate(index)[0].name
            structures.append(structure)
        return structures

    return read(data.train_set), read(data.test_sets[None])


# ----------------------------------------------------------------------------------- (a) heads
def heads(args) -> None:
    out = args.out.resolve()
    runs = out / "runs"
    common = ["mlip-train", "experiment=sample", f"runs_dir={runs}", "progress_bar=none", "logger=none",
              f"trainer.max_epochs={args.epochs}"]
    commands = {"one_head": common + ["name=one_head"], "two_heads": common + ["data=sample_heads", "name=two_heads"]}
    commands = {name: command for name, command in commands.items() if not (runs / name / "results.json").exists()}
    if commands:
        print(f"training {', '.join(commands)} ({args.epochs} epochs each, at once)", flush=True)
        run_parallel(commands, out / "logs")
    train, test = sample_split([SAMPLE / "molecules.h5", SAMPLE / "crystals.h5"])
    head_of_file = {"molecules.h5": "gfn2", "crystals.h5": "gfn1"}  # data/sample_heads.yaml

    def head(structure):
        return head_of_file[structure.source]

    result = {"benchmark": "heads", "epochs": args.epochs, "code": bench_dft.mlip_commit(), "runs": {}}
    for name in ("one_head", "two_heads"):
        model = runs / name / "best_model.pt"
        result["runs"][name] = {
            "fit_seconds": fit_seconds(runs / name),
            "train": errors_by_subset(model, train, head if name == "two_heads" else None),
            "test": errors_by_subset(model, test, head if name == "two_heads" else None),
        }
    write_json(result, args.results / "heads.json")
    print(heads_table(result))


def heads_table(result: dict) -> str:
    one, two = result["runs"]["one_head"], result["runs"]["two_heads"]
    lines = [f"Sample data, {result['epochs']} epochs each: one head {one['fit_seconds']:.0f} s, "
             f"two heads {two['fit_seconds']:.0f} s of fitting", "",
             "| subset | split | N | E one head | E two heads | E ratio | F one head | F two heads |",
             "|---|---|---|---|---|---|---|---|"]
    subsets = sorted(one["train"], key=lambda s: (s != "all", s))
    for split in ("train", "test"):
        for subset in subsets:
            if subset not in one[split]:
                continue
            a, b = one[split][subset], two[split][subset]
            ratio = a["energy_mae"] / b["energy_mae"] if b["energy_mae"] > 0 else float("inf")
            lines.append(f"| {subset} | {split} | {a['n']} | {a['energy_mae']:.1f} | {b['energy_mae']:.1f} | "
                         f"{ratio:.1f}x | {a['forces_mae']:.0f} | {b['forces_mae']:.0f} |")
    lines.append("")
    lines.append("E: energy MAE, meV/atom; F: force MAE, meV/Å; ratio = one head / two heads.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- (c) replay
def write_h5(structures, path: Path) -> Path:
    from mlip.data.writer import write_structures

    if not path.exists():
        write_structures(path, structures, source="bench_heads: a split of the shipped sample molecules")
    return path


def replay(args) -> None:
    out = args.out.resolve()
    runs = out / "runs"
    pretrained = args.pretrained.resolve()
    pretrain_config = _pretrained_config(pretrained)
    split = pretrain_config["data"]
    train, test = sample_split([SAMPLE / "molecules.h5"], split["val_fraction"], split["test_fraction"], split["split_seed"])
    replay_file = write_h5(train, out / "data" / "xtb_molecules_train.h5")  # the pretraining training split only
    ethanol = bench_dft.prepare(out, args.n_train)
    suffix = "" if args.n_train is None else f"_{args.n_train}"
    ethanol_train = ethanol / f"train{suffix}.h5"
    minutes, seconds = divmod(round(args.minutes * 60), 60)
    budget = f"00:00:{minutes:02d}:{seconds:02d}"
    common = ["mlip-train", "experiment=ethanol_pbe", f"runs_dir={runs}", "progress_bar=none", "logger=none",
              f"init_from={pretrained}", "trainer.max_epochs=100000", f"trainer.max_time={budget}",
              "stage_two.start=null", "++stage_two.start_time=0.8", f"optimizer.lr={args.lr}",
              "finetune.atomic_energies=average", f"data.val_fraction={args.val_fraction}"]
    tag = f"n{args.n_train}_{args.minutes:g}min" + (f"_{args.tag}" if args.tag else "")
    replay_name = f"replay_w{args.replay_weight:g}_{tag}"
    commands = {
        f"no_replay_{tag}": common + [f"name=no_replay_{tag}", f"data.paths=[{ethanol_train}]"],
        replay_name: common + [
            f"name={replay_name}", "data.paths=null", "finetune.replay_head=xtb",
            f"data.heads={{pbe:{{paths:[{ethanol_train}],weight:{1 - args.replay_weight}}},"
            f"xtb:{{paths:[{replay_file}],weight:{args.replay_weight}}}}}",
        ],
    }
    pending = {name: command for name, command in commands.items() if not (runs / name / "results.json").exists()}
    if pending:
        print(f"fine-tuning {', '.join(pending)} for {args.minutes:g} min each, at once", flush=True)
        run_parallel(pending, out / "logs")
    from mlip.data.convert import read_structures

    ethanol_test = list(read_structures(ethanol / "test_MD.h5"))
    result = {"benchmark": "replay", "n_train": args.n_train, "minutes": args.minutes, "lr": args.lr,
              "replay_weight": args.replay_weight, "code": bench_dft.mlip_commit(),
              "pretrained": {"xtb_test": errors_by_subset(pretrained, test)["all"]}, "runs": {}}
    for name in commands:
        model = runs / name / "best_model.pt"
        replaying = name.startswith("replay")
        result["runs"][name] = {
            "fit_seconds": fit_seconds(runs / name),
            "steps": int(json.loads((runs / name / "results.json").read_text())["global_step"]),
            "xtb_test": errors_by_subset(model, test, (lambda s: "xtb") if replaying else None)["all"],
            "ethanol_test_md": errors_by_subset(model, ethanol_test, (lambda s: "pbe") if replaying else None)["all"],
        }
    write_json(result, args.results / f"{replay_name}.json")
    print(replay_table(result))


def _pretrained_config(path: Path) -> dict:
    from mlip.export import read_export

    config = read_export(path).get("config") or {}
    data = config.get("data") or {}
    if [Path(p).name for p in data.get("paths") or []] != ["molecules.h5"] or data.get("val_paths") or data.get("test_paths"):
        raise SystemExit(f"bench_heads replay: {path} was not trained on the sample molecules alone (data=molecules)")
    return config


def replay_table(result: dict) -> str:
    pretrained = result["pretrained"]["xtb_test"]
    lines = [f"Fine-tuning on {result['n_train']} ethanol PBE configurations for {result['minutes']:g} min "
             f"(lr {result['lr']}, replay weight {result['replay_weight']})", "",
             "| model | steps | xTB test F | vs pretrained | xTB test E | ethanol test_MD F | ethanol test_MD E |",
             "|---|---|---|---|---|---|---|",
             f"| pretrained (xTB molecules) | | {pretrained['forces_mae']:.1f} | | {pretrained['energy_mae']:.1f} | | |"]
    for name, run in result["runs"].items():
        xtb, md = run["xtb_test"], run["ethanol_test_md"]
        change = 100 * (xtb["forces_mae"] / pretrained["forces_mae"] - 1)
        lines.append(f"| {name} | {run.get('steps', '')} | {xtb['forces_mae']:.1f} | {change:+.0f} % | {xtb['energy_mae']:.1f} | "
                     f"{md['forces_mae']:.1f} | {md['energy_mae']:.2f} |")
    lines += ["", "F: force MAE, meV/Å; E: energy MAE, meV/atom. The replay model is evaluated with its xtb head on "
              "the xTB test split and its pbe head on ethanol."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- report
def report(args) -> None:
    args.figures.mkdir(parents=True, exist_ok=True)
    for path in sorted(args.results.glob("*.json")):
        result = json.loads(path.read_text())
        print(f"## {path.name}\n")
        print(heads_table(result) if result["benchmark"] == "heads" else replay_table(result))
        print()
        if result["benchmark"] == "heads":
            plot_heads(result, args.figures / "sample_heads.png")


def plot_heads(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one, two = result["runs"]["one_head"]["train"], result["runs"]["two_heads"]["train"]
    subsets = sorted(s for s in one if s != "all")
    x = np.arange(len(subsets))
    figure, axis = plt.subplots(figsize=(8, 3.2))
    axis.bar(x - 0.2, [one[s]["energy_mae"] for s in subsets], 0.4, label="one head")
    axis.bar(x + 0.2, [two[s]["energy_mae"] for s in subsets], 0.4, label="two heads (gfn2, gfn1)")
    axis.set_xticks(x, subsets, rotation=45, ha="right")
    axis.set_yscale("log")
    axis.set_ylabel("training-split energy MAE (meV/atom)")
    axis.legend()
    figure.tight_layout()
    temporary = path.with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=90)
    plt.close(figure)
    os.replace(temporary, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("heads", "replay", "report"):
        command = commands.add_parser(name)
        command.add_argument("--results", type=Path, default=REPO / "docs" / "benchmarks" / "heads")
        if name != "report":
            command.add_argument("--out", type=Path, required=True, help="runs and data (outside the repository)")
        if name == "heads":
            command.add_argument("--epochs", type=int, default=20)
        if name == "replay":
            command.add_argument("--pretrained", type=Path, required=True)
            command.add_argument("--n-train", type=int, default=250)
            command.add_argument("--minutes", type=float, default=8.0)
            command.add_argument("--lr", type=float, default=0.001)
            command.add_argument("--replay-weight", type=float, default=0.3)
            command.add_argument("--val-fraction", type=float, default=0.1)
            command.add_argument("--tag", help="suffix of the run names (a repeat of the pair under the same conditions)")
        if name == "report":
            command.add_argument("--figures", type=Path, default=REPO / "docs" / "figures" / "heads")
    args = parser.parse_args(argv)
    {"heads": heads, "replay": replay, "report": report}[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
