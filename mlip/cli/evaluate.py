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
    parser.add_argument("models", nargs="+", help="exported model files and/or folders of them")
    parser.add_argument("--data", nargs="+", action="extend",
                        help="files forming one test set: mlip HDF5 (.h5) or extxyz")
    parser.add_argument("--test", nargs="+", action="extend", metavar="[NAME=]FILE",
                        help="test sets of their own, each reported under its name (the file stem, or NAME)")
    parser.add_argument("--out", default="eval", help="output folder (default: eval)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is fastest for small systems)")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--max-atoms-per-batch", type=int, default=2000)
    parser.add_argument("--no-plots", action="store_true", help="skip the parity plots")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    if arguments.threads:
        import torch

        torch.set_num_threads(arguments.threads)
    from mlip.calculator import MLIPCalculator

    models = find_models(arguments.models)
    sets = {name: read_test_sets(paths) for name, paths in test_sets(arguments.data, arguments.test).items()}
    several = len(sets) > 1
    output = Path(arguments.out)
    output.mkdir(parents=True, exist_ok=True)
    rows, tables = [], []
    for set_name, structures in sets.items():
        set_rows = []
        for model, name in zip(models, model_names(models)):
            calculator = MLIPCalculator(str(model), device=arguments.device, dtype=arguments.dtype)
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


if __name__ == "__main__":
    sys.exit(main())
