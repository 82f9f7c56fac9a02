"""The `errors` task: energy, force and stress errors on the labelled test set
(`mlip.evaluation.evaluate`, the table `mlip-eval` always wrote), with a parity plot.

An mlip model is evaluated in batches; an external calculator structure by structure (through
`CalculatorAdapter`). A reference for one kind is evaluated on the test structures of that kind.
Headline: energy MAE (meV/atom) and force MAE (meV/Å) over all structures evaluated.
"""

from __future__ import annotations

import numpy as np

from mlip.evaluation import evaluate, parity_plot
from mlip.zoo.results import TaskContext, TaskResult, plot_file_name
from mlip.zoo.structures import is_crystal, set_charge_and_spin


class CalculatorAdapter:
    """`predict_batch` and `elements` for any ASE calculator, so that `evaluate` can drive it.

    Each structure's total charge and multiplicity (``atoms.info``) are also set as initial
    charges and magnetic moments, where calculators such as tblite read them."""

    def __init__(self, calculator, elements):
        self.calculator = calculator
        self.elements = sorted(elements)

    def predict_batch(self, atoms_list, max_atoms_per_batch: int = 0) -> list[dict]:
        from mlip.calculator import has_volume

        predictions = []
        for index, atoms in enumerate(atoms_list):
            atoms = atoms.copy()
            set_charge_and_spin(atoms, atoms.info.get("charge", 0), atoms.info.get("spin", 1))  # for tblite & co.
            atoms.calc = self.calculator
            try:
                prediction = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
                if has_volume(atoms) and "stress" in getattr(self.calculator, "implemented_properties", ()):
                    prediction["stress"] = atoms.get_stress()
            except Exception as error:
                raise RuntimeError(f"structure {index} (id {atoms.info.get('id', '')!r}): {error}") from error
            predictions.append(prediction)
        return predictions


def run(model, context: TaskContext, reference: dict | None = None) -> TaskResult:
    result = TaskResult(task="errors", model=model.name)
    kinds = model.kinds()
    structures = [s for s in context.test_structures if ("crystal" if is_crystal(s) else "molecule") in kinds]
    if not structures:
        result.note = "no test structure of the kinds this model runs on"
        return result
    calculator = model.make_calculator()
    if not hasattr(calculator, "predict_batch"):
        known = model.elements if model.elements is not None else {int(z) for s in structures for z in s.numbers}
        calculator = CalculatorAdapter(calculator, known)
    evaluation = evaluate(calculator, structures, model.name)
    context.advance()
    result.rows = evaluation.rows()
    result.data = {"evaluation": evaluation}
    if evaluation.note:
        result.note = evaluation.note
        return result
    overall = result.rows[0]
    result.summary = {"E MAE (meV/atom)": overall["energy_mae"], "F MAE (meV/Å)": overall["forces_mae"]}
    if np.isfinite(overall["stress_mae"]):
        result.summary["S MAE (meV/Å³)"] = overall["stress_mae"]
    return result


def plot(result: TaskResult, reference: dict | None, path):
    evaluation = result.data.get("evaluation")
    if evaluation is None or evaluation.note:
        return None
    parity_plot(evaluation, path, dpi=70)
    result.plots.append(path)
    return path


def plot_name(model_name: str) -> str:
    return plot_file_name("errors", model_name)


def items(model, context: TaskContext) -> int:
    return 1
