"""`mlip-eval`: error tables and parity plots for one model or a whole model zoo.

    mlip-eval MODEL [MODEL ...] --data test.h5 [more.h5 | test.extxyz ...] --out eval/
    mlip-eval MODEL [MODEL ...] --test md.h5 dimers.h5 [NAME=file ...] --out eval/

MODEL is an exported model (anything `mlip.load` reads), a folder of them, or a folder of
training runs (each `<run>/best_model.pt` is taken, e.g. `mlip-eval runs/ ...`). The test sets are
mlip HDF5 files or anything ASE reads with labels (extxyz). The files of --data form one test
set (an unlabelled subset is named after its file); every --test file is a test set of its own,
named by its file stem or NAME=file, and reported on its own (missing labels, e.g. the forces of
an energy-only set, are left out, never zero). Writes eval/metrics.md (one table per test set
when there are several), eval/metrics.csv (a test_set column) and eval/parity_<model>.png
(parity_<model>_<test set>.png with several test sets), and prints the Markdown tables. A model
that lacks an element of a test set (or predicts NaN) gets one row with a note saying so, and
the other models and test sets are still evaluated.

Physical tasks (mlip.zoo, docs/evaluation.md): ``--tasks errors,dimers,stability,relax,eos,vibrations,speed``
(or ``all``) runs each task for every model on the structures of the --data files (``--split test``:
the random test split mlip-train draws from them) and writes eval/report.md, eval/report.html,
eval/summary.csv and a plot per task and model:

    mlip-eval runs/ --data molecules.h5 crystals.h5 --split test --tasks all \
        --calculator GFN2-xTB=tblite.ase:TBLite,method=GFN2-xTB,verbosity=0 --reference molecule=GFN2-xTB

``--calculator [NAME=]module:factory[,key=value,...]`` adds any ASE calculator to the zoo: the
factory is imported and called with the keyword arguments. Only what is typed here is ever
imported; nothing read from a model file or data set can name code to run. ``--reference NAME``
(or ``molecule=NAME`` / ``crystal=NAME``) makes a model the reference the tasks compare with.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlip.evaluation import (
    evaluate,
    markdown_table,
    parity_plot,
    read_test_set,
    write_csv,
    write_text,
)

MODEL_SUFFIXES = (".pt", ".pth", ".mlip")
RUN_MODEL = "best_model.pt"  # what mlip-train exports into each run folder


def models_in_folder(folder: Path) -> list[Path]:
    """Model files directly in `folder`, then `<subfolder>/best_model.pt` of run folders (sorted)."""
    files = sorted(child for child in folder.iterdir() if child.is_file() and child.suffix in MODEL_SUFFIXES)
    runs = sorted(child / RUN_MODEL for child in folder.iterdir() if (child / RUN_MODEL).is_file())
    return files + runs


def find_models(paths: list[str]) -> list[Path]:
    """The model files named, with every model of each named folder."""
    models: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = models_in_folder(path)
            if not found:
                raise SystemExit(
                    f"mlip-eval: no model files ({', '.join(MODEL_SUFFIXES)}) or run folders with {RUN_MODEL} in {path}"
                )
            models.extend(found)
        elif path.exists():
            models.append(path)
        else:
            raise SystemExit(f"mlip-eval: model {path} does not exist")
    return models


def read_test_sets(paths: list[str]):
    """Structures of all test sets; unlabelled subsets are named after their file."""
    structures = []
    for path in paths:
        if not os.path.exists(path):
            raise SystemExit(f"mlip-eval: test set {path} does not exist")
        try:
            test_set = read_test_set(path)
        except ValueError as error:  # MLIPDataError names the file, structure and field
            raise SystemExit(f"mlip-eval: {error}") from None
        for structure in test_set:
            if not structure.subset:
                structure.subset = Path(path).stem
            structures.append(structure)
    if not structures:
        raise SystemExit(f"mlip-eval: the test sets {paths} hold no structures")
    return structures


def test_sets(data: list[str] | None, tests: list[str] | None) -> dict[str, list[str]]:
    """{test set name: its files}: the files of ``--data`` together (named by the stem of a single
    file, else "data"), then each ``--test`` entry (``file`` named by its stem, or ``NAME=file``)."""
    sets: dict[str, list[str]] = {}
    if data:
        sets[Path(data[0]).stem if len(data) == 1 else "data"] = list(data)
    for entry in tests or []:
        name, separator, path = entry.partition("=")
        if not separator or not name or os.path.exists(entry):  # a file name holding "=" stays a file name
            name, path = Path(entry).stem, entry
        if name in sets:
            raise SystemExit(f"mlip-eval: test set name {name} given twice; name them with NAME=file")
        sets[name] = [path]
    if not sets:
        raise SystemExit("mlip-eval: no test sets; give --data and/or --test files")
    return sets


def model_names(models: list[Path]) -> list[str]:
    """File stems, made unique with the parent folder where two stems clash."""
    stems = [model.stem for model in models]
    return [f"{model.parent.name}/{model.stem}" if stems.count(model.stem) > 1 else model.stem for model in models]


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mlip-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="exported model files and/or folders of them")
    parser.add_argument("--data", nargs="+", action="extend",
                        help="files forming one test set: mlip HDF5 (.h5) or extxyz")
    parser.add_argument("--test", nargs="+", action="extend", metavar="[NAME=]FILE",
                        help="test sets of their own, each reported under its name (the file stem, or NAME)")
    parser.add_argument("--out", default="eval", help="output folder (default: eval)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is fastest for small systems)")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--max-atoms-per-batch", type=int, default=2000)
    parser.add_argument("--head", help="the head multi-head models are evaluated with (single-head models have none and "
                                       "ignore it); a multi-head model without it, or with an unknown one, lists its heads")
    parser.add_argument("--no-plots", action="store_true", help="skip the parity plots (errors only)")
    zoo = parser.add_argument_group("physical tasks (mlip.zoo)")
    zoo.add_argument("--tasks", default="errors",
                     help="comma-separated: errors,dimers,stability,relax,eos,vibrations,speed, or all (default: errors)")
    zoo.add_argument("--calculator", action="append", default=[], metavar="[NAME=]module:factory[,key=value,...]",
                     help="an ASE calculator as a model, e.g. GFN2-xTB=tblite.ase:TBLite,method=GFN2-xTB,verbosity=0")
    zoo.add_argument("--reference", action="append", default=[], metavar="[molecule=|crystal=]NAME",
                     help="the model the tasks compare with (for both kinds, or for molecules / crystals only)")
    zoo.add_argument("--split", choices=["all", "test"], default="all",
                     help="test: only the random test split mlip-train draws from the --data files (default: all)")
    zoo.add_argument("--val-fraction", type=float, default=0.1, help="of the training split (--split test)")
    zoo.add_argument("--test-fraction", type=float, default=0.1, help="of the training split (--split test)")
    zoo.add_argument("--split-seed", type=int, default=0, help="of the training split (--split test)")
    zoo.add_argument("--max-molecules", type=int, default=4, help="starting molecules, one per formula")
    zoo.add_argument("--max-crystals", type=int, default=4, help="starting crystals, one per formula")
    zoo.add_argument("--dimer-points", type=int, default=60)
    zoo.add_argument("--md-steps", type=int, default=400)
    zoo.add_argument("--md-timestep-fs", type=float, default=0.5)
    zoo.add_argument("--md-temperature", type=float, default=300.0, help="K")
    zoo.add_argument("--relax-optimizer", choices=["BFGS", "FIRE"], default="BFGS")
    zoo.add_argument("--relax-fmax", type=float, default=0.02, help="eV/Å")
    zoo.add_argument("--relax-steps", type=int, default=300)
    zoo.add_argument("--eos-points", type=int, default=7)
    zoo.add_argument("--speed-seconds", type=float, default=2.0, help="per model and system")
    zoo.add_argument("--speed-atoms", type=int, nargs="+", default=[64, 216], help="crystal sizes of the speed task")
    zoo.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def mlip_calculator(model: Path, arguments):
    """The `MLIPCalculator` of one model file, with ``--head`` for a multi-head model (SystemExit naming the file otherwise)."""
    from mlip.calculator import MLIPCalculator, MLIPInputError, head_for

    calculator = MLIPCalculator(str(model), device=arguments.device, dtype=arguments.dtype)
    try:
        calculator.head = head_for(calculator.model, arguments.head, where=str(model))
    except MLIPInputError as error:
        raise SystemExit(f"mlip-eval: {error} (pass --head <name>)") from None
    return calculator


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    if arguments.threads:
        import torch

        torch.set_num_threads(arguments.threads)
    tasks = [name.strip() for name in arguments.tasks.split(",") if name.strip()]
    if tasks != ["errors"] or arguments.calculator or arguments.reference or arguments.split != "all":
        return zoo_main(arguments, argv)
    if not arguments.models:
        raise SystemExit("mlip-eval: no models given")
    models = find_models(arguments.models)
    sets = {name: read_test_sets(paths) for name, paths in test_sets(arguments.data, arguments.test).items()}
    several = len(sets) > 1
    output = Path(arguments.out)
    output.mkdir(parents=True, exist_ok=True)
    rows, tables = [], []
    for set_name, structures in sets.items():
        set_rows = []
        for model, name in zip(models, model_names(models)):
            calculator = mlip_calculator(model, arguments)
            evaluation = evaluate(calculator, structures, name, max_atoms_per_batch=arguments.max_atoms_per_batch)
            set_rows.extend({"test_set": set_name, **row} for row in evaluation.rows())
            if evaluation.note:
                print(f"mlip-eval: {name} not evaluated{f' on {set_name}' if several else ''}: {evaluation.note}",
                      file=sys.stderr)
            elif not arguments.no_plots:
                stem = name.replace("/", "_") + (f"_{set_name}" if several else "")
                parity_plot(evaluation, output / f"parity_{stem}.png")
        heading = f"## {set_name} ({len(structures)} structures)\n\n" if several else ""
        tables.append(heading + markdown_table(set_rows))
        rows.extend(set_rows)
    table = "\n".join(tables)
    write_text(table, output / "metrics.md")
    write_csv(rows, output / "metrics.csv")
    print(table)
    print(f"wrote {output / 'metrics.md'}, {output / 'metrics.csv'}" + ("" if arguments.no_plots else " and parity plots"))
    return 0


# --------------------------------------------------------------------------------------------
# physical tasks (mlip.zoo)
# --------------------------------------------------------------------------------------------

KIND_NAMES = {"molecule": "molecule", "molecules": "molecule", "crystal": "crystal", "crystals": "crystal"}


def reference_kinds(entries: list[str], names: list[str]) -> dict[str, tuple[str, ...]]:
    """{model name: kinds it is the reference for} from ``--reference [KIND=]NAME`` entries."""
    kinds: dict[str, list[str]] = {}
    for entry in entries:
        kind, separator, name = entry.partition("=")
        if separator and kind in KIND_NAMES and name in names:
            selected = [KIND_NAMES[kind]]
        elif entry in names:
            name, selected = entry, ["molecule", "crystal"]
        else:
            raise SystemExit(f"mlip-eval: --reference {entry}: no model of that name; the models are {', '.join(names)}")
        for kind in selected:
            if any(kind in other for other_name, other in kinds.items() if other_name != name):
                raise SystemExit(f"mlip-eval: two references for {kind}s")
            kinds.setdefault(name, []).append(kind)
    return {name: tuple(dict.fromkeys(value)) for name, value in kinds.items()}


def zoo_models(arguments) -> list:
    """The model files (and folders) and the --calculator entries as `ZooModel`s, references marked."""
    from mlip.zoo.models import ZooModel, parse_calculator_spec

    paths = find_models(arguments.models) if arguments.models else []
    entries = [(name, ("path", path)) for path, name in zip(paths, model_names(paths))]
    for spec in arguments.calculator:
        try:
            name, factory, keywords = parse_calculator_spec(spec)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        entries.append((name or factory.rpartition(":")[2], ("factory", factory, keywords)))
    if not entries:
        raise SystemExit("mlip-eval: no models given (model files, folders or --calculator)")
    names = [name for name, _ in entries]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise SystemExit(f"mlip-eval: model name(s) {', '.join(clashes)} given twice; name calculators with NAME=module:factory")
    references = reference_kinds(arguments.reference, names)
    models = []
    for name, entry in entries:
        kinds = references.get(name, ())
        try:
            if entry[0] == "path":
                models.append(ZooModel.from_path(entry[1], name=name, device=arguments.device, dtype=arguments.dtype,
                                                 reference_for=kinds, head=arguments.head))
            else:
                models.append(ZooModel.from_factory(entry[1], entry[2], name=name, reference_for=kinds))
        except (ValueError, FileNotFoundError) as error:  # MLIPInputError (a head) is a ValueError
            raise SystemExit(f"mlip-eval: {error}") from None
    return models


def zoo_main(arguments, argv) -> int:
    from mlip.zoo.results import ZooOptions
    from mlip.zoo.runner import parse_tasks, run_zoo
    from mlip.zoo.structures import training_test_split

    try:
        tasks = parse_tasks(arguments.tasks)
    except ValueError as error:
        raise SystemExit(f"mlip-eval: {error}") from None
    if arguments.test:
        raise SystemExit("mlip-eval: the physical tasks take one test set, the --data files (not --test)")
    if not arguments.data:
        raise SystemExit("mlip-eval: the physical tasks need test structures: give --data files")
    models = zoo_models(arguments)
    if arguments.split == "test":
        missing = [path for path in arguments.data if not os.path.exists(path)]
        if missing:
            raise SystemExit(f"mlip-eval: test set {missing[0]} does not exist")
        structures = training_test_split(arguments.data, arguments.val_fraction, arguments.test_fraction, arguments.split_seed)
    else:
        structures = read_test_sets(arguments.data)
    options = ZooOptions(
        max_molecules=arguments.max_molecules, max_crystals=arguments.max_crystals, dimer_points=arguments.dimer_points,
        md_steps=arguments.md_steps, md_timestep_fs=arguments.md_timestep_fs, md_temperature_K=arguments.md_temperature,
        relax_optimizer=arguments.relax_optimizer, relax_fmax=arguments.relax_fmax, relax_steps=arguments.relax_steps,
        eos_points=arguments.eos_points, speed_seconds=arguments.speed_seconds,
        speed_crystal_atoms=tuple(arguments.speed_atoms),
    )
    command = "mlip-eval " + " ".join(sys.argv[1:] if argv is None else argv)
    output = Path(arguments.out)
    zoo = run_zoo(models, structures, tasks, output, options=options, progress=not arguments.no_progress, command=command)
    if "errors" in zoo.results:
        rows = [{"test_set": "data", **row} for result in zoo.results["errors"].values() for row in result.rows]
        write_text(markdown_table(rows), output / "metrics.md")
        write_csv(rows, output / "metrics.csv")
    print((output / "report.md").read_text(encoding="utf-8").split("## Summary", 1)[-1].split("\n## ", 1)[0])
    print(f"wrote {output / 'report.md'}, {output / 'report.html'} ({zoo.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
