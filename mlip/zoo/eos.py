"""The `eos` task: energy-volume curves and bulk moduli of the crystals (`ase.eos`).

Each crystal is first relaxed by the model (positions and cell, as in the `relax` task, with
``relax_fmax`` and ``relax_steps``; a calculator without stress keeps the starting cell and the
row says so), then scaled isotropically to ``eos_points`` volumes from (1 - r) V0 to (1 + r) V0
(r = ``eos_volume_range``) with fixed fractional coordinates. A Birch-Murnaghan fit gives the
equilibrium volume V0 (Å³/atom) and the bulk modulus B (GPa). Against the reference: the
relative errors of B and V0 (%). Headline: mean |B error| against the reference (or the mean B).
"""

from __future__ import annotations

import numpy as np
from ase import units

from mlip.zoo.relax import relax
from mlip.zoo.loop import measure_each
from mlip.zoo.results import TaskContext, TaskResult, implements, mean_or_nan, plot_file_name, pyplot

MAX_PLOTTED = 6


def energy_volume_curve(atoms, points: int, volume_range: float) -> tuple[np.ndarray, np.ndarray]:
    """Volumes (Å³) and energies (eV) of ``atoms`` (with its calculator) scaled isotropically."""
    cell = atoms.cell.array.copy()
    volumes, energies = [], []
    for factor in np.linspace(1.0 - volume_range, 1.0 + volume_range, points):
        scaled = atoms.copy()
        scaled.calc = atoms.calc
        scaled.set_cell(cell * factor ** (1.0 / 3.0), scale_atoms=True)
        volumes.append(scaled.get_volume())
        energies.append(scaled.get_potential_energy())
    return np.array(volumes), np.array(energies)


def fit(volumes: np.ndarray, energies: np.ndarray) -> tuple[float, float, float]:
    """(V0 Å³, E0 eV, B GPa) of a Birch-Murnaghan fit."""
    from ase.eos import EquationOfState

    v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit(warn=False)
    return float(v0), float(e0), float(b / units.GPa)


def work(model, context: TaskContext) -> list[tuple]:
    """(row, start) per starting crystal the model runs on."""
    return [({"structure": atoms.info["name"], "atoms": len(atoms)}, atoms) for atoms in context.starts(model, ("crystal",))]


def run(model, context: TaskContext, reference: dict | None = None) -> TaskResult:
    options = context.options
    result = TaskResult(task="eos", model=model.name)
    result.note = context.not_run(model, "crystal")
    if result.note:
        return result

    def measure(atoms, row):
        if implements(atoms.calc, "stress"):
            row["relaxed"] = relax(atoms, options.relax_optimizer, options.relax_fmax, options.relax_steps)["converged"]
        else:
            row["note"] = "no stress: the starting cell is scaled without relaxation"
        volumes, energies = energy_volume_curve(atoms, options.eos_points, options.eos_volume_range)
        v0, e0, bulk_modulus = fit(volumes, energies)
        n = len(atoms)
        row.update(V0_per_atom_A3=v0 / n, B_GPa=bulk_modulus)
        result.data[row["structure"]] = {"volumes": volumes / n, "energies": energies / n, "V0": v0 / n, "E0": e0 / n,
                                         "B": bulk_modulus}
        if reference is not None and row["structure"] in reference:
            ref = reference[row["structure"]]
            row["B_error_pct"] = 100.0 * (bulk_modulus - ref["B"]) / ref["B"]
            row["V0_error_pct"] = 100.0 * (v0 / n - ref["V0"]) / ref["V0"]

    fitted = measure_each(result, model, context, work(model, context), measure, empty="no crystal fitted")
    if not fitted:
        return result
    result.summary = {"mean B (GPa)": mean_or_nan(row["B_GPa"] for row in fitted)}
    if reference is not None and not model.is_reference:
        result.summary["B |error| vs ref (%)"] = mean_or_nan(abs(row["B_error_pct"]) for row in fitted if "B_error_pct" in row)
    return result


def plot(result: TaskResult, reference: dict | None, path):
    """E(V) - E0 per atom for each crystal (at most 6), the reference dashed."""
    names = [name for name in result.data][:MAX_PLOTTED]
    if not names:
        return None
    plt = pyplot()
    columns = min(3, len(names))
    lines = (len(names) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(2.8 * columns, 2.3 * lines), squeeze=False)
    for axis in axes.ravel()[len(names):]:
        axis.set_visible(False)
    for axis, name in zip(axes.ravel(), names):
        curve = result.data[name]
        axis.plot(curve["volumes"], 1000.0 * (curve["energies"] - curve["E0"]), "o-", markersize=3, color="C0",
                  label=f"{result.model}: B {curve['B']:.0f} GPa")
        if reference is not None and name in reference:
            ref = reference[name]
            axis.plot(ref["volumes"], 1000.0 * (ref["energies"] - ref["E0"]), "s--", markersize=3, color="black",
                      label=f"reference: B {ref['B']:.0f} GPa")
        axis.set_title(name, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=6)
    axes[0][0].set_ylabel("E - E0 (meV/atom)", fontsize=7)
    axes[-1][0].set_xlabel("V (Å³/atom)", fontsize=7)
    figure.suptitle(f"eos: {result.model}", fontsize=9)
    return result.save_plot(figure, path)


def plot_name(model_name: str) -> str:
    return plot_file_name("eos", model_name)


def items(model, context: TaskContext) -> int:
    return len(work(model, context))
