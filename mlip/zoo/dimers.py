"""The `dimers` task: energy and force of two atoms in vacuum along their distance.

For every pair of elements the model knows (among those of the test set), from
``dimer_min_distance`` (0.5 Å) to the model's cutoff (``dimer_max_distance``; 6 Å for external
calculators), on an even grid. The pair is neutral, in its lowest multiplicity (1 for an even
number of electrons, else 2). E(r) is taken relative to its value at the largest distance of the
model's grid; the radial force F(r) is the force on the second atom along the separation
(positive: repulsive). Per pair:

* ``minima``: interior local minima of E(r) (a physical dimer curve has at most one; changes
  below 0.1 meV are ignored);
* ``force_sign_changes``: sign changes of F(r) (|F| below 1 meV/Å ignored);
* ``max_slope_jump_eV_per_A2``: the largest change of dF/dr between neighbouring grid intervals, eV/Å²
  (large: a kink, an unsmooth potential);
* ``repulsive``: at the shortest distance the force pushes the atoms apart and E lies above
  the curve's minimum (a model without short-range repulsion keeps falling towards r -> 0, so
  its lowest point is the shortest distance); ``E_wall_eV``: E there minus the minimum;
* with a reference: ``E_mae_eV``, the mean |E(r) - E_ref(r)| (both relative to their value at
  the model's largest distance) over the grid points where the reference is below
  +5 eV (``COMPARE_MAX_ENERGY``; closer in, a steep wall would swamp the mean, and whether the
  model is repulsive there at all is the ``repulsive`` column), and ``r_min_error_A``, the
  difference of the positions of the lowest energy.

Headline numbers: pairs without short-range repulsion, pairs with more than one minimum, and
the mean E MAE against the reference.
"""

from __future__ import annotations

import itertools

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from mlip.zoo.results import TaskContext, TaskResult, mean_or_nan, plot_file_name, pyplot, reason
from mlip.zoo.structures import set_charge_and_spin

ENERGY_TOLERANCE = 1e-4  # eV: smaller wiggles of E(r) are not minima
FORCE_TOLERANCE = 1e-3  # eV/Å: smaller forces have no sign
EXTERNAL_MAX_DISTANCE = 6.0  # Å, curve end for calculators without a cutoff
MAX_PLOTTED_PAIRS = 12
COMPARE_MAX_ENERGY = 5.0  # eV: the reference curve is compared where it lies below this (relative to its end)


def dimer(z1: int, z2: int, distance: float) -> Atoms:
    """Two atoms ``distance`` Å apart along x, neutral, lowest multiplicity, no cell."""
    atoms = Atoms(numbers=[z1, z2], positions=[[0.0, 0.0, 0.0], [distance, 0.0, 0.0]], pbc=False)
    set_charge_and_spin(atoms, 0, 1 + (z1 + z2) % 2)
    return atoms


def pair_name(z1: int, z2: int) -> str:
    return f"{chemical_symbols[z1]}-{chemical_symbols[z2]}"


def energies_and_forces(model, atoms_list: list[Atoms]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Energies (eV) and forces (n, 3) eV/Å of every structure; NaN where the calculator failed,
    with that structure's reason ('' where it did not fail)."""
    calculator = model.make_calculator()
    reasons = [""] * len(atoms_list)
    if hasattr(calculator, "predict_batch"):  # MLIPCalculator: many structures per forward pass
        try:
            predictions = calculator.predict_batch(atoms_list)
            return (np.array([p["energy"] for p in predictions]), np.array([p["forces"] for p in predictions]), reasons)
        except Exception:  # find the failing structures one by one below
            pass
    energies = np.full(len(atoms_list), np.nan)
    forces = np.full((len(atoms_list), len(atoms_list[0]), 3), np.nan)
    for index, atoms in enumerate(atoms_list):
        atoms = atoms.copy()
        atoms.calc = calculator
        try:
            energies[index] = atoms.get_potential_energy()
            forces[index] = atoms.get_forces()
        except Exception as error:
            reasons[index] = f"at {atoms.get_distance(0, 1):.2f} Å: {reason(error)}"
            calculator = model.make_calculator()  # a failed call may leave a calculator unusable (tblite aborts the process)
    return energies, forces, reasons


def count_minima(energies: np.ndarray, tolerance: float = ENERGY_TOLERANCE) -> int:
    """Interior local minima of a curve, ignoring steps smaller than ``tolerance`` (NaN points dropped)."""
    values = energies[np.isfinite(energies)]
    kept = []  # the curve with plateaus (changes below tolerance) merged
    for value in values:
        if not kept or abs(value - kept[-1]) > tolerance:
            kept.append(value)
    return sum(1 for i in range(1, len(kept) - 1) if kept[i] < kept[i - 1] and kept[i] < kept[i + 1])


def count_sign_changes(values: np.ndarray, tolerance: float = FORCE_TOLERANCE) -> int:
    signs = np.sign(values[np.isfinite(values) & (np.abs(values) > tolerance)])
    return int(np.count_nonzero(signs[1:] != signs[:-1]))


def max_slope_jump(distances: np.ndarray, forces: np.ndarray) -> float:
    """Largest change of dF/dr between neighbouring grid intervals, eV/Å²."""
    finite = np.isfinite(forces)
    if finite.sum() < 3:
        return float("nan")
    slopes = np.diff(forces[finite]) / np.diff(distances[finite])
    return float(np.max(np.abs(np.diff(slopes))))


def curve_metrics(distances: np.ndarray, energies: np.ndarray, radial_forces: np.ndarray) -> dict:
    """Smoothness and short-range behaviour of one curve (NaN points, failed calls, are skipped)."""
    finite = np.flatnonzero(np.isfinite(energies))
    relative = energies - energies[finite[-1]]
    first = finite[0]
    wall = relative[first] - np.nanmin(relative)
    return {
        "minima": count_minima(relative),
        "force_sign_changes": count_sign_changes(radial_forces),
        "max_slope_jump_eV_per_A2": max_slope_jump(distances, radial_forces),
        "E_wall_eV": float(wall),
        "repulsive": bool(wall > ENERGY_TOLERANCE and radial_forces[first] > 0.0),
    }


def compare(distances: np.ndarray, energies: np.ndarray, reference: dict) -> dict:
    """E MAE (eV) and minimum-position error (Å) against a reference curve (interpolated onto ``distances``)."""
    ref_distances, ref_energies = reference["distances"], reference["energies"]
    finite = np.isfinite(ref_energies)
    inside = (distances >= ref_distances[finite].min()) & (distances <= ref_distances[finite].max()) & np.isfinite(energies)
    if inside.sum() < 2:
        return {"E_mae_eV": float("nan"), "r_min_error_A": float("nan")}
    on_grid = np.interp(distances, ref_distances[finite], ref_energies[finite])
    end = np.flatnonzero(inside)[-1]
    model_relative = energies - energies[end]
    reference_relative = on_grid - on_grid[end]
    compared = inside & (reference_relative <= COMPARE_MAX_ENERGY)
    if not compared.any():
        return {"E_mae_eV": float("nan"), "r_min_error_A": float("nan")}
    r_min_model = distances[inside][np.argmin(model_relative[inside])]
    r_min_reference = distances[inside][np.argmin(reference_relative[inside])]
    return {
        "E_mae_eV": float(np.mean(np.abs(model_relative[compared] - reference_relative[compared]))),
        "r_min_error_A": float(r_min_model - r_min_reference),
    }


def run(model, context: TaskContext, reference: dict | None = None) -> TaskResult:
    options = context.options
    result = TaskResult(task="dimers", model=model.name)
    if "molecule" not in model.kinds():  # dimers are molecules
        result.note = "not run: the reference for crystals only"
        return result
    elements = context.elements if model.elements is None else [z for z in context.elements if z in model.elements]
    if not elements:
        result.note = "no element of the test set is known to the model"
        return result
    end = options.dimer_max_distance or model.cutoff or EXTERNAL_MAX_DISTANCE
    if model.cutoff is not None:
        end = min(end, model.cutoff)
    distances = np.linspace(options.dimer_min_distance, end, options.dimer_points)
    pairs = list(itertools.combinations_with_replacement(elements, 2))
    atoms_list = [dimer(z1, z2, r) for z1, z2 in pairs for r in distances]
    energies, forces, reasons = energies_and_forces(model, atoms_list)
    energies = energies.reshape(len(pairs), len(distances))
    radial = forces.reshape(len(pairs), len(distances), 2, 3)[:, :, 1, 0]  # atom 2's force along +x
    for index, (z1, z2) in enumerate(pairs):
        name = pair_name(z1, z2)
        row = {"pair": name}
        curve = energies[index]
        first_reason = next((text for text in reasons[index * len(distances):(index + 1) * len(distances)] if text), "")
        if not np.isfinite(curve).any():
            row["note"] = first_reason or "no finite energy"
            result.rows.append(row)
            continue
        result.data[name] = {"distances": distances, "energies": curve, "forces": radial[index]}
        row.update(curve_metrics(distances, curve, radial[index]))
        if not np.isfinite(curve).all():
            row["note"] = f"{np.count_nonzero(~np.isfinite(curve))} of {len(curve)} points failed ({first_reason})"
        if reference is not None and name in reference:
            row.update(compare(distances, curve, reference[name]))
        result.rows.append(row)
    evaluated = [row for row in result.rows if "minima" in row]
    if not evaluated:  # the summary cell shows the reason, not "0 pairs without repulsion"
        result.note = next((text for text in reasons if text), "no pair could be evaluated")
        return result
    result.summary = {
        "dimer pairs": len(evaluated),
        "pairs w/o repulsion": sum(1 for row in evaluated if not row["repulsive"]),
        "pairs >1 minimum": sum(1 for row in evaluated if row["minima"] > 1),
    }
    if reference is not None and not model.is_reference:
        result.summary["dimer E MAE vs ref (eV)"] = mean_or_nan(row.get("E_mae_eV") for row in evaluated)
    return result


def plot(result: TaskResult, reference: dict | None, path) -> None:
    """E(r) of the worst pairs (no repulsion, most minima, largest error; at most 12), reference dashed."""
    rows = [row for row in result.rows if row["pair"] in result.data]
    if not rows:
        return None
    rows.sort(key=lambda row: (row["repulsive"], -row["minima"], -np.nan_to_num(row.get("E_mae_eV", 0.0))))
    rows = rows[:MAX_PLOTTED_PAIRS]
    plt = pyplot()
    columns = min(4, len(rows))
    lines = (len(rows) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(2.6 * columns, 2.1 * lines), squeeze=False)
    for axis in axes.ravel()[len(rows):]:
        axis.set_visible(False)
    for axis, row in zip(axes.ravel(), rows):
        curve = result.data[row["pair"]]
        finite = np.isfinite(curve["energies"])
        end_distance = curve["distances"][finite][-1]
        relative = curve["energies"] - curve["energies"][finite][-1]
        axis.plot(curve["distances"], relative, color="C0", linewidth=1.2, label=result.model)
        if reference is not None and row["pair"] in reference:
            ref = reference[row["pair"]]
            ref_finite = np.isfinite(ref["energies"])
            end = np.interp(end_distance, ref["distances"][ref_finite], ref["energies"][ref_finite])
            axis.plot(ref["distances"], ref["energies"] - end, color="black", linestyle="--", linewidth=0.9, label="reference")
        axis.axhline(0.0, color="grey", linewidth=0.5)
        axis.set_ylim(-8.0, 12.0)
        flags = ("" if row["repulsive"] else " no repulsion") + (f" {row['minima']} minima" if row["minima"] > 1 else "")
        axis.set_title(row["pair"] + flags, fontsize=8, color="black" if not flags else "C3")
        axis.tick_params(labelsize=7)
    axes[0][0].set_ylabel("E(r) - E(end) (eV)", fontsize=7)
    axes[-1][0].set_xlabel("r (Å)", fontsize=7)
    axes[0][0].legend(fontsize=6)
    figure.suptitle(f"dimers: {result.model}", fontsize=9)
    return result.save_plot(figure, path)


def plot_name(model_name: str) -> str:
    return plot_file_name("dimers", model_name)


def items(model, context: TaskContext) -> int:
    return 1
