"""Evaluate trained potentials on labelled test sets: error tables and parity plots.

Used by `mlip-eval` (mlip/cli/evaluate.py) and the quickstart notebook.

Metrics, over the structures that carry the label (missing labels are skipped, never zero):

* energy per atom: |E_pred - E_ref| / n_atoms, meV/atom;
* forces: every Cartesian component of every atom, meV/Å;
* stress: all 9 components of the (3, 3) tensor, meV/Å³ (periodic structures only).

Each is reported as MAE and RMSE, per subset and over all structures ("all").

A model that cannot be evaluated on the test set gets one row with a ``note`` instead of
numbers, so that the rest of a model zoo is still evaluated: "unsupported elements: ..." when
the test set holds elements the model was not trained on, "non-finite predictions: ..." when it
returns NaN/inf for a structure.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field

import numpy as np
from ase.data import chemical_symbols

from mlip.data.structure import Structure
from mlip.files import atomic_path, atomic_write

METRIC_COLUMNS = [
    ("energy_mae", "E MAE (meV/atom)"),
    ("energy_rmse", "E RMSE (meV/atom)"),
    ("forces_mae", "F MAE (meV/Å)"),
    ("forces_rmse", "F RMSE (meV/Å)"),
    ("stress_mae", "S MAE (meV/Å³)"),
    ("stress_rmse", "S RMSE (meV/Å³)"),
]
ALL_SUBSETS = "all"


# --------------------------------------------------------------------------------------------
# test sets
# --------------------------------------------------------------------------------------------


def read_test_set(path: str | os.PathLike, **options) -> list[Structure]:
    """All structures of a test file in any format `mlip-convert` reads (mlip HDF5, extxyz and
    other ASE-readable files, ASE db, aselmdb, MPTrj JSON, MACE HDF5), validated on the way in.
    `options` are the converters' key options (e.g. ``energy_key="REF_energy"``)."""
    from mlip.data.convert import read_structures

    return list(read_structures(path, **options))


# --------------------------------------------------------------------------------------------
# predictions and errors
# --------------------------------------------------------------------------------------------


@dataclass
class ParityData:
    """Reference and predicted values of one quantity, with the subset of each value."""

    reference: list = field(default_factory=list)
    predicted: list = field(default_factory=list)
    subsets: list = field(default_factory=list)

    def add(self, reference: np.ndarray, predicted: np.ndarray, subset: str) -> None:
        reference, predicted = np.ravel(reference), np.ravel(predicted)
        self.reference.append(reference)
        self.predicted.append(predicted)
        self.subsets.append(np.full(reference.shape, subset, dtype=object))

    def arrays(self, subset: str = ALL_SUBSETS) -> tuple[np.ndarray, np.ndarray]:
        if not self.reference:
            return np.zeros(0), np.zeros(0)
        reference, predicted = np.concatenate(self.reference), np.concatenate(self.predicted)
        if subset != ALL_SUBSETS:
            chosen = np.concatenate(self.subsets) == subset
            reference, predicted = reference[chosen], predicted[chosen]
        return reference, predicted


@dataclass
class Evaluation:
    """Predictions of one model on one test set (energies per atom in eV/atom)."""

    model_name: str
    energy_per_atom: ParityData = field(default_factory=ParityData)
    forces: ParityData = field(default_factory=ParityData)
    stress: ParityData = field(default_factory=ParityData)
    subset_counts: dict = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""  # why the model was not evaluated (then there are no predictions)

    def rows(self) -> list[dict]:
        """One table row for all structures, then one per subset (sorted); errors in meV units.

        A model with a `note` gets a single "all" row holding the note and no numbers.
        """
        if self.note:
            row = {"model": self.model_name, "subset": ALL_SUBSETS, "n_structures": sum(self.subset_counts.values())}
            row.update({key: float("nan") for key, _ in METRIC_COLUMNS}, structures_per_s=float("nan"), note=self.note)
            return [row]
        subsets = [ALL_SUBSETS] + sorted(name for name in self.subset_counts if name != ALL_SUBSETS)
        rows = []
        for subset in subsets:
            count = sum(self.subset_counts.values()) if subset == ALL_SUBSETS else self.subset_counts[subset]
            row = {"model": self.model_name, "subset": subset or "(none)", "n_structures": count}
            for name, parity in (("energy", self.energy_per_atom), ("forces", self.forces), ("stress", self.stress)):
                reference, predicted = parity.arrays(subset)
                row[f"{name}_mae"], row[f"{name}_rmse"] = mae_rmse(1000.0 * (predicted - reference))
            if subset == ALL_SUBSETS:
                row["structures_per_s"] = count / self.seconds if self.seconds > 0 else float("nan")
            rows.append(row)
        return rows


def mae_rmse(errors: np.ndarray) -> tuple[float, float]:
    """Mean absolute error and root-mean-square error; NaN when there is nothing to average."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(np.abs(errors))), float(np.sqrt(np.mean(errors**2)))


def unsupported_elements(model_elements, structures: list[Structure]) -> str:
    """'' if every element of `structures` is in `model_elements` (atomic numbers), else e.g.
    'Cl (Z=17) in 12 of 40 structures, Br (Z=35) in 1 of 40 structures'."""
    known = {int(z) for z in model_elements}
    counts: dict[int, int] = {}
    for structure in structures:
        for z in {int(z) for z in structure.numbers} - known:
            counts[z] = counts.get(z, 0) + 1
    return ", ".join(
        f"{chemical_symbols[z]} (Z={z}) in {count} of {len(structures)} structures" for z, count in sorted(counts.items())
    )


def evaluate(calculator, structures: list[Structure], model_name: str, max_atoms_per_batch: int = 2000) -> Evaluation:
    """Predict every structure with `calculator` (an `MLIPCalculator`) and collect parity data.

    A model lacking an element of the test set, or predicting NaN/inf, is not an error: the
    returned `Evaluation` has a `note` saying so (and no predictions).
    """
    from ase.stress import voigt_6_to_full_3x3_stress

    from mlip.calculator import MLIPPredictionError

    evaluation = Evaluation(model_name=model_name)
    for structure in structures:
        evaluation.subset_counts[structure.subset] = evaluation.subset_counts.get(structure.subset, 0) + 1
    missing = unsupported_elements(calculator.elements, structures)
    if missing:
        evaluation.note = f"unsupported elements: {missing}"
        return evaluation
    atoms_list = [structure.to_atoms() for structure in structures]
    for atoms in atoms_list:
        atoms.calc = None
    start = time.perf_counter()
    try:
        predictions = calculator.predict_batch(atoms_list, max_atoms_per_batch=max_atoms_per_batch)
    except MLIPPredictionError as error:
        evaluation.note = f"non-finite predictions: {str(error).removeprefix('MLIPCalculator: ')}"
        return evaluation
    evaluation.seconds = time.perf_counter() - start
    for structure, prediction in zip(structures, predictions):
        subset = structure.subset
        if structure.energy is not None:
            evaluation.energy_per_atom.add(
                np.array(structure.energy / structure.n_atoms), np.array(prediction["energy"] / structure.n_atoms), subset
            )
        if structure.forces is not None:
            evaluation.forces.add(structure.forces, prediction["forces"], subset)
        if structure.stress is not None and "stress" in prediction:
            evaluation.stress.add(structure.stress, voigt_6_to_full_3x3_stress(prediction["stress"]), subset)
    return evaluation


# --------------------------------------------------------------------------------------------
# output: Markdown, CSV, parity plots
# --------------------------------------------------------------------------------------------


def markdown_table(rows: list[dict]) -> str:
    """The error table in Markdown (a '-' where a label is missing from the test set); a "note"
    column is added when a row has one (a model that was not evaluated)."""
    with_notes = any(row.get("note") for row in rows)
    header = ["model", "subset", "structures"] + [title for _, title in METRIC_COLUMNS] + ["structures/s"]
    header += ["note"] if with_notes else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row["subset"], str(row["n_structures"])]
        cells += [_format_number(row[key]) for key, _ in METRIC_COLUMNS]
        cells.append(_format_number(row.get("structures_per_s", float("nan")), digits=1))
        cells += [row.get("note", "").replace("|", "/")] if with_notes else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format_number(value: float, digits: int = 2) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """The error table as CSV (empty cells where a label is missing), written atomically.
    The first column, "test_set", names the test set of each row (`mlip-eval`; empty if the rows
    have none); the last, "note", is empty except for a model that was not evaluated."""
    columns = ["test_set", "model", "subset", "n_structures"] + [key for key, _ in METRIC_COLUMNS] + ["structures_per_s", "note"]
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_value(row.get(key)) for key in columns})


def _csv_value(value):
    if isinstance(value, float) and not np.isfinite(value):
        return ""
    return value


def write_text(text: str, path: str | os.PathLike) -> None:
    """``text`` to ``path`` (UTF-8), written atomically (`mlip.files.atomic_write`)."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def parity_plot(evaluation: Evaluation, path: str | os.PathLike, dpi: int = 110) -> None:
    """A PNG with one parity panel per available quantity (energy/atom, forces, stress), coloured by subset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("Energy (eV/atom)", evaluation.energy_per_atom),
        ("Force components (eV/Å)", evaluation.forces),
        ("Stress components (eV/Å³)", evaluation.stress),
    ]
    panels = [(title, parity) for title, parity in panels if parity.reference]
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 4.0), squeeze=False)
    subsets = sorted(name for name in evaluation.subset_counts)
    for axis, (title, parity) in zip(axes[0], panels):
        for colour, subset in enumerate(subsets):  # a subset keeps its colour across panels
            reference, predicted = parity.arrays(subset) if len(subsets) > 1 else parity.arrays()
            if reference.size:
                axis.scatter(reference, predicted, s=4, alpha=0.6, color=f"C{colour % 10}", label=subset or "(none)")
        reference, predicted = parity.arrays()
        low, high = float(min(reference.min(), predicted.min())), float(max(reference.max(), predicted.max()))
        axis.plot([low, high], [low, high], color="black", linewidth=0.8)
        mae, _ = mae_rmse(predicted - reference)
        axis.set_title(f"{title}\nMAE {mae:.3g}")
        axis.set_xlabel("reference")
        axis.set_ylabel("predicted")
        if len(subsets) > 1:
            axis.legend(fontsize=7, markerscale=2)
    figure.suptitle(evaluation.model_name)
    figure.tight_layout()
    try:
        with atomic_path(path) as temporary:  # the temporary name does not end in .png: say the format
            figure.savefig(temporary, format="png", dpi=dpi)
    finally:
        plt.close(figure)
